"""Fuzzing every public form and endpoint: whatever arrives, the answer is a clean page.

For any input — arbitrary Unicode, control characters, NUL, 20 KB strings, markup, extra or
missing fields, JSON, multipart, garbage bytes, odd methods and query strings — the portal:

* answers below 500 (bad input is a clear 4xx, never an error of ours);
* never shows a stack trace or a Python exception name;
* HTML-escapes anything it echoes (no raw ``<script>`` or injected attribute ever comes back);
* sends its Content-Security-Policy on every HTML page.

The partner API is not fuzzed here: schemathesis needs its OpenAPI document, which arrives with
that API. Add the schemathesis-driven API fuzz test next to this file then (run against the same
checks as ``assert_clean`` below).

Example counts are sized for the whole module to take well under 30 s on two cores; raise them
for a deeper run with ``PORTAL_HYPOTHESIS_SCALE=10``.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import csrf_token, import_patients, lookup, make_app, numbered, patient_row
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from portal.extensions import db
from portal.importer import import_codes
from portal.services import services

SCALE = max(1, int(os.environ.get("PORTAL_HYPOTHESIS_SCALE", "1")))


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


FORM_FIELDS = ("last_name", "date_of_birth", "zip_code", "ssn_last4", "reference")
KNOWN = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}

# Markup that must never come back unescaped. Each has a part that only an unescaped echo can produce.
PAYLOADS = {
    "<script>alert(1)</script>": "<script",
    '"><img src=x onerror=alert(1)>': "<img",
    "'><svg/onload=alert(1)>": "<svg",
    '" autofocus onfocus="alert(1)': '" autofocus onfocus',
    "</textarea><fuzz-marker>": "<fuzz-marker",
    "javascript:alert(1)//<iframe src=x>": "<iframe",
}
# A Python error leaking into a page would carry one of these.
LEAK = re.compile(
    r"Traceback|File \"|\b[A-Z][A-Za-z]*(?:Error|Exception)\b|\bwerkzeug\.|\bsqlalchemy\.|\bpsycopg|"
    r"\bportal\.(?:public|identity|claims|importer|throttle|errors|models|config|security|exposure)\b"
)


def text_values() -> st.SearchStrategy[str]:
    payload = st.sampled_from(sorted(PAYLOADS))
    return st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=20),
        st.text(alphabet=string.digits + "-/ .", max_size=14),
        payload,
        st.tuples(st.text(max_size=10), payload, st.text(max_size=10)).map("".join),
        st.builds(lambda ch, n: ch * n, st.characters(codec="utf-8"), st.integers(200, 20_000)),
        st.just("\x00"),
        st.just("1980-04-23\x00"),
    )


extra_fields = st.dictionaries(
    st.text(alphabet=string.ascii_letters + "_[].-", min_size=1, max_size=16).filter(
        lambda k: k not in FORM_FIELDS and k != "csrf_token"
    ),
    text_values(),
    max_size=3,
)


def assert_clean(response: Any, sent: str = "") -> None:
    """The checks every answer must pass, whatever was sent."""
    status = response.status_code
    body = response.get_data(as_text=True)
    assert status < 500, f"{status} for {sent[:200]!r}"
    leak = LEAK.search(body)
    assert leak is None, f"{leak.group(0)!r} in a {status} page"
    lowered = body.lower()
    for marker in PAYLOADS.values():
        assert marker.lower() not in lowered, f"{marker!r} came back unescaped"
    if response.mimetype == "text/html":
        assert "default-src 'self'" in response.headers.get("Content-Security-Policy", ""), "no CSP"
        assert response.headers.get("X-Content-Type-Options") == "nosniff"


def assume_no_leak_words(*values: Any) -> None:
    """An echo of the visitor's own text may look like an exception name; such input proves nothing."""
    assume(not any(LEAK.search(str(value)) for value in values))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "portal.sqlite3"
    app = make_app(f"sqlite:///{path}", PROPAGATE_EXCEPTIONS=False)  # errors are pages, as in production
    assert import_patients(app, [patient_row()]) == []
    with app.app_context():
        import_codes(
            db.session, services().cipher,
            numbered([{"code": "IDP-FUZZ-0001", "enroll_by": "2030-01-01"}]), on_reject=lambda *r: None,
        )  # fmt: skip
    yield app
    with app.app_context():
        db.engine.dispose()


