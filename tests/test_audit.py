"""The audit trail: every event chained, tampering found by `portal audit verify`, never an identifier."""

from __future__ import annotations

import logging
import multiprocessing
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from agent_helpers import make_staff, post_form, signed_in
from conftest import import_patients, lookup, make_app, patient_row
from flask import Flask

from portal import audit
from portal.config import write_development_secrets
from portal.events import Event, record
from portal.extensions import db
from portal.models import AuditEvent

WRITERS = 4
EVENTS_EACH = 25


def append_events(app: Flask, count: int) -> None:
    with app.app_context():
        for i in range(count):
            record(Event("verification", "failure", "cli", client=f"10.0.0.{i % 250}"))


def verify(app: Flask) -> Any:
    return app.test_cli_runner().invoke(args=["audit", "verify"])


def execute(app: Flask, statement: str, **params: Any) -> None:
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def test_an_untouched_trail_verifies(app: Flask) -> None:
    append_events(app, 5)
    result = verify(app)
    assert result.exit_code == 0 and "intact: 5 rows" in result.output


@pytest.mark.parametrize(
    "tamper, broken_at",
    [
        ("UPDATE audit_events SET actor = 'staff:99' WHERE id = 6", 6),
        ("DELETE FROM audit_events WHERE id = 3", 3),
        ("DELETE FROM audit_events WHERE id = 6", 6),
    ],
    ids=["edit-newest", "delete-middle", "delete-newest"],
)
def test_verify_names_the_first_edited_or_deleted_row(app: Flask, tamper: str, broken_at: int) -> None:
    append_events(app, 6)
    execute(app, tamper)
    result = verify(app)
    assert result.exit_code == 1
    assert f"BROKEN at row {broken_at}" in result.output


# The columns that hold the chain's links rather than what happened. Every other column of the
# table must be a field the chain's MAC covers (audit.FIELDS): a column added later without
# joining that list fails the test below, which names it.
LINK_COLUMNS = ("prev_hash", "chain_hash")
COLUMNS = tuple(column.name for column in AuditEvent.__table__.c)


def tampered(value: object) -> object:
    """The smallest edit of a stored value: one character, one bit, one microsecond, another position."""
    if isinstance(value, bool) or value is None:
        raise AssertionError(f"no edit known for {value!r}: give every field a value in full_rows")
    if isinstance(value, int):
        return value + 1000
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, str):
        return value[:-1] + ("y" if value.endswith("x") else "x")
    raise AssertionError(f"no edit known for a {type(value).__name__}: add one to tampered()")


def full_rows(app: Flask, count: int) -> None:
    """Rows with every field filled, as a console request writes them."""
    for n in range(count):
        with app.test_request_context("/agent/call"):
            record(Event("verification", "success", "agent", f"{n:032x}", f"192.0.2.{n}", f"staff:{n}"))


@pytest.mark.parametrize("column", sorted(set(COLUMNS) | set(audit.FIELDS)))
def test_an_edit_of_any_column_is_found_at_its_row(app: Flask, column: str) -> None:
    assert column in COLUMNS, f"{column} is in the trail's field list but not a column of audit_events"
    assert column in audit.FIELDS or column in LINK_COLUMNS, f"audit_events.{column} is not covered by the chain"
    full_rows(app, 5)
    events = AuditEvent.__table__
    with app.app_context(), db.engine.begin() as connection:
        row = connection.execute(sa.select(events).where(events.c.id == 3)).mappings().one()
        connection.execute(sa.update(events).where(events.c.id == 3).values({column: tampered(row[column])}))
    result = verify(app)
    assert result.exit_code == 1 and "BROKEN at row 3" in result.output, result.output


def test_verify_catches_a_row_inserted_behind_the_apps_back(app: Flask) -> None:
    append_events(app, 4)
    with app.app_context(), db.engine.begin() as connection:
        rows = connection.execute(sa.select(AuditEvent.__table__).order_by(AuditEvent.id)).mappings().all()
        # Shift rows 3.. one up and forge a row 3 copying row 2's hash as its predecessor.
        connection.execute(sa.text("UPDATE audit_events SET id = id + 100 WHERE id >= 3"))
        connection.execute(sa.text("UPDATE audit_events SET id = id - 99 WHERE id >= 103"))
        forged = {**rows[2], "id": 3, "outcome": "success", "prev_hash": rows[1]["chain_hash"]}
        connection.execute(sa.insert(AuditEvent.__table__).values(**forged))
        connection.execute(sa.text("UPDATE audit_chain_head SET position = position + 1"))
    result = verify(app)
    assert result.exit_code == 1 and "BROKEN at row 3" in result.output


