"""The public site end to end, over HTTP, on SQLite and PostgreSQL: landing page, lookup, exposure,
claim, sessions, errors and headers."""

from __future__ import annotations

import hashlib
import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import itsdangerous.timed
import pytest
import sqlalchemy as sa
from babel.dates import format_date
from conftest import csrf_token, import_patients, lookup, patient_row
from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from werkzeug.test import TestResponse

import portal.app
import portal.identity
from portal.config import DEFAULTS
from portal.extensions import csrf, db
from portal.identity import format_reference
from portal.importer import import_codes
from portal.models import ActivationCode, Base, Patient, Verification, utcnow
from portal.services import services

COOKIE = "portal"  # the session cookie's name outside production (see portal.config)
POOL_EMPTY_TEXT = "All activation codes are handed out at the moment"
SESSION_ENDED_TEXT = "your session ended"
FORM_EXPIRED_TEXT = "This form expired or was sent from another page"


# --- every response of this module: never a 500, never a stack trace ------------------------------


@pytest.fixture(autouse=True)
def no_crash_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = FlaskClient.open

    def checked_open(self: FlaskClient, *args: Any, **kwargs: Any) -> TestResponse:
        response = opened(self, *args, **kwargs)
        assert response.status_code != 500, response.get_data(as_text=True)
        assert b"Traceback" not in response.data
        assert b'File "' not in response.data
        return response

    monkeypatch.setattr(FlaskClient, "open", checked_open)


# --- helpers -------------------------------------------------------------------------------------


def page(response: TestResponse) -> str:
    return html.unescape(response.get_data(as_text=True))


def exposed_on(text: str) -> set[str]:
    return set(re.findall(r'id="field-([a-z_]+)"', text))


def verify(app: Flask, **fields: str) -> FlaskClient:
    """A new browser that passes the lookup."""
    client = app.test_client()
    response = lookup(client, **fields)
    assert response.status_code == 303, page(response)
    assert response.headers["Location"] == "/exposure"
    return client


def post_with_token(client: FlaskClient, path: str, token_from: str = "/exposure") -> TestResponse:
    return client.post(path, data={"csrf_token": csrf_token(client, token_from)})


def add_codes(app: Flask, codes: dict[str, date]) -> None:
    rows = [{"code": code, "enroll_by": by.isoformat()} for code, by in codes.items()]
    with app.app_context():
        report = import_codes(db.session, services().cipher, enumerate(rows, start=2), on_reject=pytest.fail)
        assert report.added == len(codes)


def pool_rows(app: Flask) -> list[tuple[Any, ...]]:
    with app.app_context():
        table = ActivationCode.__table__
        return [tuple(r) for r in db.session.execute(sa.select(table).order_by(table.c.id))]


def shown_code(text: str) -> str:
    codes = re.findall(r"<code>([^<]*)</code>", text)
    assert len(codes) == 1, codes
    return codes[0]


def long_date(day: date) -> str:
    """A date as the English pages write it ("June 30, 2027")."""
    return format_date(day, "long", locale="en")


def letter_reference(app: Flask, record_id: str) -> str:
    with app.app_context():
        return services().hasher.letter_reference(record_id)


# --- landing page --------------------------------------------------------------------------------


