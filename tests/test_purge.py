"""`portal purge`: what goes, what stays, the dry run that changes nothing, and the purge's own record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from conftest import import_patients, patient_row
from flask import Flask

from portal.claims import PoolStatus, claim_code, pool_status
from portal.extensions import db
from portal.idempotency import WINDOW
from portal.identity import start_verification
from portal.importer import import_codes
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
from portal.retention import purge
from portal.services import services

NOW = datetime.now(UTC)
TODAY = NOW.date()
RETENTION_DAYS = 30


def populate(app: Flask) -> None:
    """Two people, one with a code, one without an SSN (what a replacement letter needs is kept); a
    verification expired yesterday and a live one; hourly counts from seven years ago (past
    retention) and from last week; a rate-limit counter."""
    second = patient_row(
        record_id="R-2", last_name="Okafor", date_of_birth="1961-02-03", zip="10002", ssn="", exposed_fields="name"
    )
    assert import_patients(app, [patient_row(), second]) == []
    with app.app_context():
        codes = [{"code": f"PRG-{n}", "enroll_by": (TODAY + timedelta(days=90)).isoformat()} for n in range(1000, 1003)]
        import_codes(db.session, services().cipher, enumerate(codes, start=2), on_reject=lambda *_: None)
        patient = db.session.scalars(sa.select(Patient)).first()
        assert patient is not None
        claim_code(db.session, services().cipher, patient)
        start_verification(db.session, patient, "public", 900)
        start_verification(db.session, patient, "public", 900)
        db.session.execute(
            sa.update(Verification).where(Verification.id == 1).values(expires_at=NOW - timedelta(days=1))
        )
        for hour in (NOW - timedelta(days=7 * 366), NOW - timedelta(days=7)):
            db.session.add(HourlyCount(hour=hour.replace(minute=0, second=0, microsecond=0), action="claim",
                                       outcome="success", channel="public", count=5))  # fmt: skip
        db.session.commit()
        app.extensions["portal.limit_store"].incr("portal/verify-person/x", 3600)


def counts(app: Flask) -> dict[str, int]:
    with app.app_context():
        return {
            model.__tablename__: db.session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
            for model in (Verification, LetterRecord, ActivationCode, Patient, HashScheme, HourlyCount)
        }


def purge_events(app: Flask) -> dict[str, int]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(HourlyCount.outcome, HourlyCount.count).where(HourlyCount.action == "purge")
        )
        return {outcome: count for outcome, count in rows}


def run(app: Flask, *args: str) -> dict[str, object]:
    result = app.test_cli_runner().invoke(args=["purge", "--before", TODAY.isoformat(), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_dry_run_says_what_would_go_and_changes_nothing(app: Flask) -> None:
    populate(app)
    before = counts(app)
    report = run(app, "--dry-run", "--programme-end")
    assert (report["verifications"], report["activation_codes"], report["patients"]) == (2, 3, 2)
    assert report["letter_records"] == 1
    assert report["hourly_counts"] == 1 and report["rate_limit_state_cleared"] is False
    assert report["audit_rows_past_retention"] == 0  # every event of the run is from now
    after = counts(app)
    assert after == {**before, "hourly_counts": before["hourly_counts"] + 1}  # + the purge's own count
    assert purge_events(app) == {"dry-run": 1}
    assert app.extensions["portal.limit_store"].get("portal/verify-person/x") == 1


def test_a_routine_purge_takes_expired_verifications_and_counts_past_retention(app: Flask) -> None:
    populate(app)
    report = run(app)
    assert (report["verifications"], report["patients"], report["hourly_counts"]) == (1, 0, 1)
    left = counts(app)
    assert (left["verifications"], left["patients"], left["activation_codes"], left["letter_records"]) == (1, 2, 3, 1)
    with app.app_context():
        kept = db.session.scalars(sa.select(HourlyCount.hour).where(HourlyCount.action == "claim")).all()
    assert [hour.date() for hour in kept] == [(NOW - timedelta(days=7)).date()]
    assert purge_events(app) == {"expired": 1}
    assert app.extensions["portal.limit_store"].get("portal/verify-person/x") == 1  # live limits stay


def test_programme_end_destroys_the_records_and_keeps_the_counts(app: Flask) -> None:
    populate(app)
    report = run(app, "--programme-end", "--yes")
    assert report["rate_limit_state_cleared"] is True
    left = counts(app)
    assert (left["verifications"], left["activation_codes"], left["patients"], left["hash_schemes"]) == (0, 0, 0, 0)
    assert left["letter_records"] == 0
    with app.app_context():
        assert pool_status(db.session) == PoolStatus(0, 0, 0)  # the pool's kept counts emptied with it
        if db.session.get_bind().dialect.name == "postgresql":
            # TRUNCATE, not DELETE: no dead row of a record is left in the tables' files for a VACUUM to find.
            records = ("verifications", "letter_records", "activation_codes", "patients", "hash_schemes")
            sizes = {name: db.session.scalar(sa.text(f"SELECT pg_relation_size('{name}')")) for name in records}
            assert sizes == dict.fromkeys(records, 0)
    assert left["hourly_counts"] == 2  # last week's claims and the purge itself
    assert purge_events(app) == {"programme-end": 1}
    assert app.extensions["portal.limit_store"].get("portal/verify-person/x") == 0
    # The figures of the programme are still there to read.
    text = app.test_cli_runner().invoke(args=["stats", "--days", "8"])
    assert "claims by surface: public 5" in text.output


def test_a_cut_off_in_the_future_or_unconfirmed_programme_end_is_refused(app: Flask) -> None:
    runner = app.test_cli_runner()
    future = runner.invoke(args=["purge", "--before", (TODAY + timedelta(days=1)).isoformat()])
    assert future.exit_code == 2 and "must not be after today" in future.output
    unconfirmed = runner.invoke(args=["purge", "--before", TODAY.isoformat(), "--programme-end"], input="n\n")
    assert unconfirmed.exit_code == 1
    assert counts(app)["hourly_counts"] == 0  # nothing ran, nothing recorded


def test_the_purge_report_and_its_edges(app: Flask) -> None:
    """Each figure of the report, rows exactly at a cut-off (they stay: "before" is strict), and the
    partners' retry answers: only expired ones go routinely, every one at programme end."""
    populate(app)
    cut = datetime.combine(TODAY, datetime.min.time(), UTC)
    kept_since = cut - timedelta(days=RETENTION_DAYS)
    with app.app_context():
        db.session.execute(sa.update(Verification).where(Verification.id == 2).values(expires_at=cut))
        db.session.add(HourlyCount(hour=kept_since, action="verify", outcome="success", channel="api", count=2))
        for n, created in enumerate((cut - WINDOW - timedelta(seconds=1), cut - WINDOW, NOW)):
            db.session.add(IdempotentRequest(slot=bytes([n]) * 32, fingerprint=bytes(32), owner=bytes(16),
                                             created_at=created, status=200, answer=b"x"))  # fmt: skip
        for position, at in enumerate((kept_since - timedelta(days=1), kept_since, NOW), start=1):
            db.session.add(AuditEvent(lane=64, position=10_000 + position, at=at, actor="cli:test", action="t",
                                      outcome="o", channel="cli", prev_hash=bytes(32), chain_hash=bytes(32)))  # fmt: skip
        db.session.commit()

        def purge_now(**options: bool) -> dict[str, object]:
            store = app.extensions["portal.limit_store"]
            report = purge(db.session, store, before=TODAY, retention_days=RETENTION_DAYS, **options)
            return report.to_json()

        routine = purge_now(programme_end=False, dry_run=False)
        assert routine == {
            "before": TODAY.isoformat(), "programme_end": False, "dry_run": False,
            "verifications": 1, "letter_records": 0, "activation_codes": 0, "patients": 0, "hash_schemes": 0,
            "hourly_counts": 1, "audit_rows_past_retention": 1, "rate_limit_state_cleared": False,
        }  # fmt: skip
        left = db.session.scalars(sa.select(IdempotentRequest.created_at).order_by(IdempotentRequest.created_at))
        assert [created.replace(tzinfo=UTC) for created in left] == [cut - WINDOW, NOW]
        assert db.session.scalar(sa.select(Verification.expires_at)).replace(tzinfo=UTC) == cut
        end = purge_now(programme_end=True, dry_run=True)
        assert (end["programme_end"], end["dry_run"], end["patients"], end["hash_schemes"]) == (True, True, 2, 1)
        purge_now(programme_end=True, dry_run=False)
        assert db.session.scalar(sa.select(sa.func.count()).select_from(IdempotentRequest)) == 0
