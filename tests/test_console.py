"""The console as staff meet it: its layout and error pages, the agent's words and dates, clear
messages, staff changes confirmed (and approved by a second supervisor for a supervisor's
account), password changes, usernames in the audit trail, the spreadsheet-safe export, lost
letters and the pool warning. The browser checks of the same pages are in test_browser_agent.py."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import re
import secrets
from datetime import date, timedelta
from pathlib import Path

import pytest
from agent_helpers import NEW_PASSWORD, login, make_staff, post_form, signed_in
from conftest import PROGRAMME_TOML, REDIS_URL, import_patients, make_app, make_config, patient_row
from flask import Flask
from flask.testing import FlaskClient
from live import CSRF_FIELD, LiveServer, Visitor
from sqlalchemy import select, update
from test_agent import audit_rows, verify_call
from test_stats import TODAY, known_history

from portal import schema, staff
from portal.agent.forms import spoken_date
from portal.app import create_app
from portal.config import ConfigError
from portal.events import Event, record
from portal.extensions import db
from portal.models import Staff, StaffApproval, utcnow
from portal.programme import load_programme
from portal.services import EXTENSION, services
from portal.staff import StaffError, apply_action, approve, list_staff, passwords, pending_approvals, request_approval
from portal.stats import PoolOutlook

PERSON = {"last_name": "García-López", "zip_code": "10001"}  # born 1980-04-23, SSN ending 6789


def with_programme(app: Flask, **changes: object) -> None:
    """The programme's facts changed for this app (its services are built once, at start)."""
    built = app.extensions[EXTENSION]
    app.extensions[EXTENSION] = dataclasses.replace(built, programme=dataclasses.replace(built.programme, **changes))


def text(response: object) -> str:
    """The page as a reader sees its words (entities such as &#39; decoded)."""
    return html.unescape(response.get_data(as_text=True))  # type: ignore[attr-defined]


# --- layout, titles, error pages -----------------------------------------------------------------


def title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, re.S)
    assert match
    return match.group(1).strip()


def test_the_console_has_its_own_top_bar_and_a_title_per_page(app: Flask) -> None:
    agent = signed_in(app, make_staff(app, "alice", "agent"))
    page = text(agent.get("/agent/call"))
    assert "Signed in as <strong>alice</strong> (agent)" in page
    nav = re.search(r'<nav class="staff-nav".*?</nav>', page, re.S)
    assert nav and re.findall(r">([^<>]+)</a>", nav.group(0)) == ["Serve a caller", "Lost letter"]
    assert 'href="/agent/call" aria-current="page"' in page
    assert "Español" not in page and "hreflang" not in page and "Patient data breach" not in page
    assert 'action="/agent/logout"' in page.split("</header>")[0]  # sign-out in the bar, not the footer

    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    titles = set()
    for path in ("/agent/", "/agent/call", "/agent/letter", "/agent/dashboard", "/agent/audit", "/agent/staff",
                 "/agent/pool", "/agent/password", "/agent/staff/enrolment"):  # fmt: skip
        page = text(supervisor.get(path))
        nav = re.search(r'<nav class="staff-nav".*?</nav>', page, re.S)
        assert nav and 'href="/agent/dashboard"' in nav.group(0), path  # the dashboard from every page
        titles.add(title(page))
    assert len(titles) == 9 and "Call-center console" not in titles


def test_staff_error_pages_speak_to_staff_and_lead_back_into_the_console(app: Flask) -> None:
    agent = signed_in(app, make_staff(app, "alice", "agent"))
    for path, status in (("/agent/dashboard", 403), ("/agent/staff/999/disable", 403)):
        answer = agent.get(path)
        page = text(answer)
        assert answer.status_code == status
        assert "This page is for supervisors" in page and 'href="/agent/"' in page
        assert "letter" not in page.lower().split("<main")[1] and "help line" not in page
    boss = signed_in(app, make_staff(app, "boss", "supervisor"))
    missing = boss.get("/agent/staff/999/disable")
    assert missing.status_code == 404 and "There is no console page at this address" in text(missing)


# --- the agent's words, dates and messages ------------------------------------------------------