def test_landing_page_explains_the_breach_and_the_site(app: Flask, client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    text = page(response)
    with app.app_context():
        programme = services().programme
    assert programme.organisation in text
    assert "What happened" in text and programme.incident_summary in text
    assert "What this site does, and does not do" in text
    assert "never asks for your full Social Security number" in text
    assert "do not keep your name, date of birth" in text
    assert programme.call_center_phone in text
    assert 'href="/lookup"' in response.get_data(as_text=True)
    assert client.get("/lookup").status_code == 200


# --- lookup and exposure -------------------------------------------------------------------------

PEOPLE = [
    patient_row(),  # García-López, 1980-04-23, 10001, SSN ...6789: name; date_of_birth; ssn
    patient_row(
        record_id="R-2",
        last_name="O'Brien",
        date_of_birth="1955-12-01",
        ssn="987-65-4321",
        zip="02134",
        exposed_fields="name;address;phone;health_insurance",
    ),
    patient_row(
        record_id="R-3",
        last_name="Nguyễn",
        date_of_birth="1990-07-04",
        ssn="",
        zip="94110",
        exposed_fields="name;email;medical_record_number;clinical_data",
    ),
    patient_row(
        record_id="R-4",
        last_name="van der Berg",
        date_of_birth="1947-02-28",
        ssn="555-12-0042",
        zip="60614",
        exposed_fields="name;date_of_birth;address;phone;ssn;email;medical_record_number;health_insurance;clinical_data",
    ),
]
SPELLINGS = {
    "R-1": [
        ("garcia lopez", "1980-04-23", "10001-2345", "6789"),
        ("GARCIA-LOPEZ", "1980-04-23", "100012345", "6789"),
        ("García López", " 1980-04-23 ", " 10001 ", " 6789 "),
    ],
    "R-2": [
        ("OBrien", "1955-12-01", "02134", "4321"),
        ("o’brien", "1955-12-01", "02134-1234", "4321"),
        ("O BRIEN", "1955-12-01", "02134 1234", "4321"),
    ],
    "R-3": [("Nguyen", "1990-07-04", "94110", None), ("NGUYỄN", "1990-07-04", "94110-0001", None)],
    "R-4": [("VanDerBerg", "1947-02-28", "60614", "0042"), ("van-der-berg", "1947-02-28", "606141111", "0042")],
}


def test_many_spellings_verify_and_see_exactly_their_exposed_fields(app: Flask) -> None:
    assert import_patients(app, PEOPLE) == []
    with app.app_context():
        programme = services().programme
    for person in PEOPLE:
        expected = set(person["exposed_fields"].split(";"))
        for last_name, born, zip_code, last4 in SPELLINGS[person["record_id"]]:
            if last4 is None:
                # The letter's reference, typed in lower case, grouped, with look-alike letters.
                reference = format_reference(letter_reference(app, person["record_id"])).lower()
                reference = reference.replace("1", "l").replace("0", "o")
                client = verify(app, last_name=last_name, date_of_birth=born, zip_code=zip_code, reference=reference)
            else:
                client = verify(app, last_name=last_name, date_of_birth=born, zip_code=zip_code, ssn_last4=last4)
            response = client.get("/exposure")
            assert response.status_code == 200
            text = page(response)
            assert exposed_on(text) == expected, (last_name, zip_code)
            assert programme.call_center_phone in text
            assert long_date(programme.enrol_by) in text
            assert "Get my activation code" in text


def test_verified_person_sees_exposure(app: Flask, client: FlaskClient) -> None:
    assert import_patients(app, [patient_row()]) == []
    response = lookup(
        client, last_name="garcia lopez", date_of_birth="1980-04-23", zip_code="10001-2345", ssn_last4="6789"
    )
    assert response.status_code == 303
    text = client.get("/exposure").get_data(as_text=True)
    assert exposed_on(text) == {"name", "date_of_birth", "ssn"}


# --- no oracle -----------------------------------------------------------------------------------

KNOWN_SSN_ROW = patient_row(
    record_id="R-SSN", last_name="Okafor", date_of_birth="1975-06-15", zip="30301", ssn="321-54-4321"
)
KNOWN_SSN = dict(last_name="Okafor", date_of_birth="1975-06-15", zip_code="30301", ssn_last4="4321")
KNOWN_REF_ROW = patient_row(record_id="R-REF", last_name="Tanaka", date_of_birth="1962-11-30", ssn="", zip="98101")


def _near_misses(known: dict[str, str], factor: str, unknown_factor: str) -> dict[str, dict[str, str]]:
    """One wrong field at a time, each wrong value the same length as the right one; and a stranger."""
    wrong_factor = known[factor][:-1] + ("2" if known[factor][-1] != "2" else "3")
    return {
        "wrong last name": {**known, "last_name": known["last_name"][:-1] + "x"},
        "wrong date of birth": {**known, "date_of_birth": known["date_of_birth"][:-2] + "16"},
        "wrong ZIP": {**known, "zip_code": known["zip_code"][:-1] + "9"},
        f"wrong {factor}": {**known, factor: wrong_factor},
        "unknown person": {
            "last_name": "Ibekwe"[: len(known["last_name"])].ljust(len(known["last_name"]), "e"),
            "date_of_birth": "1968-03-02",
            "zip_code": "60614",
            factor: unknown_factor,
        },
    }


NEVER_ECHOED = ("ssn_last4", "reference")


def _normalised(body: str, submitted: dict[str, str]) -> str:
    """The body with only the CSRF token and the echoed form values blanked out.

    Each echoed value is first checked to be exactly what was submitted (and the SSN digits and
    the letter reference never echoed at all), so the blanking can hide nothing else; together
    with same-length values it makes the comparison byte for byte.
    """
    body, tokens = re.subn(r'(name="csrf_token"[^>]*value=")[^"]+"', r'\1TOKEN"', body)
    assert tokens == 1
    for name in ("last_name", "zip_code", "ssn_last4", "reference"):
        pattern = re.compile(rf'(<input[^>]*name="{name}"[^>]*value=")([^"]*)"')
        echoed = pattern.findall(body)
        expected = "" if name in NEVER_ECHOED else html.escape(submitted.get(name, ""), quote=True)
        assert [value for _, value in echoed] == [expected], name
        body = pattern.sub(r'\1VALUE"', body)
    return body


# Headers whose values may differ between any two requests without telling anything: the date,
# and a refusal's retry time (its per-person bucket is keyed on what was typed, so it behaves
# the same whether or not the person exists; see test_throttle).
VOLATILE_HEADERS = {"Date", "Retry-After", "X-Request-ID"}


@pytest.mark.parametrize("factor", ["ssn_last4", "reference"])
def test_a_failed_lookup_looks_and_costs_the_same_whatever_was_wrong(
    app: Flask, monkeypatch: pytest.MonkeyPatch, factor: str
) -> None:
    if factor == "ssn_last4":
        assert import_patients(app, [KNOWN_SSN_ROW]) == []
        known = dict(KNOWN_SSN)
        unknown_factor = "8765"
    else:
        assert import_patients(app, [KNOWN_REF_ROW]) == []
        known = dict(last_name="Tanaka", date_of_birth="1962-11-30", zip_code="98101")
        known["reference"] = letter_reference(app, "R-REF")
        unknown_factor = "7" * 24

    # What each failed attempt costs: Argon2id evaluations and SQL statements.
    stretched: list[bytes] = []
    real_stretch = portal.identity.stretch
    monkeypatch.setattr(portal.identity, "stretch", lambda *a: stretched.append(a[0]) or real_stretch(*a))
    statements: list[str] = []
    with app.app_context():
        engine = db.engine

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    outcomes = {}
    try:
        for label, fields in _near_misses(known, factor, unknown_factor).items():
            client = app.test_client()
            client.get("/lookup")
            stretched.clear()
            statements.clear()
            response = lookup(client, **fields)  # (its own GET for the token runs no SQL and no hash)
            with client.session_transaction() as session:
                assert "verification" not in session, label
            outcomes[label] = (
                response.status_code,
                _normalised(response.get_data(as_text=True), fields),
                len(response.data),
                {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS},
                len(stretched),
                list(statements),
            )
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)

    first_label, first = next(iter(outcomes.items()))
    assert first[0] == 200
    assert "We could not match these details" in first[1]
    assert "Set-Cookie" not in first[3]
    assert first[4] >= 1 and first[5], "a failed lookup must still hash and query"
    for label, outcome in outcomes.items():
        for part, mine, theirs in zip(
            ("status", "body", "length", "headers", "hashes", "SQL"), outcome, first, strict=True
        ):
            assert mine == theirs, f"{label} differs from {first_label} in its {part}"
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Verification)) == 0

    # The right details do verify: the near misses above were near misses of a real record.
    assert lookup(app.test_client(), **known).status_code == 303


