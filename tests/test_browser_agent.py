"""The call-center console and the supervisor dashboard in a real browser (see tests/browser.py).

Every console page a member of staff meets, signed in through the real form (password and TOTP
code): zero axe-core violations, nothing refused by the Content-Security-Policy, no sideways
scrolling and targets of at least 44 x 44 px, at 1280 px and at 320 px. A whole call, from the
sign-in to the sign-out, is done with the keyboard alone. Screenshots go to build/screenshots/
under ``agent-``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import NEW_PASSWORD, Account, make_staff
from browser import LiveServer, PageAudit
from conftest import import_patients, make_app, patient_row
from test_browser import press, tab_to, type_into
from test_stats import known_history

from portal.extensions import db
from portal.importer import import_codes
from portal.services import services

pytestmark = pytest.mark.browser

WIDTHS = (1280, 320)
CALLER = {"last_name": "García-López", "born": "1980-04-23", "ssn": "6789"}
CALLER_ZIP = {width: f"2{width:04}" for width in WIDTHS}  # one caller per width: each claims a code
KEYBOARD_CALLER_ZIP = "30000"  # and one for the call made with the keyboard alone


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The portal with one caller to serve, a few codes, and a history for the dashboard."""
    folder = tmp_path_factory.mktemp("browser-agent")
    app = make_app(f"sqlite:///{folder / 'portal.sqlite3'}")
    known_history(app)  # its patients all hold a code: the caller is added after, without one
    fields = "name;date_of_birth;address;phone;ssn;email;medical_record_number;health_insurance;clinical_data"
    callers = [
        patient_row(record_id=f"CALLER-{zip_code}", zip=zip_code, exposed_fields=fields)
        for zip_code in [*CALLER_ZIP.values(), KEYBOARD_CALLER_ZIP]
    ]
    assert import_patients(app, callers) == []
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
        context.set_default_timeout(5000)
        contexts.append(context)
        return audit.watch(context.new_page())

    yield open_
    for context in contexts:
        context.close()


def submit(page: Any, button: str = "main form button[type=submit]") -> int:
    with page.expect_navigation() as navigation:
        page.click(button)
    return navigation.value.status


def sign_in(page: Any, server: LiveServer, account: Account, **override: str) -> int:
    page.goto(server.url + "/agent/login")
    page.fill("#username", account.username)
    page.fill("#password", override.get("password", account.password))
    page.fill("#code", account.code())
    return submit(page)


