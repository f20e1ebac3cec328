"""Languages, plain English and the lookup form's GOV.UK patterns, over HTTP (no browser)."""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po
from conftest import PROGRAMME_TOML, csrf_token, import_patients, lookup, make_app, patient_row
from flask import Flask, request
from flask.testing import FlaskClient
from readability import flesch_kincaid_grade
from werkzeug import Request

from portal import exposure, i18n
from portal.config import ConfigError
from portal.programme import load_programme

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sd]")
TRANSLATED = [code for code in i18n.LANGUAGES if code != "en"]


# --- catalogues ----------------------------------------------------------------------------------


def source_messages() -> set[str]:
    """Every string the code and the templates mark for translation, as `pybabel extract` finds them."""
    method_map = [("portal/**.py", "python"), ("templates/**.html", "jinja2")]
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "lazy_gettext": None}
    found = extract_from_dir(str(ROOT), method_map, keywords=keywords)
    return {message for _file, _line, message, _comments, _context in found}


def catalogue_problems(po: bytes, wanted: set[str]) -> list[str]:
    """What a catalogue gets wrong: a string missing, untranslated or fuzzy, or a placeholder lost or added."""
    catalog = read_po(BytesIO(po))
    problems = []
    for message_id in sorted(wanted):
        message = catalog.get(message_id)
        if message is None or not message.string or message.fuzzy:
            problems.append(f"not translated: {message_id!r}")
        elif sorted(PLACEHOLDER.findall(message_id)) != sorted(PLACEHOLDER.findall(message.string)):
            problems.append(f"placeholders differ: {message_id!r} -> {message.string!r}")
        elif message.string.count("%") != message_id.count("%"):
            problems.append(f"a stray %: {message.string!r}")
    return problems


def test_the_extraction_finds_the_pages_strings() -> None:
    wanted = source_messages()
    assert "Check if you are affected" in wanted  # a template
    assert "Enter your last name as it appears on your letter." in wanted  # forms.py
    assert "There is no page at this address." in wanted  # errors.py
    assert str(exposure.FIELDS[4].label) in wanted  # exposure.py
    assert len(wanted) > 100


@pytest.mark.parametrize("code", TRANSLATED)
def test_every_public_string_is_translated_with_its_placeholders(code: str) -> None:
    po = (i18n.CATALOG_DIR / code / "LC_MESSAGES" / "messages.po").read_bytes()
    assert catalogue_problems(po, source_messages()) == []


def test_the_catalogue_check_catches_a_dropped_placeholder_and_a_gap() -> None:
    catalog = Catalog(locale="es")
    catalog.add("Call %(phone)s, %(hours)s.", "Llame al %(phone)s.")
    catalog.add("Back to the start page", "")
    catalog.add("Year", "Año", flags=["fuzzy"])
    out = BytesIO()
    write_po(out, catalog)
    problems = catalogue_problems(
        out.getvalue(), {"Call %(phone)s, %(hours)s.", "Back to the start page", "Year", "Day"}
    )
    assert len(problems) == 4, problems


def test_the_template_file_lists_what_the_code_marks() -> None:
    """messages.pot is what translators start from: it must not go stale."""
    pot = read_po((i18n.CATALOG_DIR / "messages.pot").open("rb"))
    assert {m.id for m in pot if m.id} == source_messages()


# --- choosing a language -------------------------------------------------------------------------


def html_lang(text: str) -> str:
    match = re.search(r'<html lang="([a-z]+)">', text)
    assert match
    return match.group(1)


@pytest.mark.parametrize(
    ("accept", "expected", "heading"),
    [
        ("es-MX,es;q=0.9,en;q=0.5", "es", "Averigüe si usted está afectado"),
        ("fr-CA,fr;q=0.8", "fr", "Vérifiez si vous êtes concerné"),
        ("de-DE,de;q=0.9", "en", "Check if you are affected"),
        ("", "en", "Check if you are affected"),
    ],
)
def test_the_language_follows_the_browser(client: FlaskClient, accept: str, expected: str, heading: str) -> None:
    text = client.get("/lookup", headers={"Accept-Language": accept}).get_data(as_text=True)
    assert html_lang(text) == expected
    assert heading in text


