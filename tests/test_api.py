"""The partner API in-process: every endpoint, every error status, keys, scopes, limits and headers."""

from __future__ import annotations

import csv
import io
import json
import secrets
import traceback
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from conftest import PROGRAMME_TOML, REDIS_URL, create_api_key, import_patients, lookup, make_app, numbered, patient_row
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from launch import free_port
from openapi_checks import check_answer
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import Gone, NotFound, Unauthorized
from werkzeug.exceptions import NotImplemented as Unimplemented  # not the builtin
from werkzeug.test import EnvironBuilder, run_wsgi_app

from portal.api import errors, openapi
from portal.api.errors import LetterRequired
from portal.api.validation import BOTH_FACTORS, NEITHER_FACTOR, InvalidFields
from portal.audit import spreadsheet_safe
from portal.claims import PoolBusy, PoolEmpty
from portal.extensions import db
from portal.hashing_slots import HashingBusy
from portal.idempotency import InProgress, Reused
from portal.importer import import_codes
from portal.models import ApiKey, Verification, utcnow
from portal.partner_keys import InvalidKeySetting, create_key, key_state
from portal.services import services
from portal.throttle import LimitStoreDown, Throttled

PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}
WRONG_FIELD = {**PERSON, "ssn_last4": "0000"}
UNKNOWN = {"last_name": "Nobody", "date_of_birth": "1975-01-02", "zip_code": "10001", "ssn_last4": "6789"}
PROBLEM_KEYS = {"type", "title", "status", "detail"}


def api_app(database_url: str, codes: int = 2, **config: Any) -> Flask:
    app = make_app(database_url, RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **config)
    assert import_patients(app, [patient_row()]) == []
    if codes:
        rows = [{"code": f"IDP-TEST-{n:04d}", "enroll_by": "2030-01-01", "product": "Protect 24"} for n in range(codes)]
        with app.app_context():
            import_codes(db.session, services().cipher, numbered(rows), on_reject=lambda *_: None)
    return app