CSRF_REFUSED = "This form expired or was sent from another page"


def visitor(app: Flask) -> tuple[FlaskClient, str]:
    """A new visitor with a fresh CSRF token (a successful lookup clears the session, token included)."""
    client = app.test_client()
    return client, csrf_token(client)


def assert_past_csrf(response: Any) -> None:
    """A valid token was sent: the refusal, if any, must come from the input, or the fuzzing proved nothing."""
    assert CSRF_REFUSED not in response.get_data(as_text=True), "refused by CSRF: this input never reached the view"


def verified_client(app: Flask) -> FlaskClient:
    visitor = app.test_client()
    assert lookup(visitor, **KNOWN).status_code == 303
    return visitor


# --- The lookup form -----------------------------------------------------------------------------


@example(fields={name: "<script>alert(1)</script>" for name in FORM_FIELDS}, extra={})
@example(fields={"last_name": "x" * 20_000}, extra={})
@example(fields={**KNOWN}, extra={})  # no "reference" at all, as curl or an old page would send
@given(
    fields=st.fixed_dictionaries({}, optional={name: text_values() for name in FORM_FIELDS}),
    extra=extra_fields,
)
@budget(120)
def test_lookup_form_takes_any_text(app: Flask, fields: dict[str, str], extra: dict[str, str]) -> None:
    assume_no_leak_words(*fields.values(), *extra.values(), *extra)
    client, token = visitor(app)
    data = {**extra, **fields, "csrf_token": token}
    response = client.post("/lookup", data=data)
    assert_clean(response, repr(fields))
    if response.status_code != 413:
        assert_past_csrf(response)
    assert response.status_code in (200, 303, 400, 413, 429), response.status_code


@given(fields=st.fixed_dictionaries({name: text_values() for name in FORM_FIELDS}))
@budget(40)
def test_lookup_form_as_multipart_takes_any_text(app: Flask, fields: dict[str, str]) -> None:
    assume_no_leak_words(*fields.values())
    client, token = visitor(app)
    response = client.post("/lookup", data={**fields, "csrf_token": token}, content_type="multipart/form-data")
    assert_clean(response, repr(fields))
    if response.status_code != 413:
        assert_past_csrf(response)


@given(name=st.sampled_from(FORM_FIELDS))
@budget(10)
def test_a_file_where_a_field_belongs_reads_as_no_value(app: Flask, name: str) -> None:
    client, token = visitor(app)
    data: dict[str, Any] = {**KNOWN, "reference": "", "csrf_token": token}
    data[name] = (BytesIO(b"Garcia-Lopez"), "name.txt")
    response = client.post("/lookup", data=data, content_type="multipart/form-data")
    assert_clean(response, name)
    assert_past_csrf(response)
    # A file is not text: without that field the details are incomplete, except for the unused reference.
    assert response.status_code == (303 if name == "reference" else 400)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text_values(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FORM_FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=10,
)


@example(document=[1, 2])
@example(document="abc")
@example(document=123)
@example(document={**KNOWN, "last_name": 5})
@given(document=json_values)
@budget(80)
def test_lookup_answers_any_json_with_a_4xx(app: Flask, document: Any) -> None:
    text = json.dumps(document)
    assume_no_leak_words(text)
    client, token = visitor(app)
    response = client.post("/lookup", data=text, content_type="application/json", headers={"X-CSRFToken": token})
    assert_clean(response, text)
    assert 400 <= response.status_code < 500, f"{response.status_code} for JSON {text[:200]}"
    if response.status_code != 413:
        assert_past_csrf(response)


