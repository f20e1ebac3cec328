"""No dead ends, in a real browser (Debian's headless Chromium against a live server; see tests/browser.py).

In English, Spanish and French, at 320 and 1280 px, with zero axe-core violations and a screenshot
each (build/screenshots/help-<language>-<width>-<page>.png): the throttled page says how long to wait
(the words of its Retry-After) and gives the call center's number and hours; a full SSN pasted into
the last-four box is kept whole by the box, answered with its own message and never written back;
signing out is confirmed, and reopening the code page afterwards says why the session ended. Then
every public page, in every state and language, at every width from 320 to 1280 px: no sideways
scrolling.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from browser import LiveServer, PageAudit
from conftest import import_patients, make_app
from test_browser import BROWSER_LOCALE, LANGUAGES, WIDTHS, Person, open_page  # noqa: F401 (a fixture)

from portal.errors import wait_in_words
from portal.extensions import db
from portal.importer import import_codes
from portal.programme import DEMO_PROGRAMME
from portal.services import services

pytestmark = pytest.mark.browser

FULL_SSN = "123-45-6789"
SIGNED_OUT = {"en": "You are signed out", "es": "Sesión cerrada", "fr": "Session fermée"}
ENDED_BY_SIGN_OUT = {
    "en": "Your session ended when you signed out.",
    "es": "Su sesión terminó porque usted la cerró.",
    "fr": "Votre session a pris fin parce que vous l'avez fermée.",
}
FULL_NUMBER_REFUSED = {
    "en": "Enter only the last 4 digits of your Social Security number, never the full number.",
    "es": "Escriba solo los últimos 4 dígitos",
    "fr": "Saisissez seulement les 4 derniers chiffres",
}
SWEEP = sorted({*range(320, 1281, 40), 500})  # every 40 px, and the width the facts list once overflowed


def person(number: int, last_name: str) -> Person:
    return Person(f"H-{number}", last_name, date(1940 + number % 50, 1 + number % 12, 1 + number % 28), "10001",
                  f"123-45-{6800 + number}")  # fmt: skip


VISITORS = {
    (lang, width): person(i, f"Helper{lang}{width}")
    for i, (lang, width) in enumerate((lang, width) for lang in LANGUAGES for width in WIDTHS)
}
SWEEPERS = {lang: person(20 + i, f"Sweeper{lang}") for i, lang in enumerate(LANGUAGES)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The portal with every test person in it, a code for each, and a strict per-person limit."""
    folder = tmp_path_factory.mktemp("browser-help")
    app = make_app(f"sqlite:///{folder / 'portal.sqlite3'}", VERIFY_LIMIT_PERSON="3 per 15 minutes")
    people = [*VISITORS.values(), *SWEEPERS.values()]
    assert import_patients(app, [p.row() for p in people]) == []
    enroll_by = (date.today() + timedelta(days=200)).isoformat()
    with app.app_context():
        rows = [(n, {"code": f"HELP-{n:04d}", "enroll_by": enroll_by}) for n in range(2, 2 + len(people))]
        assert import_codes(db.session, services().cipher, rows, on_reject=pytest.fail).added == len(people)
    with LiveServer(app) as live:
        yield live
    with app.app_context():
        db.engine.dispose()


def send_lookup(page: Any, someone: Person, last4: str) -> Any:
    """Fill the form as a person would (the last-four box as pasted into) and send it: the response."""
    page.fill("#last_name", someone.last_name)
    page.fill("#date_of_birth_month", str(someone.born.month))
    page.fill("#date_of_birth_day", str(someone.born.day))
    page.fill("#date_of_birth_year", str(someone.born.year))
    page.fill("#zip_code", someone.zip_code)
    page.fill("#ssn_last4", "")
    page.focus("#ssn_last4")
    page.keyboard.insert_text(last4)  # as a paste does: one insertion, which maxlength would cut
    assert page.input_value("#ssn_last4") == last4, "the box cut what was pasted into it"
    with page.expect_navigation() as navigation:
        page.click("form button[type=submit]")
    return navigation.value


def said(server: LiveServer, lang: str, seconds: int) -> str:
    """The wait in words as the page says it (blanks folded: French puts a no-break space in it)."""
    with server.app.test_request_context("/", headers={"Accept-Language": lang}):
        return " ".join(wait_in_words(seconds).split())


