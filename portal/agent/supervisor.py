"""Supervisors' pages: the code pool and the audit trail (its table, filters and CSV export).
Staff accounts are in ``staff_accounts.py``, the dashboard in ``dashboard.py``."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Response, abort, current_app, render_template, request, stream_with_context
from flask.typing import ResponseValue

from portal import audit as audit_trail
from portal import stats
from portal.agent.auth import supervisor_required
from portal.agent.blueprint import audit, bp
from portal.agent.forms import AuditFilterForm
from portal.extensions import db
from portal.models import Staff
from portal.services import services
from portal.staff import StaffError, find_staff, list_staff, staff_names

AUDIT_PAGE_ROWS = 200
STAFF_REF = re.compile(r"staff:([0-9]{1,9})")  # how the trail names a member of staff, as actor or target
EXPORT_FIELDS = ("actor_username", "actor_role")  # added after ``actor`` in the CSV export


class StaffNames:
    """``staff:7`` shown as the username and role it stands for (ids mean nothing to a reader)."""

    def __init__(self, staff: Mapping[int, Staff]) -> None:
        self._staff = staff

    @classmethod
    def of(cls, refs: Iterable[str | None]) -> StaffNames:
        """The names of the staff these references (actors, outcomes) mention."""
        ids = {int(match.group(1)) for ref in refs if ref and (match := STAFF_REF.fullmatch(ref))}
        return cls(staff_names(db.session, ids))

    @classmethod
    def everyone(cls) -> StaffNames:
        """Every account's name, for an export too long to collect its references first."""
        return cls({staff.id: staff for staff in list_staff(db.session)})

    def staff(self, ref: str | None) -> Staff | None:
        match = STAFF_REF.fullmatch(ref or "")
        return self._staff.get(int(match.group(1))) if match else None

    def label(self, ref: str | None) -> str:
        """``alice (agent)`` for a known member of staff, else the reference as it is."""
        staff = self.staff(ref)
        return f"{staff.username} ({staff.role})" if staff else ref or ""


@bp.get("/pool")
@supervisor_required
def pool() -> str:
    today = datetime.now(UTC).date()
    outlook = stats.pool_outlook(db.session, today)
    return render_template("agent/pool.html", pool=outlook, concerns=pool_concerns(outlook))


def pool_concerns(outlook: stats.PoolOutlook) -> list[str]:
    return outlook.concerns(services().programme.enrol_by, current_app.config["POOL_LOW_THRESHOLD"])


def audit_filter(form: AuditFilterForm) -> audit_trail.Filter | None:
    """The form as a filter; None when it names a username no account has (nothing can match)."""

    def midnight(day: date | None, days_after: int = 0) -> datetime | None:
        return datetime.combine(day, time(), UTC) + timedelta(days=days_after) if day else None

    actor = form.actor.data.strip() if form.actor.data else None
    if actor and ":" not in actor:  # a username: the trail holds its staff id
        try:
            actor = f"staff:{find_staff(db.session, actor).id}"
        except StaffError:
            return None
    return audit_trail.Filter(
        since=midnight(form.since.data),
        until=midnight(form.until.data, 1),
        actor=actor,
        action=form.action.data or None,
        record_ref=form.record_ref.data or None,
    )


@bp.get("/audit")
@supervisor_required
def audit_page() -> ResponseValue:
    form = AuditFilterForm(request.args)
    if not form.validate():
        return render_template("agent/audit.html", form=form, rows=[], names=StaffNames({})), 400
    audit("audit-trail", "viewed")
    where = audit_filter(form)
    rows: list[Mapping[str, Any]] = []
    if where is not None:
        with db.engine.connect() as connection:
            rows = list(audit_trail.events(connection, where, AUDIT_PAGE_ROWS))
    names = StaffNames.of(ref for row in rows for ref in (row["actor"], row["outcome"]))
    return render_template(
        "agent/audit.html", form=form, rows=rows, names=names, limit=AUDIT_PAGE_ROWS, unknown_user=where is None
    )


def export_header() -> list[str]:
    after = audit_trail.COLUMNS.index("actor") + 1
    return [*audit_trail.COLUMNS[:after], *EXPORT_FIELDS, *audit_trail.COLUMNS[after:]]


def export_row(row: Mapping[str, Any], names: StaffNames) -> list[str]:
    """The row's fields, the actor's username and role beside its id, every cell spreadsheet-safe."""
    staff = names.staff(row["actor"])
    values = {**row, "actor_username": staff.username if staff else "", "actor_role": staff.role if staff else ""}
    return [audit_trail.spreadsheet_safe(values[name]) for name in export_header()]


@bp.get("/audit/export.csv")
@supervisor_required
def audit_export() -> ResponseValue:
    form = AuditFilterForm(request.args)
    if not form.validate():
        abort(400)
    audit("audit-export", "success")
    where = audit_filter(form)
    names = StaffNames.everyone()

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        # Every field quoted (OWASP): a carriage return inside a value cannot start a row of its own.
        writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(export_header())
        with db.engine.connect() as connection:
            for row in audit_trail.events(connection, where) if where is not None else ():
                writer.writerow(export_row(row, names))
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    headers = {"Content-Disposition": "attachment; filename=audit.csv"}
    return Response(stream_with_context(lines()), mimetype="text/csv", headers=headers)