@pytest.mark.parametrize(
    "typed, read",
    [
        ("06/12/1961", "1961-06-12"),
        ("6/12/61", "1961-06-12"),
        ("1961-06-12", "1961-06-12"),
        ("1961-6-2", "1961-06-02"),
        ("6-12-1961", "1961-06-12"),
        ("6.12.61", "1961-06-12"),
        ("6 12 1961", "1961-06-12"),
        ("1/2/05", "2005-01-02"),  # a two-digit year is the latest not after this year
        ("1/2/26", "2026-01-02"),
        ("1/2/27", "1927-01-02"),
        ("02/30/1961", "1961-02-30"),  # read; that the day does not exist is said after
        ("12/1961", None),
        ("June 12 1961", None),
        ("061261", None),
    ],
)
def test_dates_are_read_as_agents_type_them(typed: str, read: str | None) -> None:
    assert spoken_date(typed, date(2026, 12, 7)) == read


@pytest.mark.parametrize("born", ["04/23/1980", "4/23/80", "1980-04-23"])
def test_a_caller_is_verified_with_the_date_as_the_agent_types_it(app: Flask, born: str) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = signed_in(app, make_staff(app))
    answer = verify_call(client, **PERSON, date_of_birth=born, ssn_last4="6789")
    assert answer.headers.get("Location") == "/agent/call/caller", text(answer)


@pytest.mark.parametrize(
    "born, message",
    [
        ("02/30/1961", "That date does not exist: check the month and the day with the caller."),
        ("13/01/1961", "That date does not exist"),
        ("12-1961", "Type the date of birth as month/day/year (06/12/1961 or 6/12/61) or as 1961-06-12."),
        ("", "Enter the caller's date of birth, for example 06/12/1961."),
        ("12/31/2099", "That date of birth is in the future"),
    ],
)
def test_a_date_that_cannot_be_read_says_what_is_wrong(app: Flask, born: str, message: str) -> None:
    client = signed_in(app, make_staff(app))
    answer = verify_call(client, **PERSON, date_of_birth=born, ssn_last4="6789")
    assert answer.status_code == 400 and message in text(answer)


def test_the_call_form_speaks_to_the_agent(app: Flask) -> None:
    client = signed_in(app, make_staff(app))
    page = text(client.get("/agent/call"))
    for words in ("The caller's last name", "The caller's date of birth", "Last 4 digits of the caller's SSN",
                  'class="script"', "Ask: "):  # fmt: skip
        assert words in page, words
    spoken = re.sub(r'<p class="script">.*?</p>', "", page, flags=re.S)  # what the agent says to the caller
    assert "your Social Security" not in spoken and "your letter" not in spoken
    errors = text(verify_call(client, last_name="", date_of_birth="", zip_code="", ssn_last4="12"))
    assert "Enter the caller's last name" in errors and "the caller's SSN" in errors
    assert "your " not in errors.split("<main")[1].split('class="script"')[0]