# --- bad input -----------------------------------------------------------------------------------


def boxes(month: str, day: str, year: str) -> dict[str, str]:
    """The date of birth as the three boxes send it (and no single field)."""
    return {"date_of_birth": "", "date_of_birth_month": month, "date_of_birth_day": day, "date_of_birth_year": year}


GOOD = dict(last_name="Smith", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
FULL_SSN_TEXT = "Enter only the last 4 digits of your Social Security number"
EITHER_TEXT = "Enter the last 4 digits of your Social Security number, or the reference code"
BAD_INPUT = {
    "no last name": ({"last_name": ""}, "last_name", "Enter your last name"),
    "last name without letters": ({"last_name": "-- ' --"}, "last_name", "Enter your last name"),
    "last name too long": ({"last_name": "a" * 101}, "last_name", "at most 100 characters"),
    "no date of birth": ({"date_of_birth": ""}, "date_of_birth", "Enter your date of birth"),
    "US date order": ({"date_of_birth": "04/23/1980"}, "date_of_birth", "must be a real date"),
    "impossible date": ({"date_of_birth": "1980-02-30"}, "date_of_birth", "must be a real date"),
    "future birth": ({"date_of_birth": "2999-01-01"}, "date_of_birth", "must be in the past"),
    "birth before 1900": ({"date_of_birth": "1899-12-31"}, "date_of_birth", "in 1900 or later"),
    "date too long": ({"date_of_birth": "1980-04-230"}, "date_of_birth", "must be a real date"),
    "boxes: no day": (boxes("4", "", "1980"), "date_of_birth", "must include a day"),
    "boxes: month 13": (boxes("13", "1", "1980"), "date_of_birth", "must be a real date"),
    "boxes: 30 February": (boxes("2", "30", "1980"), "date_of_birth", "must be a real date"),
    "boxes: two-digit year": (boxes("4", "23", "80"), "date_of_birth", "year as 4 numbers"),
    "boxes: letters": (boxes("IV", "23", "1980"), "date_of_birth", "must be a real date"),
    "no ZIP": ({"zip_code": ""}, "zip_code", "5-digit ZIP code"),
    "short ZIP": ({"zip_code": "1000"}, "zip_code", "5-digit ZIP code"),
    "letters in ZIP": ({"zip_code": "1OOO1"}, "zip_code", "5-digit ZIP code"),
    "ZIP too long": ({"zip_code": "10001-23456"}, "zip_code", "5-digit ZIP code"),
    "three SSN digits": ({"ssn_last4": "678"}, "ssn_last4", EITHER_TEXT),
    "letters in SSN": ({"ssn_last4": "67a9"}, "ssn_last4", EITHER_TEXT),
    "full SSN": ({"ssn_last4": "123-45-6789"}, "ssn_last4", FULL_SSN_TEXT),
    "SSN and reference": ({"reference": "7" * 24}, "ssn_last4", EITHER_TEXT),
    "neither SSN nor reference": ({"ssn_last4": ""}, "ssn_last4", EITHER_TEXT),
    "short reference": ({"ssn_last4": "", "reference": "ABCD-EFGH"}, "reference", "24-character reference"),
    "reference with U": ({"ssn_last4": "", "reference": "U" * 24}, "reference", "24-character reference"),
    "reference too long": ({"ssn_last4": "", "reference": "7" * 41}, "reference", "24-character reference"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_malformed_fields_get_a_400_with_a_message_on_that_field(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    changes, field, message = BAD_INPUT[case]
    hashed: list[bytes] = []
    monkeypatch.setattr(portal.identity, "stretch", lambda *a: hashed.append(a[0]) or b"\0" * 32)
    response = lookup(client, **{**GOOD, **changes})
    assert response.status_code == 400
    text = page(response)
    errors = dict(re.findall(r'<p class="error" id="([a-z_0-9]+)-error"><span[^>]*>Error:</span> ([^<]*)</p>', text))
    assert list(errors) == [field], errors
    assert message in errors[field]
    assert "There is a problem" in text and "<title>Error: " in text
    # The summary links to the box, and the box (or the date's group of boxes) names its error.
    assert re.search(rf'<a href="#{field}(_month|_day|_year)?">', text)
    if field == "date_of_birth":  # the three boxes' group, as the GOV.UK date pattern does
        described = re.search(r'<fieldset class="date" role="group" aria-describedby="([^"]*)"', text)
    else:
        described = re.search(rf'<input[^>]*aria-describedby="([^"]*)"[^>]*name="{field}"', text)
    assert described and f"{field}-error" in described.group(1).split()
    assert hashed == [], "malformed input must be refused before any hashing"
    with client.session_transaction() as session:
        assert "verification" not in session


@pytest.mark.parametrize("left_out", ["last_name", "date_of_birth", "zip_code", "ssn_last4", "reference"])
def test_a_field_left_out_of_the_request_is_not_a_crash(app: Flask, client: FlaskClient, left_out: str) -> None:
    """Browsers send every field, scripts may not: a missing field is just an empty one."""
    data = {**GOOD, "reference": "", "csrf_token": csrf_token(client)}
    del data[left_out]
    response = client.post("/lookup", data=data)
    if left_out == "reference":  # the SSN digits were given: a well-formed (unmatched) lookup
        assert response.status_code == 200
        assert "We could not match these details" in page(response)
    else:
        assert response.status_code == 400
        errors = re.findall(r'<p class="error" id="([a-z_0-9]+)-error">', response.get_data(as_text=True))
        assert errors == [left_out]


def test_requests_that_cannot_be_read_get_a_clear_4xx(app: Flask, client: FlaskClient) -> None:
    # No CSRF token, or a forged one: the "form expired" page.
    for data in (GOOD, {**GOOD, "csrf_token": "forged"}):
        response = client.post("/lookup", data=data)
        assert response.status_code == 400
        assert FORM_EXPIRED_TEXT in page(response)
    # The claim and sign-out forms are protected the same way.
    assert FORM_EXPIRED_TEXT in page(client.post("/claim"))
    assert client.post("/sign-out").status_code == 400

    # A body over MAX_CONTENT_LENGTH.
    limit = app.config["MAX_CONTENT_LENGTH"]
    token = csrf_token(client)
    response = client.post("/lookup", data={**GOOD, "csrf_token": token, "last_name": "a" * (limit + 1)})
    assert response.status_code == 413
    assert "That request is too large" in page(response)

    # Form fields sent twice, as JSON, or as bytes that are not UTF-8.
    response = client.post("/lookup", data={**GOOD, "csrf_token": token, "last_name": ["Smith", "Jones"]})
    assert response.status_code in (200, 400)
    assert client.post("/lookup", json={**GOOD, "csrf_token": token}).status_code == 400
    response = client.post(
        "/lookup",
        data=b"last_name=%ff%fe&csrf_token=" + token.encode(),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400

    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "There is no page at this address" in page(response)
    for method, path in (("GET", "/claim"), ("GET", "/sign-out"), ("POST", "/"), ("DELETE", "/lookup")):
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path)
        assert "This page cannot be used that way" in page(response)


# --- the session ---------------------------------------------------------------------------------


def _cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def test_the_session_cookie_holds_only_an_opaque_token(app: Flask) -> None:
    row = patient_row()
    assert import_patients(app, [row]) == []
    client = verify(app, last_name="García-López", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")

    raw = _cookie(client)
    data = app.session_interface.get_signing_serializer(app).loads(raw)  # type: ignore[attr-defined]
    assert set(data) == {"verification", "_permanent"}
    token = data["verification"]
    assert isinstance(token, str) and re.fullmatch(r"[A-Za-z0-9_\-]{40,}", token)

    with app.app_context():
        patient = db.session.scalars(sa.select(Patient)).one()
        verification = db.session.scalars(sa.select(Verification)).one()
        assert verification.patient_id == patient.id
        # Only the token's digest is stored: a database dump cannot be replayed as a session.
        assert verification.token_digest == hashlib.sha256(token.encode()).digest()
        known = [patient.public_id, patient.lookup_digest.hex(), verification.token_digest.hex()]
    plain = [row["last_name"], "garcia", "1980-04-23", "10001", "6789", row["first_name"], row["record_id"]]
    for value in [*plain, *known]:
        assert value.lower() not in str(data).lower()
        assert value.lower() not in raw.lower()

    # The cookie is signed: altered, it is worth nothing.
    tampered = app.test_client()
    tampered.set_cookie(COOKIE, raw[:-2] + ("AA" if not raw.endswith("AA") else "BB"))
    assert tampered.get("/exposure").status_code == 303


def test_a_session_cookie_in_flasks_own_format_still_opens_and_one_of_ours_opens_in_flasks(app: Flask) -> None:
    """The portal signs sessions with a serializer of its own (built once, no compression attempt):
    cookies made before it, compressed or not, must still open (nobody is signed out at a deploy),
    and its cookies are Flask's format, signed with the same key."""
    assert import_patients(app, [patient_row()]) == []
    client = verify(app, last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    stock = SecureCookieSessionInterface().get_signing_serializer(app)
    assert stock is not None
    ours = _cookie(client)
    data = stock.loads(ours, max_age=app.config["PERMANENT_SESSION_LIFETIME"])
    assert set(data) == {"verification", "_permanent"}

    for extra in ({}, {"_flashes": [("message", "a message said once " * 5)]}):  # the second compresses
        earlier = stock.dumps({**data, **extra})
        assert earlier.startswith(".") == bool(extra)
        before_the_change = app.test_client()
        before_the_change.set_cookie(COOKIE, earlier)
        assert before_the_change.get("/exposure").status_code == 200


@pytest.mark.parametrize("minutes_ago, status", [(14, 200), (16, 303)])
def test_a_session_cookie_signed_longer_ago_than_its_lifetime_verifies_no_one(
    app: Flask, monkeypatch: pytest.MonkeyPatch, minutes_ago: int, status: int
) -> None:
    """The cookie's own signed time stamp ends it after 15 minutes, whatever the browser keeps (a
    copied cookie, a clock set back), even while the verification behind it is still live."""
    assert import_patients(app, [patient_row()]) == []
    client = verify(app, last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    data = serializer.loads(_cookie(client))
    now = time.time()
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: now - minutes_ago * 60)
    signed_then = serializer.dumps(data)
    monkeypatch.undo()
    replayed = app.test_client()
    replayed.set_cookie(COOKIE, signed_then)
    assert replayed.get("/exposure").status_code == status


@pytest.mark.parametrize("signed_with, status", [("the app's key", 303), ("another key", 400)])
def test_a_csrf_token_signed_as_flask_wtf_signs_it_passes_and_under_another_key_does_not(
    app: Flask, signed_with: str, status: int
) -> None:
    """CSRF tokens are signed by a serializer built once (``security.csrf_serializer``), not
    Flask-WTF's own: a form served before a deploy must still submit after it, so both sign alike."""
    assert import_patients(app, [patient_row()]) == []
    client = app.test_client()
    served = csrf_token(client)
    with client.session_transaction() as session:
        raw = session["csrf_token"]
    flask_wtfs = URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token")  # Flask-WTF's, as it builds it
    assert flask_wtfs.loads(served) == raw
    secret = app.secret_key if signed_with == "the app's key" else "another key of at least 32 characters"
    token = URLSafeTimedSerializer(secret, salt="wtf-csrf-token").dumps(raw)
    fields = dict(last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    assert client.post("/lookup", data={**fields, "reference": "", "csrf_token": token}).status_code == status


def test_exposure_without_verification_redirects_to_the_lookup(client: FlaskClient) -> None:
    for path in ("/exposure", "/code"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["Location"] == "/lookup"
        assert SESSION_ENDED_TEXT not in page(client.get("/lookup"))


def test_an_expired_verification_ends_the_session(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    add_codes(app, {"EXPIRY-TEST-1": date.today() + timedelta(days=30)})
    details = dict(last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    reader, claimer = verify(app, **details), verify(app, **details)
    assert reader.get("/exposure").status_code == 200
    token = csrf_token(claimer, "/exposure")  # taken while still verified

    with app.app_context():
        assert (
            db.session.execute(sa.update(Verification).values(expires_at=utcnow() - timedelta(seconds=1))).rowcount == 2
        )
        db.session.commit()

    response = reader.get("/exposure")
    assert response.status_code == 303 and response.headers["Location"] == "/lookup"
    assert SESSION_ENDED_TEXT in page(reader.get("/lookup"))
    with reader.session_transaction() as session:
        assert "verification" not in session
    # Said once; afterwards it is simply a visitor who has not verified.
    assert reader.get("/code").headers["Location"] == "/lookup"
    assert SESSION_ENDED_TEXT not in page(reader.get("/lookup"))

    # An expired session cannot claim a code either.
    response = claimer.post("/claim", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/lookup"
    assert SESSION_ENDED_TEXT in page(claimer.get("/lookup"))
    assert all(row[6] is None for row in pool_rows(app)), "an expired session claimed a code"


def test_a_verification_lasts_as_long_as_the_page_and_the_cookie_say(app: Flask) -> None:
    """One lifetime in four places, at the shipped setting (tests/conftest.py leaves it alone): the
    stored verification, the session cookie, and the page telling a person their session ended
    "after 15 minutes". tests/test_config.py ties the setting to README and SECURITY.md."""
    assert app.config["VERIFICATION_TTL_SECONDS"] == DEFAULTS["VERIFICATION_TTL_SECONDS"]
    assert import_patients(app, [patient_row()]) == []
    before = datetime.now(UTC).replace(microsecond=0)
    client = verify(app, last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    after = datetime.now(UTC)
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.expires is not None
    with app.app_context():
        verification = db.session.scalars(sa.select(Verification)).one()
        lasts = verification.expires_at - verification.created_at
        db.session.execute(sa.update(Verification).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert client.get("/exposure").status_code == 303
    said = re.search(r"session ended after (\d+) minutes", page(client.get("/lookup")))
    assert said, "the page no longer says how long a session lasts"
    promised = timedelta(minutes=int(said[1]))
    assert lasts == promised == timedelta(minutes=15)
    assert before + promised <= cookie.expires.replace(tzinfo=UTC) <= after + promised


def test_signing_out_ends_the_session_on_the_server(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = verify(app, last_name="garcia lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    stolen = _cookie(client)

    # Before signing out, a copy of the cookie works in another browser (so the check below means something).
    replay = app.test_client()
    replay.set_cookie(COOKIE, stolen)
    assert replay.get("/exposure").status_code == 200

    response = post_with_token(client, "/sign-out")
    assert response.status_code == 303 and response.headers["Location"] == "/signed-out"
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Verification)) == 0
    assert client.get("/exposure").headers["Location"] == "/lookup"

    replay = app.test_client()
    replay.set_cookie(COOKIE, stolen)
    response = replay.get("/exposure")
    assert response.status_code == 303 and response.headers["Location"] == "/lookup"


def test_a_new_lookup_in_the_same_browser_starts_over(app: Flask) -> None:
    """On a shared computer, the next person's lookup must not leave the last person's page open:
    a failed one ends the verification, in this browser and on the server (a copy of its cookie
    no longer works), and a second try still passes (its form token survives)."""
    assert import_patients(app, [patient_row()]) == []
    person = dict(last_name="García-López", date_of_birth="1980-04-23", zip_code="10001")
    client = verify(app, **person, ssn_last4="6789")
    copied = _cookie(client)
    assert client.get("/exposure").status_code == 200

    assert lookup(client, **person, ssn_last4="0000").status_code == 200  # not matched
    assert client.get("/exposure").headers["Location"] == "/lookup"
    replay = app.test_client()
    replay.set_cookie(COOKIE, copied)
    assert replay.get("/exposure").headers["Location"] == "/lookup"
    assert lookup(client, **person, ssn_last4="6789").headers["Location"] == "/exposure"


# --- headers -------------------------------------------------------------------------------------


def _directives(response: TestResponse) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    directives = {}
    for part in policy.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def _check_headers(label: str, response: TestResponse) -> None:
    csp = _directives(response)
    assert csp["default-src"] == ["'self'"], label
    assert csp["object-src"] == ["'none'"], label
    assert csp["base-uri"] == ["'none'"], label
    assert csp["frame-ancestors"] == ["'none'"], label
    policy = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy and "*" not in policy, label
    assert response.headers["X-Content-Type-Options"] == "nosniff", label
    assert response.headers["Referrer-Policy"] == "same-origin", label
    assert "Strict-Transport-Security" not in response.headers, label  # plain http
    if response.mimetype == "text/html":
        # The policy forbids inline code, so no page may rely on it.
        body = response.get_data(as_text=True).lower()
        assert "<script" not in body and "<style" not in body and " style=" not in body, label
        assert re.search(r"\son[a-z]+=", body) is None, label


def _pages(app: Flask) -> Iterator[tuple[str, TestResponse]]:
    """Every kind of page the site serves, in a state where each of them can be reached."""
    assert (
        import_patients(app, [patient_row(), patient_row(record_id="R-2", last_name="Other", ssn="111-22-3333")]) == []
    )
    add_codes(app, {"HDR-CODE-0001": date.today() + timedelta(days=30)})
    anonymous = app.test_client()
    yield "/", anonymous.get("/")
    yield "/lookup", anonymous.get("/lookup")
    yield "/lookup not matched", lookup(anonymous, **GOOD)
    yield "/lookup 400", lookup(anonymous, **{**GOOD, "zip_code": "x"})
    yield "400 form expired", anonymous.post("/lookup", data=GOOD)
    yield "404", anonymous.get("/nowhere")
    yield "405", anonymous.get("/claim")
    yield "413", anonymous.post("/lookup", data={"x": "y" * (app.config["MAX_CONTENT_LENGTH"] + 1)})
    yield "static", anonymous.get("/static/portal.css")

    client = verify(app, last_name="García-López", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    yield "/exposure", client.get("/exposure")
    yield "/claim", post_with_token(client, "/claim")
    yield "/code", client.get("/code")
    other = verify(app, last_name="Other", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="3333")
    yield "503 pool empty", post_with_token(other, "/claim")


def test_security_headers_on_every_page(app: Flask) -> None:
    seen = {}
    for label, response in _pages(app):
        seen[label] = response.status_code
        _check_headers(label, response)
        if label in ("/exposure", "/code", "/lookup", "503 pool empty"):
            assert response.headers["Cache-Control"] == "no-store", label
        if label == "static":  # the stylesheet shows nothing of anyone: browsers may keep it
            assert "no-store" not in response.headers.get("Cache-Control", ""), label
    assert seen == {
        "/": 200, "/lookup": 200, "/lookup not matched": 200, "/lookup 400": 400, "400 form expired": 400,
        "404": 404, "405": 405, "413": 413, "static": 200,
        "/exposure": 200, "/claim": 303, "/code": 200, "503 pool empty": 503,
    }  # fmt: skip


LANDING_HEADERS = [
    "Content-Type", "Content-Length", "Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
    "Cross-Origin-Opener-Policy", "Permissions-Policy", "Cache-Control", "X-Request-ID", "Vary",
]  # fmt: skip


def test_one_hook_before_and_one_after_every_request_do_the_work_of_several(app: Flask, client: FlaskClient) -> None:
    """The CSRF check, the language switch and the request id run in the portal's one hook before
    a request, the security headers, X-Request-ID, metrics and log line in its one hook after:
    every hook Flask runs costs it a lookup and a coroutine check. What they send is unchanged:
    the landing page's headers in their order, and a switch's redirect or a refused form has the
    same security headers and a request id of its own."""

    def portals(hooks: list[Any]) -> list[str]:
        return [hook.__name__ for hook in hooks if hook.__module__ == "portal.app"]

    assert portals(app.before_request_funcs[None]) == ["_before_request"]
    assert portals(app.after_request_funcs[None]) == ["_after_request"]
    # Flask-WTF's own hook stands aside (its check is the portal's hook's): refused below all the same.
    assert app.config["WTF_CSRF_CHECK_DEFAULT"] is False
    landing = client.get("/")
    assert [name for name, _ in landing.headers] == LANDING_HEADERS
    assert re.fullmatch(r"[0-9a-f]{32}", landing.headers["X-Request-ID"])
    switched, refused = client.get("/?lang=es"), client.post("/lookup", data=GOOD)
    assert (switched.status_code, refused.status_code) == (303, 400)
    ids = set()
    for label, response in (("switched", switched), ("refused", refused)):
        _check_headers(label, response)
        assert response.headers["Cache-Control"] == "no-store", label
        ids.add(response.headers["X-Request-ID"])
    assert len(ids | {landing.headers["X-Request-ID"]}) == 3


def test_flask_asks_once_a_function_whether_it_is_a_coroutine_and_still_wraps_async_views(app: Flask) -> None:
    async def later() -> str:
        return "later"

    def now() -> str:
        return "now"

    client = app.test_client()
    client.get("/")
    before = portal.app._is_coroutine_function.cache_info()
    assert client.get("/").status_code == 200
    assert portal.app._is_coroutine_function.cache_info().misses == before.misses  # hooks and view: not again
    # A coroutine function is still handed to Flask's async_to_sync (running it needs a thread with
    # no event loop, which a browser test run earlier in this process may not leave); others as they are.
    assert app.ensure_sync(now) is now
    wrapped = app.ensure_sync(later)
    assert wrapped is not later and wrapped.awaitable is later  # type: ignore[attr-defined]
    misses = portal.app._is_coroutine_function.cache_info().misses
    assert app.ensure_sync(later) is not later and app.ensure_sync(now) is now
    assert portal.app._is_coroutine_function.cache_info().misses == misses


def test_csrf_exemptions_are_looked_up_only_for_the_methods_checked(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask-WTF's own hook looked a view's exemption up on every GET before it looked at the
    method; the portal's asks only for POST, PUT, PATCH and DELETE, and refuses the same forms."""
    looked_up: list[str] = []
    is_exempt = csrf._is_exempt

    def recorded() -> bool:
        looked_up.append(request.method)
        return is_exempt()

    monkeypatch.setattr(csrf, "_is_exempt", recorded)
    assert client.get("/").status_code == 200 and client.get("/lookup").status_code == 200
    assert looked_up == []
    assert FORM_EXPIRED_TEXT in page(client.post("/lookup", data=GOOD))
    assert client.post("/sign-out").status_code == 400
    assert looked_up == ["POST", "POST"]
    app.config["WTF_CSRF_ENABLED"] = False  # switched off at run time (bench/ablation_app.py): not checked
    assert client.post("/sign-out").status_code != 400


def test_hsts_only_over_https(app: Flask, client: FlaskClient) -> None:
    for path in ("/", "/lookup", "/nowhere"):
        secure = client.get(path, base_url="https://localhost")
        hsts = secure.headers.get("Strict-Transport-Security", "")
        max_age = re.search(r"max-age=(\d+)", hsts)
        assert max_age and int(max_age.group(1)) >= 365 * 24 * 3600, path
        assert "Strict-Transport-Security" not in client.get(path).headers
    # A client cannot claim https for itself when no proxy is trusted.
    spoofed = client.get("/", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in spoofed.headers


# --- claiming a code -----------------------------------------------------------------------------


def test_claim_flow_one_code_per_person_and_the_same_one_again(app: Flask) -> None:
    rows = [
        patient_row(),
        patient_row(record_id="R-2", last_name="Second", ssn="222-33-4444"),
        patient_row(record_id="R-3", last_name="Third", ssn="333-44-5555"),
    ]
    assert import_patients(app, rows) == []
    soon, later = date.today() + timedelta(days=40), date.today() + timedelta(days=80)
    add_codes(app, {"FLOW-AAAA-0001": later, "FLOW-BBBB-0002": soon})
    with app.app_context():
        programme = services().programme

    first = verify(app, last_name="garcia lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    response = post_with_token(first, "/claim")
    assert response.status_code == 303 and response.headers["Location"] == "/code"
    response = first.get("/code")
    assert response.status_code == 200
    text = page(response)
    code = shown_code(text)
    assert code == "FLOW-BBBB-0002"  # the one to be enrolled earliest goes first
    assert long_date(soon) in text
    assert programme.enrolment_url in text
    assert "24 months" in text and programme.coverage_months == 24

    # Again, and from the exposure page: the same code, nothing new taken.
    response = post_with_token(first, "/claim")
    assert response.status_code == 303 and response.headers["Location"] == "/code"
    assert shown_code(page(first.get("/code"))) == code
    exposure = page(first.get("/exposure"))
    assert "You already have your activation code" in exposure and "Get my activation code" not in exposure
    # A fresh verification of the same person later on: still the same code.
    again = verify(app, last_name="GARCIA-LOPEZ", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    assert post_with_token(again, "/claim").headers["Location"] == "/code"
    assert shown_code(page(again.get("/code"))) == code

    second = verify(app, last_name="Second", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="4444")
    assert second.get("/code").headers["Location"] == "/exposure"  # nothing held yet
    assert post_with_token(second, "/claim").status_code == 303
    other_code = shown_code(page(second.get("/code")))
    assert other_code == "FLOW-AAAA-0001" != code

    # The pool is now empty: a clear 503, and not a single row changed.
    before = pool_rows(app)
    third = verify(app, last_name="Third", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="5555")
    response = post_with_token(third, "/claim")
    assert response.status_code == 503
    assert POOL_EMPTY_TEXT in page(response) and "Nothing was changed" in page(response)
    assert pool_rows(app) == before
    assert third.get("/code").headers["Location"] == "/exposure"
    # Those who hold a code still see it.
    assert shown_code(page(first.get("/code"))) == code

    with app.app_context():
        holders = dict(db.session.execute(sa.select(ActivationCode.patient_id, ActivationCode.id)).all())
        assert len(holders) == 2 and None not in holders


def test_nothing_identifying_is_stored(app: Flask, tmp_path: Path) -> None:
    """After imports, verifications and claims, no column holds an identifier or a code in clear."""
    with_ssn = patient_row(
        record_id="BRX-778812", first_name="Zbigniewa", last_name="Wojciechowska", date_of_birth="1971-09-17",
        ssn="518-27-4963", street="4417 Quillfeather Lane", city="Kalamazoo", zip="49008", phone="(269) 555-0186",
    )  # fmt: skip
    no_ssn = patient_row(
        record_id="BRX-778813", first_name="Eulalie", last_name="Thibodeaux", date_of_birth="1983-01-29",
        ssn="", street="12 Marigny Court", city="Lafayette", zip="70501", phone="(337) 555-0123",
    )  # fmt: skip
    assert import_patients(app, [with_ssn, no_ssn]) == []
    add_codes(app, {"PLAIN-CODE-7731": date.today() + timedelta(days=30)})
    reference = letter_reference(app, "BRX-778813")
    client = verify(app, last_name="Wojciechowska", date_of_birth="1971-09-17", zip_code="49008", ssn_last4="4963")
    assert post_with_token(client, "/claim").status_code == 303
    verify(app, last_name="Thibodeaux", date_of_birth="1983-01-29", zip_code="70501", reference=reference)

    secrets_in_clear = []
    for row in (with_ssn, no_ssn):
        secrets_in_clear += [row["record_id"], row["first_name"], row["last_name"], row["street"], row["city"]]
        secrets_in_clear += [row["date_of_birth"], row["date_of_birth"].replace("-", ""), row["phone"]]
        secrets_in_clear.append(re.sub(r"\D", "", row["phone"]))
        if row["ssn"]:
            secrets_in_clear += [row["ssn"], row["ssn"].replace("-", "")]
    secrets_in_clear += [reference, format_reference(reference), "PLAIN-CODE-7731"]
    # (ZIP codes and last-four digits are too short to look for among random bytes; they exist
    # only inside the Argon2id digests, which the round trips above showed to match.)
    needles = [s.lower().encode() for s in secrets_in_clear]

    dumped = bytearray()
    with app.app_context():
        for table in Base.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, date) and not hasattr(value, "hour"):
                        assert value.isoformat() not in (with_ssn["date_of_birth"], no_ssn["date_of_birth"])
                    dumped += str(value).lower().encode() + (value if isinstance(value, bytes) else b"") + b"\0"
        url = db.engine.url
    assert b"identity protection" in dumped.lower()  # the dump does read the stored text
    for needle in needles:
        assert needle not in dumped.lower(), needle

    if url.get_backend_name() == "sqlite":
        # The files themselves, write-ahead log included (on PostgreSQL the dump above covers it).
        assert url.database
        raw = b"".join(p.read_bytes() for p in Path(url.database).parent.glob(Path(url.database).name + "*"))
        assert b"identity protection" in raw.lower()  # the files do hold the stored text
        for needle in needles:
            assert needle not in raw.lower(), needle


def test_the_shared_landing_page_never_carries_a_visitors_message(app: Flask) -> None:
    """The landing page is rendered once per language; a flashed message must not get into that copy."""
    first = app.test_client()
    with first.session_transaction() as cookie:
        cookie["_flashes"] = [("message", "a message meant for one visitor")]
    assert "a message meant for one visitor" not in first.get("/").get_data(as_text=True)
    assert "a message meant for one visitor" not in app.test_client().get("/").get_data(as_text=True)
    assert first.get("/").get_data(as_text=True) == app.test_client().get("/").get_data(as_text=True)


def test_the_shared_lookup_form_carries_each_visitors_own_token(app: Flask) -> None:
    """The blank lookup form is rendered once per language; only the CSRF token is put in per visitor."""
    assert import_patients(app, [patient_row()]) == []
    details = dict(last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    first, second = app.test_client(), app.test_client()
    first_page, second_page = page(first.get("/lookup")), page(second.get("/lookup"))
    first_token, second_token = (
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', p)[1] for p in (first_page, second_page)
    )
    assert first_token != second_token
    assert "@@" not in first_page + second_page, "the token's stand-in leaked into the page"

    # Each token is bound to its own session: swapped, both are refused; each with its own, both verify.
    for client, token in ((first, second_token), (second, first_token)):
        response = client.post("/lookup", data={**details, "csrf_token": token})
        assert response.status_code == 400 and FORM_EXPIRED_TEXT in page(response)
    for client, token in ((first, first_token), (second, second_token)):
        response = client.post("/lookup", data={**details, "csrf_token": token})
        assert response.status_code == 303 and response.headers["Location"] == "/exposure"

    # A message flashed to one visitor shows on their form, and never on anybody else's.
    with first.session_transaction() as cookie:
        cookie["_flashes"] = [("message", "a message meant for one visitor")]
    assert "a message meant for one visitor" in page(first.get("/lookup"))
    assert "a message meant for one visitor" not in page(app.test_client().get("/lookup"))
    assert "a message meant for one visitor" not in page(first.get("/lookup")), "a flash is shown once"


def test_the_shared_exposure_page_is_each_visitors_own_variant_with_their_own_token(app: Flask) -> None:
    """The exposure page is rendered once per exposed fields, age group and code held, and kept: each
    visitor still reads their own variant, never another's, with their own token in every form."""
    rows = [
        patient_row(),
        patient_row(record_id="R-2", last_name="Second", ssn="222-33-4444"),  # the same fields as R-1
        patient_row(record_id="R-3", last_name="Third", ssn="333-44-5555", exposed_fields="name;address"),
        patient_row(record_id="R-4", last_name="Child", ssn="444-55-6666", date_of_birth="2015-06-01"),
    ]
    assert import_patients(app, rows) == []
    add_codes(app, {"SHARE-AAAA-0001": date.today() + timedelta(days=40)})
    first = verify(app, last_name="Garcia-Lopez", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="6789")
    second = verify(app, last_name="Second", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="4444")
    third = verify(app, last_name="Third", date_of_birth="1980-04-23", zip_code="10001", ssn_last4="5555")
    child = verify(app, last_name="Child", date_of_birth="2015-06-01", zip_code="10001", ssn_last4="6666")
    assert post_with_token(first, "/claim").headers["Location"] == "/code"  # the first one holds a code now

    pages = {name: page(client.get("/exposure")) for name, client in
             {"first": first, "second": second, "third": third, "child": child}.items()}  # fmt: skip
    assert "You already have your activation code" in pages["first"] and "Get my activation code" not in pages["first"]
    assert "Get my activation code" in pages["second"] and "You already have" not in pages["second"]
    assert exposed_on(pages["first"]) == exposed_on(pages["second"]) == {"name", "date_of_birth", "ssn"}
    assert exposed_on(pages["third"]) == {"name", "address"}
    assert "under 18" in pages["child"] and not any("under 18" in pages[n] for n in ("first", "second", "third"))
    assert "@@" not in "".join(pages.values()), "the token's stand-in leaked into a page"
    # Read again: the same page (its token signed anew: its timestamp may have moved a second); each
    # visitor's token is their own.
    token_value = re.compile(r'(name="csrf_token"[^>]*value=")[^"]+')
    assert token_value.sub(r"\1", page(second.get("/exposure"))) == token_value.sub(r"\1", pages["second"])
    tokens = {name: set(re.findall(r'name="csrf_token"[^>]*value="([^"]+)"', text)) for name, text in pages.items()}
    assert all(len(found) == 1 for found in tokens.values()) and len(set.union(*tokens.values())) == 4
    # ... and bound to their session: another's is refused, one's own signs out.
    (second_token,) = tokens["second"]
    assert third.post("/sign-out", data={"csrf_token": second_token}).status_code == 400
    assert second.post("/sign-out", data={"csrf_token": second_token}).headers["Location"] == "/signed-out"