def call(client: FlaskClient, key: str | None, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    if body is not None:
        kwargs["json"] = body
    return client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert PROBLEM_KEYS <= set(body) and body["status"] == status
    assert "Set-Cookie" not in response.headers
    if status in (429, 503):
        assert int(response.headers["Retry-After"]) > 0
    return body


@pytest.fixture
def app(database_url: str) -> Flask:
    return api_app(database_url)


@pytest.fixture
def key(app: Flask) -> str:
    return create_api_key(app, "verify", "claim")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --- Endpoints ------------------------------------------------------------------------------------


def test_a_verified_person_gets_their_exposure_and_a_claim_token(app: Flask, client: FlaskClient, key: str) -> None:
    before = utcnow().replace(microsecond=0)
    response = call(client, key, "POST", "/verifications", PERSON)
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["verified"] is True
    assert body["exposed_fields"] == ["name", "date_of_birth", "ssn"]
    assert body["expires_at"].endswith("Z") and len(body["claim_token"]) >= 40
    assert "Set-Cookie" not in response.headers
    # The token's lifetime from now, never past the moment the stored verification expires.
    expires_at = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    with app.app_context():
        stored = db.session.scalars(select(Verification.expires_at)).one().replace(tzinfo=UTC)
    assert before + timedelta(seconds=app.config["VERIFICATION_TTL_SECONDS"]) <= expires_at <= stored


def test_the_form_spellings_verify_on_the_api_too(client: FlaskClient, key: str) -> None:
    """The API normalises through IdentityClaim.from_input, exactly as the form does."""
    spelled = {**PERSON, "last_name": " garcia lopez ", "zip_code": "10001-2345"}
    assert call(client, key, "POST", "/verifications", spelled).get_json()["verified"] is True


def test_unknown_person_and_wrong_field_get_the_same_answer(client: FlaskClient, key: str) -> None:
    answers = [call(client, key, "POST", "/verifications", body) for body in (UNKNOWN, WRONG_FIELD)]
    assert [(r.status_code, r.get_data()) for r in answers] == [(200, b'{"verified":false}\n')] * 2
    assert list(answers[0].headers.keys()) == list(answers[1].headers.keys())


def test_a_claim_gives_the_code_once_then_the_same_code(client: FlaskClient, key: str) -> None:
    token = call(client, key, "POST", "/verifications", PERSON).get_json()["claim_token"]
    first = call(client, key, "POST", "/claims", {"claim_token": token})
    again = call(client, key, "POST", "/claims", {"claim_token": token})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json() == again.get_json()
    body = first.get_json()
    assert body["activation_code"].startswith("IDP-TEST-")
    assert body["coverage_months"] == 24 and body["enroll_by"] == "2030-01-01" and body["product"] == "Protect 24"
    assert body["enrollment_url"] == call(client, key, "GET", "/program").get_json()["enrollment_url"]
    assert len(body) == 5
    # A second verification of the same person gets the same code, never a second one.
    token2 = call(client, key, "POST", "/verifications", PERSON).get_json()["claim_token"]
    assert call(client, key, "POST", "/claims", {"claim_token": token2}).get_json() == body


def test_an_unknown_or_expired_claim_token_is_a_field_error(app: Flask, client: FlaskClient, key: str) -> None:
    assert_problem(call(client, key, "POST", "/claims", {"claim_token": "nope"}), 422)
    token = call(client, key, "POST", "/verifications", PERSON).get_json()["claim_token"]
    with app.app_context():
        db.session.execute(update(Verification).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    body = assert_problem(call(client, key, "POST", "/claims", {"claim_token": token}), 422)
    assert body["errors"][0]["field"] == "claim_token"


def test_an_empty_pool_is_a_503_problem_with_retry_after(database_url: str) -> None:
    app = api_app(database_url, codes=0)
    key, client = create_api_key(app), app.test_client()
    token = call(client, key, "POST", "/verifications", PERSON).get_json()["claim_token"]
    body = assert_problem(call(client, key, "POST", "/claims", {"claim_token": token}), 503)
    assert body["type"].endswith("#problem-pool-empty")


def test_program_lists_the_facts_and_the_vocabulary(client: FlaskClient, key: str) -> None:
    body = call(client, key, "GET", "/program").get_json()
    assert body["organisation"] and body["enroll_by"] and body["coverage_months"] == 24
    ssn = next(field for field in body["exposed_fields"] if field["name"] == "ssn")
    assert ssn["label"] and ssn["steps"] and all("text" in step for step in ssn["steps"])


def test_the_contract_and_its_page_are_served_without_a_key(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.1") and set(document["paths"]) == {"/verifications", "/claims", "/program"}
    page = client.get("/api/v1/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "POST /api/v1/verifications" in html and 'id="problem-pool-empty"' in html
    # Self-hosted and within the strict CSP: no script, no inline style, nothing from elsewhere.
    assert "<script" not in html and "style=" not in html and "<style" not in html and "cdn" not in html.lower()
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]


# --- Errors ---------------------------------------------------------------------------------------


def test_401_without_a_key_or_with_a_wrong_one(client: FlaskClient, key: str) -> None:
    malformed = (None, "Basic abc", "Bearer ", "Bearer " + "x" * 194)  # the last one character too long
    wrong = ("Bearer nonsense", f"Bearer {key[:-1]}x", f"Bearer {key}x", "Bearer " + "x" * 193)
    for header in (*malformed, *wrong):
        response = call(client, None, "GET", "/program", headers={"Authorization": header} if header else {})
        detail = assert_problem(response, 401)["detail"]
        assert detail.startswith("Send the key as" if header in malformed else "This key is unknown"), header
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "X-RateLimit-Limit" not in response.headers
    # The scheme in any case, and any number of spaces after it (RFC 9110).
    for header in (f"bearer {key}", f"Bearer   {key}"):
        assert call(client, None, "GET", "/program", headers={"Authorization": header}).status_code == 200, header


def test_403_when_the_key_lacks_the_scope(app: Flask, client: FlaskClient) -> None:
    verify_only, claim_only = create_api_key(app, "verify"), create_api_key(app, "claim")
    assert_problem(call(client, claim_only, "POST", "/verifications", PERSON), 403)
    token = call(client, verify_only, "POST", "/verifications", PERSON).get_json()["claim_token"]
    assert_problem(call(client, verify_only, "POST", "/claims", {"claim_token": token}), 403)
    # A claim_token works only with the key that verified: another key of the same partner neither.
    assert_problem(call(client, claim_only, "POST", "/claims", {"claim_token": token}), 422)


def documented(response: Any) -> None:
    """A problem answer is the one the OpenAPI document describes for its status."""
    document = openapi.document(date.today())
    check_answer(document, document["components"]["responses"][f"Problem{response.status_code}"], response)


def test_404_and_405_are_problems(client: FlaskClient, key: str) -> None:
    missing = call(client, key, "GET", "/nowhere")
    assert_problem(missing, 404)
    documented(missing)
    response = call(client, key, "DELETE", "/verifications")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]
    documented(response)
    assert_problem(call(client, key, "POST", "/program"), 405)


def test_413_for_a_large_body(client: FlaskClient, key: str) -> None:
    huge = {**PERSON, "last_name": "x" * 5000}
    assert_problem(call(client, key, "POST", "/verifications", huge), 413)


def chunked(app: Flask, key: str, body: bytes | io.BytesIO) -> tuple[int, bytes]:
    """A body sent in chunks: no Content-Length, a server that ends the stream itself (gunicorn's way)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    environ = EnvironBuilder("/api/v1/verifications", method="POST", headers=headers).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    stream = body if isinstance(body, io.BytesIO) else io.BytesIO(body)
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    answer, status, _headers = run_wsgi_app(app, environ)
    return int(status.split()[0]), b"".join(answer)


def test_413_for_a_large_chunked_body_and_not_for_one_at_the_limit(app: Flask, key: str) -> None:
    """A chunked body is cut at the limit by the server's stream: it must read as too large, not as
    malformed JSON; a body of exactly the limit is read whole."""
    limit = app.config["API_MAX_CONTENT_LENGTH"]
    body = json.dumps(PERSON).encode()
    status, answer = chunked(app, key, body + b" " * (limit + 1 - len(body)))
    assert status == 413 and json.loads(answer)["type"].endswith("#problem-too-large")
    status, answer = chunked(app, key, body + b" " * (limit - len(body)))
    assert status == 200 and json.loads(answer)["verified"] is True


def test_a_chunked_body_is_read_no_further_than_one_byte_past_the_limit(app: Flask, key: str) -> None:
    """However long the stream a client keeps sending, a worker holds at most the limit and one byte of it."""
    limit = app.config["API_MAX_CONTENT_LENGTH"]
    stream = io.BytesIO(json.dumps(PERSON).encode() + b" " * (100 * limit))
    status, answer = chunked(app, key, stream)
    assert status == 413 and json.loads(answer)["type"].endswith("#problem-too-large")
    assert stream.tell() == limit + 1


@pytest.mark.parametrize("charset", ["", "; charset=utf-8", "; charset=UTF-8", "; charset=utf8", '; charset="UTF8"'])
def test_json_in_utf8_is_read_under_each_spelling_of_its_charset(client: FlaskClient, key: str, charset: str) -> None:
    data = json.dumps(PERSON, ensure_ascii=False).encode()
    response = call(client, key, "POST", "/verifications", data=data, content_type=f"application/json{charset}")
    assert response.status_code == 200 and response.get_json()["verified"] is True


@pytest.mark.parametrize(
    ("factors", "errors"),
    [
        ({}, {"ssn_last4": NEITHER_FACTOR}),
        ({"ssn_last4": "", "reference": "  "}, {"ssn_last4": NEITHER_FACTOR}),
        ({"ssn_last4": "6789", "reference": "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01"}, {"reference": BOTH_FACTORS}),
        ({"ssn_last4": "12", "reference": "ABCD"}, {"reference": BOTH_FACTORS}),
        ({"ssn_last4": "12"}, {"ssn_last4": "last four SSN digits must be 4 digits"}),
        ({"ssn_last4": "12", "reference": ""}, {"ssn_last4": "last four SSN digits must be 4 digits"}),
        ({"reference": "ABCD"}, {"reference": "reference code must be 24 letters and digits from your letter"}),
        ({"ssn_last4": 6789}, {"ssn_last4": "must be a string"}),
        ({"ssn_last4": 6789, "reference": "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01"}, {"ssn_last4": "must be a string"}),
        ({"reference": "A" * 41}, {"reference": "must be at most 40 characters"}),
        ({"ssn_last4": "6789", "reference": None}, {"reference": "must be a string"}),
    ],
)  # fmt: skip
def test_each_combination_of_the_two_factors_gets_its_own_message(
    client: FlaskClient, key: str, factors: dict[str, Any], errors: dict[str, str]
) -> None:
    """Exactly one of ssn_last4 and reference: none, both, each invalid, wrong types, blanks."""
    body = {name: value for name, value in PERSON.items() if name != "ssn_last4"} | factors
    problem = assert_problem(call(client, key, "POST", "/verifications", body), 422)
    assert {error["field"]: error["detail"] for error in problem["errors"]} == errors


def test_every_field_in_error_is_named_at_once(client: FlaskClient, key: str) -> None:
    body = {"last_name": "!!", "date_of_birth": "1980-13-01", "zip_code": "1", "ssn_last4": "x"}
    problem = assert_problem(call(client, key, "POST", "/verifications", body), 422)
    assert [error["field"] for error in problem["errors"]] == ["last_name", "date_of_birth", "zip_code", "ssn_last4"]


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/json; charset=latin-1", None]
)
def test_415_unless_json_in_utf8(client: FlaskClient, key: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = call(client, key, "POST", "/verifications", data=json.dumps(PERSON), headers=headers)
    assert_problem(response, 415)


@pytest.mark.parametrize(
    "raw", [b"{", b"", b'{"last_name": NaN}', b"\xff\xfe{}", b'{"a": 1' + b"1" * 5000 + b"}", b"[" * 3000]
)
def test_400_for_a_body_that_is_not_utf8_json(client: FlaskClient, key: str, raw: bytes) -> None:
    response = call(client, key, "POST", "/verifications", data=raw, content_type="application/json")
    assert response.status_code in (400, 413)
    assert_problem(response, response.status_code)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"last_name", "date_of_birth", "zip_code", "ssn_last4"}),
        ({**PERSON, "zip_code": 10001}, {"zip_code"}),
        ({**PERSON, "extra": "x"}, {"extra"}),
        ({**PERSON, "zip_code": "1"}, {"zip_code"}),
        ({**PERSON, "date_of_birth": "1980-02-30"}, {"date_of_birth"}),
        ({**PERSON, "ssn_last4": "123-45-6789"}, {"ssn_last4"}),
        ({**PERSON, "reference": "ABCD"}, {"reference"}),
        ({**PERSON, "last_name": "\x00\x00"}, {"last_name"}),
        ({**PERSON, "last_name": None, "zip_code": [1]}, {"last_name", "zip_code"}),
        ([PERSON], {""}),
    ],
)
def test_422_names_each_bad_field_and_never_its_value(
    client: FlaskClient, key: str, body: Any, fields: set[str]
) -> None:
    response = call(client, key, "POST", "/verifications", body)
    problem = assert_problem(response, 422)
    assert {error["field"] for error in problem["errors"]} == fields
    assert "6789" not in response.get_data(as_text=True) and "1980" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("path", "body", "errors"),
    [
        ("/verifications", {**PERSON, "last_name": " ", "date_of_birth": ""}, {"last_name": "is required", "date_of_birth": "is required"}),
        ("/verifications", {**PERSON, "zip_code": None}, {"zip_code": "must be a string"}),
        ("/verifications", {**PERSON, "note": "x"}, {"note": "unknown field"}),
        ("/verifications", {**PERSON, "n" * 50: "x"}, {"n" * 40: "unknown field"}),  # a name cut to 40 characters
        ("/verifications", [PERSON], {"": "the body must be a JSON object"}),
        ("/verifications", "6789", {"": "the body must be a JSON object"}),
        ("/claims", {}, {"claim_token": "is required"}),
        ("/claims", {"claim_token": "  ", "reference": "ABCD"}, {"claim_token": "is required"}),
        ("/claims", {"claim_token": 7, "ref": "x"}, {"ref": "unknown field", "claim_token": "must be a string"}),
    ],
)  # fmt: skip
def test_each_field_in_error_gets_the_message_of_its_problem(
    client: FlaskClient, key: str, path: str, body: Any, errors: dict[str, str]
) -> None:
    """What a partner's developer reads to fix the request: the field, and what is wrong with it."""
    problem = assert_problem(call(client, key, "POST", path, body), 422)
    assert {error["field"]: error["detail"] for error in problem["errors"]} == errors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries({name: st.text(max_size=120) for name in PERSON}).map(
            lambda value: json.dumps(value).encode()
        ),
    )
)
def test_no_input_gets_a_500(client: FlaskClient, key: str, body: bytes) -> None:
    for path in ("/verifications", "/claims"):
        response = call(client, key, "POST", path, data=body, content_type="application/json")
        assert response.status_code in (200, 400, 413, 422), response.get_data(as_text=True)


