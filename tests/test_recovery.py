"""Recovery when someone else used a person's code: the caller reports it to an agent, who revokes
it and reads out a new one in one audited step; the provider gets the revoked codes from the CLI.

The pool's own guarantees (one transaction, a double submit revokes nothing more, concurrency on
both databases) are in tests/test_claims.py; here, every surface end to end.
"""

from __future__ import annotations

import csv
import html
import re
import secrets
import stat
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from agent_helpers import make_staff, post_form, signed_in
from conftest import create_api_key, csrf_token, import_patients, lookup, make_app, patient_row
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from portal.agent.calls import ALREADY_REPLACED, REISSUED
from portal.claims import claim_code
from portal.extensions import db
from portal.importer import import_codes
from portal.models import ActivationCode, AuditEvent, Patient
from portal.services import services

PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}
ENROLL_BY = date.today() + timedelta(days=60)
CODE = re.compile(r"REC-\d{4}")


def start(app: Flask, codes: int) -> None:
    """One person on the breach list and ``codes`` codes in the pool, REC-0000 first."""
    assert import_patients(app, [patient_row()]) == []
    rows = [{"code": f"REC-{n:04d}", "enroll_by": ENROLL_BY.isoformat(), "product": "Protect 24"} for n in range(codes)]
    with app.app_context():
        import_codes(db.session, services().cipher, enumerate(rows, start=2), on_reject=lambda *_: None)


def codes_on(page: str) -> set[str]:
    return set(CODE.findall(page))


def public_code(app: Flask, lang: str = "en") -> str:
    """The code page of a new visitor who verifies on the website."""
    client = app.test_client()
    assert lookup(client, **PERSON).headers["Location"] == "/exposure"
    return client.get(f"/code?lang={lang}", follow_redirects=True).get_data(as_text=True)


def api_code(app: Flask, key: str) -> tuple[int, str]:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    token = client.post("/api/v1/verifications", json=PERSON, headers=headers).get_json()["claim_token"]
    answer = client.post("/api/v1/claims", json={"claim_token": token}, headers=headers)
    return answer.status_code, answer.get_json()["activation_code"]


def on_the_line(app: Flask, client: FlaskClient) -> str:
    """Verify the caller on the console; their page."""
    fields = {"reference": "", **PERSON}
    assert post_form(client, "/agent/call", "/agent/call", **fields).headers["Location"] == "/agent/call/caller"
    return client.get("/agent/call/caller").get_data(as_text=True)


def reported_row(page: str) -> str:
    """The row id the caller page's misuse form reports."""
    found = re.search(r'<input name="code" type="hidden" value="(\d+)">', page)
    assert found, "the caller page has no misuse form"
    return found.group(1)


def report(client: FlaskClient, row: str) -> Any:
    return post_form(client, "/agent/call/code-misuse", "/agent/", code=row)


def flashed(client: FlaskClient) -> tuple[str, set[str]]:
    page = html.unescape(client.get("/agent/call/caller").get_data(as_text=True))
    return page, codes_on(page)


def trail(app: Flask, *actions: str) -> list[tuple[str, str, str, str | None]]:
    with app.app_context():
        rows = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.lane, AuditEvent.position)
        )
        return [(r.actor.split(":")[0], r.action, r.outcome, r.record_ref) for r in rows]


def test_a_code_someone_else_used_is_revoked_exported_and_replaced_on_every_surface(app: Flask, tmp_path: Path) -> None:
    start(app, codes=3)
    key = create_api_key(app, "verify", "claim")
    website = app.test_client()
    assert lookup(website, **PERSON).headers["Location"] == "/exposure"
    assert website.post("/claim", data={"csrf_token": csrf_token(website, "/exposure")}).status_code == 303
    assert codes_on(website.get("/code").get_data(as_text=True)) == {"REC-0000"}

    agent = signed_in(app, make_staff(app))
    page = on_the_line(app, agent)
    assert codes_on(page) == {"REC-0000"} and "The caller says someone else used this code" in page
    old_row = reported_row(page)
    response = report(agent, old_row)
    assert response.status_code == 303 and response.headers["Location"] == "/agent/call/caller"
    page, shown = flashed(agent)
    assert REISSUED in page and shown == {"REC-0001"}
    # The same report again (a double click, the browser's back button): the new code stands.
    assert report(agent, old_row).status_code == 303
    page, shown = flashed(agent)
    assert ALREADY_REPLACED in page and shown == {"REC-0001"}

    # The provider's file: the revoked code only, 0600 even over an older, readable file.
    out = tmp_path / "revoked.csv"
    out.write_text("stale\n")
    out.chmod(0o644)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["codes", "revoked", "--since", date.today().isoformat(), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"1 revoked codes written to {out}" in result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["code"], r["product"], r["enroll_by"]) for r in rows] == [
        ("REC-0000", "Protect 24", ENROLL_BY.isoformat())
    ]
    assert rows[0]["claimed_at"] <= rows[0]["revoked_at"] and rows[0]["revoked_at"][:10] == date.today().isoformat()
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    assert runner.invoke(args=["codes", "revoked", "--since", tomorrow, "--out", str(out)]).exit_code == 0
    assert out.read_text().splitlines() == ["code,product,enroll_by,claimed_at,revoked_at"]

    # The person sees the new code everywhere: website (its page says whom to call), API, console.
    page = public_code(app)
    assert codes_on(page) == {"REC-0001"}
    assert codes_on(website.get("/code").get_data(as_text=True)) == {"REC-0001"}
    assert api_code(app, key) == (200, "REC-0001")
    assert codes_on(on_the_line(app, signed_in(app, make_staff(app, "bob")))) == {"REC-0001"}

    with app.app_context():
        ref = db.session.scalars(select(Patient.public_id)).one()
        assert db.session.get_one(ActivationCode, int(old_row)).revoked_at is not None
    assert trail(app, "code-misuse", "code-reissue", "codes-export") == [
        ("staff", "code-misuse", "reported", ref),
        ("staff", "code-reissue", "success", ref),
        ("staff", "code-misuse", "reported", ref),
        ("staff", "code-reissue", "already-replaced", ref),
        ("cli", "codes-export", "exported:1", None),
        ("cli", "codes-export", "exported:0", None),
    ]


