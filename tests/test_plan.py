"""The exposure page's summary and plan, the children's plan, the print view and the calendar
reminder; and the demo's people, exposed only in the fields its programme says the copy held."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlparse

import icalendar
import pytest
from agent_helpers import make_staff, post_form, signed_in
from conftest import PROGRAMME_TOML, create_api_key, csrf_token, import_patients, lookup, patient_row
from flask import Flask
from flask.testing import FlaskClient
from readability import flesch_kincaid_grade
from test_public import add_codes

from portal import exposure, synthetic
from portal.cli import demo_people, sample_people
from portal.config import ConfigError
from portal.programme import DEMO_PROGRAMME, load_programme
from portal.sandbox import SANDBOX_PEOPLE
from portal.services import services

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROGRAMME = ROOT / "deploy" / "programme.example.toml"
# Every combination of fields with the name among them (every affected patient had theirs exposed).
EVERY_MASK = range(1, exposure.ALL_FIELDS_MASK + 1, 2)
# Official sites only: the government's and the three bureaus'.
OFFICIAL = re.compile(
    r"(^|\.)(ftc\.gov|irs\.gov|ssa\.gov|usps\.com|identitytheft\.gov|ic3\.gov|medicare\.gov|annualcreditreport\.com"
    r"|equifax\.com|experian\.com|transunion\.com)$"
)
ADULT = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}
CHILD_BORN = "2015-03-04"
CHILD = {**ADULT, "last_name": "Okafor", "date_of_birth": CHILD_BORN}
LANGUAGES = {
    "en": ("Your plan: do these first", "Last day to enroll in"),
    "es": ("Su plan: haga esto primero", "Último día para inscribirse en"),
    "fr": ("Votre plan : à faire en premier", "Dernier jour pour vous inscrire à"),
}


def every_step(guidance: exposure.Guidance) -> list[exposure.Step]:
    return [*guidance.plan, *(step for _field, steps in guidance.details for step in steps)]


def text(response: object) -> str:
    return html.unescape(response.get_data(as_text=True))  # type: ignore[attr-defined]


# --- the plan as data ------------------------------------------------------------------------------


@pytest.mark.parametrize("minor", [False, True], ids=["adult", "child"])
def test_no_step_is_given_twice_and_none_is_lost(minor: bool) -> None:
    """For every combination of exposed fields: each step once on the page (the plan first, then each
    field's remaining steps), every step a field calls for somewhere, the plan short and timed."""
    order = exposure.CHILD_PLAN if minor else exposure.ADULT_PLAN
    for mask in EVERY_MASK:
        guidance = exposure.guidance(mask, minor=minor)
        steps = every_step(guidance)
        assert len(steps) == len(set(steps)), mask
        assert len({str(step.text) for step in steps}) == len(steps), mask
        assert 1 <= len(guidance.plan) <= exposure.PLAN_LENGTH
        assert list(guidance.plan) == sorted(guidance.plan, key=order.index)
        assert all(step.minutes for step in guidance.plan)
        for field in guidance.exposed:
            called = exposure._own_steps(field, minor)
            assert set(called) <= set(steps), (mask, field.name)


def test_an_exposed_ssn_puts_the_freeze_first_and_an_adult_never_gets_the_childs_plan() -> None:
    children_steps = set(exposure.CHILD_PLAN) - set(exposure.ADULT_PLAN)
    for mask in EVERY_MASK:
        adult = exposure.guidance(mask)
        child = exposure.guidance(mask, minor=True)
        if adult.ssn_exposed:
            assert "Freeze your credit at each of the three credit bureaus" in str(adult.plan[0].text)
        assert not set(every_step(adult)) & children_steps
        assert "Freeze your child's credit" in str(child.plan[0].text)
        assert "Ask each credit bureau if your child has a credit report" in str(child.plan[1].text)
        assert not any("my Social Security" in str(step.text) for step in every_step(child))


def test_the_summary_lists_what_was_exposed_and_what_was_not() -> None:
    in_copy = DEMO_PROGRAMME.exposed_fields
    guidance = exposure.guidance(exposure.parse_exposed_fields("name;date_of_birth;address"), in_copy)
    assert [f.name for f in guidance.exposed] == ["name", "date_of_birth", "address"]
    assert [f.name for f in guidance.not_exposed] == ["phone", "ssn"]
    assert not guidance.ssn_exposed
    everything = exposure.guidance(exposure.parse_exposed_fields(";".join(in_copy)), in_copy)
    assert everything.not_exposed == () and everything.ssn_exposed
    # With no list in the programme, the one answer a person needs is still given: the SSN's.
    assert [f.name for f in exposure.guidance(1).not_exposed] == ["ssn"]


@pytest.mark.parametrize(
    ("born", "minor"),
    [("2008-11-23", False), ("2008-11-24", True), ("2015-03-04", True), ("1980-04-23", False), ("2008-02-29", False)],
)
def test_a_minor_is_under_18_on_the_notice_date(born: str, minor: bool) -> None:
    assert exposure.is_minor(date.fromisoformat(born), DEMO_PROGRAMME.notice_date) is minor


def test_the_plans_read_at_grade_8_and_link_only_to_official_https_sites() -> None:
    steps = set(exposure.ADULT_PLAN) | set(exposure.CHILD_PLAN)
    assert flesch_kincaid_grade(" ".join(str(step.text) for step in exposure.CHILD_PLAN)) <= 8.0
    assert flesch_kincaid_grade(" ".join(str(step.text) for step in exposure.ADULT_PLAN)) <= 8.0
    links = [link for field in exposure.FIELDS for step in field.steps for link in step.links]
    for link in [*links, *(link for step in steps for link in step.links)]:
        address = urlparse(link.url)
        assert address.scheme == "https" and OFFICIAL.search(address.hostname or ""), link.url


# --- the programme's list and the demo's people ----------------------------------------------------


def test_the_programme_file_names_the_fields_of_the_copy(tmp_path: Path) -> None:
    assert load_programme(str(EXAMPLE_PROGRAMME)).exposed_fields == ("name", "date_of_birth", "address", "phone", "ssn")
    plain = tmp_path / "plain.toml"
    plain.write_text(PROGRAMME_TOML, encoding="utf-8")
    assert load_programme(str(plain)).exposed_fields == ()
    for wrong in ('["name", "passport"]', '"name;ssn"', "[1]"):
        bad = tmp_path / "bad.toml"
        bad.write_text(PROGRAMME_TOML + f"exposed_fields = {wrong}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="exposed_fields"):
            load_programme(str(bad))


# What "what happened" calls each field of the copy.
SUMMARY_WORDS = {
    "name": "names",
    "date_of_birth": "dates of birth",
    "address": "addresses",
    "phone": "phone numbers",
    "ssn": "Social Security numbers",
}


def test_the_demo_people_were_exposed_only_in_what_the_programme_says_the_copy_held(app: Flask) -> None:
    listed = set(DEMO_PROGRAMME.exposed_fields)
    assert all(SUMMARY_WORDS[name] in DEMO_PROGRAMME.incident_summary for name in listed)
    with app.app_context():
        assert services().programme is DEMO_PROGRAMME
        people = [*demo_people(2000), *SANDBOX_PEOPLE]
        printed = sample_people(2000)
    for row in people:
        assert set(row["exposed_fields"].split(";")) <= listed, row["record_id"]
    notes = [note for _row, note in printed]
    assert notes == ["SSN exposed", "no SSN on file", "under 18: a child's plan"]
    (with_ssn, _), (without_ssn, _), (child, _) = printed
    assert "ssn" in with_ssn["exposed_fields"].split(";") and not without_ssn["ssn"]
    assert exposure.is_minor(date.fromisoformat(child["date_of_birth"]), DEMO_PROGRAMME.notice_date)


def test_the_synthetic_list_draws_the_same_people_whatever_the_copy_held() -> None:
    """The list the demo draws from is the benchmarks' list with fewer fields marked: nothing else moves."""
    narrowed_rows = synthetic.synthetic_patients(200, 1, in_copy=("name", "ssn"))
    pairs = zip(synthetic.synthetic_patients(200, 1), narrowed_rows, strict=True)
    for full, narrowed in pairs:
        assert full | {"exposed_fields": ""} == narrowed | {"exposed_fields": ""}
        assert set(narrowed["exposed_fields"].split(";")) == set(full["exposed_fields"].split(";")) & {"name", "ssn"}


# --- the pages -------------------------------------------------------------------------------------


@pytest.fixture
def people(app: Flask) -> Flask:
    rows = [
        patient_row(exposed_fields="name;date_of_birth;address;phone;ssn"),
        patient_row(record_id="R-2", last_name="Okafor", date_of_birth=CHILD_BORN, exposed_fields="name;address"),
    ]
    assert import_patients(app, rows) == []
    return app


def verified(app: Flask, person: dict[str, str], language: str = "en") -> FlaskClient:
    client = app.test_client()
    client.get(f"/?lang={language}")
    assert lookup(client, **person).status_code == 303
    return client


def test_the_page_opens_with_the_summary_then_the_plan_each_step_once(people: Flask) -> None:
    page = text(verified(people, ADULT).get("/exposure"))
    summary, plan, details = page.index("Exposed:"), page.index("Your plan: do these first"), page.index("More about")
    assert summary < plan < details
    assert re.search(r"Exposed:</strong> Name, Date of birth, Home address, Phone number, Social Security number", page)
    assert "Not exposed:" not in page and "Your Social Security number was exposed." in page
    guidance = exposure.guidance(exposure.parse_exposed_fields("name;date_of_birth;address;phone;ssn"))
    for step in every_step(guidance):
        assert page.count(str(step.text)) == 1, step.text
    assert page.count("About 30 minutes") == 1 and "Freeze your child" not in page
    assert 'href="/plan"' in page and 'href="/plan.ics"' in page


def test_a_minor_gets_the_childs_plan_and_the_session_keeps_no_birth_date(people: Flask) -> None:
    client = verified(people, CHILD)
    page = text(client.get("/exposure"))
    assert "This person was under 18" in page and "Freeze your child's credit" in page
    assert "Not exposed:</strong> Date of birth, Phone number, Social Security number" in page
    assert "Your child's Social Security number was not exposed." in page
    assert "Place a free fraud alert" not in page
    cookie = client.get_cookie("portal")
    assert cookie is not None
    data = people.session_interface.get_signing_serializer(people).loads(cookie.value)  # type: ignore[attr-defined]
    assert data["minor"] is True and set(data) - {"csrf_token"} == {"verification", "_permanent", "minor"}
    assert CHILD_BORN not in str(data) and "2015" not in str(data)
    # The next person looked up in the same browser is an adult again.
    assert lookup(client, **ADULT).status_code == 303
    assert "Freeze your child" not in text(client.get("/exposure"))


def test_the_console_reads_out_the_childs_plan_when_the_agent_types_a_minors_birth_date(people: Flask) -> None:
    agent = signed_in(people, make_staff(people))
    for person, child in ((CHILD, True), (ADULT, False)):
        response = post_form(agent, "/agent/call", "/agent/call", **{"reference": "", **person})
        assert response.headers["Location"] == "/agent/call/caller"
        page = html.unescape(agent.get("/agent/call/caller").get_data(as_text=True))
        assert ("Freeze your child's credit" in page) is child and "Your plan: do these first" in page


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_print_view_has_the_summary_the_plan_and_the_code_once_claimed(people: Flask, language: str) -> None:
    add_codes(people, {"IDP-PLAN-0000-0001": date.today() + timedelta(days=200)})
    assert people.test_client().get("/plan").headers["Location"] == "/lookup"
    client = verified(people, ADULT, language)
    before = text(client.get("/plan"))
    assert LANGUAGES[language][0] in before and "IDP-PLAN" not in before
    assert client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")}).status_code == 303
    after = text(client.get("/plan"))
    assert after.count("IDP-PLAN-0000-0001") == 1 and LANGUAGES[language][0] in after
    assert "More about" not in after and 'action="/claim"' not in after


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_calendar_reminder_holds_the_enrol_by_date_and_nothing_of_the_person(people: Flask, language: str) -> None:
    add_codes(people, {"IDP-CALENDAR-0001": date.today() + timedelta(days=200)})
    client = verified(people, ADULT, language)
    assert client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")}).status_code == 303
    assert "IDP-CALENDAR-0001" in text(client.get("/plan"))  # shown on the page, never in the calendar
    response = client.get("/plan.ics")
    assert response.status_code == 200 and response.mimetype == "text/calendar"
    assert response.headers["Content-Disposition"] == 'attachment; filename="enroll-by.ics"'
    calendar = icalendar.Calendar.from_ical(response.data)
    [event] = calendar.walk("VEVENT")
    assert event.decoded("dtstart") == DEMO_PROGRAMME.enrol_by
    assert str(event["summary"]).startswith(LANGUAGES[language][1])
    assert DEMO_PROGRAMME.call_center_phone in str(event["description"])
    [alarm] = event.walk("VALARM")
    assert alarm.decoded("trigger") < timedelta(0)
    body = response.get_data(as_text=True)
    for personal in ("García", "1980", "10001", "6789", "IDP-CALENDAR"):
        assert personal not in body


def test_the_partner_api_gives_the_same_steps_with_every_link(app: Flask) -> None:
    key = create_api_key(app, "verify")
    body = app.test_client().get("/api/v1/program", headers={"Authorization": f"Bearer {key}"}).get_json()
    ssn = next(field for field in body["exposed_fields"] if field["name"] == "ssn")
    freeze = ssn["steps"][0]
    assert freeze["text"].startswith("Freeze your credit at each of the three credit bureaus")
    hosts = [urlparse(link["url"]).hostname for link in freeze["links"]]
    assert hosts == ["www.equifax.com", "www.experian.com", "www.transunion.com"]
    assert freeze["link"] == freeze["links"][0]["url"] and freeze["link_text"] == freeze["links"][0]["text"]


@pytest.mark.parametrize("person", [ADULT, CHILD], ids=["adult", "child"])
def test_the_summary_and_the_plan_read_at_grade_8(people: Flask, person: dict[str, str]) -> None:
    page = text(verified(people, person).get("/exposure"))
    sections = re.findall(r'<section class="(?:summary|plan)".*?</section>', page, re.S)
    words = re.sub(r"\(About \d+ minutes\.\)|<[^>]+>", " ", " ".join(sections))
    assert len(sections) == 2 and flesch_kincaid_grade(words) <= 8.0