def test_the_outcome_list_comes_after_a_verification_with_nothing_chosen(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = signed_in(app, make_staff(app))
    assert 'name="outcome"' not in text(client.get("/agent/call"))  # nobody verified yet
    not_matched = text(verify_call(client, **PERSON, date_of_birth="04/23/1980", ssn_last4="0000"))
    assert 'name="outcome"' in not_matched and "Say: " in not_matched
    verify_call(client, **PERSON, date_of_birth="04/23/1980", ssn_last4="6789")
    page = text(client.get("/agent/call/caller"))
    assert page.count('type="radio" ') == 5 and "checked" not in page
    unchosen = post_form(client, "/agent/call/end", "/agent/call/caller")
    assert unchosen.status_code == 400 and "Choose how the call ended" in text(unchosen)
    assert client.get("/agent/call/caller").status_code == 200  # the call goes on


def test_login_messages_are_specific_where_that_tells_nothing(app: Flask) -> None:
    account = make_staff(app)
    short = login(app.test_client(), account, code="12345")
    assert short.status_code == 400
    assert "The code has 6 digits" in text(short) and "is not right" not in text(short)
    code = account.code()
    assert login(app.test_client(), account, code=code).status_code == 303
    reused = text(login(app.test_client(), account, code=code))
    wrong_password = text(login(app.test_client(), account, password="not the password!!"))
    hint = "Each code works once: if you have just used this one, wait for the next"
    assert hint in reused and hint in wrong_password  # the same words whatever failed


# --- password change -----------------------------------------------------------------------------


def change(client: FlaskClient, current: str, new: str, confirm: str | None = None):  # type: ignore[no-untyped-def]
    fields = {"current": current, "password": new, "confirm": new if confirm is None else confirm}
    return post_form(client, "/agent/password", "/agent/password", **fields)


@pytest.mark.parametrize(
    "new, message",
    [
        ("short pass", "Use at least 12 characters"),
        ("aaaaaaaaaaaa", "too easy to guess"),
        ("password1234", "too easy to guess"),
        ("qwertyuiop123", "too easy to guess"),
        ("iloveyou2024", "too easy to guess"),
        ("alicealice2024", "too easy to guess"),  # the username, repeated
        ("x" * 129, "Use at most 128 characters"),
    ],
)
def test_a_weak_new_password_is_refused_with_a_reason(sqlite_app: Flask, new: str, message: str) -> None:
    account = make_staff(sqlite_app)
    answer = change(signed_in(sqlite_app, account), account.password, new)
    assert answer.status_code == 400 and message in text(answer), text(answer)


def test_a_strong_password_of_12_or_of_128_characters_is_taken() -> None:
    """The bounds are inclusive: 12 characters is enough, and 128 is not too many."""
    holder = Staff(username="alice", password_hash=passwords.hash(NEW_PASSWORD))
    for new in ("plum tractor", secrets.token_urlsafe(96)):  # the first of zxcvbn's score 3, the least taken
        staff.check_new_password(new, holder)  # no WeakPassword


@pytest.mark.parametrize("username, new", [("zbrzezinski", "zbrzezinski12"), ("alice", "supervisorpassword!")])
def test_a_password_made_of_the_username_or_the_portals_words_is_too_easy_to_guess(username: str, new: str) -> None:
    """Each would pass as an unknown word: the account's own name and the portal's words are guessed first."""
    holder = Staff(username=username, password_hash=passwords.hash(NEW_PASSWORD))
    with pytest.raises(staff.WeakPassword, match="too easy to guess"):
        staff.check_new_password(new, holder)


@pytest.mark.parametrize(
    "new, message",
    [
        (NEW_PASSWORD, "That is the password you have now (or were given). Choose a new one."),
        (
            "password1234",
            "That password is too easy to guess: it is common, on lists of breached passwords or follows a "
            "pattern (This is a very common password). A few unrelated words work well.",
        ),
        (
            "consoleagent",  # zxcvbn gives no warning of its own here
            "That password is too easy to guess: it is common, on lists of breached passwords or follows a "
            "pattern. A few unrelated words work well.",
        ),
    ],
)
def test_a_refused_password_is_told_in_whole_sentences(new: str, message: str) -> None:
    """zxcvbn's warning, when it has one, is put in brackets without its own full stop."""
    holder = Staff(username="alice", password_hash=passwords.hash(NEW_PASSWORD))
    with pytest.raises(staff.WeakPassword) as refused:
        staff.check_new_password(new, holder)
    assert str(refused.value) == message


def test_the_initial_password_and_a_wrong_current_one_are_refused(sqlite_app: Flask) -> None:
    account = make_staff(sqlite_app, ready=False)
    client = signed_in(sqlite_app, account)
    again = change(client, account.password, account.password)
    assert again.status_code == 400 and "That is the password you have now (or were given)" in text(again)
    wrong = change(client, "not my password", NEW_PASSWORD)
    assert wrong.status_code == 400 and "Your current password is not right." in text(wrong)
    differ = change(client, account.password, NEW_PASSWORD, confirm=NEW_PASSWORD + "!")
    assert differ.status_code == 400 and "The two new passwords differ." in text(differ)
    assert client.get("/agent/call").headers["Location"] == "/agent/password"  # still owed


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Flask:
    return make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}")


