"""The call-center console: default deny, logins with two factors, sessions, roles, serving a caller."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
import secrets
import stat
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyotp
import pytest
from agent_helpers import NEW_PASSWORD, Account, login, make_staff, post_form, signed_in
from argon2 import PasswordHasher
from conftest import REDIS_URL, csrf_token, hkdf_sha256, import_patients, lookup, make_app, patient_row
from flask import Flask
from limits.storage import MemoryStorage
from sqlalchemy import func, select, update
from test_public import _check_headers

from portal import throttle
from portal.agent import auth as console_auth
from portal.agent.auth import LOGIN_AT, OPEN_ENDPOINTS, SEEN_AT
from portal.config import ConfigError
from portal.extensions import db
from portal.identity import Keyring, format_reference
from portal.importer import import_codes
from portal.models import AuditEvent, LetterRecord, Patient, Staff, Verification, utcnow
from portal.services import services
from portal.staff import StaffError, authenticate, create_staff, normalise_username, passwords

PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
FAILED = "The username, password or code is not right"
STORAGES = [pytest.param("memory://", id="memory"), pytest.param(REDIS_URL, id="redis", marks=pytest.mark.redis)]


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Flask:
    """For the rules of one login or session, which no database changes: SQLite alone."""
    return make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}")


def agent_rules(app: Flask) -> list[Any]:
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("agent.")]


def audit_rows(app: Flask) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.lane, AuditEvent.position)))


def concrete(rule: Any) -> str:
    """A path the rule matches: 1 for each of its arguments (every console argument is an id)."""
    return str(rule.map.bind("localhost").build(rule.endpoint, dict.fromkeys(rule.arguments, 1)))


# --- default deny --------------------------------------------------------------------------------


def test_every_console_route_but_login_needs_a_signed_in_staff_member(app: Flask) -> None:
    rules = agent_rules(app)
    assert len(rules) >= 6
    client = app.test_client()
    token = csrf_token(client, "/agent/login")
    for rule in rules:
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(concrete(rule), method=method, data={"csrf_token": token})
            assert response.status_code == 303, (rule.rule, method)
            assert response.headers["Location"] == "/agent/login", (rule.rule, method)


# What an agent may open, written out rather than read from the views' decorators: a supervisor's
# page given the agent's decorator by mistake would drop out of a list made from the decorators,
# but not out of this one. Every other console page is a supervisor's, a new one included, until
# it is added here.
AGENT_PAGES = frozenset(
    {
        "agent.login",
        "agent.logout",
        "agent.change_password",
        "agent.home",
        "agent.call",
        "agent.caller",
        "agent.claim_for_caller",
        "agent.report_code_misuse",
        "agent.end_call",
        "agent.lost_letter",
    }
)


def test_an_agent_gets_403_on_every_console_page_but_the_agents_own(app: Flask) -> None:
    rules = agent_rules(app)
    assert AGENT_PAGES <= {rule.endpoint for rule in rules}, "a page listed for agents no longer exists"
    supervisor_only = [rule for rule in rules if rule.endpoint not in AGENT_PAGES]
    assert {"agent.audit_page", "agent.audit_export", "agent.staff_page", "agent.dashboard"} <= {
        rule.endpoint for rule in supervisor_only
    }
    agent = signed_in(app, make_staff(app, "agent1", "agent"))
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    token = csrf_token(agent, "/agent/")
    for rule in supervisor_only:
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            answer = agent.open(concrete(rule), method=method, data={"csrf_token": token})
            answer.close()  # a streamed page left open would keep its request context (the CSV export)
            assert answer.status_code == 403, (rule.rule, method)
        if "GET" in rule.methods and not rule.arguments:
            assert supervisor.get(concrete(rule)).status_code == 200, rule.rule


# --- login ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrong", [{"username": "nobody"}, {"password": "not the password!"}, {"code": "000000"}, {"code": "12345x"}]
)
def test_each_wrong_factor_gets_the_same_generic_refusal(app: Flask, wrong: dict[str, str]) -> None:
    account = make_staff(app)
    client = app.test_client()
    response = login(client, account, **wrong)
    assert response.status_code in (200, 400)
    assert FAILED in response.get_data(as_text=True)
    assert client.get("/agent/").status_code == 303
    assert signed_in(app, account)  # the right factors still work afterwards


def test_a_disabled_account_cannot_sign_in_and_its_sessions_end(app: Flask) -> None:
    account = make_staff(app)
    client = signed_in(app, account)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["disable-staff", account.username]).exit_code == 0
    assert client.get("/agent/").headers["Location"] == "/agent/login"
    assert FAILED in login(app.test_client(), account, steps_ahead=1).get_data(as_text=True)


@pytest.mark.parametrize("change", ["disabled", "removed"])
def test_an_account_disabled_or_removed_in_the_database_has_no_session_left(app: Flask, change: str) -> None:
    """Whatever wrote the row (an operator's SQL, a restore), a disabled or missing account's
    cookie loads no one, even with its session version unchanged."""
    account = make_staff(app)
    client = signed_in(app, account)
    with app.app_context():
        staff = db.session.get(Staff, account.id)
        if change == "disabled":
            staff.disabled = True
        else:
            db.session.delete(staff)
        db.session.commit()
    assert client.get("/agent/").headers["Location"] == "/agent/login"


@pytest.mark.parametrize("user_id", ["{id}", "{id}:", "{id}:x", ":1", "x:1"])
def test_a_session_naming_its_account_without_a_session_version_loads_no_one(sqlite_app: Flask, user_id: str) -> None:
    """Such as a cookie signed before sessions carried their version: signed in, it loads no one."""
    account = make_staff(sqlite_app)
    client = signed_in(sqlite_app, account)
    with client.session_transaction() as session:
        session["_user_id"] = user_id.format(id=account.id)
    response = client.get("/agent/")
    assert (response.status_code, response.headers["Location"]) == (303, "/agent/login")


def test_a_totp_code_is_accepted_once_only(app: Flask) -> None:
    account = make_staff(app)
    code = account.code()
    assert login(app.test_client(), account, code=code).status_code == 303
    replay = login(app.test_client(), account, code=code)
    assert FAILED in replay.get_data(as_text=True)
    earlier = login(app.test_client(), account, steps_ahead=-1)  # an older step than the one used
    assert FAILED in earlier.get_data(as_text=True)


def test_simultaneous_logins_with_one_code_let_exactly_one_in(app: Flask) -> None:
    """Eight clients send the same password and code at the same moment: the code is spent once."""
    account = make_staff(app)
    code = account.code()
    clients = [app.test_client() for _ in range(8)]
    tokens = [csrf_token(client, "/agent/login") for client in clients]
    start = threading.Barrier(len(clients))

    def send(index: int) -> int:
        start.wait()
        data = {"username": account.username, "password": account.password, "code": code, "csrf_token": tokens[index]}
        return clients[index].post("/agent/login", data=data).status_code

    with ThreadPoolExecutor(len(clients)) as pool:
        statuses = list(pool.map(send, range(len(clients))))
    # Attempts are counted before the work, so some may meet the account's limit (429) instead.
    assert statuses.count(303) == 1 and set(statuses) - {303} <= {200, 429}, statuses


def test_failed_logins_are_throttled_per_account(database_url: str) -> None:
    app = make_app(database_url, STAFF_LOGIN_LIMIT_ACCOUNT="3 per hour")
    account = make_staff(app)
    for _ in range(3):
        assert FAILED in login(app.test_client(), account, password="wrong password!!").get_data(as_text=True)
    refused = login(app.test_client(), account)  # even the right factors
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


def test_failed_logins_are_throttled_per_address(database_url: str) -> None:
    app = make_app(database_url, STAFF_LOGIN_LIMIT_CLIENT="2 per hour")
    account = make_staff(app)
    for name in ("x1", "x2"):
        assert FAILED in login(app.test_client(), account, username=name).get_data(as_text=True)
    assert login(app.test_client(), account).status_code == 429


def test_first_login_must_choose_a_new_password(app: Flask) -> None:
    account = make_staff(app, ready=False)
    client = signed_in(app, account)
    held = client.get("/agent/call")
    assert (held.status_code, held.headers["Location"]) == (303, "/agent/password")
    given = account.password
    short = post_form(client, "/agent/password", "/agent/password", current=given, password="short", confirm="short")
    assert short.status_code == 400
    done = post_form(
        client, "/agent/password", "/agent/password", current=given, password=NEW_PASSWORD, confirm=NEW_PASSWORD
    )
    assert done.status_code == 303
    assert client.get("/agent/call").status_code == 200
    assert signed_in(app, Account(account.username, NEW_PASSWORD, account.secret, account.id), steps_ahead=1)


def test_a_code_one_step_either_side_of_the_clock_is_accepted_and_no_further_one(sqlite_app: Flask) -> None:
    """RFC 6238 with one step of drift (README): a code five steps old is five 30-second windows
    more for whoever read it over a shoulder."""
    account = make_staff(sqlite_app)
    totp = pyotp.TOTP(account.secret)
    now = time.time()

    def accepted(steps: int) -> bool:
        code = totp.at(now + 30 * steps)
        with sqlite_app.app_context():
            return authenticate(db.session, services().totp, account.username, NEW_PASSWORD, code, now) is not None

    assert [accepted(steps) for steps in (-5, -2, 2)] == [False] * 3
    assert [accepted(steps) for steps in (-1, 1)] == [True] * 2  # the second a later step than the first


def test_a_code_is_judged_at_the_time_given_not_the_clocks(sqlite_app: Flask) -> None:
    """``now`` is the login's time (the tests' frozen clock): an hour back, the hour-old code holds
    and the current one does not."""
    account = make_staff(sqlite_app)
    totp, then = pyotp.TOTP(account.secret), time.time() - 3600
    with sqlite_app.app_context():
        for code, accepted in ((totp.now(), False), (totp.at(then), True)):
            staff = authenticate(db.session, services().totp, account.username, NEW_PASSWORD, code, then)
            assert (staff is not None) is accepted


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "１２３４５６", "12345²"])
def test_a_code_of_digits_from_other_scripts_is_a_failed_login_not_an_error(sqlite_app: Flask, code: str) -> None:
    """Python calls these digits; the constant-time comparison takes ASCII only."""
    account = make_staff(sqlite_app)
    with sqlite_app.app_context():
        assert authenticate(db.session, services().totp, account.username, NEW_PASSWORD, code) is None


def test_a_password_is_rehashed_at_login_when_its_parameters_rise_and_only_then(sqlite_app: Flask) -> None:
    current, weaker = make_staff(sqlite_app, "current"), make_staff(sqlite_app, "weaker")
    with sqlite_app.app_context():
        old = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(NEW_PASSWORD)
        db.session.execute(update(Staff).where(Staff.id == weaker.id).values(password_hash=old))
        db.session.commit()
        kept = db.session.get_one(Staff, current.id).password_hash
    signed_in(sqlite_app, current)
    signed_in(sqlite_app, weaker)
    with sqlite_app.app_context():
        assert db.session.get_one(Staff, current.id).password_hash == kept  # no new hash on every login
        rehashed = db.session.get_one(Staff, weaker.id).password_hash
    assert rehashed != old and not passwords.check_needs_rehash(rehashed)
    assert passwords.verify(rehashed, NEW_PASSWORD)
    signed_in(sqlite_app, weaker, steps_ahead=1)  # and the new hash lets its owner in


@pytest.mark.parametrize("storage", STORAGES)
def test_the_login_budget_never_writes_what_was_typed_as_the_username(tmp_path: Path, storage: str) -> None:
    """It may be a password typed into the wrong box (SECURITY.md): its budget is keyed on a keyed hash."""
    prefix = secrets.token_hex(4)
    app = make_app(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}", RATELIMIT_STORAGE_URI=storage, RATELIMIT_KEY_PREFIX=prefix
    )
    account = make_staff(app)
    typed = "Tr0ub4dor-and-3"
    assert FAILED in login(app.test_client(), account, username=typed).get_data(as_text=True)
    keys = limit_store_keys(app, prefix)
    assert any("staff-login-account" in key for key in keys), keys  # the failure was counted
    assert not [key for key in keys if typed.lower() in key.lower()], keys


def limit_store_keys(app: Flask, prefix: str) -> list[str]:
    """Every counter's name in the app's limit store (memory:// or Redis)."""
    with app.app_context():
        store = throttle.limit_store()
    if isinstance(store, MemoryStorage):
        return list(store.storage)
    return [key.decode() for key in store.get_connection().scan_iter(f"*{prefix}*")]


# --- sessions ------------------------------------------------------------------------------------


def session_cookie(client: Any, app: Flask) -> str:
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    return cookie.value if cookie else ""


def test_login_sets_one_cookie_the_session_which_expires_with_its_lifetime(app: Flask) -> None:
    """No long-lived "remember me" cookie, and no session cookie that outlives its lifetime in the
    browser of a shared desk."""
    answer = login(app.test_client(), make_staff(app))
    cookies = answer.headers.getlist("Set-Cookie")
    assert [cookie.split("=", 1)[0] for cookie in cookies] == [app.config["SESSION_COOKIE_NAME"]]
    expires = [parsedate_to_datetime(part[8:]) for part in cookies[0].split("; ") if part.startswith("Expires=")]
    assert len(expires) == 1
    assert 0 < (expires[0] - datetime.now(UTC)).total_seconds() <= app.config["PERMANENT_SESSION_LIFETIME"]


def test_login_rotates_the_session_and_logout_revokes_it(app: Flask) -> None:
    account = make_staff(app)
    client = app.test_client()
    with client.session_transaction() as before:
        before["planted"] = "by an attacker"
    planted = session_cookie(client, app)
    assert login(client, account).status_code == 303
    with client.session_transaction() as after:
        assert "planted" not in after
    signed = session_cookie(client, app)
    assert signed != planted

    post_form(client, "/agent/logout", "/agent/")
    assert client.get("/agent/").headers["Location"] == "/agent/login"
    replay = app.test_client()
    replay.set_cookie(app.config["SESSION_COOKIE_NAME"], signed)
    assert replay.get("/agent/").headers["Location"] == "/agent/login"


@pytest.mark.parametrize(
    "stamp, seconds", [(SEEN_AT, 15 * 60 + 5), (LOGIN_AT, 10 * 3600 + 5)], ids=["idle", "absolute"]
)
def test_sessions_time_out(app: Flask, stamp: str, seconds: int) -> None:
    client = signed_in(app, make_staff(app))
    assert client.get("/agent/").status_code == 200
    with client.session_transaction() as session:
        session[stamp] = int(time.time()) - seconds
    assert client.get("/agent/").headers["Location"] == "/agent/login"
    with client.session_transaction() as session:
        assert "_user_id" not in session


@pytest.mark.parametrize("stamp", [SEEN_AT, LOGIN_AT], ids=["idle", "absolute"])
def test_a_session_without_its_time_stamp_has_timed_out(sqlite_app: Flask, stamp: str) -> None:
    """A signed-in session that lacks a stamp cannot show it is recent: it ends, as an old one does."""
    client = signed_in(sqlite_app, make_staff(sqlite_app))
    with client.session_transaction() as session:
        del session[stamp]
    assert client.get("/agent/").headers["Location"] == "/agent/login"
    with client.session_transaction() as session:
        assert "_user_id" not in session


@pytest.mark.parametrize(
    "stamp, limit", [(SEEN_AT, "STAFF_IDLE_TIMEOUT_SECONDS"), (LOGIN_AT, "STAFF_SESSION_MAX_SECONDS")],
    ids=["idle", "absolute"],
)  # fmt: skip
def test_a_session_stamp_exactly_at_its_limit_still_holds_and_a_second_more_ends_it(
    sqlite_app: Flask, monkeypatch: pytest.MonkeyPatch, stamp: str, limit: str
) -> None:
    now = int(time.time())
    monkeypatch.setattr(console_auth, "time", SimpleNamespace(time=lambda: now))
    client = signed_in(sqlite_app, make_staff(sqlite_app))
    for age, answer in ((sqlite_app.config[limit], (200, None)), (sqlite_app.config[limit] + 1, (303, "/agent/login"))):
        with client.session_transaction() as session:
            session[stamp] = now - age
        response = client.get("/agent/")
        assert (response.status_code, response.headers.get("Location")) == answer, age


def test_activity_keeps_a_session_alive_until_the_absolute_limit(app: Flask) -> None:
    client = signed_in(app, make_staff(app))
    with client.session_transaction() as session:
        session[SEEN_AT] = int(time.time()) - 14 * 60
        session[LOGIN_AT] = int(time.time()) - 9 * 3600
    assert client.get("/agent/").status_code == 200


def test_activity_moves_the_idle_stamp(sqlite_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle means since the last request, not since the login: a clerk busy for an hour stays in."""
    clock = [time.time()]
    monkeypatch.setattr(console_auth, "time", SimpleNamespace(time=lambda: clock[0]))
    client = signed_in(sqlite_app, make_staff(sqlite_app))
    for _ in range(4):  # an hour, a request every 14 minutes
        clock[0] += 14 * 60
        assert client.get("/agent/").status_code == 200
    clock[0] += 15 * 60 + 5
    assert client.get("/agent/").headers["Location"] == "/agent/login"


# --- switch-off and networks ---------------------------------------------------------------------


def test_the_console_can_be_switched_off(database_url: str) -> None:
    app = make_app(database_url, AGENT_VIEW=False)
    client = app.test_client()
    for path in ("/agent/login", "/agent/", "/agent/call", "/agent/anything"):
        assert client.get(path).status_code == 404
    assert not agent_rules(app)


def test_the_console_answers_only_allowed_networks(database_url: str) -> None:
    closed = make_app(database_url, AGENT_NETWORKS=["10.0.0.0/8", "2001:db8::/32"])
    assert closed.test_client().get("/agent/login").status_code == 404
    assert closed.test_client().get("/agent/login", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    for unknown in ("", "unix:/run/portal.sock"):  # no address (a Unix socket): inside no allowed network
        assert closed.test_client().get("/agent/login", environ_base={"REMOTE_ADDR": unknown}).status_code == 404
    open_ = make_app(database_url, AGENT_NETWORKS=["127.0.0.0/8"])
    assert open_.test_client().get("/agent/login").status_code == 200
    # A network written with its host bits set, as the configuration accepts it, means its network.
    loose = make_app(database_url, AGENT_NETWORKS=["10.1.2.3/8"])
    assert loose.test_client().get("/agent/login", environ_base={"REMOTE_ADDR": "10.200.0.1"}).status_code == 200
    assert loose.test_client().get("/agent/login", environ_base={"REMOTE_ADDR": "11.0.0.1"}).status_code == 404


@pytest.mark.parametrize("networks", ["10.0.0.0/8", ["10.0.0.0/33"], ["example.org"]])
def test_a_malformed_network_list_is_refused_at_start(database_url: str, networks: Any) -> None:
    with pytest.raises(ConfigError, match="PORTAL_AGENT_NETWORKS"):
        make_app(database_url, AGENT_NETWORKS=networks)


# --- serving a caller ----------------------------------------------------------------------------


def add_codes(app: Flask, count: int = 2) -> None:
    rows = [
        {"code": f"AGT-{i:04d}", "enroll_by": (date.today() + timedelta(days=30)).isoformat()} for i in range(count)
    ]
    with app.app_context():
        import_codes(db.session, services().cipher, enumerate(rows, start=2), on_reject=pytest.fail)


def verify_call(client: Any, **fields: str):  # type: ignore[no-untyped-def]
    data = {"last_name": "", "date_of_birth": "", "zip_code": "", "ssn_last4": "", "reference": "", **fields}
    return post_form(client, "/agent/call", "/agent/call", **data)


def test_a_full_call_leaves_the_expected_audit_rows(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    add_codes(app)
    account = make_staff(app)
    client = signed_in(app, account)
    assert verify_call(client, **PERSON, ssn_last4="0000").status_code == 200
    assert verify_call(client, **PERSON, ssn_last4="6789").headers["Location"] == "/agent/call/caller"
    page = client.get("/agent/call/caller").get_data(as_text=True)
    assert "Social Security number" in page
    assert post_form(client, "/agent/call/claim", "/agent/").status_code == 303
    page = client.get("/agent/call/caller").get_data(as_text=True)
    assert "AGT-000" in page
    assert post_form(client, "/agent/call/end", "/agent/", outcome="code-given").status_code == 303
    assert client.get("/agent/call/caller").headers["Location"] == "/agent/call"  # the call is over

    with app.app_context():
        ref = db.session.scalars(select(Patient.public_id)).one()
    rows = [(r.actor, r.action, r.outcome, r.record_ref) for r in audit_rows(app) if r.channel == "agent"]
    actor = f"staff:{account.id}"
    assert rows == [
        (actor, "staff-login", "success", None),
        (actor, "verification", "failure", None),
        (actor, "verification", "success", ref),
        (actor, "exposure", "viewed", ref),
        (actor, "claim", "success", ref),
        (actor, "exposure", "viewed", ref),
        (actor, "code", "re-read", ref),
        (actor, "call-outcome", "code-given", ref),
    ]
    assert all(r.request_id and r.client == "127.0.0.0/24" for r in audit_rows(app))


def test_verifying_the_next_caller_ends_the_previous_callers_verification(app: Flask) -> None:
    """An agent who starts on the next caller without ending the call cannot reopen the last
    caller's page, even when the new caller fails to verify."""
    assert import_patients(app, [patient_row()]) == []
    client = signed_in(app, make_staff(app))
    assert verify_call(client, **PERSON, ssn_last4="6789").headers["Location"] == "/agent/call/caller"
    assert client.get("/agent/call/caller").status_code == 200
    assert verify_call(client, **PERSON, ssn_last4="0000").status_code == 200  # the next caller, not matched
    assert client.get("/agent/call/caller").headers["Location"] == "/agent/call"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Verification)) == 0  # ended, not only forgotten