# --- Keys -----------------------------------------------------------------------------------------


def test_keys_are_listed_with_their_state_and_stored_only_as_digests(app: Flask, client: FlaskClient) -> None:
    key = create_api_key(app, "verify", rate="7/minute", expires="2099-12-31")
    call(client, key, "GET", "/program")
    listing = app.test_cli_runner().invoke(args=["list-api-keys"]).output.splitlines()
    fields = listing[-1].split("\t")
    assert fields[1] == key.split(".")[0] and fields[2:7] == [
        "Test partner",
        "verify",
        "7/minute",
        "2099-12-31",
        "active",
    ]
    assert fields[7] != "never"  # last used
    with app.app_context():
        stored = db.session.query(ApiKey).one()
        assert key.split(".")[1].encode() not in b"".join(str(v).encode() for v in vars(stored).values())


def test_a_revoked_key_is_refused_on_its_next_request(app: Flask, client: FlaskClient, key: str) -> None:
    assert call(client, key, "GET", "/program").status_code == 200
    result = app.test_cli_runner().invoke(args=["revoke-api-key", "1"])
    assert result.exit_code == 0 and "revoked" in result.output
    assert_problem(call(client, key, "GET", "/program"), 401)
    assert app.test_cli_runner().invoke(args=["list-api-keys"]).output.split("\t")[6] == "revoked"
    missing = app.test_cli_runner().invoke(args=["revoke-api-key", "99"])
    assert missing.exit_code == 1 and "no key 99" in missing.output


