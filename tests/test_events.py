"""Security events: one line each, with an opaque reference and never an identifier."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import csrf_token, import_patients, lookup, make_app, patient_row
from flask import Flask

from portal.events import Event, record
from portal.extensions import db
from portal.models import AuditEvent


def event_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.events"]


def test_verification_claim_and_throttling_are_recorded_without_identifiers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(database_url, VERIFY_LIMIT_PERSON="1 per 15 minutes")
    assert import_patients(app, [patient_row()]) == []
    person = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
    caplog.set_level(logging.INFO, logger="portal.events")

    lookup(app.test_client(), **person, ssn_last4="0000")
    lookup(app.test_client(), **person, ssn_last4="0000")
    client = app.test_client()
    lookup(client, **{**person, "date_of_birth": "1980-04-24"}, ssn_last4="6789")  # another bucket: a miss
    app.config["VERIFY_LIMIT_PERSON"] = "100 per minute"
    assert lookup(client, **person, ssn_last4="6789").status_code == 303
    client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")})

    lines = event_lines(caplog)
    assert [line["outcome"] for line in lines] == [
        "failure",
        "throttled:verify-person-public",
        "failure",
        "success",
        "viewed",  # the exposure page, where the claim form is
        "pool-empty",
    ]
    assert all(line["channel"] == "public" and line["client"] == "127.0.0.0/24" for line in lines)
    assert lines[0]["record_ref"] is None and re.fullmatch(r"[0-9a-f]{32}", lines[3]["record_ref"])
    # The random public and request ids are hex and may contain any digit run by chance: check the rest.
    rest = [
        json.dumps({k: v for k, v in line.items() if k not in ("record_ref", "request_id", "actor")}) for line in lines
    ]
    for secret in ("García", "Garcia", "garcialopez", "1980-04-23", "6789", "10001", "123-45"):
        assert not any(secret.lower() in line.lower() for line in rest)


UNCONFIGURED_PROCESS = """
import sys
from conftest import lookup, make_app
app = make_app(sys.argv[1])
lookup(app.test_client(), last_name="Nobody", date_of_birth="1975-01-02", zip_code="10001", ssn_last4="0000")
"""


def test_events_and_requests_are_written_without_any_logging_set_up(database_url: str) -> None:
    """Nothing configures logging under gunicorn: events and request lines (written straight to the
    JSON handler's stream) must still reach its error log (stderr), as JSON lines.
    A process of its own, because pytest's log capture is a configuration."""
    done = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED_PROCESS, database_url],
        cwd=Path(__file__).parent,
        # conftest imports deploy/launch.py, which pytest finds through setup.cfg's pythonpath.
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "deploy")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    written = [json.loads(line) for line in done.stderr.splitlines() if '"action":"verification"' in line]
    assert len(written) == 1
    assert {k: written[0][k] for k in ("logger", "outcome", "channel", "record_ref", "client")} == {
        "logger": "portal.events", "outcome": "failure", "channel": "public", "record_ref": None, "client": "127.0.0.0/24"
    }  # fmt: skip
    requests = [json.loads(line) for line in done.stderr.splitlines() if '"logger":"portal.requests"' in line]
    assert [(r["method"], r["endpoint"], r["status"], r["level"]) for r in requests] == [
        ("GET", "public.lookup_form", 200, "INFO"),
        ("POST", "public.lookup", 200, "INFO"),
    ]
    assert requests[1]["request_id"] == written[0]["request_id"] and requests[1]["time"].endswith("Z")


def test_a_commands_events_name_its_user_cut_to_40_characters_or_unknown(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a request the actor is the command line's user (cut to fit the trail's column);
    a user with no name (a container's bare uid) is still recorded, as unknown."""
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LOGNAME", "operator-" + "x" * 60)
    with app.app_context():
        record(Event("import", "started", "cli"))
        monkeypatch.delenv("LOGNAME")
        monkeypatch.setattr(pwd, "getpwuid", no_such_user)
        record(Event("import", "finished", "cli"))
        actors = dict(db.session.execute(sa.select(AuditEvent.outcome, AuditEvent.actor)).all())
    assert actors == {"started": "cli:operator-" + "x" * 31, "finished": "cli:unknown"}


def no_such_user(uid: int) -> pwd.struct_passwd:
    raise KeyError(f"getpwuid(): uid not found: {uid}")