def test_an_outcome_outside_the_fixed_list_is_refused(app: Flask) -> None:
    client = signed_in(app, make_staff(app))
    assert post_form(client, "/agent/call/end", "/agent/call", outcome="he said his SSN is").status_code == 400


def test_a_person_locked_out_of_the_website_is_still_served_by_an_agent(database_url: str) -> None:
    app = make_app(database_url, VERIFY_LIMIT_PERSON="2 per day")
    assert import_patients(app, [patient_row()]) == []
    for _ in range(2):
        lookup(app.test_client(), **PERSON, ssn_last4="0000")
    assert lookup(app.test_client(), **PERSON, ssn_last4="6789").status_code == 429
    client = signed_in(app, make_staff(app))
    assert verify_call(client, **PERSON, ssn_last4="6789").headers["Location"] == "/agent/call/caller"


def test_console_verifications_have_their_own_budgets(database_url: str) -> None:
    app = make_app(database_url, AGENT_VERIFY_LIMIT_PERSON="2 per day", AGENT_VERIFY_LIMIT_FAILURES="3 per day")
    assert import_patients(app, [patient_row()]) == []
    client = signed_in(app, make_staff(app))
    for _ in range(2):
        assert verify_call(client, **PERSON, ssn_last4="0000").status_code == 200
    assert verify_call(client, **PERSON, ssn_last4="6789").status_code == 429  # this person, in the console
    assert verify_call(client, **{**PERSON, "last_name": "Other"}, ssn_last4="0000").status_code == 200
    other = {**PERSON, "last_name": "Someone"}
    assert verify_call(client, **other, ssn_last4="0000").status_code == 429  # this agent's failures
    assert lookup(app.test_client(), **PERSON, ssn_last4="6789").status_code == 303  # the website is unaffected
    assert [outcome for _, outcome in refusals(app)] == ["throttled:verify-person-agent", "throttled:agent-failures"]
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    assert "alice (agent)</a>: 2 refused" in supervisor.get("/agent/dashboard").get_data(as_text=True)


