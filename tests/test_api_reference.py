"""The partner API's reference page and its OpenAPI document: a page of its own under the CSP, every
operation with its fields, examples and curl lines, every problem type at its anchor; and schemas
whose patterns accept exactly what the server accepts."""

from __future__ import annotations

import html
import re
import subprocess
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import schemathesis
from browser import LiveServer, PageAudit
from conftest import create_api_key, import_patients, make_app, numbered
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_checks import check_operation_answer, resolve, schema_errors

from portal.api import openapi
from portal.api.errors import PROBLEMS
from portal.api.validation import CLAIM_FIELDS
from portal.extensions import db
from portal.identity import InvalidIdentifier, normalise_reference, normalise_ssn_last4, normalise_zip, parse_birth_date
from portal.importer import import_codes
from portal.sandbox import NO_SSN_PERSON, SANDBOX_PEOPLE
from portal.services import services


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('reference') / 'portal.sqlite3'}")
    answer = app.test_client().get("/api/v1/docs", base_url="http://127.0.0.1:5000")
    assert answer.status_code == 200
    return answer.get_data(as_text=True), dict(answer.headers)


def test_the_reference_is_a_page_of_its_own_within_the_csp(page: tuple[str, dict[str, str]]) -> None:
    text, headers = page
    # Not the patients' page: no site header, no language links; its own stylesheet, served here.
    assert "site-header" not in text and "Español" not in text and "?lang=" not in text
    assert '<link rel="stylesheet" href="/static/api.css">' in text
    assert "<script" not in text and "style=" not in text and "<style" not in text and "//cdn" not in text
    assert (
        "unsafe-inline" not in headers["Content-Security-Policy"]
        and "default-src 'self'" in headers["Content-Security-Policy"]
    )
    # Markdown code spans are rendered, never shown as backticks.
    assert "`" not in re.sub(r"<pre.*?</pre>", "", text, flags=re.S)
    assert "<code>claim_token</code>" in text


def test_every_operation_has_its_fields_meanings_examples_and_curl_lines(page: tuple[str, dict[str, str]]) -> None:
    text = html.unescape(page[0])
    for anchor in ("post-verifications", "post-claims", "get-program"):
        section = text[text.index(f'<section id="{anchor}"') :]
        section = section[: section.index("</section>")]
        assert "curl -sS" in section and '"http://127.0.0.1:5000/api/v1/' in section
        assert "<caption>Request headers</caption>" in section and "Answers" in section
    claims = text[text.index('<section id="post-claims"') :]
    assert "A secret for <code>POST /claims</code>" in text  # claim_token has a meaning
    assert '-d "{\\"claim_token\\": \\"$TOKEN\\"}"' in claims
    assert "<caption>Request body: a JSON object" in text and '"last_name": "Example-Doe"' in text


def test_every_problem_type_has_its_section(page: tuple[str, dict[str, str]]) -> None:
    text = page[0]
    for slug, kind in PROBLEMS.items():
        assert f'<section id="problem-{slug}"' in text
        assert f"http://127.0.0.1:5000/api/v1/docs#problem-{slug}" in text and kind.title in text


def test_the_page_s_curl_lines_are_valid_shell(page: tuple[str, dict[str, str]]) -> None:
    lines = [html.unescape(line) for line in re.findall(r'<pre class="curl"[^>]*><code>(.*?)</code></pre>', page[0])]
    assert len(lines) == 6
    for line in lines:
        assert subprocess.run(["bash", "-n"], input=line, text=True, check=False).returncode == 0, line


# --- The schemas' patterns accept what the server accepts, no more, no less ------------------------


def accepted(check: Any, value: str) -> bool:
    try:
        check(value.strip())
    except InvalidIdentifier:
        return False
    return True


def test_the_birth_date_pattern_names_every_real_date_from_1900_to_today() -> None:
    today = date.today()
    pattern = re.compile(openapi.birth_date_pattern(today))
    days = [date(1899, 12, 1) + timedelta(days=n) for n in range(70)]  # around the first day
    days += [date(year, 2, 27) + timedelta(days=n) for year in (1900, 1904, 1999, 2000, 2023, 2024) for n in range(4)]
    days += [today - timedelta(days=n) for n in range(-40, 400)]  # this year and the days after today
    for day in days:
        text = day.isoformat()
        assert bool(pattern.fullmatch(text)) == accepted(parse_birth_date, text), text
    refused = ("1980-02-30", "1981-02-29", "1900-02-29", "1896-02-29", "2000-13-01", "2000-00-10", "2000-04-31")
    for text in (*refused, "80-01-01", "4-02-29"):
        assert not pattern.fullmatch(text) and not accepted(parse_birth_date, text), text