def test_a_changed_password_ends_every_other_session_and_says_so(app: Flask) -> None:
    account = make_staff(app)
    here, elsewhere = signed_in(app, account), signed_in(app, account, steps_ahead=1)
    copied = app.test_client()
    copied.set_cookie(app.config["SESSION_COOKIE_NAME"], here.get_cookie(app.config["SESSION_COOKIE_NAME"]).value)
    assert copied.get("/agent/").status_code == 200
    done = change(here, account.password, "plum tractor lantern quietly")
    assert done.status_code == 303 and done.headers["Location"] == "/agent/"
    assert "Your password is changed" in text(here.get("/agent/"))
    assert here.get("/agent/call").status_code == 200  # this session goes on
    assert elsewhere.get("/agent/").headers["Location"] == "/agent/login"
    assert copied.get("/agent/").headers["Location"] == "/agent/login"
    assert passwords.verify(staff_row(app, account.username).password_hash, "plum tractor lantern quietly")
    assert [r.outcome for r in audit_rows(app) if r.action == "staff-password"] == ["changed"]


def test_wrong_current_passwords_count_in_the_accounts_login_budget(database_url: str) -> None:
    app = make_app(database_url, STAFF_LOGIN_LIMIT_ACCOUNT="2 per hour")
    account = make_staff(app)
    client = signed_in(app, account)
    for _ in range(2):
        assert change(client, "not my password", NEW_PASSWORD).status_code == 400
    assert change(client, account.password, "plum tractor lantern quietly").status_code == 429


@pytest.mark.redis
def test_a_copied_session_cookie_is_refused_after_a_password_change_on_a_live_server(tmp_path: Path) -> None:
    """gunicorn with two workers on Redis: a session cookie copied before the change (another
    browser, a stolen cookie) is refused by every worker afterwards; the changing session goes on."""
    database = f"sqlite:///{tmp_path / 'portal.sqlite3'}"
    config = make_config(database, RATELIMIT_STORAGE_URI=REDIS_URL, RATELIMIT_KEY_PREFIX=secrets.token_hex(4))
    app = create_app(config)
    with app.app_context():
        schema.upgrade(db.engine)
    account = make_staff(app)
    with app.app_context():
        db.engine.dispose()
    server = LiveServer(tmp_path / "gunicorn.log", config, workers=2, threads=2).wait_ready()
    try:
        holder = Visitor(server)
        holder.token = token_on(holder, "/agent/login")
        fields = {"username": account.username, "password": account.password, "code": account.code()}
        assert holder.post("/agent/login", fields).status == 303
        thief = Visitor(server, cookies=dict(holder.cookies))
        assert all(thief.get("/agent/call").status == 200 for _ in range(6))  # both workers know it
        holder.token = token_on(holder, "/agent/password")
        new = {"current": account.password, "password": "plum tractor lantern quietly"}
        changed = holder.post("/agent/password", {**new, "confirm": new["password"]})
        assert changed.status == 303, changed.body[-2000:]
        for _ in range(6):  # every worker, whichever answers
            refused = thief.get("/agent/call")
            assert refused.status == 303 and refused.headers["Location"].endswith("/agent/login")
            assert holder.get("/agent/call").status == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def token_on(visitor: Visitor, path: str) -> str:
    match = CSRF_FIELD.search(visitor.get(path).body)
    assert match, path
    return match.group(1)


# --- staff changes: confirmed, approved, never one's own ----------------------------------------


def flashes(page: str) -> list[str]:
    """The one-time messages a page shows above its content, whole."""
    return re.findall(r'<p class="notice" role="status">(.*?)</p>', page)


def staff_row(app: Flask, username: str) -> Staff:
    with app.app_context():
        return db.session.scalars(select(Staff).where(Staff.username == username)).one()