def refusals(app: Flask) -> list[tuple[str, str]]:
    """Who the trail says a limit refused, and which limit: supervisors read one from the other."""
    return [(r.actor, r.outcome) for r in audit_rows(app) if r.outcome.startswith("throttled")]


def test_each_staff_login_refusal_names_its_limit_and_an_accounts_budget_is_its_own(database_url: str) -> None:
    """The account's budget counts the name however its case is typed; another account's is apart."""
    app = make_app(database_url, STAFF_LOGIN_LIMIT_ACCOUNT="2 per hour", STAFF_LOGIN_LIMIT_CLIENT="4 per hour")
    alice, bob = make_staff(app), make_staff(app, "bob")
    for typed in ("Alice", "ALICE"):
        wrong = login(app.test_client(), alice, username=typed, password="wrong password!!")
        assert FAILED in wrong.get_data(as_text=True)
    assert login(app.test_client(), alice).status_code == 429  # even the right factors
    assert signed_in(app, bob)
    for name in ("x1", "x2"):  # the address's third and fourth failures
        assert FAILED in login(app.test_client(), bob, username=name).get_data(as_text=True)
    assert login(app.test_client(), bob, steps_ahead=1).status_code == 429
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.7"  # another address's budget is its own
    assert login(elsewhere, bob, steps_ahead=1).status_code == 303
    assert [outcome for _, outcome in refusals(app)] == [
        "throttled:staff-login-account",
        "throttled:staff-login-client",
    ]