@pytest.mark.parametrize("change", ["é", "\x00", "ü" * 43])
def test_a_key_with_other_characters_is_refused_like_any_wrong_key(client: FlaskClient, key: str, change: str) -> None:
    """Whatever a header carries in the key's place is a 401, never a 500."""
    prefix, secret = key.split(".")
    for wrong in (f"{prefix}.{secret[:-1]}{change}", f"{prefix}.{change}", change):
        assert_problem(call(client, wrong, "GET", "/program"), 401)


def test_an_expired_key_is_refused(app: Flask, client: FlaskClient, key: str) -> None:
    assert call(client, key, "GET", "/program").status_code == 200
    with app.app_context():
        db.session.execute(update(ApiKey).values(expires_at=utcnow()))
        db.session.commit()
    assert_problem(call(client, key, "GET", "/program"), 401)
    assert "expired" in app.test_cli_runner().invoke(args=["list-api-keys"]).output


def test_a_key_works_on_its_last_day_and_not_after(app: Flask, client: FlaskClient) -> None:
    """``--expires`` names the last day the key works (UTC), not the first on which it does not."""
    today = utcnow().date()
    key = create_api_key(app, expires=today.isoformat())
    assert call(client, key, "GET", "/program").status_code == 200
    assert app.test_cli_runner().invoke(args=["list-api-keys"]).output.split("\t")[5:7] == [today.isoformat(), "active"]
    midnight = datetime.combine(today + timedelta(days=1), time(), UTC)
    with app.app_context():
        row = db.session.query(ApiKey).one()
    assert key_state(row, midnight - timedelta(microseconds=1)) == "active"
    assert key_state(row, midnight) == "expired"


