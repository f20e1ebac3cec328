"""The call-center console and the supervisor dashboard in a real browser (see tests/browser.py).

Every console page a member of staff meets, in the console's own layout and signed in through the
real form (password and TOTP code): zero axe-core violations, nothing refused by the
Content-Security-Policy, no sideways scrolling, targets of at least 44 x 44 px and no word broken
inside a table, at 1280 px and at 320 px. A whole call, and a supervisor's confirmed change, are
done with the keyboard alone. Screenshots go to build/screenshots/ under ``agent-`` (a verified
caller: ``agent-1280-caller-code.png``; the dashboard: ``agent-1280-dashboard.png``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import NEW_PASSWORD, Account, make_staff
from browser import LiveServer, PageAudit
from conftest import import_patients, make_app, patient_row
from test_browser import press, tab_to, type_into
from test_console import with_programme
from test_stats import TODAY, known_history

from portal.extensions import db
from portal.importer import import_codes
from portal.services import services

pytestmark = pytest.mark.browser

WIDTHS = (1280, 320)
CALLER = {"last_name": "García-López", "ssn": "6789"}
# The three ways an agent types the caller's birth date (1980-04-23), each verified in the browser.
DATES_AS_TYPED = ("04/23/1980", "4/23/80", "1980-04-23")
CALLER_ZIP = {width: f"2{width:04}" for width in WIDTHS}  # one caller per width: each claims a code
LOST_ZIP = {width: f"4{width:04}" for width in WIDTHS}  # one caller per width without an SSN
KEYBOARD_CALLER_ZIP = "30000"  # and one for the call made with the keyboard alone
# A word split over two lines inside a table cell ("Succe / eded"): none may be.
_BROKEN_WORDS = """() => {
  const broken = [];
  for (const cell of document.querySelectorAll("main th, main td")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(match[0]);
      }
    }
  }
  return broken;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The portal with callers to serve (with an SSN, and without), a few codes, and a history for
    the dashboard."""
    folder = tmp_path_factory.mktemp("browser-agent")
    app = make_app(f"sqlite:///{folder / 'portal.sqlite3'}")
    known_history(app)  # its patients all hold a code: the callers are added after, without one
    fields = "name;date_of_birth;address;phone;ssn;email;medical_record_number;health_insurance;clinical_data"
    callers = [
        patient_row(record_id=f"CALLER-{zip_code}", zip=zip_code, exposed_fields=fields)
        for zip_code in [*CALLER_ZIP.values(), KEYBOARD_CALLER_ZIP]
    ]
    lost = [
        patient_row(record_id=f"LOST-{zip_code}", last_name="Ødegård", date_of_birth="1961-07-19", zip=zip_code, ssn="")
        for zip_code in LOST_ZIP.values()
    ]
    assert import_patients(app, callers + lost) == []
    with app.app_context():
        rows = [(2, {"code": f"AGENT-{n:04}", "enroll_by": "2099-12-31"}) for n in range(3)]
        assert import_codes(db.session, services().cipher, rows, on_reject=pytest.fail).added == 3
    with LiveServer(app) as live:
        yield live
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def open_page(browser: Any, audit: PageAudit) -> Iterator[Any]:
    """A new browser session (its own cookies) in a window ``width`` px wide."""
    contexts = []

    def open_(width: int) -> Any:
        phone = width < 600
        context = browser.new_context(
            viewport={"width": width, "height": 800 if phone else 900}, is_mobile=phone, has_touch=phone
        )
        context.set_default_timeout(20000)  # Argon2 staff passwords on two shared cores
        contexts.append(context)
        return audit.watch(context.new_page())

    yield open_
    for context in contexts:
        context.close()


def check(audit: PageAudit, page: Any, name: str | None = None) -> None:
    """The page audit, and no word broken inside a table cell."""
    audit.check(page, name)
    assert page.evaluate(_BROKEN_WORDS) == [], page.url


def submit(page: Any, button: str = "main form button[type=submit]") -> int:
    with page.expect_navigation() as navigation:
        page.click(button)
    return navigation.value.status


def sign_in(page: Any, server: LiveServer, account: Account, **override: str) -> int:
    page.goto(server.url + "/agent/login")
    page.fill("#username", account.username)
    page.fill("#password", override.get("password", account.password))
    page.fill("#code", override.get("code", account.code()))
    return submit(page)


def fill_caller(page: Any, zip_code: str, born: str = DATES_AS_TYPED[0]) -> int:
    page.fill("#last_name", CALLER["last_name"])
    page.fill("#date_of_birth", born)
    page.fill("#zip_code", zip_code)
    page.fill("#ssn_last4", CALLER["ssn"])
    return submit(page)


def nav_links(page: Any) -> list[str]:
    return page.locator(".staff-nav a").all_inner_texts()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_sign_in_pages_pass(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """Sign-in empty, refused and with a short code, then a first login's password change (a short
    and a common password refused) and its confirmation."""
    account = make_staff(server.app, f"new{width}", "agent", ready=False)
    page = open_page(width)
    page.goto(server.url + "/agent/login")
    assert page.title() == "Sign in · Call-center console" and nav_links(page) == []
    check(audit, page, f"agent-{width}-login")
    assert sign_in(page, server, account, password="not the password") == 200
    assert "Each code works once" in page.inner_text(".alert")
    check(audit, page, f"agent-{width}-login-refused")
    assert sign_in(page, server, account, code="12345") == 400
    assert "The code has 6 digits" in page.inner_text("main") and page.locator(".alert").count() == 0
    check(audit, page, f"agent-{width}-login-errors" if width == 320 else None)

    assert sign_in(page, server, account) == 200 and page.url == server.url + "/agent/password"
    check(audit, page, f"agent-{width}-password")
    for new, message in (("short", "Use at least 12 characters"), ("password1234", "too easy to guess")):
        page.fill("#current", account.password)
        page.fill("#password", new)
        page.fill("#confirm", new)
        assert submit(page) == 400 and message in page.inner_text(".error-summary")
    check(audit, page, f"agent-{width}-password-errors")
    page.fill("#current", account.password)
    page.fill("#password", NEW_PASSWORD)
    page.fill("#confirm", NEW_PASSWORD)
    assert submit(page) == 200 and page.url == server.url + "/agent/"
    assert "Your password is changed" in page.inner_text("main")
    assert nav_links(page) == ["Serve a caller", "Lost letter"]
    check(audit, page, f"agent-{width}-password-changed" if width == 1280 else None)


@pytest.mark.parametrize("width", WIDTHS)
def test_an_agents_pages_pass(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """Home; the serve-a-caller form (empty, with errors, not matched); the caller verified with the
    date typed each of three ways; the code read out and the outcome chosen; lost letters
    (empty, requested, requested again, not found); a supervisor's page refused."""
    page = open_page(width)
    assert sign_in(page, server, make_staff(server.app, f"agent{width}", "agent")) == 200
    assert page.url == server.url + "/agent/" and page.title() == "Home · Call-center console"
    check(audit, page, f"agent-{width}-home")
    page.click(".staff-nav a:text('Serve a caller')")
    assert page.url == server.url + "/agent/call" and page.locator("[name=outcome]").count() == 0
    check(audit, page, f"agent-{width}-call")
    assert submit(page) == 400
    check(audit, page, f"agent-{width}-call-errors")

    page.fill("#ssn_last4", "0000")
    page.fill("#last_name", "Nobody")
    page.fill("#date_of_birth", "01/01/1970")
    page.fill("#zip_code", "10001")
    assert submit(page) == 200 and "Not matched" in page.inner_text(".alert")
    assert page.locator("[name=outcome]").count() == 5  # something to record now
    check(audit, page, f"agent-{width}-call-not-matched" if width == 1280 else None)

    for n, born in enumerate(DATES_AS_TYPED):
        page.goto(server.url + "/agent/call")
        assert fill_caller(page, CALLER_ZIP[width], born) == 200, born
        assert page.url == server.url + "/agent/call/caller", born
        check(audit, page, f"agent-{width}-caller" if n == 0 else None)
    assert page.locator("[name=outcome]:checked").count() == 0  # nothing chosen for the agent
    assert submit(page, "form[action='/agent/call/claim'] button") == 200
    assert page.url == server.url + "/agent/call/caller" and "Read this code to the caller" in page.inner_text("main")
    check(audit, page, f"agent-{width}-caller-code")
    page.click("label[for=outcome-code-given]")
    assert submit(page, "form[action='/agent/call/end'] button[type=submit]") == 200
    assert page.url == server.url + "/agent/call" and "Call recorded" in page.inner_text("main")
    check(audit, page, f"agent-{width}-call-recorded" if width == 1280 else None)

    page.click(".staff-nav a:text('Lost letter')")
    check(audit, page, f"agent-{width}-letter" if width == 1280 else None)
    assert submit(page) == 400
    check(audit, page, f"agent-{width}-letter-errors" if width == 320 else None)
    for step, born in (("requested", "7/19/61"), ("repeated", "07/19/1961"), ("not-found", "07/20/1961")):
        page.fill("#last_name", "Odegard")
        page.fill("#date_of_birth", born)
        page.fill("#zip_code", LOST_ZIP[width])
        assert submit(page) == 200
        check(audit, page, f"agent-{width}-letter-{step}")
    assert "If the caller has a Social Security number" in page.inner_text("#letter-result")

    forbidden = page.goto(server.url + "/agent/dashboard")
    assert forbidden is not None and forbidden.status == 403
    assert "This page is for supervisors" in page.inner_text("main")
    check(audit, page, f"agent-{width}-error-403" if width == 320 else None)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_supervisors_pages_pass(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """The dashboard and the pool with the warning in each state, the audit trail (rows, no match,
    a bad filter) and the staff list."""
    boss = make_staff(server.app, f"boss{width}", "supervisor")
    page = open_page(width)
    assert sign_in(page, server, boss) == 200
    assert nav_links(page) == ["Serve a caller", "Lost letter", "Dashboard", "Audit trail", "Staff", "Pool"]
    app = server.app
    enrol_by, threshold = services_enrol_by(app), app.config["POOL_LOW_THRESHOLD"]
    try:
        for state, (days, low) in {
            "runs-out": (None, 5),  # the codes run out within weeks, long before the enrol-by date
            "below-threshold": (5, 10_000),  # fewer than the threshold, but they last past the enrol-by date
            "fine": (5, 5),
        }.items():
            with_programme(app, enrol_by=enrol_by if days is None else TODAY + timedelta(days=days))
            app.config["POOL_LOW_THRESHOLD"] = low
            for path, name in (("/agent/dashboard", "dashboard"), ("/agent/pool", "pool")):
                page.goto(server.url + path)
                shown = page.locator("#pool-low li").evaluate_all("items => items.map(i => i.id)")
                assert shown == ([] if state == "fine" else [f"pool-{state}"]), (path, state)
                check(audit, page, f"agent-{width}-{name}" + ("" if state == "runs-out" else f"-{state}"))
    finally:
        with_programme(app, enrol_by=enrol_by)
        app.config["POOL_LOW_THRESHOLD"] = threshold

    for path, name in [
        ("/agent/audit", "audit"),
        ("/agent/audit?actor=nobody", "audit-empty"),
        ("/agent/audit?since=not-a-date", "audit-errors"),
        ("/agent/staff", "staff"),
    ]:
        page.goto(server.url + path)
        check(audit, page, f"agent-{width}-{name}")
    assert "No member of staff is called" in page.goto(server.url + "/agent/audit?actor=nobody").text()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_supervisor_changes_staff_accounts(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """A new account; disable, re-enable and reset confirmed, the new enrolment shown once; a
    change to a supervisor's account requested, and approved by another supervisor."""
    app = server.app
    page = open_page(width)
    assert sign_in(page, server, make_staff(app, f"chief{width}", "supervisor")) == 200
    page.goto(server.url + "/agent/staff")
    page.fill("#username", f"enrolled{width}")
    assert submit(page, "form[action='/agent/staff'] button") == 200
    assert page.url == server.url + "/agent/staff/enrolment" and page.locator("svg").count() == 1
    check(audit, page, f"agent-{width}-staff-enrolled")
    page.reload()
    assert page.locator("svg").count() == 0  # shown once
    enrolled = f"enrolled{width}"
    for action, name in (("disable", "disable"), ("enable", "re-enable"), ("reset-mfa", "reset")):
        page.goto(server.url + "/agent/staff")
        link = page.locator(f"tr:has(th:text-is('{enrolled}')) a[href$='/{action}']")
        with page.expect_navigation():
            link.click()
        check(audit, page, f"agent-{width}-confirm-{name}")
        assert submit(page, "main form button[type=submit]") == 200
        check(audit, page, f"agent-{width}-{name}-done" if width == 1280 else None)
    assert page.url == server.url + "/agent/staff/enrolment" and "otpauth://" in page.inner_text("main")

    peer = make_staff(app, f"peer{width}", "supervisor")
    page.goto(server.url + f"/agent/staff/{peer.id}/disable")
    assert "a second supervisor approves" in page.inner_text("main")
    check(audit, page, f"agent-{width}-confirm-supervisor")
    assert submit(page, "main form button[type=submit]") == 200
    assert "Another supervisor must approve it" in page.inner_text("#approvals")
    check(audit, page, f"agent-{width}-approval-requested")
    second = open_page(width)
    assert sign_in(second, server, make_staff(app, f"second{width}", "supervisor")) == 200
    second.goto(server.url + "/agent/staff")
    with second.expect_navigation():
        second.click(f"#approvals li:has-text('peer{width}') a")
    check(audit, second, f"agent-{width}-approve")
    assert submit(second, "main form button[type=submit]") == 200
    assert f"peer{width} is disabled" in second.inner_text("main")


def services_enrol_by(app: Any) -> Any:
    with app.app_context():
        return services().programme.enrol_by


def test_an_agent_serves_a_caller_with_the_keyboard_alone(server: LiveServer, open_page: Any) -> None:
    """Sign in, start the call from the top bar, verify the caller, read the code, choose the outcome
    and sign out: Tab to reach each control, typing into the boxes, arrows in the outcome list,
    Enter on links and Space on buttons."""
    account = make_staff(server.app, "keyboard", "agent")
    page = open_page(1280)
    page.goto(server.url + "/agent/login")
    type_into(page, "username", account.username)
    type_into(page, "password", account.password)
    type_into(page, "code", account.code())
    tab_to(page, "main form button[type=submit]")
    press(page, "Space")
    assert page.url == server.url + "/agent/"

    tab_to(page, '.staff-nav a[href="/agent/call"]')
    press(page, "Enter")
    assert page.url == server.url + "/agent/call"
    type_into(page, "last_name", CALLER["last_name"])
    type_into(page, "date_of_birth", "4/23/80")
    type_into(page, "zip_code", KEYBOARD_CALLER_ZIP)
    type_into(page, "ssn_last4", CALLER["ssn"])
    tab_to(page, "form[action='/agent/call'] button[type=submit]")
    press(page, "Enter")
    assert page.url == server.url + "/agent/call/caller"

    tab_to(page, "form[action='/agent/call/claim'] button")
    press(page, "Space")
    assert "Read this code to the caller" in page.inner_text("main")

    tab_to(page, "#outcome-resolved")  # the first outcome; none chosen yet
    page.keyboard.press("Space")
    page.keyboard.press("ArrowDown")  # the second: the code was read to the caller
    assert page.locator("[name=outcome]:checked").get_attribute("value") == "code-given"
    tab_to(page, "form[action='/agent/call/end'] button[type=submit]")
    press(page, "Space")
    assert page.url == server.url + "/agent/call"
    assert "Call recorded" in page.inner_text("body")

    tab_to(page, "form[action='/agent/logout'] button")
    press(page, "Space")
    assert page.url == server.url + "/agent/login"


def test_a_supervisor_confirms_a_change_with_the_keyboard_alone(server: LiveServer, open_page: Any) -> None:
    """From the top bar to the staff list, Disable on an agent's row, the confirmation, and back."""
    boss = make_staff(server.app, "keyboss", "supervisor")
    agent = make_staff(server.app, "keyagent", "agent")
    page = open_page(1280)
    assert sign_in(page, server, boss) == 200
    tab_to(page, '.staff-nav a[href="/agent/staff"]')
    press(page, "Enter")
    tab_to(page, f'a[href="/agent/staff/{agent.id}/disable"]')
    press(page, "Enter")
    assert page.title() == "Disable keyagent? · Call-center console"
    tab_to(page, "main form button[type=submit]")
    press(page, "Space")
    assert page.url == server.url + "/agent/staff" and "keyagent is disabled" in page.inner_text("main")


def test_the_consoles_refusals_pass(tmp_path: Path, open_page: Any, audit: PageAudit) -> None:
    """The two refusals an agent can meet mid-call, on a console of their own: too many failed
    verifications of one caller (429), and a claim with the code pool empty (503)."""
    app = make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}", AGENT_VERIFY_LIMIT_PERSON="2 per hour")
    assert import_patients(app, [patient_row(zip=KEYBOARD_CALLER_ZIP)]) == []  # no code in the pool
    with LiveServer(app) as server:
        for width in WIDTHS:
            page = open_page(width)
            assert sign_in(page, server, make_staff(app, f"refused{width}", "agent")) == 200
            page.goto(server.url + "/agent/call")
            statuses = []
            for _ in range(3):  # the same caller with the wrong digits, until the budget refuses
                page.fill("#last_name", f"Stranger{width}")
                page.fill("#date_of_birth", DATES_AS_TYPED[0])
                page.fill("#zip_code", KEYBOARD_CALLER_ZIP)
                page.fill("#ssn_last4", "0000")
                statuses.append(submit(page))
                if statuses[-1] == 429:
                    break
                page.goto(server.url + "/agent/call")
            assert statuses == [200, 200, 429]
            assert nav_links(page) == ["Serve a caller", "Lost letter"]
            check(audit, page, f"agent-{width}-call-throttled")

            page.goto(server.url + "/agent/call")
            assert fill_caller(page, KEYBOARD_CALLER_ZIP) == 200 and page.url == server.url + "/agent/call/caller"
            assert submit(page, "form[action='/agent/call/claim'] button") == 503
            check(audit, page, f"agent-{width}-pool-empty")
    with app.app_context():
        db.engine.dispose()