def main_text(page: Any) -> str:
    return " ".join(page.inner_text("main").split())


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_refused_pasted_signed_out_and_ended_pages_help_the_person(
    server: LiveServer,
    open_page: Any,  # noqa: F811 (the fixture imported above)
    audit: PageAudit,
    lang: str,
    width: int,
) -> None:
    visitor = VISITORS[lang, width]
    hours = DEMO_PROGRAMME.in_language(lang).call_center_hours
    shot = f"help-{lang}-{width}"
    page = open_page(width, BROWSER_LOCALE[lang])

    # A full SSN pasted into the last-four box: kept whole by the box, refused with its own message,
    # and not written back into the page.
    page.goto(server.url + "/lookup")
    response = send_lookup(page, visitor, FULL_SSN)
    assert response.status == 400
    assert FULL_NUMBER_REFUSED[lang] in page.inner_text(".error-summary")
    assert page.input_value("#ssn_last4") == ""
    assert "45-6789" not in page.content() and "456789" not in page.content()
    audit.check(page, f"{shot}-full-ssn")

    # Throttled (a stranger's details tried again and again): the wait in words and the call center.
    stranger = person(90 + len(lang) + width % 7, f"Stranger{lang}{width}")
    page.goto(server.url + "/lookup")
    statuses = [send_lookup(page, stranger, "0000").status for _ in range(3)]
    response = send_lookup(page, stranger, "0000")
    assert statuses == [200] * 3 and response.status == 429
    text = main_text(page)
    assert said(server, lang, int(response.headers["retry-after"])) in text
    assert DEMO_PROGRAMME.call_center_phone in text and hours in text
    audit.check(page, f"{shot}-throttled")

    # Signed out: confirmed; the code page reopened says why the session ended.
    page.goto(server.url + "/lookup")
    assert send_lookup(page, visitor, visitor.ssn[-4:]).status == 200 and page.url == server.url + "/exposure"
    with page.expect_navigation():
        page.click(".claim-box button")
    assert page.url == server.url + "/code"
    with page.expect_navigation():
        page.click('form[action="/sign-out"] button')
    assert page.url == server.url + "/signed-out"
    assert SIGNED_OUT[lang] in page.inner_text("h1") and DEMO_PROGRAMME.call_center_phone in main_text(page)
    audit.check(page, f"{shot}-signed-out")
    page.goto(server.url + "/code")
    assert page.url == server.url + "/lookup"
    assert ENDED_BY_SIGN_OUT[lang] in page.inner_text(".notice")
    audit.check(page, f"{shot}-session-ended")


def _no_sideways_scroll(page: Any, name: str) -> list[str]:
    """Each width of the sweep, on the page as loaded: where it scrolls sideways, and by how much."""
    wide = []
    for width in SWEEP:
        page.set_viewport_size({"width": width, "height": 900})
        over = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if over > 0:
            wide.append(f"{name} at {width} px: {over} px")
    return wide


def test_no_public_page_scrolls_sideways_at_any_width(server: LiveServer, open_page: Any) -> None:  # noqa: F811
    """Every public page and state, in every language, from 320 to 1280 px: one window, resized."""
    page = open_page(1280)
    wide: list[str] = []
    for lang in LANGUAGES:
        sweeper = SWEEPERS[lang]
        page.goto(f"{server.url}/?lang={lang}")
        wide += _no_sideways_scroll(page, f"{lang} landing")
        for path, name in (("/lookup", "lookup"), ("/no/such/page", "not found"), ("/signed-out", "signed out")):
            page.goto(server.url + path)
            wide += _no_sideways_scroll(page, f"{lang} {name}")
        page.goto(server.url + "/lookup")
        with page.expect_navigation():
            page.click("form button[type=submit]")
        wide += _no_sideways_scroll(page, f"{lang} lookup with errors")
        send_lookup(page, sweeper, "0000")
        wide += _no_sideways_scroll(page, f"{lang} not matched")
        send_lookup(page, sweeper, sweeper.ssn[-4:])
        wide += _no_sideways_scroll(page, f"{lang} exposure")
        with page.expect_navigation():
            page.click(".claim-box button")
        wide += _no_sideways_scroll(page, f"{lang} code")
        page.goto(server.url + "/plan")
        wide += _no_sideways_scroll(page, f"{lang} print view")
        page.goto(server.url + "/code")
        with page.expect_navigation():
            page.click('form[action="/sign-out"] button')
        page.goto(server.url + "/code")
        wide += _no_sideways_scroll(page, f"{lang} session ended")
        page.goto(server.url + "/lookup")
        for _ in range(4):  # their failures so far count: refused within four more
            if send_lookup(page, sweeper, "0000").status == 429:
                break
        assert page.title() and page.locator("#last_name").count() == 0
        wide += _no_sideways_scroll(page, f"{lang} throttled")
    assert wide == []