def test_a_trail_rewritten_with_another_key_does_not_verify(database_url: str) -> None:
    first = make_app(database_url)
    append_events(first, 3)
    other_key = make_app(database_url)  # a fresh PORTAL_AUDIT_KEY: what a forger without ours has
    result = verify(other_key)
    assert result.exit_code == 1 and "BROKEN at row 1" in result.output


def _writer(database_url: str, config: dict[str, Any], count: int) -> None:
    app = make_app(database_url, **config)
    append_events(app, count)


def test_concurrent_writers_in_several_processes_keep_one_unbroken_chain(app: Flask, database_url: str) -> None:
    """As several gunicorn workers do: each process appends at once; every position is used once."""
    keys = {name: app.config[name] for name in ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY")}
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(database_url, keys, EVENTS_EACH)) for _ in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert f"intact: {WRITERS * EVENTS_EACH} rows" in result.output


def test_no_imported_identifier_reaches_the_audit_table_its_export_or_the_logs(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(database_url, VERIFY_LIMIT_PERSON="2 per hour")
    row = patient_row()
    no_ssn = patient_row(record_id="R-NOSSN-77", last_name="Ødegård", ssn="", zip="20002", date_of_birth="1961-07-19")
    assert import_patients(app, [row, no_ssn]) == []
    caplog.set_level(logging.DEBUG)
    person = {"last_name": row["last_name"], "date_of_birth": row["date_of_birth"], "zip_code": row["zip"]}
    for digits in ("0000", "1111", "6789"):
        lookup(app.test_client(), **person, ssn_last4=digits)
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    post_form(supervisor, "/agent/call", "/agent/", **person, ssn_last4="6789", reference="")
    post_form(supervisor, "/agent/call", "/agent/", **person, ssn_last4="1234", reference="")
    export = supervisor.get("/agent/audit/export.csv")
    assert export.status_code == 200

    # Every column that can hold text; the others are a number, a time and two HMACs, whose random
    # digits (a timestamp's microseconds, say) would sometimes spell four digits of an identifier.
    text_columns = [column for column in AuditEvent.__table__.c if isinstance(column.type, sa.String)]
    with app.app_context(), db.engine.connect() as connection:
        table = "\n".join(str(tuple(r)) for r in connection.execute(sa.select(*text_columns)))
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for label, text in (("table", table), ("export", export.get_data(as_text=True)), ("logs", logs)):
        text = re.sub(r"[0-9a-f]{16,}", "HEX", text)  # public ids and request ids are random hex
        # When each event happened: a time's microseconds would sometimes spell four digits of an SSN.
        text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?", "TIME", text)
        for value in (*row.values(), *no_ssn.values()):
            for piece in re.split(r"[;\s]+", value):
                if len(piece) >= 4 and piece not in EXPOSURE_TOKENS:
                    assert piece.lower() not in text.lower(), (label, piece)
        assert "6789" not in text and "1234" not in text, label


EXPOSURE_TOKENS = {"name", "date_of_birth", "address", "phone", "ssn", "email"}


def test_an_older_demo_instance_gains_the_audit_key_and_keeps_its_others(tmp_path: Path) -> None:
    older = '# demo\nENV = "development"\nSECRET_KEY = "s"\nIDENTIFIER_KEY = "i"\nCODE_KEY = "c"\n'
    (tmp_path / "config.py").write_text(older, encoding="utf-8")
    write_development_secrets(str(tmp_path))
    text = (tmp_path / "config.py").read_text(encoding="utf-8")
    assert text.startswith(older) and re.search(r'^AUDIT_KEY = "[\w-]{43}"$', text, re.MULTILINE)
    write_development_secrets(str(tmp_path))
    assert (tmp_path / "config.py").read_text(encoding="utf-8") == text


def test_the_public_site_leaves_its_trail_under_a_session_pseudonym(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = app.test_client()
    person = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
    lookup(client, **person, ssn_last4="0000")
    assert lookup(client, **person, ssn_last4="6789").status_code == 303
    client.get("/exposure")
    with app.app_context():
        rows = db.session.execute(sa.select(AuditEvent.actor, AuditEvent.action, AuditEvent.outcome)).all()
    assert [(action, outcome) for _, action, outcome in rows] == [
        ("verification", "failure"),
        ("verification", "success"),
        ("exposure", "viewed"),
    ]
    assert rows[0].actor == rows[1].actor == "anonymous"  # not yet verified
    assert re.fullmatch(r"public:[0-9a-f]{16}", rows[2].actor)
