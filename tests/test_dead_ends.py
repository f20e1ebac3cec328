"""No dead ends on the public site, over HTTP (no browser): every refusal and error page says how long
to wait (the same wait as its Retry-After) and whom to call; signing out says so, and a page reopened
afterwards says why the session ended; a full SSN pasted into the last-four box gets its own message
and is never written back; the header names the organisation; Spanish and French pages carry no
English but names. The same in a real browser: tests/test_browser_help.py."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from agent_helpers import login, make_staff, post_form, signed_in
from babel.messages.pofile import read_po
from conftest import PROGRAMME_TOML, csrf_token, import_patients, lookup, make_app, patient_row
from flask import Flask, abort
from flask.testing import FlaskClient

from portal import i18n
from portal.errors import wait_in_words
from portal.extensions import db
from portal.importer import import_codes
from portal.models import Verification, utcnow
from portal.programme import DEMO_PROGRAMME, load_programme
from portal.services import services

LANGUAGES = ("en", "es", "fr")
PHONE = DEMO_PROGRAMME.call_center_phone
HOURS = {code: DEMO_PROGRAMME.in_language(code).call_center_hours for code in LANGUAGES}
PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
ALL_FIELDS = "name;date_of_birth;address;phone;ssn;email;medical_record_number;health_insurance;clinical_data"


def text_of(response) -> str:  # type: ignore[no-untyped-def]
    """What a person reads on the page: the tags gone, the entities decoded, the blanks folded."""
    body = re.sub(r"<(script|style|head)\b.*?</\1>", " ", response.get_data(as_text=True), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def main_of(response) -> str:  # type: ignore[no-untyped-def]
    body = response.get_data(as_text=True)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body.split("<main", 1)[1].split("</main>")[0])).split())


def words(text: str) -> str:
    """Blanks folded, as on the page (French puts a no-break space between a number and its unit)."""
    return " ".join(text.split())


def client_in(app: Flask, lang: str) -> FlaskClient:
    client = app.test_client()
    client.get(f"/?lang={lang}")
    return client


def calls_the_center(text: str, lang: str) -> bool:
    return PHONE in text and HOURS[lang] in text


# --- the wait, in words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "seconds", "said"),
    [
        ("en", 875, "about 15 minutes"),
        ("en", 3600, "about 1 hour"),
        ("en", 7200, "about 2 hours"),
        ("en", 30, "about 30 seconds"),
        ("en", 5, "a few seconds"),
        ("es", 875, "aproximadamente 15 minutos"),
        ("es", 3600, "aproximadamente 1 hora"),
        ("es", 5, "unos segundos"),
        ("fr", 875, "environ 15 minutes"),
        ("fr", 3600, "environ 1 heure"),
        ("fr", 5, "quelques secondes"),
    ],
)
def test_a_wait_is_said_in_words_in_the_pages_language(app: Flask, lang: str, seconds: int, said: str) -> None:
    with app.test_request_context("/", headers={"Accept-Language": lang}):
        assert words(wait_in_words(seconds)) == said
        if seconds == 875:  # the console's words are English whatever the browser asks for
            assert wait_in_words(seconds, english=True) == "about 15 minutes"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_throttled_person_is_told_the_wait_of_retry_after_and_whom_to_call(database_url: str, lang: str) -> None:
    app = make_app(database_url, VERIFY_LIMIT_PERSON="2 per 15 minutes")
    assert import_patients(app, [patient_row()]) == []
    client = client_in(app, lang)
    statuses = [lookup(client, **PERSON, ssn_last4="0000").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = lookup(client, **PERSON, ssn_last4="6789")  # even the right digits, while refused
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 900
    main = main_of(response)
    with app.test_request_context("/", headers={"Accept-Language": lang}):
        assert words(wait_in_words(retry_after)) in main
    assert {"en": "about 15 minutes", "es": "aproximadamente 15 minutos", "fr": "environ 15 minutes"}[lang] in main
    assert calls_the_center(main, lang)
    assert "letter" not in main and "carta" not in main and "lettre" not in main  # the number is on the page


def error_app(database_url: str) -> Flask:
    """The portal with a page that fails each way a page can (added before its first request)."""
    app = make_app(database_url, MAX_CONTENT_LENGTH=1000)

    def fail(status: int) -> str:
        if status == 500:
            raise RuntimeError("a bug")
        abort(status)

    app.add_url_rule("/fail/<int:status>", view_func=fail)
    return app


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_error_page_gives_the_call_center_and_the_wait_it_sends(database_url: str, lang: str) -> None:
    app = error_app(database_url)
    client = client_in(app, lang)
    answers = {
        404: client.get("/no/such/page"),
        405: client.delete("/lookup"),
        413: client.post("/lookup", data={"last_name": "x" * 5000}),
        400: client.post("/lookup", data={"last_name": "x"}),  # no CSRF token: the form expired
        500: client.get("/fail/500"),
        503: client.get("/fail/503"),
        429: client.get("/fail/429"),
    }
    for status, response in answers.items():
        assert response.status_code == status, status
        main = main_of(response)
        assert calls_the_center(main, lang), (status, main)
        assert "on your letter" not in main and "en su carta" not in main and "sur votre lettre" not in main
        if status in (429, 503):
            with app.test_request_context("/", headers={"Accept-Language": lang}):
                assert words(wait_in_words(int(response.headers["Retry-After"]))) in main, (status, main)
        else:
            assert "Retry-After" not in response.headers


def test_the_console_says_the_wait_in_english(database_url: str) -> None:
    """The console's refusals, for staff: the same wait in words, in the console's only language."""
    app = make_app(database_url, STAFF_LOGIN_LIMIT_ACCOUNT="3 per hour")
    account = make_staff(app)
    for _ in range(3):
        login(app.test_client(), account, password="wrong password!!")
    french = app.test_client()
    french.environ_base["HTTP_ACCEPT_LANGUAGE"] = "fr"
    refused = login(french, account)
    assert refused.status_code == 429
    seconds = int(refused.headers["Retry-After"])
    with app.test_request_context("/"):
        said = wait_in_words(seconds, english=True)
    assert said in ("about 1 hour", "about 59 minutes") and f"Wait {said}, then try again." in main_of(refused)


# --- signing out, and a session that ended --------------------------------------------------------


def verified(app: Flask, lang: str) -> FlaskClient:
    client = client_in(app, lang)
    assert lookup(client, **PERSON, ssn_last4="6789").headers["Location"] == "/exposure"
    return client


SIGNED_OUT = {"en": "You are signed out", "es": "Sesión cerrada", "fr": "Session fermée"}
ENDED_BY_SIGN_OUT = {
    "en": "Your session ended when you signed out.",
    "es": "Su sesión terminó porque usted la cerró.",
    "fr": "Votre session a pris fin parce que vous l'avez fermée.",
}
TIMED_OUT = {"en": "your session ended after 15 minutes", "es": "su sesión terminó", "fr": "votre session a pris fin"}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_signing_out_is_confirmed_and_a_page_reopened_afterwards_says_why_it_is_gone(app: Flask, lang: str) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = verified(app, lang)
    response = client.post("/sign-out", data={"csrf_token": csrf_token(client, "/exposure")})
    assert response.status_code == 303 and response.headers["Location"] == "/signed-out"
    page = client.get("/signed-out")
    assert page.status_code == 200 and SIGNED_OUT[lang] in main_of(page)
    assert 'href="/lookup"' in page.get_data(as_text=True) and calls_the_center(main_of(page), lang)
    with client.session_transaction() as session:
        assert set(session) == {"ended"}  # the word "signed-out", nothing about the person

    for path in ("/code", "/exposure"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["Location"] == "/lookup"
        form = client.get("/lookup")
        if path == "/code":
            assert ENDED_BY_SIGN_OUT[lang] in main_of(form)
        else:  # said once; afterwards it is a visitor who has not verified
            assert ENDED_BY_SIGN_OUT[lang] not in main_of(form)


@pytest.mark.parametrize("path", ["/code", "/exposure"])
def test_a_page_reopened_after_the_session_timed_out_says_so(app: Flask, path: str) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = verified(app, "fr")
    with app.app_context():
        db.session.execute(sa.update(Verification).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert client.get(path).headers["Location"] == "/lookup"
    assert TIMED_OUT["fr"] in main_of(client.get("/lookup"))


# --- the last four digits, and a full number pasted -----------------------------------------------

FULL = "987-65-4321"


@pytest.mark.parametrize("pasted", [FULL, "987654321", "987 65 4321", " 987 - 65 - 4321 "])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_full_ssn_pasted_gets_its_own_message_and_is_never_written_back(app: Flask, lang: str, pasted: str) -> None:
    assert import_patients(app, [patient_row(ssn=FULL)]) == []
    client = client_in(app, lang)
    response = lookup(client, **PERSON, ssn_last4=pasted)
    assert response.status_code == 400
    catalogue = i18n.compile_catalog(lang)
    message = catalogue.gettext("Enter only the last 4 digits of your Social Security number, never the full number.")
    assert message in text_of(response)
    body = response.get_data(as_text=True)
    digits = re.sub(r"\D", "", body)
    for part in ("98765", "987-65", "65-4321", "654321", "87654"):
        assert part not in body and re.sub(r"\D", "", part) not in digits.replace("4321", "")
    box = re.search(r"<input[^>]*id=\"ssn_last4\"[^>]*>", body)
    assert box and 'value=""' in box.group(0)


def test_the_last_four_box_lets_a_paste_through_and_asks_for_digits(client: FlaskClient) -> None:
    box = re.search(r"<input[^>]*id=\"ssn_last4\"[^>]*>", client.get("/lookup").get_data(as_text=True))
    assert box
    maxlength = int(re.search(r'maxlength="(\d+)"', box.group(0))[1])  # type: ignore[index]
    assert maxlength >= len(" 987 - 65 - 4321 ".strip()) and 'inputmode="numeric"' in box.group(0)


def test_the_last_four_still_verify_with_their_separators(app: Flask) -> None:
    assert import_patients(app, [patient_row(ssn=FULL)]) == []
    for typed in ("4321", " 43-21 ", "43 21"):
        assert lookup(app.test_client(), **PERSON, ssn_last4=typed).headers["Location"] == "/exposure"


def test_the_console_refuses_a_full_ssn_in_its_own_words(app: Flask) -> None:
    agent = signed_in(app, make_staff(app, "alice", "agent"))
    response = post_form(agent, "/agent/call", "/agent/call", **PERSON, ssn_last4=FULL, reference="")
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "Enter only the last 4 digits of the SSN. Never ask for the full number." in body
    assert "987-65" not in body and "98765" not in body


# --- the header, the organisation, and no English left in es and fr --------------------------------


def test_the_header_names_the_organisation_in_the_pages_language(app: Flask) -> None:
    for lang, name in (
        ("en", "Northwind Health Records, Inc. (demonstration)"),
        ("es", "Northwind Health Records, Inc. (demostración)"),
        ("fr", "Northwind Health Records, Inc. (démonstration)"),
    ):
        page = client_in(app, lang).get("/lookup").get_data(as_text=True)
        header = page.split("<header", 1)[1].split("</header>")[0]
        assert f'<span class="brand-name">{name}</span>' in header


def test_a_programme_file_may_give_the_organisations_name_per_language(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "programme.toml"
    path.write_text(
        PROGRAMME_TOML
        + '\n[programme.es]\norganization = "Registros de Salud Ejemplo"\nincident_summary = "Se copió."\n'
        + 'call_center_hours = "de lunes a viernes"\n',
        encoding="utf-8",
    )
    programme = load_programme(str(path))
    assert programme.in_language("es").organisation == "Registros de Salud Ejemplo"
    assert programme.complete_in("es")  # a name need not be translated for an answer to be complete
    client = make_app(database_url, PROGRAMME_FILE=str(path)).test_client()
    header = client.get("/", headers={"Accept-Language": "es"}).get_data(as_text=True).split("</header>")[0]
    assert "Registros de Salud Ejemplo" in header
    header = client.get("/", headers={"Accept-Language": "fr"}).get_data(as_text=True).split("</header>")[0]
    assert "Example Health Records, Inc." in header


# Names that stay as they are in every language: organisations, products, sites, programmes, places.
PROPER_NOUNS = (
    "Northwind Health Records",
    "SafeWatch Identity Protection",
    "P.O. Box 0000, Springfield, ST 00000",
    "AnnualCreditReport.com",
    "IdentityTheft.gov",
    "USPS Informed Delivery",
    "my Social Security",
    "Federal Trade Commission",
    "Explanation of Benefits",  # the US terms, given beside their translation
    "accounting of disclosures",
    "Identity Protection PIN",
    "1-800-MEDICARE",
    "English",
    "Equifax",
    "Experian",
    "TransUnion",
)
# Words of English that neither Spanish nor French uses: one of them on an es or fr page is a string
# left untranslated.
ENGLISH = set(
    "the your you and with what this our we please enter call number was were has have will from after "
    "before not of to are is months month year day help line back start sorry problem signed ended "
    "check details letter last digits security office privacy demonstration identity health records "
    "write us wait about seconds hour hours try again".split()
)


def english_words(text: str) -> set[str]:
    for name in PROPER_NOUNS:
        text = text.replace(name, " ")
    text = re.sub(r"https?://\S+|\S+@\S+", " ", text)
    return {word for word in re.findall(r"[^\W\d_]+", text.lower()) if word in ENGLISH}


def public_pages(app: Flask, lang: str) -> dict[str, str]:
    """Every public page and state a patient can meet, as text, in ``lang`` (by a person of its own)."""
    person = {**PERSON, "last_name": f"Okafor-{lang}"}
    client = client_in(app, lang)
    pages = {path: client.get(path) for path in ("/", "/lookup", "/no/such/page", "/signed-out")}
    pages["errors"] = lookup(client, last_name="", date_of_birth="", zip_code="", ssn_last4=FULL)
    pages["not-matched"] = lookup(client, **person, ssn_last4="0000")
    assert lookup(client, **person, ssn_last4="4321").headers["Location"] == "/exposure"
    pages["exposure"] = client.get("/exposure")
    assert client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")}).status_code == 303
    pages["code"] = client.get("/code")
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/code")})
    client.get("/code")
    pages["ended"] = client.get("/lookup")
    for _ in range(5):
        refused = lookup(client, **person, ssn_last4="0000")
    pages["throttled"] = refused
    return {name: text_of(response) for name, response in pages.items()}


def test_spanish_and_french_pages_carry_no_english_but_names(database_url: str) -> None:
    app = make_app(database_url, VERIFY_LIMIT_PERSON="3 per 15 minutes")
    rows = [
        patient_row(record_id=lang, last_name=f"Okafor-{lang}", ssn=FULL, exposed_fields=ALL_FIELDS)
        for lang in LANGUAGES
    ]
    assert import_patients(app, rows) == []
    with app.app_context():
        rows = [(n, {"code": f"ZX-{n}", "enroll_by": "2027-06-30"}) for n in range(2, 5)]
        import_codes(db.session, services().cipher, rows, on_reject=pytest.fail)
    english = public_pages(app, "en")
    assert all(english_words(text) for text in english.values())  # the check finds English where it is
    for lang in ("es", "fr"):
        pages = public_pages(app, lang)
        assert "throttled" in pages and pages["throttled"] != pages["not-matched"]
        left = {name: sorted(english_words(text)) for name, text in pages.items()}
        assert {name: words for name, words in left.items() if words} == {}, lang


def test_hashed_is_never_called_encrypted() -> None:
    encrypted = re.compile(r"encrypt|cifrad|cifrar|encript|chiffrée|chiffrées|chiffré|crypté", re.I)
    for lang in ("es", "fr"):
        catalog = read_po((i18n.CATALOG_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb"))
        hashing = [m for m in catalog if m.id and re.search(r"hash|scrambled", str(m.id))]
        assert len(hashing) >= 2
        assert [m.string for m in hashing if encrypted.search(str(m.string))] == [], lang