def test_a_key_is_used_to_the_last_moment_of_its_last_day_and_refused_the_day_after(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request with the key itself, late on its last day and at the next day's midnight (UTC)."""
    last_day = utcnow().date() + timedelta(days=3)
    key = create_api_key(app, expires=last_day.isoformat())
    midnight = datetime.combine(last_day + timedelta(days=1), time(), UTC)
    for now, status in [(midnight - timedelta(seconds=1), 200), (midnight, 401), (midnight + timedelta(days=1), 401)]:
        monkeypatch.setattr("portal.partner_keys.utcnow", lambda now=now: now)
        assert call(client, key, "GET", "/program").status_code == status, now


def test_a_keys_last_use_is_written_once_a_minute_at_most(
    app: Flask, client: FlaskClient, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = utcnow().replace(microsecond=0)
    for seconds, written in [(0, 0), (59, 0), (60, 60), (61, 60), (120, 120)]:
        monkeypatch.setattr("portal.partner_keys.utcnow", lambda seconds=seconds: start + timedelta(seconds=seconds))
        assert call(client, key, "GET", "/program").status_code == 200
        with app.app_context():
            last_used = db.session.scalars(select(ApiKey.last_used_at)).one()
        assert last_used == start + timedelta(seconds=written), seconds


@pytest.mark.parametrize(
    "args",
    [
        ["--scope", "admin"],
        ["--scope", "verify", "--rate", "lots"],
        ["--scope", "verify", "--expires", "2001-01-01"],
        ["--scope", "verify", "--expires", "tomorrow"],
        [],
    ],
)
def test_a_key_cannot_be_made_with_a_bad_setting(app: Flask, args: list[str]) -> None:
    result = app.test_cli_runner().invoke(args=["create-api-key", "--partner", "P", *args])
    assert result.exit_code != 0
    if "lots" in args:
        assert "rate 'lots' is not a limit such as 120/minute" in result.output
    if "2001-01-01" in args:
        assert "Invalid value: the expiry date has passed\n" in result.output
    with app.app_context():
        assert db.session.query(ApiKey).count() == 0


def test_a_key_has_one_or_both_scopes_and_nothing_else(app: Flask) -> None:
    """The command offers only these; ``create_key`` holds the rule for any other caller."""
    with app.app_context():
        for scopes in ([], ["verify", "admin"]):
            with pytest.raises(InvalidKeySetting, match=r"^scopes must be among: verify, claim$"):
                create_key(db.session, "P", scopes, "10/minute")
        assert create_key(db.session, "P", ["claim", "verify", "claim"], "10/minute").row.scopes == "verify claim"


def test_a_partners_name_is_1_to_80_characters(app: Flask) -> None:
    for partner in ("", "   ", "p" * 81):
        result = app.test_cli_runner().invoke(args=["create-api-key", "--partner", partner, "--scope", "verify"])
        assert result.exit_code == 2 and "Invalid value: partner must be 1 to 80 characters\n" in result.output, partner
    for partner in ("p" * 80, " Partner "):
        create = ["create-api-key", "--partner", partner, "--scope", "verify"]
        assert app.test_cli_runner().invoke(args=create).exit_code == 0
    with app.app_context():
        assert db.session.scalars(select(ApiKey.partner).order_by(ApiKey.id)).all() == ["p" * 80, "Partner"]


# --- Limits and headers ---------------------------------------------------------------------------


def limited_app(database_url: str, storage: str, **config: str) -> Flask:
    return api_app(database_url, RATELIMIT_STORAGE_URI=storage, **config)


STORAGES = [pytest.param("memory://", id="memory"), pytest.param(REDIS_URL, id="redis", marks=pytest.mark.redis)]


@pytest.mark.parametrize("storage", STORAGES)
def test_each_key_has_its_own_rate_with_headers(database_url: str, storage: str) -> None:
    app = limited_app(database_url, storage)
    slow, other = create_api_key(app, rate="3/minute"), create_api_key(app, rate="3/minute")
    client = app.test_client()
    answers = [call(client, slow, "GET", "/program") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"3"}
    # When the key's minute ends: a moment of the coming minute, as a Unix time.
    now = datetime.now(UTC).timestamp()
    assert all(now < int(r.headers["X-RateLimit-Reset"]) <= now + 61 for r in answers[:3])
    refused = assert_problem(answers[-1], 429)
    assert abs(int(answers[-1].headers["Retry-After"]) - (int(answers[-1].headers["X-RateLimit-Reset"]) - now)) <= 2
    assert refused["type"] == "http://localhost/api/v1/docs#problem-rate-limited"
    assert refused["title"] == "Key rate limit reached"
    # The rate is the key's, shared by all its endpoints; another key of the same rate, from the
    # same address, is not affected: it is counted on its own.
    assert_problem(call(client, slow, "POST", "/verifications", PERSON), 429)
    assert call(client, other, "GET", "/program").status_code == 200


@pytest.mark.redis
def test_a_keys_rate_is_one_count_on_every_server(database_url: str) -> None:
    """Two servers sharing the limit store count a key's requests together; with two limits, the
    shortest window refuses first and is the one the headers describe."""
    first = limited_app(database_url, REDIS_URL)
    key = create_api_key(first, rate="3/minute;100/hour")
    same = {name: first.config[name] for name in ("IDENTIFIER_KEY", "CODE_KEY", "SECRET_KEY", "RATELIMIT_KEY_PREFIX")}
    second = make_app(database_url, RATELIMIT_STORAGE_URI=REDIS_URL, **same)
    answers = [call(app.test_client(), key, "GET", "/program") for app in (first, second, first, second)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"3"}
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 61


@pytest.mark.parametrize("storage", STORAGES)
def test_the_person_budget_stops_guessing_and_is_not_in_the_headers(database_url: str, storage: str) -> None:
    app = limited_app(database_url, storage, API_VERIFY_LIMIT_PERSON="3 per 15 minutes")
    key, client = create_api_key(app, rate="100/minute"), app.test_client()
    answers = [call(client, key, "POST", "/verifications", {**PERSON, "ssn_last4": f"{n:04d}"}) for n in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    # Even the right digits are refused now, as a failure limit, not as the key's rate.
    right = call(client, key, "POST", "/verifications", PERSON)
    for refused in (answers[-1], right):
        body = assert_problem(refused, 429)
        assert body["type"].endswith("/api/v1/docs#problem-failure-limit")
        assert body["title"] == "Too many failed verifications"
        assert not [name for name in refused.headers.keys() if name.startswith("X-RateLimit")]
    # The headers only ever speak of the key's own rate, on the answers it counted.
    assert [r.headers["X-RateLimit-Remaining"] for r in answers[:3]] == ["99", "98", "97"]
    assert {r.headers["X-RateLimit-Limit"] for r in answers[:3]} == {"100"}
    # The same for a person who is not on the list.
    for n in range(3):
        call(client, key, "POST", "/verifications", {**UNKNOWN, "ssn_last4": f"{n:04d}"})
    assert call(client, key, "POST", "/verifications", UNKNOWN).status_code == 429


@pytest.mark.parametrize("storage", STORAGES)
def test_a_success_does_not_spend_the_failure_budgets(database_url: str, storage: str) -> None:
    app = limited_app(
        database_url, storage, API_VERIFY_LIMIT_PERSON="2 per 15 minutes", API_VERIFY_LIMIT_KEY="2 per hour"
    )
    key, client = create_api_key(app, rate="100/minute"), app.test_client()
    assert [call(client, key, "POST", "/verifications", PERSON).status_code for _ in range(5)] == [200] * 5


@pytest.mark.parametrize("storage", STORAGES)
def test_each_key_has_its_own_failure_budget(database_url: str, storage: str) -> None:
    app = limited_app(database_url, storage, API_VERIFY_LIMIT_KEY="3 per hour")
    key, fresh, client = create_api_key(app), create_api_key(app), app.test_client()
    people = [{**UNKNOWN, "last_name": f"Nobody{chr(97 + n)}"} for n in range(5)]
    assert [call(client, key, "POST", "/verifications", p).status_code for p in people[:4]] == [200] * 3 + [429]
    assert call(client, fresh, "POST", "/verifications", people[4]).status_code == 200


def test_the_client_budget_counts_failures_from_one_address(database_url: str) -> None:
    app = limited_app(database_url, "memory://", API_VERIFY_LIMIT_CLIENT="2 per hour")
    keys, client = [create_api_key(app) for _ in range(3)], app.test_client()
    people = [{**UNKNOWN, "last_name": f"Nobody{chr(97 + n)}"} for n in range(3)]
    statuses = [call(client, k, "POST", "/verifications", p).status_code for k, p in zip(keys, people, strict=True)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(
    "addresses",
    [
        ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"],
        ["::ffff:192.0.2.7", "192.0.2.7", "::ffff:192.0.2.7"],
    ],
    ids=["ipv6-64", "ipv4-mapped"],
)
def test_the_client_budget_counts_an_ipv6_64_as_one_client(database_url: str, addresses: list[str]) -> None:
    """A subscriber is given a whole /64: counting single addresses would count nothing (SECURITY.md)."""
    app = limited_app(database_url, "memory://", API_VERIFY_LIMIT_CLIENT="2 per hour")
    keys, client = [create_api_key(app) for _ in range(3)], app.test_client()
    people = [{**UNKNOWN, "last_name": f"Nobody{chr(97 + n)}"} for n in range(3)]
    statuses = [
        call(client, k, "POST", "/verifications", p, environ_base={"REMOTE_ADDR": a}).status_code
        for k, p, a in zip(keys, people, addresses, strict=True)
    ]
    assert statuses == [200, 200, 429]


def test_the_apis_person_budget_is_its_own_beside_the_sites(database_url: str) -> None:
    """A person's short-window budget is per surface; only the day and year are shared (SECURITY.md)."""
    app = limited_app(
        database_url, "memory://", API_VERIFY_LIMIT_PERSON="2 per 15 minutes", VERIFY_LIMIT_PERSON="2 per 15 minutes"
    )
    key, client = create_api_key(app), app.test_client()
    site = {"last_name": PERSON["last_name"], "date_of_birth": PERSON["date_of_birth"], "zip_code": PERSON["zip_code"]}
    api_guesses = [call(client, key, "POST", "/verifications", WRONG_FIELD).status_code for _ in range(3)]
    assert api_guesses == [200, 200, 429]
    assert [lookup(app.test_client(), **site, ssn_last4="0000").status_code for _ in range(3)] == [200, 200, 429]
    # The API's failures spent nothing of the site's budget; nor, for another person, the site's of the API's.
    other = {"last_name": "Elsewhere", "date_of_birth": UNKNOWN["date_of_birth"], "zip_code": "10001"}
    assert [lookup(app.test_client(), **other, ssn_last4="0000").status_code for _ in range(3)] == [200, 200, 429]
    assert call(client, key, "POST", "/verifications", {**other, "ssn_last4": "0000"}).status_code == 200


RANDOM_HEX = ("record_ref", "request_id", "audit_head")


def test_every_api_verification_and_claim_is_an_event_with_the_key(
    client: FlaskClient, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="portal.events"):
        token = call(client, key, "POST", "/verifications", PERSON).get_json()["claim_token"]
        call(client, key, "POST", "/verifications", UNKNOWN)
        call(client, key, "POST", "/claims", {"claim_token": token})
    lines = [r.getMessage() for r in caplog.records if r.name == "portal.events"]
    events = [json.loads(line) for line in lines]
    assert [event["outcome"] for event in events] == ["success", "failure", "success"]
    assert all(event["channel"] == "api" and event["actor"] == "api-key:1" for event in events)
    assert all(event["client"] == "127.0.0.0/24" for event in events)  # the network, never the address
    assert events[0]["record_ref"] and events[2]["record_ref"] == events[0]["record_ref"]  # whose code was claimed
    # Digests and random ids hold any four digits by chance (a head's "…a219808e…" holds "1980"): not them.
    said = " ".join(f"{name}={value}" for event in events for name, value in event.items() if name not in RANDOM_HEX)
    assert not any(secret in said for secret in ("6789", "García", "1980", "IDP-TEST", token))


def test_a_lost_limit_store_refuses_verification_with_a_503(database_url: str) -> None:
    """No failure budget can be counted: refuse (503, Retry-After) rather than verify uncounted."""
    app = limited_app(database_url, f"redis://127.0.0.1:{free_port()}/0")
    key = create_api_key(app)
    body = assert_problem(call(app.test_client(), key, "POST", "/verifications", PERSON), 503)
    assert body["type"].endswith("#problem-unavailable")


# --- Problem types, languages, the command line ---------------------------------------------------


def test_every_problem_type_is_an_absolute_link_to_its_section_with_a_title_naming_it(
    client: FlaskClient, key: str
) -> None:
    answers = {
        "malformed": call(client, key, "POST", "/verifications", data=b"{", content_type="application/json"),
        "unauthorized": call(client, None, "GET", "/program"),
        "not-found": call(client, key, "GET", "/nowhere"),
        "method-not-allowed": call(client, key, "DELETE", "/claims"),
        "unsupported-media-type": call(client, key, "POST", "/claims", data="claim_token=x"),
        "invalid-fields": call(client, key, "POST", "/claims", {}),
    }
    page = client.get("/api/v1/docs").get_data(as_text=True)
    titles = set()
    for slug, response in answers.items():
        body = assert_problem(response, response.status_code)
        assert body["type"] == f"http://localhost/api/v1/docs#problem-{slug}"
        assert f'id="problem-{slug}"' in page and body["title"] in page
        assert response.headers["Content-Language"] == "en"
        titles.add(body["title"])
    # A title names the problem, not merely the HTTP status.
    assert not titles & {"Bad Request", "Unauthorized", "Not Found", "Method Not Allowed", "Unprocessable Entity"}


def test_a_problems_type_never_links_to_a_host_the_portal_does_not_serve(database_url: str) -> None:
    """A foreign Host is refused before routing, by a problem of its own that does not say the Host
    back, and that links to the reference by its path alone."""
    client = make_app(database_url, TRUSTED_HOSTS=["notice.example.org"]).test_client()
    refused = call(client, None, "GET", "/program", headers={"Host": "phishing.example.net"})
    body = assert_problem(refused, 400)
    assert body["type"] == "/api/v1/docs#problem-untrusted-host" and body["title"] == "Host not served"
    assert "phishing" not in refused.get_data(as_text=True)
    served = call(client, None, "GET", "/program", headers={"Host": "notice.example.org"})
    assert assert_problem(served, 401)["type"] == "http://notice.example.org/api/v1/docs#problem-unauthorized"


def answer_to(error: Exception) -> Any:
    """The answer to a partner view that raises ``error``, from the handlers the API's blueprint registers,
    registered here on a blueprint of their own (the API's are registered as the package is imported)."""

    def view() -> str:
        raise error

    bp = Blueprint("raising", __name__)
    errors.init_blueprint(bp)
    bp.add_url_rule("/raise", view_func=view)
    app = Flask(__name__)
    app.register_blueprint(bp)
    return app.test_client().get("/raise")


# What each error a partner view may raise answers: its problem type, status and Retry-After.
RAISED = {
    "HTTP 404": (NotFound(), "not-found", 404, None),
    "HTTP 401": (Unauthorized(), "unauthorized", 401, None),
    "HTTP 501, not one of the API's": (Unimplemented(), "internal", 500, None),
    "HTTP 410, not one of the API's": (Gone(), "malformed", 400, None),
    "invalid fields": (InvalidFields({"zip_code": "is required"}), "invalid-fields", 422, None),
    "idempotency key reused": (Reused(), "idempotency-key-reused", 422, None),
    "idempotency key in use": (InProgress(), "idempotency-key-in-use", 409, errors.IN_PROGRESS_RETRY_SECONDS),
    "failure budget": (Throttled("api-verify-person", 900), "failure-limit", 429, 900),
    "people budget": (Throttled(errors.KEY_PEOPLE_SCOPE, 3600 * 5), "too-many-people", 429, 3600 * 5),
    "letter required": (LetterRequired(), "letter-required", 403, None),
    "limit store down": (LimitStoreDown(), "unavailable", 503, LimitStoreDown.retry_after),
    "hashing busy": (HashingBusy(), "unavailable", 503, errors.RETRY_AFTER_SECONDS),
    "database down": (OperationalError("SELECT 1", {}, OSError()), "unavailable", 503, errors.RETRY_AFTER_SECONDS),
    "database pool timeout": (PoolTimeout(), "unavailable", 503, errors.RETRY_AFTER_SECONDS),
    "pool empty": (PoolEmpty(), "pool-empty", 503, errors.POOL_EMPTY_RETRY_SECONDS),
    "pool busy": (PoolBusy(), "unavailable", 503, errors.POOL_BUSY_RETRY_SECONDS),
    "anything else": (ValueError("cannot read '123-45-6789'"), "internal", 500, None),
}


@pytest.mark.parametrize("raised", RAISED)
def test_each_error_a_partner_view_raises_answers_its_own_problem(
    raised: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each error its own type, status, detail and Retry-After, as the OpenAPI document describes its
    status, and nothing of its message; answered by its handler, never by Flask's last resort (which
    logs "Exception on …" with the error's chain)."""
    error, slug, status, retry_after = RAISED[raised]
    response = answer_to(error)
    assert {record.name for record in caplog.records} <= {"portal.api.errors"}
    body = assert_problem(response, status)
    documented(response)
    assert body["type"] == f"http://localhost/api/v1/docs#problem-{slug}"
    assert body["detail"] == errors.PROBLEMS[slug].detail  # werkzeug's own words never
    assert response.headers.get("Retry-After") == (str(retry_after) if retry_after else None)
    assert body.get("errors") == (
        [{"field": "zip_code", "detail": "is required"}] if slug == "invalid-fields" else None
    )
    assert "6789" not in response.get_data(as_text=True)


def test_an_api_error_is_logged_by_its_type_and_stack_never_its_message(caplog: pytest.LogCaptureFixture) -> None:
    """The operators learn what failed and where; a message may quote a value sent."""
    unexpected, database = ValueError("cannot read '123-45-6789'"), OperationalError("SELECT '6789'", {}, OSError())
    with caplog.at_level("INFO", logger="portal.api.errors"):
        answer_to(unexpected)
        answer_to(database)
    stack = "".join(traceback.format_tb(unexpected.__traceback__))
    assert "in view" in stack
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"unhandled ValueError\n{stack}"),
        ("WARNING", "database unavailable: OperationalError"),
    ]


def test_program_is_in_the_language_asked_for_with_every_text_in_it(client: FlaskClient, key: str) -> None:
    english = call(client, key, "GET", "/program").get_json()
    answer = call(client, key, "GET", "/program", headers={"Accept-Language": "es-MX, en;q=0.5"})
    spanish = answer.get_json()
    assert answer.headers["Content-Language"] == "es" and "Accept-Language" in answer.headers["Vary"]
    # Every text differs from the English (the demo programme gives all of its texts in Spanish)...
    for name in ("incident_summary", "call_center_hours", "mailing_address"):
        assert spanish[name] != english[name]
    ssn = next(field for field in spanish["exposed_fields"] if field["name"] == "ssn")
    english_ssn = next(field for field in english["exposed_fields"] if field["name"] == "ssn")
    assert (ssn["label"], ssn["risk"]) != (english_ssn["label"], english_ssn["risk"])
    # ...and what is not text (names, dates, addresses of sites) is the same.
    assert (spanish["enroll_by"], spanish["call_center_phone"]) == (english["enroll_by"], english["call_center_phone"])
    # The website's language cookie is a visitor's pick: it does not change a partner's answer.
    client.set_cookie("lang", "fr")
    assert call(client, key, "GET", "/program").headers["Content-Language"] == "en"


def test_program_is_all_in_english_when_the_programme_file_lacks_a_text_in_the_language(
    database_url: str, tmp_path: Any
) -> None:
    programme = tmp_path / "programme.toml"
    programme.write_text(PROGRAMME_TOML + '\n[programme.es]\nincident_summary = "Se copió una base de datos."\n')
    app = api_app(database_url, PROGRAMME_FILE=str(programme))
    key, client = create_api_key(app), app.test_client()
    answer = call(client, key, "GET", "/program", headers={"Accept-Language": "es"})
    body = answer.get_json()
    # call_center_hours has no Spanish: the labels and the summary are not Spanish either, never a mix.
    assert answer.headers["Content-Language"] == "en"
    assert body["incident_summary"] == "A copy of a registration database was taken."
    assert next(f for f in body["exposed_fields"] if f["name"] == "name")["label"] == "Name"
    assert (
        call(client, key, "GET", "/program", headers={"Accept-Language": "fr, es;q=0.9"}).headers["Content-Language"]
        == "en"
    )


def test_the_programme_file_is_read_with_the_apis_spelling_and_the_old_one(database_url: str, tmp_path: Any) -> None:
    us = PROGRAMME_TOML.replace("enrolment_url", "enrollment_url").replace("enrol_by", "enroll_by")
    us = us.replace("organisation", "organization")
    for text in (us, PROGRAMME_TOML):
        programme = tmp_path / "programme.toml"
        programme.write_text(text)
        app = api_app(database_url, PROGRAMME_FILE=str(programme))
        body = call(app.test_client(), create_api_key(app), "GET", "/program").get_json()
        assert body["organization"] == body["organisation"] == "Example Health Records, Inc."
        assert (body["enroll_by"], body["enrollment_url"]) == ("2027-06-30", "https://enroll.example.com/")


@pytest.mark.parametrize(
    ("name", "cell"),
    [("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1+1", "'+1+1"), ("-2+3", "'-2+3"),
     ("@SUM(A1)", "'@SUM(A1)"), ("A\tB=1", "A\tB=1"), ("Plain Partner", "Plain Partner")],
)  # fmt: skip
def test_list_api_keys_is_safe_to_open_in_a_spreadsheet(app: Flask, name: str, cell: str) -> None:
    """OWASP's rule: a cell that starts like a formula gets a leading quote; a tab inside stays in its cell."""
    result = app.test_cli_runner().invoke(args=["create-api-key", "--partner", name, "--scope", "verify"])
    assert result.exit_code == 0, result.output
    listing = app.test_cli_runner().invoke(args=["list-api-keys"]).output
    row = next(csv.reader(io.StringIO(listing), delimiter="\t"))
    assert len(row) == 8 and row[2] == cell


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@x", "\tx", "\rx"])
def test_a_cell_that_starts_like_a_formula_is_quoted(text: str) -> None:
    assert spreadsheet_safe(text) == "'" + text and spreadsheet_safe("x" + text) == "x" + text