@pytest.mark.parametrize(("low", "high", "width"), [(0, 9, 1), (1, 31, 2), (1900, 2026, 4), (7, 1234, 4), (5, 5, 2)])
def test_the_digit_range_patterns_are_exact(low: int, high: int, width: int) -> None:
    pattern = re.compile(openapi.digits(low, high, width))
    assert [n for n in range(10**width) if pattern.fullmatch(f"{n:0{width}d}")] == list(range(low, high + 1))


TYPED = st.text(alphabet="0123456789 -\tabcxyzIiLlOoUu", max_size=44)
CHECKS = {"zip_code": normalise_zip, "ssn_last4": normalise_ssn_last4, "reference": normalise_reference}


@settings(max_examples=400, deadline=None)
@given(value=TYPED, field=st.sampled_from(sorted(CHECKS)))
def test_the_field_patterns_accept_what_the_server_accepts(value: str, field: str) -> None:
    """Blank factors are "not given" (the schema's oneOf decides); a given value matches the pattern
    exactly when the server takes it."""
    if not value.strip():
        return
    schema = openapi.document(date.today())["components"]["schemas"]["VerificationRequest"]["properties"][field]
    within = len(value) <= CLAIM_FIELDS[field]  # the server's bound, on the value as sent
    assert (re.search(schema["pattern"], value) is not None) == accepted(CHECKS[field], value)
    assert (len(value) <= schema["maxLength"]) == within


@pytest.mark.parametrize("name", ["O'Brien", "garcia lopez", "Nguyễn", "王", "X", "1"])
def test_a_last_name_with_a_letter_or_digit_matches_and_punctuation_alone_does_not(name: str) -> None:
    pattern = openapi.PATTERNS["last_name"]
    assert re.search(pattern, name)
    assert not re.search(pattern, "'- .") and not re.search(pattern, "\u02bb")