def test_a_supervisors_account_changes_only_with_a_second_supervisors_approval(app: Flask) -> None:
    first, second, third = (make_staff(app, name, "supervisor") for name in ("boss1", "boss2", "boss3"))
    asking, target, approving = (signed_in(app, account) for account in (first, second, third))
    path = f"/agent/staff/{second.id}/disable"
    assert "a second supervisor approves" in text(asking.get(path))
    requested = post_form(asking, path, "/agent/")
    assert requested.status_code == 303 and requested.headers["Location"] == "/agent/staff"
    assert not staff_row(app, "boss2").disabled  # one supervisor alone changed nothing
    assert target.get("/agent/").status_code == 200

    with app.app_context():
        waiting = db.session.scalars(select(StaffApproval)).one()
    review = f"/agent/staff/approvals/{waiting.id}"
    assert "Another supervisor must approve it" in text(asking.get("/agent/staff"))
    assert asking.get(review).status_code == 403  # not the one who asked
    assert post_form(asking, review, "/agent/").status_code == 403
    assert post_form(target, review, "/agent/").status_code == 403  # nor the one it is about
    assert not staff_row(app, "boss2").disabled

    assert "1 change to a supervisor's account waits for your approval" in text(approving.get("/agent/"))
    listed = text(approving.get("/agent/staff"))  # the request, on the staff page of whoever may approve it
    assert "boss1 asked at" in listed and ": disable boss2 (supervisor)." in listed
    assert f'href="{review}">Review and approve' in listed
    assert "waits for your approval" not in text(asking.get("/agent/"))
    assert "boss1 asked on" in text(approving.get(review))
    done = post_form(approving, review, "/agent/")
    assert done.status_code == 303 and done.headers["Location"] == "/agent/staff"
    assert staff_row(app, "boss2").disabled
    assert target.get("/agent/").headers["Location"] == "/agent/login"  # their sessions ended
    again = post_form(approving, review, "/agent/")  # a reload or a second approver: nothing more
    assert (again.status_code, again.headers["Location"]) == (303, "/agent/staff")
    assert flashes(text(approving.get("/agent/staff"))) == ["That request was already approved or has lapsed."]
    rows = [(r.actor, r.action, r.outcome) for r in audit_rows(app) if "staff" in r.action and "login" not in r.action]
    assert rows == [
        (f"staff:{first.id}", "staff-approval-requested", f"disable:staff:{second.id}"),
        (f"staff:{third.id}", "staff-approval-given", f"disable:staff:{second.id}"),
        (f"staff:{third.id}", "disable-staff", f"staff:{second.id}"),
    ]


def test_an_approved_reset_shows_the_new_enrolment_to_the_approver_once(app: Flask) -> None:
    first, second, third = (make_staff(app, name, "supervisor") for name in ("boss1", "boss2", "boss3"))
    asking, approving = signed_in(app, first), signed_in(app, third)
    post_form(asking, f"/agent/staff/{second.id}/reset-mfa", "/agent/")
    with app.app_context():
        waiting = db.session.scalars(select(StaffApproval)).one()
    done = post_form(approving, f"/agent/staff/approvals/{waiting.id}", "/agent/")
    assert done.headers["Location"] == "/agent/staff/enrolment"
    assert "otpauth://totp/" in text(approving.get("/agent/staff/enrolment"))
    assert "otpauth://totp/" not in text(approving.get("/agent/staff/enrolment"))
    assert "is not right" in text(login(app.test_client(), second, steps_ahead=1))  # the old factors


def test_a_request_no_one_approved_within_a_day_lapses(app: Flask) -> None:
    first, second, third = (make_staff(app, name, "supervisor") for name in ("boss1", "boss2", "boss3"))
    post_form(signed_in(app, first), f"/agent/staff/{second.id}/disable", "/agent/")
    with app.app_context():
        db.session.execute(update(StaffApproval).values(requested_at=utcnow() - timedelta(hours=25)))
        db.session.commit()
        waiting = db.session.scalars(select(StaffApproval)).one()
    approving = signed_in(app, third)
    assert post_form(approving, f"/agent/staff/approvals/{waiting.id}", "/agent/").status_code == 303
    assert not staff_row(app, "boss2").disabled


