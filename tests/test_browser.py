"""The public site in a real browser: Debian's headless Chromium against a live server on 127.0.0.1.

Every page, in every state a patient can meet, in English, Spanish and French: zero axe-core
violations, nothing refused by the Content-Security-Policy, no sideways scrolling at 320 px and
targets of at least 44 x 44 px (see tests/browser.py). The patient's whole visit is done with the
keyboard alone (Tab, Enter, Space) at 320 px and at 1280 px. Screenshots go to build/screenshots/.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from browser import LiveServer, PageAudit
from conftest import PROGRAMME_TOML, import_patients, make_app, patient_row

from portal.extensions import db
from portal.importer import import_codes
from portal.models import Verification, utcnow
from portal.services import services

pytestmark = pytest.mark.browser

LANGUAGES = ("en", "es", "fr")
WIDTHS = (320, 1280)
BROWSER_LOCALE = {"en": "en-US", "es": "es-US", "fr": "fr-FR"}
ERROR_TITLE = {"en": "Error: ", "es": "Error: ", "fr": "Erreur : "}
SESSION_ENDED = {"en": "your session ended", "es": "su sesión terminó", "fr": "votre session a pris fin"}


@dataclass(frozen=True)
class Person:
    record_id: str
    last_name: str
    born: date
    zip_code: str
    ssn: str

    def row(self) -> dict[str, str]:
        return patient_row(
            record_id=self.record_id,
            last_name=self.last_name,
            date_of_birth=self.born.isoformat(),
            zip=self.zip_code,
            ssn=self.ssn,
            exposed_fields="name;date_of_birth;address;phone;ssn;email;medical_record_number;health_insurance;clinical_data",
        )


def _person(number: int, last_name: str) -> Person:
    return Person(
        f"B-{number}",
        last_name,
        date(1930 + number % 70, 1 + number % 12, 1 + number % 28),
        "10001",
        f"123-45-{6700 + number}",
    )


# One person per keyboard visit (each claims a code of its own), then one per state and language.
VISITORS = {
    (lang, width): _person(i, name)
    for i, ((lang, width), name) in enumerate(
        zip(
            [(lang, width) for lang in LANGUAGES for width in WIDTHS],
            ["Okafor", "Nguyễn", "García-López", "Ramírez", "Dubois", "O'Brien"],
            strict=True,
        )
    )
}
LATE_CLAIMERS = {lang: _person(10 + i, f"Lindqvist{lang}") for i, lang in enumerate(LANGUAGES)}
TIMED_OUT = {lang: _person(20 + i, f"Nakamura{lang}") for i, lang in enumerate(LANGUAGES)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The portal with every test person in it, a strict per-person limit, and no code yet."""
    folder = tmp_path_factory.mktemp("browser")
    app = make_app(f"sqlite:///{folder / 'portal.sqlite3'}", VERIFY_LIMIT_PERSON="3 per 15 minutes")
    people = [*VISITORS.values(), *LATE_CLAIMERS.values(), *TIMED_OUT.values()]
    assert import_patients(app, [person.row() for person in people]) == []
    with LiveServer(app) as live:
        yield live
    with app.app_context():
        db.engine.dispose()


def add_code(server: LiveServer, code: str) -> None:
    with server.app.app_context():
        rows = [(2, {"code": code, "enroll_by": (date.today() + timedelta(days=200)).isoformat()})]
        report = import_codes(db.session, services().cipher, rows, on_reject=pytest.fail)
        assert report.added == 1


@pytest.fixture
def open_page(browser: Any, audit: PageAudit) -> Iterator[Any]:
    """A new visit (its own cookies) in a window of a given width and browser language."""
    contexts = []

    def open_(width: int, locale: str = "en-US") -> Any:
        phone = width < 600
        context = browser.new_context(
            viewport={"width": width, "height": 800 if phone else 900},
            locale=locale,
            is_mobile=phone,
            has_touch=phone,
        )
        contexts.append(context)
        return audit.watch(context.new_page())

    yield open_
    for context in contexts:
        context.close()


# --- the keyboard ---------------------------------------------------------------------------------