def test_the_code_page_says_whom_to_call_in_every_language(app: Flask) -> None:
    start(app, codes=1)
    client = app.test_client()
    assert lookup(client, **PERSON).status_code == 303
    assert client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")}).status_code == 303
    expected = {
        "en": "someone else may have used it. Call us at 1-800-555-0142",
        "es": "es posible que otra persona lo haya usado. Llámenos al 1-800-555-0142",
        "fr": "quelqu'un d'autre l'a peut-être utilisé. Appelez-nous au 1-800-555-0142",
    }
    for lang, sentence in expected.items():
        page = html.unescape(client.get(f"/code?lang={lang}", follow_redirects=True).get_data(as_text=True))
        assert sentence in page, lang


def test_an_empty_pool_leaves_the_callers_code_and_says_so(app: Flask) -> None:
    start(app, codes=1)
    agent = signed_in(app, make_staff(app))
    on_the_line(app, agent)
    assert post_form(agent, "/agent/call/claim", "/agent/call/caller").status_code == 303
    response = report(agent, reported_row(agent.get("/agent/call/caller").get_data(as_text=True)))
    assert response.status_code == 503 and "Nothing was changed" in response.get_data(as_text=True)
    assert codes_on(agent.get("/agent/call/caller").get_data(as_text=True)) == {"REC-0000"}
    assert [outcome for _, _, outcome, _ in trail(app, "code-reissue")] == ["pool-empty"]


def test_an_agent_beyond_the_reissue_budget_gets_429_and_changes_nothing(database_url: str) -> None:
    app = make_app(database_url, AGENT_REISSUE_LIMIT="2 per day", RATELIMIT_KEY_PREFIX=secrets.token_hex(4))
    start(app, codes=5)
    alice = signed_in(app, make_staff(app, "alice"))
    on_the_line(app, alice)
    assert post_form(alice, "/agent/call/claim", "/agent/call/caller").status_code == 303
    for _ in range(2):
        assert report(alice, reported_row(alice.get("/agent/call/caller").get_data(as_text=True))).status_code == 303
    page = alice.get("/agent/call/caller").get_data(as_text=True)
    assert codes_on(page) == {"REC-0002"}
    refused = report(alice, reported_row(page))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert codes_on(alice.get("/agent/call/caller").get_data(as_text=True)) == {"REC-0002"}
    assert [outcome for _, _, outcome, _ in trail(app, "code-reissue")] == ["success", "success", "throttled"]
    refused = [outcome for _, _, outcome, _ in trail(app, "verification") if outcome.startswith("throttled")]
    assert refused == ["throttled:agent-reissue"]  # the trail names the limit
    # The budget is the agent's: another agent may still help this caller.
    bob = signed_in(app, make_staff(app, "bob"))
    assert report(bob, reported_row(on_the_line(app, bob))).status_code == 303
    assert codes_on(bob.get("/agent/call/caller").get_data(as_text=True)) == {"REC-0003"}


def test_a_bad_report_is_a_4xx_and_changes_nothing(app: Flask) -> None:
    start(app, codes=3)
    with app.app_context():
        caller = db.session.scalars(select(Patient.id)).one()
    assert import_patients(app, [patient_row(record_id="R-2", last_name="Other", zip="20002")]) == []
    agent = signed_in(app, make_staff(app))
    assert report(agent, "1").headers["Location"] == "/agent/call"  # no caller on the line
    page = on_the_line(app, agent)
    assert "someone else used this code" not in page  # nothing to report before a code is given
    assert report(agent, "1").status_code == 303  # the caller holds no code: nothing to revoke
    assert post_form(agent, "/agent/call/claim", "/agent/call/caller").status_code == 303
    with app.app_context():
        other = db.session.scalars(select(Patient).where(Patient.id != caller)).one()
        other_row = str(claim_code(db.session, services().cipher, other).row_id)
    for bad in ["", "abc", "-1", "1" * 20, "\uff11"]:  # the last: a fullwidth digit one
        assert report(agent, bad).status_code == 400, bad
    assert agent.post("/agent/call/code-misuse", data={"code": "1"}).status_code == 400  # no CSRF token
    assert report(agent, other_row).status_code == 303  # another person's code is not this caller's to revoke
    with app.app_context():
        assert db.session.scalars(select(ActivationCode).where(ActivationCode.revoked_at.is_not(None))).all() == []
    assert codes_on(agent.get("/agent/call/caller").get_data(as_text=True)) == {"REC-0000"}
    assert [o for _, _, o, _ in trail(app, "code-reissue")] == ["not-held", "already-replaced"]