def test_approval_itself_takes_a_second_supervisor_a_waiting_request_and_records_who(
    sqlite_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``staff.approve`` holds the rule on its own, whatever page or command calls it, and of two
    supervisors approving at the same moment only one does."""
    first, second, third = (make_staff(sqlite_app, name, "supervisor") for name in ("boss1", "boss2", "boss3"))
    agent = make_staff(sqlite_app, "alice", "agent")
    with sqlite_app.app_context():
        row = {account.username: db.session.get_one(Staff, account.id) for account in (first, second, third, agent)}
        waiting = request_approval(db.session, "disable", row["boss2"], row["boss1"])
        for who in ("boss1", "boss2", "alice"):  # its requester, its target, an agent
            with pytest.raises(StaffError) as refused:
                approve(db.session, waiting.id, row[who])
            assert str(refused.value) == (
                "A request must be approved by a second supervisor: not its requester or its target."
            ), who
        assert request_approval(db.session, "disable", row["boss2"], row["boss3"]).id == waiting.id  # still one
        other = request_approval(db.session, "reset-mfa", row["boss1"], row["boss2"])
        assert other.id != waiting.id
        with pytest.raises(StaffError) as unknown:
            request_approval(db.session, "delete", row["boss2"], row["boss1"])
        assert str(unknown.value) == "action must be one of disable, enable, reset-mfa"
        with pytest.raises(StaffError) as unknown:
            apply_action(db.session, services().totp, "delete", row["alice"])
        assert str(unknown.value) == "action must be one of disable, enable, reset-mfa"
        read_by_two = pending_approvals(db.session)  # what a second approver read at the same moment
        approved = approve(db.session, waiting.id, row["boss3"])
        assert (approved.approved_by, approved.approved_at is not None) == (third.id, True)
        assert [approval.id for approval in pending_approvals(db.session)] == [other.id]  # this one alone
        monkeypatch.setattr(staff, "pending_approvals", lambda session: read_by_two)
        with pytest.raises(StaffError) as late:  # its second tab (or a second approver) finds it approved on writing
            approve(db.session, waiting.id, row["boss3"])
        assert str(late.value) == "That request was already approved or has lapsed."
        monkeypatch.undo()
        assert db.session.get_one(StaffApproval, waiting.id).approved_by == third.id
        for gone in (waiting.id, other.id + 1):  # approved already; no such request
            with pytest.raises(StaffError) as refused:
                approve(db.session, gone, row["boss3"])
            assert str(refused.value) == "That request was already approved or has lapsed."


def test_staff_are_listed_by_username(sqlite_app: Flask) -> None:
    for name in ("zed", "amy", "kim"):
        make_staff(sqlite_app, name, ready=False)
    with sqlite_app.app_context():
        assert [staff.username for staff in list_staff(db.session)] == ["amy", "kim", "zed"]


def test_nobody_changes_their_own_account_in_the_console(app: Flask) -> None:
    boss = make_staff(app, "boss", "supervisor")
    client = signed_in(app, boss)
    own_row = re.search(r'<th scope="row">boss</th>.*?</tr>', text(client.get("/agent/staff")), re.S)
    assert own_row and "Disable" not in own_row.group(0) and "Reset" not in own_row.group(0)
    for action in ("disable", "reset-mfa"):
        assert client.get(f"/agent/staff/{boss.id}/{action}").status_code == 403
        assert post_form(client, f"/agent/staff/{boss.id}/{action}", "/agent/").status_code == 403
    assert not staff_row(app, "boss").disabled


def test_a_reload_of_a_confirmed_change_changes_nothing_more(app: Flask) -> None:
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    agent = make_staff(app, "alice", "agent")
    path = f"/agent/staff/{agent.id}/disable"
    first = post_form(supervisor, path, "/agent/")
    assert first.status_code == 303
    assert "alice is disabled" in text(supervisor.get("/agent/staff"))
    second = post_form(supervisor, path, "/agent/")  # the same post again (a stale tab)
    assert second.status_code == 303 and "alice is already disabled" in text(supervisor.get("/agent/staff"))
    assert [r.action for r in audit_rows(app)].count("disable-staff") == 1
    assert "Re-enable" in text(supervisor.get("/agent/staff"))


def test_enable_staff_on_the_command_line(app: Flask) -> None:
    account = make_staff(app, "alice", "agent")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["disable-staff", "alice"]).exit_code == 0
    assert "is not right" in text(login(app.test_client(), account))
    enabled = runner.invoke(args=["enable-staff", "alice"])
    assert enabled.exit_code == 0 and "alice enabled" in enabled.output
    assert signed_in(app, account, steps_ahead=1)
    assert runner.invoke(args=["enable-staff", "nobody"]).exit_code == 2
    assert [(r.action, r.channel) for r in audit_rows(app) if r.action == "enable-staff"] == [("enable-staff", "cli")]


# --- the audit trail: usernames, filters, the export --------------------------------------------


def test_the_audit_trail_names_staff_by_username_and_role(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    alice = make_staff(app, "alice", "agent")
    verify_call(signed_in(app, alice), **PERSON, date_of_birth="1980-04-23", ssn_last4="6789")
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    post_form(supervisor, f"/agent/staff/{alice.id}/disable", "/agent/")

    page = text(supervisor.get("/agent/audit"))
    assert "alice (agent)" in page and "boss (supervisor)" in page
    assert re.search(r"<td>staff:\d+</td>", page) is None  # never an id alone
    by_name = text(supervisor.get("/agent/audit?actor=alice"))
    assert by_name.count("alice (agent) <span") == 2 and "boss (supervisor) <span" not in by_name
    nobody = text(supervisor.get("/agent/audit?actor=nobody"))
    assert "No member of staff is called “nobody”" in nobody and "<tbody>" not in nobody
    empty = text(supervisor.get("/agent/audit?action=no-such-action"))
    assert "No events match these filters." in empty

    exported_csv = supervisor.get("/agent/audit/export.csv?actor=alice").get_data(as_text=True)
    export = list(csv.DictReader(io.StringIO(exported_csv)))
    assert {(row["actor"], row["actor_username"], row["actor_role"]) for row in export} == {
        (f"staff:{alice.id}", "alice", "agent")
    }
    assert len(export) == 2


def test_the_audit_trails_filters_take_days_from_2000_01_01_to_9999_12_30(app: Flask) -> None:
    """The first and last days it can hold are taken; a day either side is refused with the reason."""
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    for query, status in (
        ("since=2000-01-01", 200),
        ("since=1999-12-31", 400),
        ("until=9999-12-30", 200),
        ("until=9999-12-31", 400),
        ("since=2000-01-01&until=2000-01-01", 200),
    ):
        answer = supervisor.get(f"/agent/audit?{query}")
        assert answer.status_code == status, query
        assert ("Enter a date from 2000-01-01 on." in text(answer)) is (status == 400), query
    unreadable = supervisor.get("/agent/audit?since=2000-13-01")  # no date to check against the range
    assert unreadable.status_code == 400 and "Not a valid date value." in text(unreadable)


FORMULAS = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0", "\tcmd", "\rcmd"]


def test_every_exported_cell_is_safe_for_spreadsheets(app: Flask) -> None:
    """OWASP's rule: a cell starting with = + - @, a tab or a carriage return is made text."""
    with app.app_context():
        for value in FORMULAS:  # an actor and an outcome as they come (the client is kept as a network now)
            record(Event("staff-login", value, "agent", actor=value))
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    exported_csv = supervisor.get("/agent/audit/export.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(exported_csv, newline="")))
    cells = [cell for row in rows[1:] for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    header = rows[0]
    for column in ("actor", "outcome"):
        exported = {row[header.index(column)] for row in rows[1:]}
        assert {"'" + value for value in FORMULAS} <= exported, column


# --- lost letters ---------------------------------------------------------------------------------

NO_SSN = {"last_name": "Ødegård", "zip_code": "20002"}
NO_SSN_ROW = patient_row(record_id="R-LOST", last_name="Ødegård", date_of_birth="1961-07-19", zip="20002", ssn="")


def test_a_repeat_lost_letter_request_says_when_and_when_it_arrives(app: Flask) -> None:
    with_programme(app, letter_delivery_days=7, mailing_address="Privacy Office, P.O. Box 1, City, ST 00000")
    assert import_patients(app, [NO_SSN_ROW]) == []
    client = signed_in(app, make_staff(app))
    today = date.today()
    first = text(post_form(client, "/agent/letter", "/agent/letter", **NO_SSN, date_of_birth="7/19/61"))
    arrives = (today + timedelta(days=7)).strftime("%B %-d, %Y")
    assert "New letter requested" in first and f"within 7 days, by {arrives}" in first
    assert 'name="outcome"' in first
    again = text(post_form(client, "/agent/letter", "/agent/letter", **NO_SSN, date_of_birth="07/19/1961"))
    requested = today.strftime("%B %-d, %Y")
    assert f"Already requested on {requested}" in again and f"It should arrive by {arrives}" in again
    after = (today + timedelta(days=app.config["LETTER_REISSUE_DAYS"])).strftime("%B %-d, %Y")
    assert f"If it hasn't arrived by {after}, call us again" in again
    unknown = text(post_form(client, "/agent/letter", "/agent/letter", **NO_SSN, date_of_birth="07/20/1961"))
    assert "If the caller has a Social Security number, it may be on file" in unknown
    assert 'href="/agent/call">verify them with its last 4 digits' in unknown
    result = re.search(r'id="letter-result">.*?</div>', unknown, re.S)
    assert result and "write to Privacy Office, P.O. Box 1" in result.group(0) and "escalate" not in result.group(0)


def test_a_lost_letter_form_that_cannot_be_read_is_sent_back_with_its_reason(sqlite_app: Flask) -> None:
    client = signed_in(sqlite_app, make_staff(sqlite_app))
    answer = post_form(client, "/agent/letter", "/agent/letter", **NO_SSN, date_of_birth="19/07/1961")
    assert answer.status_code == 400 and "That date does not exist: check the month and the day" in text(answer)


def test_the_letter_delivery_time_is_a_checked_programme_setting(tmp_path: Path) -> None:
    for value, ok in (("5", True), ("0", False), ('"soon"', False), ("true", False)):
        path = tmp_path / "programme.toml"
        path.write_text(PROGRAMME_TOML + f"letter_delivery_days = {value}\n", encoding="utf-8")
        if ok:
            assert load_programme(str(path)).letter_delivery_days == int(value)
        else:
            with pytest.raises(ConfigError, match="letter_delivery_days"):
                load_programme(str(path))


# --- the pool warning -----------------------------------------------------------------------------


def test_the_pool_concerns_compare_the_run_out_day_with_the_enrol_by_date() -> None:
    enrol_by = date(2027, 6, 30)
    soon = PoolOutlook(available=50, claimed=10, claims_per_day=1.0, run_out=date(2027, 2, 18))
    late = PoolOutlook(available=50, claimed=10, claims_per_day=0.1, run_out=date(2036, 1, 1))
    idle = PoolOutlook(available=50, claimed=0, claims_per_day=0.0, run_out=None)
    assert soon.concerns(enrol_by, 10) == ["runs-out"]
    assert soon.concerns(enrol_by, 100) == ["runs-out", "below-threshold"]
    assert late.concerns(enrol_by, 100) == ["below-threshold"]
    assert late.concerns(enrol_by, 10) == [] and idle.concerns(enrol_by, 10) == []


def test_the_dashboard_and_pool_page_warn_only_when_codes_run_out_or_are_below_the_threshold(app: Flask) -> None:
    known_history(app)  # 23 codes left, one handed out a day: they run out 23 days from today
    client = signed_in(app, make_staff(app, "boss", "supervisor"))
    run_out = (TODAY + timedelta(days=23)).isoformat()
    cases = [  # (enrol-by, threshold) -> the warning's lines
        ((TODAY + timedelta(days=60), 5), ["pool-runs-out"]),
        ((TODAY + timedelta(days=10), 100), ["pool-below-threshold"]),
        ((TODAY + timedelta(days=10), 5), []),
    ]
    for (enrol_by, threshold), shown in cases:
        with_programme(app, enrol_by=enrol_by)
        app.config["POOL_LOW_THRESHOLD"] = threshold
        for path in ("/agent/dashboard", "/agent/pool"):
            page = text(client.get(path))
            assert re.findall(r'<li id="(pool-[a-z-]+)"', page) == shown, (path, enrol_by, threshold)
            assert ('id="pool-low"' in page) == bool(shown)
    with_programme(app, enrol_by=TODAY + timedelta(days=10))
    app.config["POOL_LOW_THRESHOLD"] = 100
    page = text(client.get("/agent/dashboard"))
    assert f"at the last week's pace they last until {run_out}, after the enrol-by date" in page
    assert "run out on" not in page