def test_an_agents_verification_budgets_are_the_agents_own_and_each_refusal_names_its_limit(
    database_url: str,
) -> None:
    """Failures count in the agent's failure budget, successes too in their attempt budget; one
    agent spending theirs leaves another's whole."""
    app = make_app(database_url, AGENT_VERIFY_LIMIT_FAILURES="2 per day", AGENT_VERIFY_LIMIT_ATTEMPTS="3 per day")
    assert import_patients(app, [patient_row()]) == []
    alice, bob = make_staff(app), make_staff(app, "bob")
    alice_client, bob_client = signed_in(app, alice), signed_in(app, bob)
    for name in ("One", "Two"):
        assert verify_call(alice_client, **{**PERSON, "last_name": name}, ssn_last4="0000").status_code == 200
    assert verify_call(alice_client, **{**PERSON, "last_name": "Three"}, ssn_last4="0000").status_code == 429
    for _ in range(3):
        assert verify_call(bob_client, **PERSON, ssn_last4="6789").status_code == 303
    assert verify_call(bob_client, **PERSON, ssn_last4="6789").status_code == 429
    assert refusals(app) == [
        (f"staff:{alice.id}", "throttled:agent-failures"),
        (f"staff:{bob.id}", "throttled:agent-attempts"),
    ]


