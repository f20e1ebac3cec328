"""The thief who holds the stolen records: every answer they give is right.

In-process, on SQLite and PostgreSQL: how many *different* people one network or one partner key
may verify, the person's budget shared by the three surfaces, tokens bound to where they were made,
and the letter's reference asked for before a claim. ``tests/test_thief_live.py`` plays the same
thief against gunicorn on Redis.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import make_staff, post_form, signed_in
from conftest import PROGRAMME_TOML, create_api_key, import_patients, lookup, make_app, numbered, patient_row
from flask import Flask
from flask.testing import FlaskClient
from redis import RedisError
from sqlalchemy import select, update

from portal.config import DEFAULTS
from portal.extensions import db
from portal.identity import format_reference
from portal.importer import import_codes
from portal.models import AuditEvent, HourlyCount, Patient, utcnow
from portal.services import services
from portal.stats import hour_of

PHONE = "1-800-555-0100"  # conftest's programme file


def person(n: int) -> dict[str, str]:
    """The n-th made-up person of these tests, as a breach-list row."""
    return patient_row(
        record_id=f"R-{n}", last_name=f"Person{n}", date_of_birth=f"1970-01-{n % 28 + 1:02d}",
        zip="10001", ssn=f"123-45-{n + 1000:04d}",
    )  # fmt: skip


def typed(row: dict[str, str], last4: str | None = None) -> dict[str, str]:
    """What the person types on the site (their last four unless ``last4`` says otherwise)."""
    digits = row["ssn"][-4:] if row["ssn"] else ""
    return {
        "last_name": row["last_name"],
        "date_of_birth": row["date_of_birth"],
        "zip_code": row["zip"],
        "ssn_last4": digits if last4 is None else last4,
    }


def stolen_app(database_url: str, tmp_path: Path, step_up: str = "off", count: int = 12, **config: Any) -> Flask:
    programme = tmp_path / "programme.toml"
    programme.write_text(PROGRAMME_TOML + f'claim_step_up = "{step_up}"\n', encoding="utf-8")
    app = make_app(database_url, PROGRAMME_FILE=str(programme), RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **config)
    assert import_patients(app, [person(n) for n in range(count)]) == []
    rows = [{"code": f"IDP-{n:04d}", "enroll_by": "2030-01-01"} for n in range(count)]
    with app.app_context():
        import_codes(db.session, services().cipher, numbered(rows), on_reject=lambda *_: None)
    return app


def at(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def verified(response: Any) -> bool:
    return response.status_code == 303 and response.headers["Location"] == "/exposure"


def outcomes(app: Flask, action: str) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.outcome).where(AuditEvent.action == action)))


# --- Different people per network and per key ------------------------------------------------------


def test_one_network_verifies_no_more_different_people_than_its_budget(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, VERIFY_LIMIT_CLIENT_PEOPLE="3 per day")
    thief = at(app, "198.51.100.7")
    assert [verified(lookup(thief, **typed(person(n)))) for n in range(3)] == [True] * 3
    refused = lookup(thief, **typed(person(3)))
    assert refused.status_code == 429
    page = refused.get_data(as_text=True)
    assert PHONE in page and "Person3" not in page
    assert int(refused.headers["Retry-After"]) > 0
    # The same people again are never refused by it; neighbours in the same /24 do no better.
    assert verified(lookup(thief, **typed(person(0))))
    assert [lookup(at(app, f"198.51.100.{n}"), **typed(person(n))).status_code for n in range(4, 8)] == [429] * 4
    # Another network is counted apart.
    assert verified(lookup(at(app, "198.51.101.7"), **typed(person(4))))
    assert outcomes(app, "verification").count("throttled:verify-client-people") == 5


def test_failed_verifications_take_nothing_from_the_people_budget(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, VERIFY_LIMIT_CLIENT_PEOPLE="2 per day")
    household = at(app, "203.0.113.9")
    for n in range(4):  # typos, of people on the list or not
        assert lookup(household, **typed(person(n), last4="0000")).status_code == 200
    assert [verified(lookup(household, **typed(person(n)))) for n in range(3)] == [True, True, False]


def test_an_ipv6_subscriber_is_one_network(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, VERIFY_LIMIT_CLIENT_PEOPLE="2 per day")
    assert verified(lookup(at(app, "2001:db8:1:2::1"), **typed(person(0))))
    assert verified(lookup(at(app, "2001:db8:1:2:ffff::9"), **typed(person(1))))
    assert lookup(at(app, "2001:db8:1:2:abcd::1"), **typed(person(2))).status_code == 429
    assert verified(lookup(at(app, "2001:db8:1:3::1"), **typed(person(2))))


def test_a_burst_of_different_people_from_one_network_gets_no_more_than_the_budget(
    database_url: str, tmp_path: Path
) -> None:
    """Counted before the hash: twelve simultaneous new people, three answered."""
    app = stolen_app(database_url, tmp_path, VERIFY_LIMIT_CLIENT_PEOPLE="3 per day")
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda n: lookup(at(app, f"192.0.2.{n + 1}"), **typed(person(n))), range(12)))
    assert sorted(a.status_code for a in answers) == [303] * 3 + [429] * 9


def test_a_household_of_four_verifies_and_claims_with_the_shipped_budgets(database_url: str, tmp_path: Path) -> None:
    shipped = {name: DEFAULTS[name] for name in DEFAULTS if name.startswith("VERIFY_LIMIT")}
    app = stolen_app(database_url, tmp_path, **shipped)
    home = at(app, "203.0.113.20")
    for n in range(4):
        assert verified(lookup(home, **typed(person(n))))
        assert home.post("/claim", data={"csrf_token": csrf(home, "/exposure")}).headers["Location"] == "/code"
    # One person checking again and again from home is never refused for being "another person".
    for _ in range(10):
        assert verified(lookup(home, **typed(person(0))))


def csrf(client: FlaskClient, path: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found
    return found.group(1)


def api_call(client: FlaskClient, key: str, path: str, body: dict[str, Any]) -> Any:
    return client.post(f"/api/v1{path}", json=body, headers={"Authorization": f"Bearer {key}"})


def test_a_partner_key_verifies_no_more_different_people_than_its_figure(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, API_VERIFY_LIMIT_KEY_PEOPLE="2 per day")
    key, other = create_api_key(app), create_api_key(app)
    client = app.test_client()
    assert [api_call(client, key, "/verifications", typed(person(n))).status_code for n in range(2)] == [200, 200]
    refused = api_call(client, key, "/verifications", typed(person(2)))
    assert refused.status_code == 429 and refused.get_json()["type"].endswith("#problem-too-many-people")
    assert api_call(client, key, "/verifications", typed(person(0))).get_json()["verified"] is True
    assert api_call(client, other, "/verifications", typed(person(2))).get_json()["verified"] is True


# --- One person, one budget across the surfaces ----------------------------------------------------


def test_guesses_spread_over_the_site_the_api_and_the_console_meet_one_daily_budget(
    database_url: str, tmp_path: Path
) -> None:
    app = stolen_app(
        database_url, tmp_path, VERIFY_LIMIT_PERSON="5 per 15 minutes", API_VERIFY_LIMIT_PERSON="5 per 15 minutes",
        AGENT_VERIFY_LIMIT_PERSON="5 per hour", VERIFY_LIMIT_PERSON_SHARED="10 per day; 100 per year",
    )  # fmt: skip
    key, agent = create_api_key(app), signed_in(app, make_staff(app))
    wrong = typed(person(0), last4="0000")
    statuses = [lookup(at(app, f"192.0.2.{n}"), **wrong).status_code for n in range(5)]
    statuses += [api_call(app.test_client(), key, "/verifications", wrong).status_code for _ in range(5)]
    statuses += [post_form(agent, "/agent/call", "/agent/call", **wrong).status_code for _ in range(5)]
    assert statuses == [200] * 10 + [429] * 5
    # The right answer is refused too, on every surface, for the rest of the day.
    assert lookup(at(app, "192.0.2.99"), **typed(person(0))).status_code == 429


def test_a_person_429_says_the_whole_window_not_when_someone_else_last_failed(
    database_url: str, tmp_path: Path
) -> None:
    app = stolen_app(database_url, tmp_path, VERIFY_LIMIT_PERSON="1 per 15 minutes")
    assert lookup(at(app, "192.0.2.1"), **typed(person(0), last4="0000")).status_code == 200
    time.sleep(2)  # the seconds left in that window are now 898 at most
    refused = lookup(at(app, "192.0.2.2"), **typed(person(0)))
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "900")


# --- Tokens bound to where they were made ----------------------------------------------------------


def test_a_token_works_only_on_its_surface_and_with_its_key(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path)
    key, other = create_api_key(app), create_api_key(app)
    browser = at(app, "192.0.2.1")
    assert verified(lookup(browser, **typed(person(0))))
    with browser.session_transaction() as cookie:
        web_token = cookie["verification"]
    api = app.test_client()
    assert api_call(api, key, "/claims", {"claim_token": web_token}).status_code == 422
    api_token = api_call(api, key, "/verifications", typed(person(1))).get_json()["claim_token"]
    assert api_call(api, other, "/claims", {"claim_token": api_token}).status_code == 422
    # An API token put in a browser's session opens nothing on the site either.
    with browser.session_transaction() as cookie:
        cookie["verification"] = api_token
    assert browser.get("/exposure").headers["Location"] == "/lookup"
    assert api_call(api, key, "/claims", {"claim_token": api_token}).status_code == 201
    assert outcomes(app, "claim") == ["success"]


# --- The letter's reference before a claim ---------------------------------------------------------


def reference_of(app: Flask, n: int) -> str:
    with app.app_context():
        return format_reference(services().hasher.letter_reference(f"R-{n}"))


def test_with_step_up_always_a_claim_on_the_site_needs_the_letter(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, step_up="always")
    thief = at(app, "192.0.2.1")
    assert verified(lookup(thief, **typed(person(0))))
    page = thief.get("/exposure").get_data(as_text=True)
    assert "reference code printed on the letter" in page and PHONE in page
    assert thief.post("/claim", data={"csrf_token": csrf(thief, "/exposure")}).status_code == 400
    guess = {"csrf_token": csrf(thief, "/exposure"), "reference": reference_of(app, 1)}  # someone else's letter
    answer = thief.post("/claim", data=guess)
    assert answer.status_code == 400 and "not the reference code" in answer.get_data(as_text=True)
    assert reference_of(app, 1) not in answer.get_data(as_text=True)
    assert thief.get("/code").headers["Location"] == "/exposure"  # no code was given
    assert outcomes(app, "claim") == ["letter-mismatch"]

    owner = at(app, "192.0.2.2")
    assert verified(lookup(owner, **typed(person(0))))
    typed_reference = reference_of(app, 0).replace("-", " ").lower()
    answer = owner.post("/claim", data={"csrf_token": csrf(owner, "/exposure"), "reference": typed_reference})
    assert answer.headers["Location"] == "/code"
    assert "IDP-0000" in owner.get("/code").get_data(as_text=True)


def test_with_step_up_always_an_api_claim_needs_the_letter(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, step_up="always")
    key, client = create_api_key(app), app.test_client()
    token = api_call(client, key, "/verifications", typed(person(0))).get_json()["claim_token"]
    missing = api_call(client, key, "/claims", {"claim_token": token})
    assert missing.status_code == 403 and missing.get_json()["type"].endswith("#problem-letter-required")
    wrong = api_call(client, key, "/claims", {"claim_token": token, "reference": reference_of(app, 1)})
    assert wrong.status_code == 422 and wrong.get_json()["errors"][0]["field"] == "reference"
    right = api_call(client, key, "/claims", {"claim_token": token, "reference": reference_of(app, 0)})
    assert right.status_code == 201
    # Stepped up once, the same verification claims again without it (the same code).
    assert api_call(client, key, "/claims", {"claim_token": token}).get_json() == right.get_json()


def test_a_person_who_verified_with_their_letter_is_not_asked_again(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, step_up="always", count=0)
    assert import_patients(app, [{**person(40), "ssn": ""}]) == []
    with app.app_context():
        import_codes(db.session, services().cipher, numbered([{"code": "IDP-LETTER", "enroll_by": "2030-01-01"}]),
                     on_reject=lambda *_: None)  # fmt: skip
    browser = at(app, "192.0.2.1")
    letter = {**typed(person(40), last4=""), "reference": reference_of(app, 40)}
    assert verified(lookup(browser, **letter))
    assert "reference code printed on the letter" not in browser.get("/exposure").get_data(as_text=True)
    assert browser.post("/claim", data={"csrf_token": csrf(browser, "/exposure")}).headers["Location"] == "/code"


def test_with_step_up_off_nothing_more_is_asked(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, step_up="off")
    browser = at(app, "192.0.2.1")
    assert verified(lookup(browser, **typed(person(0))))
    assert "reference code printed on the letter" not in browser.get("/exposure").get_data(as_text=True)
    assert browser.post("/claim", data={"csrf_token": csrf(browser, "/exposure")}).headers["Location"] == "/code"


def test_a_person_without_a_stored_reference_cannot_step_up(database_url: str, tmp_path: Path) -> None:
    """Records imported before every letter carried a reference: the call center serves them."""
    app = stolen_app(database_url, tmp_path, step_up="always")
    with app.app_context():
        db.session.execute(update(Patient).values(reference_digest=None))
        db.session.commit()
    browser = at(app, "192.0.2.1")
    assert verified(lookup(browser, **typed(person(0))))
    answer = browser.post("/claim", data={"csrf_token": csrf(browser, "/exposure"), "reference": reference_of(app, 0)})
    assert answer.status_code == 400 and PHONE in answer.get_data(as_text=True)


def test_the_console_is_never_asked_for_the_letter(database_url: str, tmp_path: Path) -> None:
    """A human judges on the phone, and the audit trail records it."""
    app = stolen_app(database_url, tmp_path, step_up="always")
    agent = signed_in(app, make_staff(app))
    assert (
        post_form(agent, "/agent/call", "/agent/call", **typed(person(0))).headers["Location"] == "/agent/call/caller"
    )
    assert post_form(agent, "/agent/call/claim", "/agent/call/caller").status_code == 303
    assert "IDP-0000" in agent.get("/agent/call/caller").get_data(as_text=True)


def test_the_programme_file_refuses_an_unknown_step_up(tmp_path: Path) -> None:
    from portal.config import ConfigError
    from portal.programme import load_programme

    path = tmp_path / "programme.toml"
    path.write_text(PROGRAMME_TOML + 'claim_step_up = "sometimes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="claim_step_up"):
        load_programme(str(path))


def test_every_letter_carries_a_reference_and_a_reimport_stores_the_missing_ones(
    database_url: str, tmp_path: Path
) -> None:
    app = stolen_app(database_url, tmp_path, step_up="always", count=0)
    rows = [person(n) for n in range(3)] + [{**person(3), "ssn": ""}]
    path = tmp_path / "list.csv"
    with path.open("w", encoding="utf-8", newline="") as stream:
        stream.write(",".join(rows[0]) + "\n" + "".join(",".join(row.values()) + "\n" for row in rows))
    letters = tmp_path / "letters.csv"
    result = app.test_cli_runner().invoke(
        args=["import-patients", str(path), "--workers", "1", "--letters", str(letters)]
    )
    assert result.exit_code == 0, result.output
    written = dict(line.split(",") for line in letters.read_text().splitlines()[1:])
    assert written == {f"R-{n}": reference_of(app, n) for n in range(4)}
    with app.app_context():
        db.session.execute(update(Patient).values(reference_digest=None))
        db.session.commit()
    again = app.test_cli_runner().invoke(args=["import-patients", str(path), "--workers", "1"])
    assert "4 updated" in again.output
    with app.app_context():
        stored = set(db.session.scalars(select(Patient.reference_digest)))
        assert stored == {services().hasher.reference_digest(reference_of(app, n).replace("-", "")) for n in range(4)}


def test_on_alert_a_success_side_alert_makes_every_claim_ask_for_the_letter(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, step_up="on-alert", ALERT_CLIENT_PEOPLE="3 per hour")
    key, api = create_api_key(app), app.test_client()
    before = at(app, "192.0.2.1")
    assert verified(lookup(before, **typed(person(0))))
    assert "reference code printed on the letter" not in before.get("/exposure").get_data(as_text=True)
    assert before.post("/claim", data={"csrf_token": csrf(before, "/exposure")}).headers["Location"] == "/code"

    thief = at(app, "198.51.100.7")
    for n in (1, 2, 3):  # the third different person from one network raises client-people
        assert verified(lookup(thief, **typed(person(n))))
    refused = thief.post("/claim", data={"csrf_token": csrf(thief, "/exposure")})
    assert refused.status_code == 400, "the claim needs the letter now"
    elsewhere = at(app, "203.0.113.50")  # every network, every process: the step-up is site-wide
    assert verified(lookup(elsewhere, **typed(person(4))))
    assert "reference code printed on the letter" in elsewhere.get("/exposure").get_data(as_text=True)
    token = api_call(api, key, "/verifications", typed(person(5))).get_json()["claim_token"]
    assert api_call(api, key, "/claims", {"claim_token": token}).status_code == 403
    assert api_call(api, key, "/claims", {"claim_token": token, "reference": reference_of(app, 5)}).status_code == 201
    # A code claimed before is shown again only with the letter too: shown to a thief, it would be
    # enrolled before its owner could.
    assert before.get("/code").headers["Location"] == "/exposure"
    page = before.get("/exposure").get_data(as_text=True)
    assert "Show my activation code" in page and "reference code printed on the letter" in page
    shown = before.post("/claim", data={"csrf_token": csrf(before, "/exposure"), "reference": reference_of(app, 0)})
    assert shown.headers["Location"] == "/code" and "IDP-0000" in before.get("/code").get_data(as_text=True)
    repeat = api_call(api, key, "/verifications", typed(person(0))).get_json()["claim_token"]
    assert api_call(api, key, "/claims", {"claim_token": repeat}).status_code == 403
    assert outcomes(app, "claim") == ["success", "success", "repeat"]


def test_on_alert_a_step_up_that_cannot_be_read_asks_for_the_letter(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether an alert is active is unknown while its store is down: the claim asks, as during one."""
    app = stolen_app(database_url, tmp_path, step_up="on-alert")

    def store_down(*_args: Any) -> bool:
        raise RedisError("alert store lost")

    monkeypatch.setattr(app.extensions["portal.detector"], "step_up_active", store_down)
    browser = at(app, "192.0.2.1")
    assert verified(lookup(browser, **typed(person(0))))
    assert browser.post("/claim", data={"csrf_token": csrf(browser, "/exposure")}).status_code == 400
    answer = browser.post("/claim", data={"csrf_token": csrf(browser, "/exposure"), "reference": reference_of(app, 0)})
    assert answer.headers["Location"] == "/code"