def test_each_request_is_answered_in_its_own_browsers_language_however_often_it_was_seen(
    client: FlaskClient, database_url: str
) -> None:
    """A browser's language decides only the requests that send it, however often it was seen, and
    only among the languages the app serves."""
    for accept, expected in [("fr", "fr"), ("es", "es"), ("fr", "fr"), ("de", "en"), ("es", "es"), ("fr", "fr")]:
        assert html_lang(client.get("/", headers={"Accept-Language": accept}).get_data(as_text=True)) == expected
    two_languages = make_app(database_url, LANGUAGES=["en", "es"]).test_client()
    assert html_lang(two_languages.get("/", headers={"Accept-Language": "fr"}).get_data(as_text=True)) == "en"


@pytest.mark.parametrize(
    "accept",
    ["fr-CA,fr;q=0.8", "ES", "de, es;q=0.1, fr;q=0.2", "en;q=0, fr;q=0", "*", "es;q=0.5, fr;q=0.5", "x;;q=,", ""],
)
def test_the_browsers_language_is_matched_as_werkzeug_matches_it(accept: str) -> None:
    languages = ["en", "es", "fr"]
    werkzeugs = Request.from_values(headers={"Accept-Language": accept}).accept_languages.best_match(languages)
    assert i18n._browser_language(accept, tuple(languages)) == werkzeugs


def test_each_accept_language_header_is_matched_once_a_process(client: FlaskClient) -> None:
    """Browsers send few distinct headers: each is parsed and matched once, and at most 256 are kept."""
    i18n._browser_language.cache_clear()
    for _ in range(3):
        assert html_lang(client.get("/", headers={"Accept-Language": "fr-CA,fr;q=0.8"}).get_data(as_text=True)) == "fr"
    info = i18n._browser_language.cache_info()
    assert (info.misses, info.hits, info.maxsize) == (1, 2, 256)


def test_a_link_on_every_page_switches_the_language_for_the_visit(app: Flask, client: FlaskClient) -> None:
    english = client.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'href="/?lang=es" lang="es" hreflang="es">Español</a>' in english
    assert 'href="/?lang=fr" lang="fr" hreflang="fr">Français</a>' in english

    response = client.get("/lookup?lang=es")
    assert response.status_code == 303 and response.headers["Location"] == "/lookup"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("lang=es;") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Expires" not in cookie and "Max-Age" not in cookie  # forgotten when the visit ends

    # Remembered on every page, whatever the browser asks for; the other languages are offered.
    for path in ("/", "/lookup", "/no/such/page"):
        text = client.get(path, headers={"Accept-Language": "en"}).get_data(as_text=True)
        assert html_lang(text) == "es", path
        assert 'lang="en" hreflang="en">English</a>' in text and "Español</a>" not in text
    assert "No hay ninguna página en esta dirección." in client.get("/no/such/page").get_data(as_text=True)

    # A pick the site does not offer changes nothing.
    client.get("/?lang=xx")
    assert html_lang(client.get("/").get_data(as_text=True)) == "es"


def test_the_switch_reads_the_query_string_only_when_there_is_one(app: Flask, client: FlaskClient) -> None:
    parsed: list[bool] = []
    app.after_request(lambda response: parsed.append("args" in request.__dict__) or response)
    client.get("/")
    client.get("/?utm=x")
    assert parsed == [False, True]
    assert client.get("/?utm=x&lang=fr").status_code == 303


def test_the_switch_never_leads_off_the_site(client: FlaskClient) -> None:
    for path in ("//evil.example/?lang=es", "/%2F%2Fevil.example?lang=es", "/no/such/page?lang=es"):
        response = client.get(path)
        assert response.status_code == 303
        assert response.headers["Location"] == "/", path
    text = client.get("//evil.example/x").get_data(as_text=True)
    assert "evil.example" not in text