# --- pages ---------------------------------------------------------------------------------------


def test_console_pages_pass_the_public_pages_header_checks(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    add_codes(app)
    anonymous = app.test_client()
    _check_headers("/agent/login", anonymous.get("/agent/login"))
    _check_headers("/agent/login failed", login(anonymous, make_staff(app, "x"), password="nope nope nope"))
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    _check_headers("/agent/", supervisor.get("/agent/"))
    _check_headers("/agent/call", supervisor.get("/agent/call"))
    verify_call(supervisor, **PERSON, ssn_last4="6789")
    _check_headers("/agent/call/caller", supervisor.get("/agent/call/caller"))
    for rule in agent_rules(app):
        if "GET" in rule.methods and not rule.arguments and rule.endpoint not in OPEN_ENDPOINTS:
            response = supervisor.get(concrete(rule))
            _check_headers(rule.rule, response)
            assert response.headers["Cache-Control"] == "no-store"
    cookie = supervisor.get_cookie(app.config["SESSION_COOKIE_NAME"])
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


# --- supervisors ---------------------------------------------------------------------------------


def test_supervisors_create_disable_reenable_and_reset_staff(app: Flask) -> None:
    """Each change is confirmed on a page of its own, then posted and answered with a redirect; the
    new password and QR code are shown on a page of their own, once."""
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    created = post_form(supervisor, "/agent/staff", "/agent/", username="Newbie", role="agent")
    assert created.status_code == 303 and created.headers["Location"] == "/agent/staff/enrolment"
    page = supervisor.get("/agent/staff/enrolment").get_data(as_text=True)
    assert "Password:" in page and "otpauth://totp/" in page and "<svg" in page
    assert "otpauth://" not in supervisor.get("/agent/staff/enrolment").get_data(as_text=True)  # shown once
    assert post_form(supervisor, "/agent/staff", "/agent/", username="newbie", role="agent").status_code == 400
    with app.app_context():
        newbie = db.session.scalars(select(Staff).where(Staff.username == "newbie")).one()

    for action, then in (
        ("reset-mfa", "/agent/staff/enrolment"),
        ("disable", "/agent/staff"),
        ("enable", "/agent/staff"),
    ):
        path = f"/agent/staff/{newbie.id}/{action}"
        confirm = supervisor.get(path)
        assert confirm.status_code == 200 and f'action="{path}"' in confirm.get_data(as_text=True)
        done = post_form(supervisor, path, "/agent/")
        assert done.status_code == 303 and done.headers["Location"] == then, action
        if action == "reset-mfa":
            assert "otpauth://totp/" in supervisor.get(then).get_data(as_text=True)
    assert "Disable<span" in supervisor.get("/agent/staff").get_data(as_text=True)  # active again
    actions = [
        (r.action, r.outcome) for r in audit_rows(app) if r.action.endswith("-staff") or r.action.endswith("mfa")
    ]
    target = f"staff:{newbie.id}"
    assert actions == [
        ("create-staff", target),
        ("reset-staff-mfa", target),
        ("disable-staff", target),
        ("enable-staff", target),
    ]


def test_the_audit_trail_filters_and_exports_and_the_export_is_recorded(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    agent = make_staff(app, "agent1")
    client = signed_in(app, agent)
    verify_call(client, **PERSON, ssn_last4="6789")
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    with app.app_context():
        ref = db.session.scalars(select(Patient.public_id)).one()
    page = supervisor.get(f"/agent/audit?record_ref={ref}").get_data(as_text=True)
    assert page.count(ref) == 3  # the row, the filter field and the export link
    assert "staff-login" not in page
    export = supervisor.get(f"/agent/audit/export.csv?actor=staff:{agent.id}&since={date.today().isoformat()}")
    lines = list(csv.reader(io.StringIO(export.get_data(as_text=True))))
    assert export.mimetype == "text/csv" and lines[0][:7] == [
        "lane",
        "position",
        "at",
        "actor",
        "actor_username",
        "actor_role",
        "action",
    ]
    assert [line[6] for line in lines[1:]] == ["verification", "staff-login"]
    assert supervisor.get("/agent/audit?since=yesterday").status_code == 400
    assert supervisor.get("/agent/audit?until=9999-12-31").status_code == 400  # its day's end is no date
    assert [r.action for r in audit_rows(app)][-2:] == ["audit-trail", "audit-export"]


def test_the_audit_trails_days_are_whole_and_inclusive_and_other_actors_show_as_they_are(app: Flask) -> None:
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    now = utcnow()
    with app.app_context():
        db.session.execute(update(AuditEvent).values(at=now - timedelta(days=3)))  # the supervisor's login
        db.session.commit()
    assert lookup(app.test_client(), **PERSON, ssn_last4="0000").status_code == 200  # nobody signed in
    with app.app_context():
        db.session.execute(update(AuditEvent).where(AuditEvent.at > now - timedelta(days=1)).values(
            at=now - timedelta(days=2)))  # fmt: skip
        db.session.commit()
    day = {n: (now - timedelta(days=n)).date().isoformat() for n in (0, 2, 3)}

    def exported(query: str) -> list[list[str]]:
        return list(csv.reader(io.StringIO(supervisor.get(f"/agent/audit/export.csv?{query}").get_data(True))))[1:]

    assert {row[2][:10] for row in exported(f"until={day[3]}")} == {day[3]}
    assert {row[2][:10] for row in exported(f"since={day[2]}&until={day[2]}")} == {day[2]}
    assert {row[2][:10] for row in exported(f"since={day[0]}")} == {day[0]}  # the exports themselves
    anonymous = exported(f"since={day[2]}&until={day[2]}")
    assert [row[3:7] for row in anonymous] == [["anonymous", "", "", "verification"]]
    page = supervisor.get(f"/agent/audit?since={day[2]}&until={day[2]}").get_data(as_text=True)
    assert "anonymous" in page


# --- lost letters --------------------------------------------------------------------------------

NO_SSN = {"last_name": "Ødegård", "date_of_birth": "1961-07-19", "zip_code": "20002"}
NO_SSN_ROW = {"last_name": "Ødegård", "date_of_birth": "1961-07-19", "zip": "20002"}


def test_a_lost_letter_is_reissued_and_exported_once(app: Flask, tmp_path: Any) -> None:
    rows = [
        patient_row(record_id="R-LOST", last_name="Ødegård", date_of_birth="1961-07-19", zip="20002", ssn=""),
        patient_row(record_id="R-TWIN-1", last_name="Twin", date_of_birth="1970-01-01", zip="30003", ssn=""),
        patient_row(record_id="R-TWIN-2", last_name="Twin", date_of_birth="1970-01-01", zip="30003-1234", ssn=""),
        patient_row(record_id="R-SSN", last_name="Hasssn", date_of_birth="1970-01-01", zip="30003"),
    ]
    assert import_patients(app, rows) == []
    client = signed_in(app, make_staff(app))
    found = post_form(
        client, "/agent/letter", "/agent/", last_name="odegard", date_of_birth="1961-07-19", zip_code="20002"
    )
    assert "A new letter will be mailed" in found.get_data(as_text=True)
    for person in (
        {"last_name": "Twin", "date_of_birth": "1970-01-01", "zip_code": "30003"},  # two records: nobody
        {"last_name": "Hasssn", "date_of_birth": "1970-01-01", "zip_code": "30003"},  # has an SSN: not kept
        {**NO_SSN, "zip_code": "20003"},
    ):
        page = post_form(client, "/agent/letter", "/agent/", **person).get_data(as_text=True)
        assert "do not identify exactly one record" in page, person

    out = tmp_path / "reissue.csv"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["letters", "reissue", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with app.app_context():
        reference = format_reference(services().hasher.letter_reference("R-LOST"))
    assert out.read_text().splitlines() == ["record_id,reference", f"R-LOST,{reference}"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # record ids beside the references that unlock them
    assert runner.invoke(args=["letters", "reissue", "--out", str(out)]).exit_code == 0
    assert out.read_text().splitlines() == ["record_id,reference"]  # each request is exported once

    with app.app_context(), db.engine.connect() as connection:
        stored = b"".join(
            bytes(v) for row in connection.execute(select(LetterRecord.__table__)) for v in row if isinstance(v, bytes)
        )
    assert b"R-LOST" not in stored
    outcomes = [r.outcome for r in audit_rows(app) if r.action == "letter-reissue"]
    assert outcomes == ["requested", "not-identified", "not-identified", "not-identified"]
    assert [r.outcome for r in audit_rows(app) if r.action == "letters-reissue"] == ["exported:1", "exported:0"]


def test_lost_letter_lookups_count_against_the_agent_found_or_not(database_url: str) -> None:
    """Each answer tells whether someone without an SSN is on the list: successes count too."""
    app = make_app(database_url, AGENT_LOCATE_LIMIT="3 per day")
    import_patients(app, [patient_row(record_id="R-LOST", ssn="", **NO_SSN_ROW)])
    client = signed_in(app, make_staff(app))
    for _ in range(2):
        assert post_form(client, "/agent/letter", "/agent/", **NO_SSN).status_code == 200
    assert post_form(client, "/agent/letter", "/agent/", **{**NO_SSN, "zip_code": "99999"}).status_code == 200
    assert post_form(client, "/agent/letter", "/agent/", **NO_SSN).status_code == 429
    with app.app_context():
        public_id = db.session.scalar(select(Patient.public_id))
    rows = [(r.outcome, r.record_ref) for r in audit_rows(app) if r.action == "letter-reissue"]
    assert rows == [("requested", public_id), ("already-requested", public_id), ("not-identified", None)]
    assert [r.outcome for r in audit_rows(app) if r.action == "verification"] == ["throttled:agent-locates"]


def test_a_letter_record_is_found_by_the_documented_hmac_so_records_already_stored_are_still_found(
    app: Flask,
) -> None:
    """SECURITY.md, *Lost letters*: HMAC-SHA256 under the identifier key's HKDF subkey
    `letter-locate` of the normalised last name, birth date and ZIP, joined by U+001F. Written out
    here (as tests/test_sealing.py writes out the sealed record id), so that it cannot drift: a
    record stored before an upgrade must still be found after it."""
    assert import_patients(app, [patient_row(record_id="R-LOST", ssn="", **NO_SSN_ROW)]) == []
    with app.app_context():
        master = Keyring.from_config(app.config, "IDENTIFIER_KEY").keys[1]
        stored = db.session.scalar(select(LetterRecord.locate_digest))
    message = "\x1f".join(("odegard", "1961-07-19", "20002")).encode()
    assert stored == hmac.new(hkdf_sha256(master, b"portal/letter-locate"), message, hashlib.sha256).digest()


def test_lost_letter_lookups_count_in_the_persons_console_budget_and_in_the_agents_own(database_url: str) -> None:
    """A lookup that identifies no one is a failure for that name and birth date, in the budget a
    console verification of them uses, whichever agent asks; the look-ups themselves are the agent's."""
    app = make_app(database_url, AGENT_VERIFY_LIMIT_PERSON="2 per day", AGENT_LOCATE_LIMIT="3 per day")
    import_patients(app, [patient_row(record_id="R-LOST", ssn="", **NO_SSN_ROW)])
    alice, bob = make_staff(app), make_staff(app, "bob")
    alice_client, bob_client = signed_in(app, alice), signed_in(app, bob)
    for _ in range(2):
        assert post_form(alice_client, "/agent/letter", "/agent/", **{**NO_SSN, "zip_code": "99999"}).status_code == 200
    assert post_form(bob_client, "/agent/letter", "/agent/", **NO_SSN).status_code == 429
    assert verify_call(bob_client, **NO_SSN, ssn_last4="0000").status_code == 429
    born_later = {**NO_SSN, "date_of_birth": "1961-07-20"}  # someone else of that name
    assert post_form(alice_client, "/agent/letter", "/agent/", **born_later).status_code == 200
    assert post_form(alice_client, "/agent/letter", "/agent/", **{**NO_SSN, "last_name": "Other"}).status_code == 429
    assert post_form(bob_client, "/agent/letter", "/agent/", **{**NO_SSN, "last_name": "Other"}).status_code == 200
    assert refusals(app) == [
        (f"staff:{bob.id}", "throttled:verify-person-agent"),
        (f"staff:{bob.id}", "throttled:verify-person-agent"),
        (f"staff:{alice.id}", "throttled:agent-locates"),
    ]


def test_a_letter_requested_recently_is_not_flagged_again(database_url: str) -> None:
    app = make_app(database_url, LETTER_REISSUE_DAYS=14)
    client = signed_in(app, make_staff(app))
    import_patients(app, [patient_row(record_id="R-LOST", ssn="", **NO_SSN_ROW)])
    first = post_form(client, "/agent/letter", "/agent/", **NO_SSN)
    assert "will be mailed" in first.get_data(as_text=True)
    with app.app_context():
        requested = db.session.scalar(select(LetterRecord.reissue_requested_at))
    again = post_form(client, "/agent/letter", "/agent/", **NO_SSN)
    assert "Already requested on" in again.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(LetterRecord.reissue_requested_at)) == requested
        # Past the window, a new request is flagged again.
        old = requested - timedelta(days=15)
        db.session.execute(update(LetterRecord).values(reissue_requested_at=old, exported_at=utcnow()))
        db.session.commit()
    assert "will be mailed" in post_form(client, "/agent/letter", "/agent/", **NO_SSN).get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(LetterRecord.reissue_requested_at)) > requested
        assert db.session.scalar(select(LetterRecord.exported_at)) is None


# --- staff commands ------------------------------------------------------------------------------


def test_an_enrolment_names_the_account_and_the_console_in_the_authenticator(app: Flask) -> None:
    """The authenticator app lists the code under the console's name and the username (what the
    agent picks among their accounts); an unknown role or a taken username is refused by name."""
    with app.app_context():
        enrolment = create_staff(db.session, services().totp, " Erin ", "agent")
        uri = urllib.parse.urlsplit(enrolment.otpauth_uri)
        assert (uri.scheme, uri.netloc, urllib.parse.unquote(uri.path)) == (
            "otpauth",
            "totp",
            "/Patient portal console:erin",
        )
        assert urllib.parse.parse_qs(uri.query)["issuer"] == ["Patient portal console"]
        assert enrolment.staff.must_change_password and enrolment.staff.role == "agent"
        with pytest.raises(StaffError, match=r"^role must be one of agent, supervisor$"):
            create_staff(db.session, services().totp, "frank", "admin")
        with pytest.raises(StaffError, match=r"^that username is taken$"):
            create_staff(db.session, services().totp, "ERIN", "supervisor")
        assert db.session.scalar(select(func.count(Staff.id)).where(Staff.username.in_(["erin", "frank"]))) == 1


def test_staff_commands_enrol_list_reset_and_disable(app: Flask) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["create-staff", "Carol", "--role", "supervisor"])
    assert created.exit_code == 0, created.output
    assert re.search(r"^password: \S{12,}$", created.output, re.MULTILINE)
    assert re.search(r"^otpauth URI: otpauth://totp/.*secret=[A-Z2-7]+", created.output, re.MULTILINE)
    assert "█" in created.output or "▀" in created.output  # the QR code, drawn in the terminal
    assert runner.invoke(args=["create-staff", "carol", "--role", "agent"]).exit_code == 2  # taken
    assert runner.invoke(args=["create-staff", "dave", "--role", "admin"]).exit_code == 2
    account = Account("carol", created.output.split("password: ")[1].split()[0], "", 1)
    account.secret = re.search(r"secret=([A-Z2-7]+)", created.output).group(1)  # type: ignore[union-attr]
    client = signed_in(app, account)
    assert client.get("/agent/").headers["Location"] == "/agent/password"  # a new password first

    reset = runner.invoke(args=["reset-staff-mfa", "carol"])
    assert reset.exit_code == 0 and "otpauth://" in reset.output
    assert client.get("/agent/").headers["Location"] == "/agent/login"  # sessions ended
    assert FAILED in login(app.test_client(), account, steps_ahead=1).get_data(as_text=True)  # old secret
    given = re.search(r"^password: (\S+)$.*secret=([A-Z2-7]+)", reset.output, re.MULTILINE | re.DOTALL)
    assert given
    password, secret = given.groups()
    again = signed_in(app, Account("carol", password, secret, 1))
    assert again.get("/agent/").headers["Location"] == "/agent/password"  # the reset password is changed first

    assert "carol" in runner.invoke(args=["list-staff"]).output
    assert runner.invoke(args=["disable-staff", "carol"]).exit_code == 0
    assert "disabled" in runner.invoke(args=["list-staff"]).output
    nobody = runner.invoke(args=["disable-staff", "nobody"])
    assert nobody.exit_code == 2 and "Error: no such staff member" in nobody.output
    rows = [(r.actor.split(":")[0], r.action, r.outcome, r.channel) for r in audit_rows(app) if r.channel == "cli"]
    assert rows == [
        ("cli", "create-staff", "staff:1", "cli"),
        ("cli", "reset-staff-mfa", "staff:1", "cli"),
        ("cli", "disable-staff", "staff:1", "cli"),
    ]


@pytest.mark.parametrize("typed", ["", "bad name", "-alice", "a" * 65, "ålice"])
def test_an_unusable_username_is_refused_with_what_a_username_is(typed: str) -> None:
    with pytest.raises(StaffError) as refused:
        normalise_username(typed)
    assert str(refused.value) == "a username is 1 to 64 lower-case letters, digits, dots, dashes or underscores"
    assert normalise_username(" Alice.B_2-x ") == "alice.b_2-x"


def test_a_code_of_other_characters_is_a_failed_login_not_an_error(app: Flask) -> None:
    account = make_staff(app)
    answer = login(app.test_client(), account, code="é23456")
    assert answer.status_code == 200 and "is not right" in answer.get_data(as_text=True)


def test_the_console_stays_hidden_behind_a_language_switch(app: Flask) -> None:
    """Outside the console's networks every /agent/ path is a 404, ?lang= or not."""
    app.config["AGENT_NETWORKS"] = ["10.9.0.0/16"]
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.5"
    for path in ("/agent/login", "/agent/login?lang=es", "/agent/audit?lang=fr"):
        assert client.get(path).status_code == 404, path