def alert_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str | None, int]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.alerts"]
    return [(line["alert"], line["subject"], line["count"]) for line in lines]


def test_an_agent_account_verifying_many_callers_raises_an_alert_that_names_it(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Right answers are watched too: a stolen agent account reading out the stolen records, one
    caller after another, raises the agent alert under that account's name (the event's actor is
    the signed-in agent, which detection must see); another agent's callers are their own count."""
    app = stolen_app(database_url, tmp_path, ALERT_AGENT_PEOPLE="3 per year")
    alice, bob = make_staff(app), make_staff(app, "bob")
    agent, other = signed_in(app, alice), signed_in(app, bob)
    caplog.set_level(logging.INFO, logger="portal")
    for n in range(2):
        assert post_form(other, "/agent/call", "/agent/call", **typed(person(n))).status_code == 303
    for n in (0, 0, 1, 2):  # the first caller twice: one person
        assert post_form(agent, "/agent/call", "/agent/call", **typed(person(n))).status_code == 303
    assert alert_lines(caplog) == [("agent-people", f"staff:{alice.id}", 3)]


def test_claims_spread_over_many_networks_raise_the_site_wide_alert_against_the_usual_claims(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A thief claiming from a new network each time stays under every per-network count: the
    site-wide claim rate catches them, at ten times the claims the hourly counts remember (two in
    the week before: 2/7 a day, so the third claim of the day, not the floor's second)."""
    app = stolen_app(database_url, tmp_path, ALERT_CLAIM_FLOOR="2 per day")
    with app.app_context():
        this_hour = hour_of(utcnow())
        for hours in (1, 30):
            past = this_hour - timedelta(hours=hours)
            db.session.add(HourlyCount(hour=past, action="claim", outcome="success", channel="public", count=1))
        db.session.commit()
    caplog.set_level(logging.INFO, logger="portal")
    for n in range(3):
        browser = at(app, f"198.51.100.{n + 1}")
        assert verified(lookup(browser, **typed(person(n))))
        assert browser.post("/claim", data={"csrf_token": csrf(browser, "/exposure")}).status_code == 303
    assert alert_lines(caplog) == [("claim-rate", None, 3)]


def test_with_attack_detection_down_the_attempt_is_answered_recorded_and_the_gap_logged(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detection counts in the limit store: while it is down the person is answered and the event
    written as ever, and the operators read why no alert can come (the limits fall back to memory)."""
    app = stolen_app(database_url, tmp_path)

    def store_down(*_args: Any) -> list[Any]:
        raise RedisError("alert store lost")

    monkeypatch.setattr(app.extensions["portal.detector"], "observe", store_down)
    caplog.set_level(logging.INFO, logger="portal")
    assert verified(lookup(at(app, "192.0.2.1"), **typed(person(0))))
    assert outcomes(app, "verification") == ["success"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["attack detection unavailable: RedisError"]


def test_an_agent_verifies_no_more_people_than_the_attempt_budget_successes_included(
    database_url: str, tmp_path: Path
) -> None:
    app = stolen_app(database_url, tmp_path, AGENT_VERIFY_LIMIT_ATTEMPTS="3 per hour")
    agent, other = signed_in(app, make_staff(app)), signed_in(app, make_staff(app, "bob"))
    answers = [post_form(agent, "/agent/call", "/agent/call", **typed(person(n))).status_code for n in range(4)]
    assert answers == [303, 303, 303, 429]
    assert post_form(other, "/agent/call", "/agent/call", **typed(person(3))).status_code == 303


def test_console_failures_count_in_the_portal_wide_budget(database_url: str, tmp_path: Path) -> None:
    app = stolen_app(database_url, tmp_path, VERIFY_LIMIT_GLOBAL="2 per minute")
    agent = signed_in(app, make_staff(app))
    assert post_form(agent, "/agent/call", "/agent/call", **typed(person(0), last4="0000")).status_code == 200
    assert lookup(at(app, "192.0.2.1"), **typed(person(1), last4="0000")).status_code == 200
    assert lookup(at(app, "192.0.2.2"), **typed(person(2), last4="0000")).status_code == 429
    assert post_form(agent, "/agent/call", "/agent/call", **typed(person(3), last4="0000")).status_code == 429