def test_the_document_is_served_and_matches_the_page(app: Flask) -> None:
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    assert document["info"]["version"] == openapi.VERSION
    assert set(document["paths"]) == {"/verifications", "/claims", "/program"}
    assert document["components"]["schemas"]["Program"]["properties"]["organisation"]["deprecated"] is True


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 320])
def test_the_reference_page_passes_axe_and_the_csp_at_both_widths(
    app: Flask, browser: Any, audit: PageAudit, width: int
) -> None:
    """In Chromium: zero axe violations, nothing refused by the CSP (its stylesheet loads), and at
    320 px no sideways scroll of the page (wide code and tables scroll in their own boxes)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, is_mobile=width < 600)
    try:
        page = audit.watch(context.new_page())
        with LiveServer(app) as live:
            page.goto(f"{live.url}/api/v1/docs")
            assert page.evaluate("getComputedStyle(document.querySelector('.api-header')).backgroundColor") != (
                "rgba(0, 0, 0, 0)"
            )
            audit.check(page, f"api-reference-{width}")
    finally:
        context.close()


# --- The document: valid OpenAPI, its examples valid, and the answers it describes the real ones ----


@pytest.fixture
def document() -> dict[str, Any]:
    return openapi.document(date.today())


def references(node: Any) -> Iterator[str]:
    """Every ``$ref`` in ``node``, however deep."""
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def test_the_document_is_valid_openapi_3_1_and_each_component_is_used_and_each_reference_names_one(
    document: dict[str, Any],
) -> None:
    schemathesis.openapi.from_dict(document).validate()  # against OpenAPI 3.1's own schema
    named = set(references(document))
    components = {f"#/components/{kind}/{name}" for kind in ("parameters", "headers", "responses", "schemas")
                  for name in document["components"][kind]}  # fmt: skip
    # The problems of no operation (a wrong path or method, an internal error) are components alone.
    assert named == components - {f"#/components/responses/Problem{status}" for status in (404, 405, 500)}
    schemes = set(document["components"]["securitySchemes"])
    links = set()
    for methods in document["paths"].values():
        for operation in methods.values():
            assert operation["security"] and all(set(need) <= schemes for need in operation["security"])
            for answer in operation["responses"].values():
                links |= {link["operationId"] for link in answer.get("links", {}).values()}
    assert links <= {
        operation["operationId"] for methods in document["paths"].values() for operation in methods.values()
    }


def test_every_example_is_valid_against_its_own_schema(document: dict[str, Any]) -> None:
    """The examples partners copy are answers and requests the schemas allow, each of its own kind."""
    media = []
    for methods in document["paths"].values():
        for operation in methods.values():
            media += operation["requestBody"]["content"].values() if "requestBody" in operation else []
            for answer in operation["responses"].values():
                media += resolve(document, answer)["content"].values()
    media += [
        content for answer in document["components"]["responses"].values() for content in answer["content"].values()
    ]
    assert sum(len(medium["examples"]) for medium in media) > len(PROBLEMS)
    for medium in media:
        for name, example in medium["examples"].items():
            assert example["summary"], name
            assert not schema_errors(document, medium["schema"], example["value"]), name
    for parameter in document["components"]["parameters"].values():
        assert not schema_errors(document, parameter["schema"], parameter["example"])
        assert parameter["in"] == "header" and parameter["required"] is False


def test_the_verification_examples_are_the_sandbox_people_and_verify_there(tmp_path: Any) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}")
    assert import_patients(app, list(SANDBOX_PEOPLE)) == []
    key = create_api_key(app, "verify")
    with app.app_context():
        reference = services().hasher.letter_reference(NO_SSN_PERSON)
    examples = openapi.document(date.today())["paths"]["/verifications"]["post"]["requestBody"]["content"]
    bodies = {name: dict(example["value"]) for name, example in examples["application/json"]["examples"].items()}
    assert bodies["reference"]["reference"] == openapi.EXAMPLE_REFERENCE  # the letter's own, on each portal
    bodies["reference"]["reference"] = reference
    assert set(bodies) == {"ssn", "spelling", "reference"}
    for name, body in bodies.items():
        answer = app.test_client().post("/api/v1/verifications", json=body, headers={"Authorization": f"Bearer {key}"})
        assert answer.get_json()["verified"] is True, name


# What each operation may answer, as partners are told: its successes and its problems' statuses.
STATUSES = {
    ("/verifications", "post"): {200, 400, 401, 403, 409, 413, 415, 422, 429, 503},
    ("/claims", "post"): {200, 201, 400, 401, 403, 409, 413, 415, 422, 429, 503},
    ("/program", "get"): {200, 401, 429, 503},
}


def test_each_operation_documents_the_statuses_it_answers_and_needs_a_key_and_a_body(document: dict[str, Any]) -> None:
    for (path, method), statuses in STATUSES.items():
        operation = document["paths"][path][method]
        assert list(operation["responses"]) == [str(status) for status in sorted(statuses)], (path, method)
        for status in statuses - {200, 201}:
            assert operation["responses"][str(status)] == {"$ref": f"#/components/responses/Problem{status}"}
        assert operation["security"] == [{"partnerKey": []}]
        if method == "post":
            assert operation["requestBody"]["required"] is True
    assert sum(len(methods) for methods in document["paths"].values()) == len(STATUSES)


def test_each_problem_type_is_documented_under_its_status_with_its_title_detail_and_example(
    document: dict[str, Any],
) -> None:
    answers = document["components"]["responses"]
    assert set(answers) == {f"Problem{kind.status}" for kind in PROBLEMS.values()}
    for slug, kind in PROBLEMS.items():
        answer = answers[f"Problem{kind.status}"]
        assert f"`{slug}`: {kind.detail}" in answer["description"]
        example = answer["content"]["application/problem+json"]["examples"][slug]
        assert example["summary"] == kind.title
        assert example["value"]["type"] == f"http://127.0.0.1:5000/api/v1/docs#problem-{slug}"
        assert (example["value"]["title"], example["value"]["status"], example["value"]["detail"]) == (
            kind.title, kind.status, kind.detail,
        )  # fmt: skip
        assert ("errors" in example["value"]) == (slug == "invalid-fields")
    for name, answer in answers.items():
        examples = answer["content"]["application/problem+json"]["examples"]
        assert {PROBLEMS[slug].status for slug in examples} == {int(name.removeprefix("Problem"))}
    # The headers each problem may carry: the key's rate on all but those answered before the key
    # is read (tests/test_api.py checks that they are sent).
    rate = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    expected = {401: {"WWW-Authenticate"}, 404: set(), 405: {"Allow"}, 409: {"Retry-After"} | rate,
                429: {"Retry-After"} | rate, 503: {"Retry-After"} | rate}  # fmt: skip
    for name, answer in answers.items():
        status = int(name.removeprefix("Problem"))
        assert set(answer["headers"]) == {"Content-Language"} | expected.get(status, rate), name
        required = {
            header for header in answer["headers"] if resolve(document, answer["headers"][header]).get("required")
        }
        assert required == {"Content-Language"} | ({"Retry-After"} if status in (409, 429, 503) else set()), name


def test_every_answer_the_api_gives_is_one_the_document_describes(tmp_path: Any) -> None:
    """Real answers of each operation, success and refusal, against the document: a documented
    status, a body its schema allows, the headers it names (required ones present). The answers no
    request can cheaply provoke here (409, and 503 on a verification) are checked in tests/test_api.py
    from the errors that cause them."""
    app = make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}")
    assert import_patients(app, list(SANDBOX_PEOPLE)) == []
    with app.app_context():
        rows = [{"code": "IDP-DOC-0001", "enroll_by": "2030-01-01", "product": "Protect 24"}]
        import_codes(db.session, services().cipher, numbered(rows), on_reject=lambda *_: None)
    keys = {scopes: create_api_key(app, *scopes) for scopes in (("verify", "claim"), ("verify",), ("claim",))}
    key, slow = keys["verify", "claim"], create_api_key(app, rate="1/hour")
    document = openapi.document(date.today())
    client = app.test_client()
    seen: dict[tuple[str, str], set[int]] = {operation: set() for operation in STATUSES}

    def answer(method: str, path: str, key: str | None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = client.open(
            f"/api/v1{path}", method=method, headers={**headers, **kwargs.pop("headers", {})}, **kwargs
        )
        check_operation_answer(document, path, method, response)
        seen[path, method.lower()].add(response.status_code)
        return response

    person, other = openapi.EXAMPLE_PERSON, openapi._sandbox_body(SANDBOX_PEOPLE[1])
    retried = {"headers": {"Idempotency-Key": "doc-1"}}
    for path, body in (("/verifications", person), ("/claims", {"claim_token": "x"})):
        answer("POST", path, key, data=b"{", content_type="application/json")  # 400
        answer("POST", path, None, json=body)  # 401
        answer("POST", path, key, json={**body, "x": "y" * 5000})  # 413
        answer("POST", path, key, data="a=b")  # 415
        answer("POST", path, key, json={})  # 422
        answer("POST", path, slow, json=body)
        assert answer("POST", path, slow, json=body).status_code == 429
    assert answer("POST", "/verifications", keys["claim",], json=person).status_code == 403
    # The invalid-fields example is the answer to the example person without a birth date.
    problems = document["components"]["responses"]["Problem422"]["content"]["application/problem+json"]
    without = {name: value for name, value in person.items() if name != "date_of_birth"}
    errors = answer("POST", "/verifications", key, json=without).get_json()["errors"]
    assert errors == problems["examples"]["invalid-fields"]["value"]["errors"]
    assert answer("POST", "/verifications", key, json={**person, "ssn_last4": "0000"}).get_json() == {"verified": False}
    token = answer("POST", "/verifications", key, json=person, **retried).get_json()["claim_token"]
    replayed = answer("POST", "/verifications", key, json=person, **retried)
    assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.get_json()["claim_token"] == token
    assert answer("POST", "/verifications", key, json=other, **retried).status_code == 422  # the key reused
    second = answer("POST", "/verifications", key, json=other).get_json()["claim_token"]
    assert answer("POST", "/claims", keys["verify",], json={"claim_token": token}).status_code == 403
    assert [answer("POST", "/claims", key, json={"claim_token": token}).status_code for _ in "12"] == [201, 200]
    assert answer("POST", "/claims", key, json={"claim_token": second}).status_code == 503  # no code left
    for language in ("en", "es"):
        program = answer("GET", "/program", key, headers={"Accept-Language": language})
        assert program.headers["Content-Language"] == language
    answer("GET", "/program", None)
    answer("GET", "/program", slow)
    assert {operation: STATUSES[operation] - statuses for operation, statuses in seen.items()} == {
        ("/verifications", "post"): {409, 503},
        ("/claims", "post"): {409},
        ("/program", "get"): {503},
    }


def test_each_problem_schema_refuses_another_statuss_type_title_or_status(document: dict[str, Any]) -> None:
    """A problem answer's schema names its own types, titles and status: a partner's validator tells a
    problem of one status from another's by any of the three."""
    for slug, kind in PROBLEMS.items():
        answer = document["components"]["responses"][f"Problem{kind.status}"]["content"]["application/problem+json"]
        own = answer["examples"][slug]["value"]
        assert not schema_errors(document, answer["schema"], own)
        for other in PROBLEMS.values():
            if other.status == kind.status:
                continue
            changed = {"type": own["type"].replace(slug, other.slug), "title": other.title, "status": other.status}
            for field, value in changed.items():
                assert schema_errors(document, answer["schema"], {**own, field: value}), (slug, field, other.slug)