@given(
    body=st.binary(max_size=2_000),
    content_type=st.sampled_from(
        [
            "application/json",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/xml",
            "application/octet-stream",
            "",
            "text/html; charset=utf-7",
            "*/*",
        ]
    )
    | st.text(max_size=40),
    with_token=st.booleans(),
)
@budget(80)
def test_lookup_answers_any_bytes_with_a_4xx(app: Flask, body: bytes, content_type: str, with_token: bool) -> None:
    assume_no_leak_words(body.decode("utf-8", "replace"))
    client, token = visitor(app)
    headers = {"X-CSRFToken": token} if with_token else {}
    try:
        response = client.post("/lookup", data=body, headers={**headers, "Content-Type": content_type})
    except ValueError:
        assume(False)  # a header the test client itself refuses to send (a newline in it)
    assert_clean(response, repr(body[:100]))
    assert response.status_code < 500


def test_lookup_without_a_valid_csrf_token_is_refused(app: Flask) -> None:
    client, _ = visitor(app)
    for token in ("", "forged", "x" * 5000):
        response = client.post("/lookup", data={**KNOWN, "reference": "", "csrf_token": token})
        assert_clean(response)
        assert response.status_code == 400


# --- Every endpoint ------------------------------------------------------------------------------

PATHS = ["/", "/lookup", "/exposure", "/claim", "/code", "/sign-out"]
query_strings = st.one_of(
    st.dictionaries(st.text(max_size=10), text_values(), max_size=3).map(
        lambda d: "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items())
    ),
    st.binary(max_size=200).map(lambda b: "".join(f"%{byte:02X}" for byte in b)),
    st.sampled_from(["%", "%%", "%zz", "a=%ff%fe", "&&==&", "next=//evil.example", "lang=../../etc/passwd"]),
)


@given(
    path=st.sampled_from(PATHS)
    | st.sampled_from(PATHS).map(lambda p: p + "/x")
    | st.text(max_size=30).map(lambda t: "/" + quote(t)),
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    query=query_strings,
    body=st.one_of(st.none(), st.binary(max_size=500), extra_fields),
    signed_in=st.booleans(),
    with_token=st.booleans(),
    language=st.none() | st.text(max_size=30),
)
@budget(150)
def test_every_endpoint_answers_anything_cleanly(
    app: Flask, path: str, method: str, query: str, body: Any,
    signed_in: bool, with_token: bool, language: str | None,
) -> None:  # fmt: skip
    assume_no_leak_words(path, query, body if not isinstance(body, bytes) else body.decode("utf-8", "replace"))
    client = verified_client(app) if signed_in else app.test_client()
    headers: dict[str, str] = {}
    if language is not None and "\n" not in language and "\r" not in language:
        headers["Accept-Language"] = language
    data: Any = body
    if with_token and method != "GET":
        visitor_token = csrf_token(client)
        headers["X-CSRFToken"] = visitor_token
        if isinstance(body, dict):
            data = {**body, "csrf_token": visitor_token}
    try:
        response = client.open(f"{path}?{query}", method=method, data=data, headers=headers)
    except (ValueError, UnicodeEncodeError):
        assume(False)  # something the test client itself cannot put on the wire
    assert_clean(response, f"{method} {path}?{query}")


@given(cookie=st.text(max_size=300), path=st.sampled_from(PATHS))
@budget(40)
def test_a_forged_or_garbled_session_cookie_is_just_no_session(app: Flask, cookie: str, path: str) -> None:
    client = app.test_client()
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], cookie)
    response = client.get(path)
    assert_clean(response, cookie)
    if path in ("/exposure", "/code"):
        assert response.status_code == 303  # back to the lookup: a cookie we did not sign verifies nobody