def test_the_language_cookie_is_host_only_and_secure_in_production(app: Flask) -> None:
    assert i18n.cookie_name(app) == "lang"
    app.config["SESSION_COOKIE_SECURE"] = True
    response = app.test_client().get("/?lang=fr", base_url="https://localhost")
    assert response.headers["Set-Cookie"].startswith("__Host-lang=fr;")
    assert "Secure" in response.headers["Set-Cookie"]


def test_pages_kept_for_everyone_are_kept_per_language(client: FlaskClient) -> None:
    """The landing page and the blank form are rendered once and kept: once per language."""
    for _ in range(2):
        for code, words in (("es", "Qué pasó"), ("en", "What happened"), ("fr", "Ce qui s'est passé")):
            text = client.get("/", headers={"Accept-Language": code}).get_data(as_text=True)
            assert html_lang(text) == code and words in text
            form = client.get("/lookup", headers={"Accept-Language": code}).get_data(as_text=True)
            assert html_lang(form) == code


def test_unknown_languages_in_the_configuration_are_refused(database_url: str) -> None:
    with pytest.raises(ConfigError, match="PORTAL_LANGUAGES"):
        make_app(database_url, LANGUAGES=["en", "de"])
    with pytest.raises(ConfigError, match="PORTAL_LANGUAGES"):
        make_app(database_url, LANGUAGES=["es"])


# --- the programme's own text, per language ------------------------------------------------------


