"""The exposure page's summary and plan, and its print view, in a real browser, for the three people the
demo prints (an SSN exposed, no SSN on file, a minor): in English, Spanish and French at 320 and
1280 px, zero axe violations, nothing refused by the CSP, no sideways scrolling (tests/browser.py).
Screenshots go to build/screenshots/; the exposure page's height at 1280 px to heights-plan.txt there.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import icalendar
import pytest
import test_browser
from browser import SCREENSHOTS, LiveServer, PageAudit, served
from conftest import import_patients, make_app
from flask_babel import force_locale
from test_browser import BROWSER_LOCALE, LANGUAGES, WIDTHS

from portal import exposure
from portal.cli import sample_people
from portal.identity import format_reference
from portal.services import services

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the public pages' fixture: a new visit at a width, in a browser language
KINDS = ("ssn", "no-ssn", "minor")  # the demo's three printed people, in its order


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The portal with the demo's programme and its three printed people."""
    folder = tmp_path_factory.mktemp("browser-plan")
    app = make_app(f"sqlite:///{folder / 'portal.sqlite3'}")
    with app.app_context():
        people = [row for row, _note in sample_people(2000)]
    assert len(people) == len(KINDS)
    assert import_patients(app, people) == []
    app.config["PLAN_PEOPLE"] = dict(zip(KINDS, people, strict=True))
    yield from served(app)


def look_up(server: LiveServer, page: Any, kind: str) -> dict[str, str]:
    """Verify as the demo's person of ``kind``, with the SSN's last four or the letter's reference."""
    row = server.app.config["PLAN_PEOPLE"][kind]
    year, month, day = row["date_of_birth"].split("-")
    page.goto(server.url + "/lookup")
    page.fill("#last_name", row["last_name"])
    page.fill("#date_of_birth_month", month)
    page.fill("#date_of_birth_day", day)
    page.fill("#date_of_birth_year", year)
    page.fill("#zip_code", row["zip"][:5])
    if row["ssn"]:
        page.fill("#ssn_last4", row["ssn"][-4:])
    else:
        with server.app.app_context():
            page.fill("#reference", format_reference(services().hasher.letter_reference(row["record_id"])))
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert page.url == server.url + "/exposure", page.inner_text("main")
    return row


def expected(server: LiveServer, row: dict[str, str], lang: str) -> tuple[exposure.Guidance, list[str], list[str]]:
    """The guidance for ``row``, with its plan's steps and its summary's labels as ``lang`` words them."""
    with server.app.test_request_context(), force_locale(lang):
        programme = services().programme
        minor = exposure.is_minor(date.fromisoformat(row["date_of_birth"]), programme.notice_date)
        guidance = exposure.guidance(
            exposure.parse_exposed_fields(row["exposed_fields"]), programme.exposed_fields, minor
        )
        return guidance, [str(step.text) for step in guidance.plan], [str(f.label) for f in guidance.not_exposed]


def check_summary_and_plan(page: Any, guidance: exposure.Guidance, plan: list[str], not_exposed: list[str]) -> None:
    steps = page.locator(".plan-steps > li").all_inner_texts()
    assert len(steps) == len(plan) and all(shown.startswith(text) for shown, text in zip(steps, plan, strict=True))
    summary = page.locator(".summary-list > li").all_inner_texts()
    assert len(summary) == (2 if not_exposed else 1)
    assert all(label in summary[-1] for label in not_exposed)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_summary_the_plan_and_the_print_view(
    server: LiveServer, open_page: Any, audit: PageAudit, kind: str, lang: str, width: int
) -> None:
    page = open_page(width, BROWSER_LOCALE[lang])
    row = look_up(server, page, kind)
    assert page.get_attribute("html", "lang") == lang
    guidance, plan, not_exposed = expected(server, row, lang)
    assert guidance.minor is (kind == "minor") and guidance.ssn_exposed is not (kind == "no-ssn")
    check_summary_and_plan(page, guidance, plan, not_exposed)
    # No step twice on the page: the plan's, then each field's remaining ones.
    every = page.locator(".plan-steps > li, .exposed-field li").all_inner_texts()
    assert len(every) == len(set(every))
    assert page.locator(".exposed-field").count() == len(guidance.exposed)
    audit.check(page, f"plan-{kind}-{lang}-{width}-exposure")

    with page.expect_navigation():
        page.click('a[href="/plan"]')
    check_summary_and_plan(page, guidance, plan, not_exposed)
    assert page.locator(".exposed-field").count() == 0 and page.locator("form").count() == 0
    audit.check(page, f"plan-{kind}-{lang}-{width}-print-view")
    page.emulate_media(media="print")
    assert page.is_hidden(".site-header") and page.is_visible(".plan-steps")

    reminder = page.context.request.get(server.url + "/plan.ics")
    assert reminder.ok and reminder.headers["content-type"] == "text/calendar; charset=utf-8"
    [event] = icalendar.Calendar.from_ical(reminder.body()).walk("VEVENT")
    assert row["last_name"] not in reminder.text() and event.decoded("dtstart") == services_enrol_by(server)


def services_enrol_by(server: LiveServer) -> date:
    with server.app.app_context():
        return services().programme.enrol_by


def test_the_exposure_page_height_at_1280_px(server: LiveServer, open_page: Any) -> None:
    """Measured, not asserted (fonts differ between machines): written out for the change's notes."""
    lines = []
    for kind in KINDS:
        for lang in LANGUAGES:
            page = open_page(1280, BROWSER_LOCALE[lang])
            row = look_up(server, page, kind)
            height = page.evaluate("document.documentElement.scrollHeight")
            lines.append(f"{kind:<7} {row['last_name']:<14} {row['exposed_fields']:<38} {lang}: {height} px")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "heights-plan.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(["", *lines]))