def tab_to(page: Any, selector: str, limit: int = 80) -> None:
    """Press Tab until the focus is on ``selector``: it must be reachable from the keyboard."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with Tab on {page.url}")


def press(page: Any, key: str) -> None:
    """A key that leads to another page (Enter on a link, Space on a button)."""
    with page.expect_navigation():
        page.keyboard.press(key)


def focused(page: Any) -> str:
    return page.evaluate("document.activeElement.id || document.activeElement.className")


def wait_for_focus(page: Any, selector: str) -> None:
    """``autofocus`` acts when the browser next renders the page, a moment after it loaded."""
    page.wait_for_function("s => document.activeElement.matches(s)", arg=selector, timeout=5000)


def type_into(page: Any, box: str, text: str) -> None:
    tab_to(page, f"#{box}")
    page.keyboard.type(text)


# --- the patient's visit, keyboard only ---------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_patient_goes_from_the_notice_to_their_code_with_the_keyboard_alone(
    server: LiveServer, open_page: Any, audit: PageAudit, lang: str, width: int
) -> None:
    person = VISITORS[lang, width]
    add_code(server, f"KEY-{lang.upper()}-{width}")
    shot = f"{lang}-{width}"
    page = open_page(width)  # the browser asks for English: the visitor picks their language on the page
    page.goto(server.url + "/")
    if lang != "en":
        tab_to(page, f'.languages a[lang="{lang}"]')
        press(page, "Enter")
    assert page.get_attribute("html", "lang") == lang
    audit.check(page, f"{shot}-1-start")

    tab_to(page, 'main a.button[href="/lookup"]')
    press(page, "Enter")
    audit.check(page, f"{shot}-2-lookup")

    # Sent empty: the error summary takes the focus, and its first link takes the visitor to the box.
    tab_to(page, "form button[type=submit]")
    press(page, "Space")
    assert page.title().startswith(ERROR_TITLE[lang])
    wait_for_focus(page, ".error-summary")
    audit.check(page, f"{shot}-3-errors")
    tab_to(page, '.error-summary a[href="#last_name"]', limit=1)
    page.keyboard.press("Enter")
    assert focused(page) == "last_name"

    page.keyboard.type(person.last_name)
    type_into(page, "date_of_birth_month", str(person.born.month))
    type_into(page, "date_of_birth_day", str(person.born.day))
    type_into(page, "date_of_birth_year", str(person.born.year))
    type_into(page, "zip_code", person.zip_code)
    type_into(page, "ssn_last4", person.ssn[-4:])
    tab_to(page, "form button[type=submit]")
    press(page, "Enter")
    assert page.url == server.url + "/exposure"
    assert page.locator(".exposed-field").count() == 9
    audit.check(page, f"{shot}-4-exposure")

    tab_to(page, ".claim-box button")
    press(page, "Space")
    assert page.url == server.url + "/code"
    assert page.inner_text(".activation-code code").startswith("KEY-")
    assert page.get_attribute("html", "lang") == lang
    audit.check(page, f"{shot}-5-code")

    tab_to(page, 'form[action="/sign-out"] button')
    press(page, "Space")
    assert page.url == server.url + "/signed-out"
    assert page.get_attribute("html", "lang") == lang  # the language outlives the sign-out


# --- every other state, in each language ----------------------------------------------------------


def fill_lookup(page: Any, person: Person) -> int:
    """Send the lookup form for ``person``; the status of the page that comes back."""
    page.fill("#last_name", person.last_name)
    page.fill("#date_of_birth_month", str(person.born.month))
    page.fill("#date_of_birth_day", str(person.born.day))
    page.fill("#date_of_birth_year", str(person.born.year))
    page.fill("#zip_code", person.zip_code)
    page.fill("#ssn_last4", person.ssn[-4:])
    with page.expect_navigation() as navigation:
        page.click("form button[type=submit]")
    return navigation.value.status


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_other_state_of_every_page_passes(
    server: LiveServer, open_page: Any, audit: PageAudit, lang: str
) -> None:
    """Chosen from the browser's language this time (Accept-Language), at 1280 and 320 px."""
    for width in (1280, 320):
        page = open_page(width, BROWSER_LOCALE[lang])
        page.goto(server.url + "/lookup")
        assert page.get_attribute("html", "lang") == lang

        # Not matched (a made-up person): the same form, an alert that takes the focus.
        stranger = _person(90 + width % 7, f"Unknown{lang}{width}")
        assert fill_lookup(page, stranger) == 200
        assert page.locator(".alert").count() == 1
        wait_for_focus(page, ".alert")
        assert page.input_value("#ssn_last4") == ""
        audit.check(page, f"{lang}-{width}-not-matched")

        # Throttled: the same person failing again is refused with the 429 page.
        statuses = [fill_lookup(page, stranger) for _ in range(3)]
        assert statuses[-1] == 429, statuses
        audit.check(page, f"{lang}-{width}-throttled")

        # Errors in the date boxes only, with the other values kept.
        page.goto(server.url + "/lookup")
        page.fill("#last_name", "Okafor")
        page.fill("#date_of_birth_month", "13")
        with page.expect_navigation():
            page.click("form button[type=submit]")
        assert page.input_value("#last_name") == "Okafor" and page.input_value("#date_of_birth_month") == "13"
        audit.check(page, f"{lang}-{width}-date-errors" if width == 320 else None)

        # Not found, and a form whose session vanished (the form-expired page).
        page.goto(server.url + "/no/such/page")
        audit.check(page, f"{lang}-{width}-not-found" if width == 1280 else None)
        page.goto(server.url + "/lookup")
        page.context.clear_cookies()
        assert fill_lookup(page, stranger) == 400
        audit.check(page)

    page = open_page(1280, BROWSER_LOCALE[lang])
    page.goto(server.url + "/lookup")

    # Every code given out: the claim is refused kindly (all keyboard visits took theirs).
    assert fill_lookup(page, LATE_CLAIMERS[lang]) == 200 and page.url == server.url + "/exposure"
    audit.check(page)  # the exposure page with the claim button
    with page.expect_navigation() as navigation:
        page.click(".claim-box button")
    assert navigation.value.status == 503
    audit.check(page, f"{lang}-1280-pool-empty")

    # The session ran out: back to the form, with a message saying why.
    page.goto(server.url + "/lookup")
    fill_lookup(page, TIMED_OUT[lang])
    with server.app.app_context():
        db.session.execute(sa.update(Verification).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    page.goto(server.url + "/exposure")
    assert page.url == server.url + "/lookup"
    assert SESSION_ENDED[lang] in page.inner_text(".notice")
    audit.check(page, f"{lang}-1280-session-ended")


def test_print_keeps_the_code_the_date_and_the_steps(server: LiveServer, open_page: Any) -> None:
    """On paper: no header, buttons or forms; the code, the enrol-by date and the steps remain."""
    add_code(server, "PRINT-0001")
    page = open_page(1280)
    page.goto(server.url + "/lookup")
    person = _person(30, "Printer")
    import_patients(server.app, [person.row()])
    fill_lookup(page, person)
    with page.expect_navigation():
        page.click(".claim-box button")
    page.emulate_media(media="print")
    assert page.is_hidden(".site-header") and page.is_hidden("form") and page.is_visible(".print-only")
    assert page.is_visible(".activation-code code") and page.inner_text(".activation-code code") == "PRINT-0001"
    page.goto(server.url + "/exposure")
    assert page.is_hidden(".claim-box .button") and page.is_visible(".exposed-field ol")
    page.pdf(path=None)  # Chromium lays the page out for paper without error


# --- the thief who holds the stolen records: the letter asked for, a network that verified enough ---

STEP_UP_PERSON = _person(40, "Halvorsen")
NEIGHBOUR = _person(41, "Achterberg")


@pytest.fixture(scope="module")
def step_up_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Claims always need the letter's reference; one network may verify one person a day."""
    folder = tmp_path_factory.mktemp("step-up")
    programme = folder / "programme.toml"
    programme.write_text(PROGRAMME_TOML + 'claim_step_up = "always"\n', encoding="utf-8")
    app = make_app(
        f"sqlite:///{folder / 'portal.sqlite3'}", PROGRAMME_FILE=str(programme), VERIFY_LIMIT_CLIENT_PEOPLE="1 per day"
    )
    assert import_patients(app, [STEP_UP_PERSON.row(), NEIGHBOUR.row()]) == []
    with LiveServer(app) as live:
        yield live
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_letter_step_up_and_the_people_refusal_pass(
    step_up_server: LiveServer, open_page: Any, audit: PageAudit, lang: str
) -> None:
    for width in WIDTHS:
        page = open_page(width, BROWSER_LOCALE[lang])
        page.goto(step_up_server.url + "/lookup")
        assert fill_lookup(page, STEP_UP_PERSON) == 200 and page.url == step_up_server.url + "/exposure"
        assert page.locator("#reference").count() == 1
        audit.check(page, f"{lang}-{width}-letter-asked")
        page.fill("#reference", "not a reference")
        with page.expect_navigation() as navigation:
            page.click(".claim-box button")
        assert navigation.value.status == 400 and page.input_value("#reference") == ""
        audit.check(page, f"{lang}-{width}-letter-wrong" if width == 320 else None)
        # Another person from the same network, past its one person a day: sent to the call center.
        page.goto(step_up_server.url + "/lookup")
        assert fill_lookup(page, NEIGHBOUR) == 429
        assert "1-800-555-0100" in page.inner_text("main")
        audit.check(page, f"{lang}-{width}-too-many-people")