def fill_caller(page: Any, zip_code: str) -> int:
    page.fill("#last_name", CALLER["last_name"])
    page.fill("#date_of_birth", CALLER["born"])
    page.fill("#zip_code", zip_code)
    page.fill("#ssn_last4", CALLER["ssn"])
    return submit(page)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_sign_in_pages_pass(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """Sign-in empty and refused, then a first login's password change (empty and with errors)."""
    account = make_staff(server.app, f"new{width}", "agent", ready=False)
    page = open_page(width)
    page.goto(server.url + "/agent/login")
    audit.check(page, f"agent-{width}-login")
    assert sign_in(page, server, account, password="not the password") == 200
    assert page.locator(".alert").count() == 1
    audit.check(page, f"agent-{width}-login-refused")
    assert submit(page) == 400  # sent empty
    audit.check(page, f"agent-{width}-login-errors" if width == 320 else None)

    assert sign_in(page, server, account) == 200 and page.url == server.url + "/agent/password"
    audit.check(page, f"agent-{width}-password")
    page.fill("#password", "short")
    page.fill("#confirm", "short")
    assert submit(page) == 400
    audit.check(page, f"agent-{width}-password-errors")
    page.fill("#password", NEW_PASSWORD)
    page.fill("#confirm", NEW_PASSWORD)
    assert submit(page) == 200 and page.url == server.url + "/agent/"


@pytest.mark.parametrize("width", WIDTHS)
def test_an_agents_pages_pass(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """Home, the serve-a-caller form (empty, with errors, not matched), the caller's exposure and code,
    the call recorded, and the lost-letter form (empty, with errors)."""
    page = open_page(width)
    assert sign_in(page, server, make_staff(server.app, f"agent{width}", "agent")) == 200
    assert page.url == server.url + "/agent/"
    audit.check(page, f"agent-{width}-home")
    page.goto(server.url + "/agent/call")
    audit.check(page, f"agent-{width}-call")
    assert submit(page) == 400
    audit.check(page, f"agent-{width}-call-errors")

    page.fill("#ssn_last4", "0000")
    page.fill("#last_name", "Nobody")
    page.fill("#date_of_birth", "1970-01-01")
    page.fill("#zip_code", "10001")
    assert submit(page) == 200
    audit.check(page, f"agent-{width}-call-not-matched" if width == 1280 else None)

    page.goto(server.url + "/agent/call")
    assert fill_caller(page, CALLER_ZIP[width]) == 200 and page.url == server.url + "/agent/call/caller"
    audit.check(page, f"agent-{width}-caller")
    assert submit(page, "form[action='/agent/call/claim'] button") == 200
    assert page.url == server.url + "/agent/call/caller"
    audit.check(page, f"agent-{width}-caller-code")
    assert submit(page, "form[action='/agent/call/end'] button[type=submit]") == 200
    assert page.url == server.url + "/agent/call"
    audit.check(page, f"agent-{width}-call-recorded" if width == 1280 else None)

    page.goto(server.url + "/agent/letter")  # the lost-letter form: empty, then sent empty
    audit.check(page, f"agent-{width}-letter" if width == 1280 else None)
    assert submit(page) == 400
    audit.check(page, f"agent-{width}-letter-errors" if width == 320 else None)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_supervisors_pages_pass(server: LiveServer, open_page: Any, audit: PageAudit, width: int) -> None:
    """The supervisor's page (pool), the audit trail (rows, bad filter), staff (list, new enrolment), dashboard."""
    page = open_page(width)
    assert sign_in(page, server, make_staff(server.app, f"boss{width}", "supervisor")) == 200
    for path, name in [
        ("/agent/supervisor", "supervisor"),
        ("/agent/audit", "audit"),
        ("/agent/audit?since=not-a-date", "audit-errors"),
        ("/agent/staff", "staff"),
        ("/agent/dashboard", "dashboard"),
    ]:
        page.goto(server.url + path)
        audit.check(page, f"agent-{width}-{name}")
    page.goto(server.url + "/agent/staff")
    page.fill("#username", f"enrolled{width}")
    assert submit(page, "form[action='/agent/staff'] button") == 200
    audit.check(page, f"agent-{width}-staff-enrolled")


def test_an_agent_serves_a_caller_with_the_keyboard_alone(server: LiveServer, open_page: Any) -> None:
    """Sign in, start the call, verify the caller, read the code, record the outcome and sign out:
    Tab to reach each control, typing into the boxes, Enter on links and Space on buttons."""
    account = make_staff(server.app, "keyboard", "agent")
    page = open_page(1280)
    page.goto(server.url + "/agent/login")
    type_into(page, "username", account.username)
    type_into(page, "password", account.password)
    type_into(page, "code", account.code())
    tab_to(page, "main form button[type=submit]")
    press(page, "Space")
    assert page.url == server.url + "/agent/"

    tab_to(page, 'main a[href="/agent/call"]')
    press(page, "Enter")
    assert page.url == server.url + "/agent/call"
    type_into(page, "last_name", CALLER["last_name"])
    type_into(page, "date_of_birth", CALLER["born"])
    type_into(page, "zip_code", KEYBOARD_CALLER_ZIP)
    type_into(page, "ssn_last4", CALLER["ssn"])
    tab_to(page, "form[action='/agent/call'] button[type=submit]")
    press(page, "Enter")
    assert page.url == server.url + "/agent/call/caller"

    tab_to(page, "form[action='/agent/call/claim'] button")
    press(page, "Space")
    assert "Read this code to the caller" in page.inner_text("main")

    tab_to(page, "#outcome")
    page.keyboard.press("End")  # the list's last outcome
    assert page.input_value("#outcome") == "not-verified"
    page.keyboard.press("Home")
    page.keyboard.press("ArrowDown")  # the second: the code was read to the caller
    assert page.input_value("#outcome") == "code-given"
    tab_to(page, "form[action='/agent/call/end'] button[type=submit]")
    press(page, "Space")
    assert page.url == server.url + "/agent/call"
    assert "Call recorded." in page.inner_text("body")

    tab_to(page, "form[action='/agent/logout'] button")
    press(page, "Space")
    assert page.url == server.url + "/agent/login"


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
                page.fill("#date_of_birth", CALLER["born"])
                page.fill("#zip_code", KEYBOARD_CALLER_ZIP)
                page.fill("#ssn_last4", "0000")
                statuses.append(submit(page))
                if statuses[-1] == 429:
                    break
                page.goto(server.url + "/agent/call")
            assert statuses == [200, 200, 429]
            audit.check(page, f"agent-{width}-call-throttled")

            page.goto(server.url + "/agent/call")
            assert fill_caller(page, KEYBOARD_CALLER_ZIP) == 200 and page.url == server.url + "/agent/call/caller"
            assert submit(page, "form[action='/agent/call/claim'] button") == 503
            audit.check(page, f"agent-{width}-pool-empty")
    with app.app_context():
        db.engine.dispose()
