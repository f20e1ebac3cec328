"""Retention: destroy what the programme no longer needs, keep what the law asks to keep (no HTTP here).

* Always: verification sessions that expired before the cut-off date, and the answers kept for
  partners' retries (``Idempotency-Key``) whose 24 hours ended before it. (Rate-limit state expires
  in its store by itself: each counter lives as long as its window.)
* At programme end: every record (and what a replacement letter needs), code, verification and
  hash scheme, and all rate-limit state.
* Kept: the hourly counts and the audit trail, for ``PORTAL_AUDIT_RETENTION_DAYS`` (six years,
  as HIPAA keeps documentation); hourly counts older than that go. Audit rows past it are only
  counted: the chain is checked from its first row, so removing its oldest rows needs the audit
  trail's own support.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from limits.storage import Storage
from sqlalchemy import ColumnElement, Delete, delete, false, func, select, text, true
from sqlalchemy.orm import Session

from portal.idempotency import expired_before
from portal.models import (
    ActivationCode,
    AuditEvent,
    HashScheme,
    HourlyCount,
    IdempotentRequest,
    LetterRecord,
    Patient,
    Verification,
)


@dataclass(frozen=True)
class PurgeReport:
    before: date
    programme_end: bool
    dry_run: bool
    verifications: int
    letter_records: int
    activation_codes: int
    patients: int
    hash_schemes: int
    hourly_counts: int  # older than the retention period
    audit_rows_past_retention: int  # counted, kept (see the module's docstring)
    rate_limit_state_cleared: bool

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "before": self.before.isoformat()}


def purge(
    session: Session, limit_store: Storage, *, before: date, retention_days: int, programme_end: bool, dry_run: bool
) -> PurgeReport:
    """Delete (or with ``dry_run`` only count) what the rules above say; one transaction.

    At programme end PostgreSQL empties the record tables with one TRUNCATE: a DELETE of the
    patients would check each one's references against the tables just emptied, whose deleted
    rows are still there to be read until a VACUUM (and no index serves that check on the codes),
    and would leave the data on disk until then.
    """
    cut = datetime.combine(before, time(), UTC)
    kept_since = cut - timedelta(days=retention_days)
    everything, nothing = true(), false()
    # Children before parents: verifications, letter records and codes point at patients, patients at schemes.
    records: list[tuple[type[Any], ColumnElement[bool]]] = [
        (Verification, everything if programme_end else Verification.expires_at < cut),
        (LetterRecord, everything if programme_end else nothing),
        (ActivationCode, everything if programme_end else nothing),
        (Patient, everything if programme_end else nothing),
        (HashScheme, everything if programme_end else nothing),
        # Answers kept for partners' retries: no use once their 24 hours have passed.
        (IdempotentRequest, everything if programme_end else expired_before(cut)),
    ]
    targets = [*records, (HourlyCount, HourlyCount.hour < kept_since)]
    counts = {
        model.__tablename__: session.scalar(select(func.count()).select_from(model).where(condition)) or 0
        for model, condition in targets
    }
    if not dry_run:
        if programme_end and session.get_bind().dialect.name == "postgresql":
            session.execute(text("TRUNCATE " + ", ".join(model.__tablename__ for model, _ in records)))
            targets = targets[len(records) :]
        for model, condition in targets:
            statement: Delete = delete(model).where(condition)
            session.execute(statement.execution_options(synchronize_session=False))
    audit_past = session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.at < kept_since)) or 0
    if dry_run:
        session.rollback()
    else:
        session.commit()
        if programme_end:
            limit_store.reset()
    return PurgeReport(
        before=before,
        programme_end=programme_end,
        dry_run=dry_run,
        verifications=counts["verifications"],
        letter_records=counts["letter_records"],
        activation_codes=counts["activation_codes"],
        patients=counts["patients"],
        hash_schemes=counts["hash_schemes"],
        hourly_counts=counts["hourly_counts"],
        audit_rows_past_retention=audit_past,
        rate_limit_state_cleared=programme_end and not dry_run,
    )