def test_programme_text_per_language_falls_back_to_the_default(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "programme.toml"
    path.write_text(
        PROGRAMME_TOML + '\n[programme.es]\nincident_summary = "Se copió una base de datos de registro."\n',
        encoding="utf-8",
    )
    client = make_app(database_url, PROGRAMME_FILE=str(path)).test_client()
    spanish = client.get("/", headers={"Accept-Language": "es"}).get_data(as_text=True)
    assert "Se copió una base de datos de registro." in spanish
    assert "Monday to Friday 9 to 5" in spanish  # not given in Spanish: the default language's text
    french = client.get("/", headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert html_lang(french) == "fr" and "A copy of a registration database was taken." in french


def test_a_programme_file_may_translate_only_its_free_text(tmp_path: Path) -> None:
    path = tmp_path / "programme.toml"
    path.write_text(PROGRAMME_TOML + '\n[programme.es]\ncall_center_phone = "1-800-555-0199"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[programme.es\] may give only"):
        load_programme(str(path))


# --- the lookup form -----------------------------------------------------------------------------

PERSON = dict(last_name="García-López", zip_code="10001", ssn_last4="6789")
BOXES = {"date_of_birth_month": "4", "date_of_birth_day": "23", "date_of_birth_year": "1980"}


def post_form(client: FlaskClient, **fields: str):  # type: ignore[no-untyped-def]
    return client.post("/lookup", data={"csrf_token": csrf_token(client), **fields})


def test_the_date_of_birth_is_three_labelled_boxes_in_us_order(client: FlaskClient) -> None:
    text = client.get("/lookup").get_data(as_text=True)
    boxes = re.findall(
        r'<input autocomplete="(bday-[a-z]+)" class="[^"]*" id="(date_of_birth_[a-z]+)" inputmode="numeric"', text
    )
    assert boxes == [
        ("bday-month", "date_of_birth_month"),
        ("bday-day", "date_of_birth_day"),
        ("bday-year", "date_of_birth_year"),
    ]
    for box, label in (("month", "Month"), ("day", "Day"), ("year", "Year")):
        assert f'<label for="date_of_birth_{box}">{label}</label>' in text
    assert re.search(
        r'<fieldset class="date" role="group" aria-describedby="date_of_birth-hint">\s*<legend>Date of birth</legend>',
        text,
    )
    assert 'type="date"' not in text


def test_the_boxes_and_the_old_single_field_both_verify(app: Flask) -> None:
    import_patients(app, [patient_row()])
    assert post_form(app.test_client(), **PERSON, **BOXES).headers["Location"] == "/exposure"
    padded = {"date_of_birth_month": "04", "date_of_birth_day": "23 ", "date_of_birth_year": " 1980"}
    assert post_form(app.test_client(), **PERSON, **padded).headers["Location"] == "/exposure"
    response = lookup(app.test_client(), **PERSON, date_of_birth="1980-04-23")
    assert response.headers["Location"] == "/exposure"


def test_people_typing_their_birth_date_in_the_boxes_each_have_their_own_failure_limit(database_url: str) -> None:
    """The per-person limit is keyed on the date from the boxes (or the single field) and the name:
    two people never share a bucket, and one person is one bucket however the date was typed."""
    app = make_app(database_url, VERIFY_LIMIT_PERSON="2 per 15 minutes")
    client = app.test_client()
    first = {**PERSON, "ssn_last4": "0000", **BOXES}
    assert [post_form(client, **first).status_code for _ in range(2)] == [200, 200]
    assert post_form(client, **first).status_code == 429
    same_person = {**PERSON, "ssn_last4": "1111", "date_of_birth": "1980-04-23"}
    assert lookup(client, **same_person).status_code == 429
    padded = {**first, "date_of_birth_month": "04"}
    assert post_form(client, **padded).status_code == 429
    someone_else = {**first, "date_of_birth_day": "24"}
    assert post_form(client, **someone_else).status_code == 200


def test_errors_are_summarised_linked_and_values_kept_but_never_the_ssn(client: FlaskClient) -> None:
    response = post_form(
        client, last_name="O'Brien", zip_code="1000", ssn_last4="67", date_of_birth_month="4", date_of_birth_year="1980"
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "<title>Error: Check if you are affected</title>" in text
    summary = re.search(
        r'<div class="error-summary" role="alert" aria-labelledby="error-summary-title" tabindex="-1" autofocus>(.*?)</div>',
        text,
        re.S,
    )
    assert summary, "the summary takes focus when the page opens"
    links = re.findall(r'<a href="#([a-z_0-9]+)">([^<]*)</a>', summary.group(1))
    assert [target for target, _ in links] == ["date_of_birth_day", "zip_code", "ssn_last4"]
    assert "must include a day" in links[0][1]
    # Each box in error is marked and names its message; what was typed is kept ...
    assert 'aria-describedby="date_of_birth-hint date_of_birth-error"' in text
    assert re.search(r'aria-invalid="true"[^>]*id="date_of_birth_day"', text)
    assert re.search(r'id="date_of_birth_month"[^>]*value="4"', text)
    assert re.search(r'id="last_name"[^>]*value="O&#39;Brien"', text)
    assert re.search(r'aria-describedby="zip_code-hint zip_code-error" aria-invalid="true"[^>]*value="1000"', text)
    # ... except the SSN digits and the reference, which never go back into a page.
    assert re.search(r'id="ssn_last4"[^>]*value=""', text) and 'value="67"' not in text


def test_errors_read_in_the_visitors_language(client: FlaskClient) -> None:
    client.get("/?lang=fr")
    text = post_form(client, **PERSON).get_data(as_text=True)
    assert "<title>Erreur : Vérifiez si vous êtes concerné</title>" in text
    assert "Il y a un problème" in text and "Saisissez votre date de naissance." in text


# --- plain English -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", exposure.FIELDS, ids=[f.name for f in exposure.FIELDS])
def test_the_english_guidance_reads_at_grade_8_or_below(field: exposure.ExposedField) -> None:
    text = " ".join([str(field.risk), *(str(step.text) for step in field.steps)])
    assert flesch_kincaid_grade(text) <= 8.0


def test_the_grade_check_fails_on_hard_prose() -> None:
    hard = (
        "Notwithstanding the aforementioned considerations, individuals experiencing unauthorized "
        "utilization of identification information should immediately communicate with appropriate "
        "institutional representatives regarding comprehensive remediation opportunities."
    )
    assert flesch_kincaid_grade(hard) > 8.0
    assert flesch_kincaid_grade("We will never call you. If someone does, hang up.") < 4
