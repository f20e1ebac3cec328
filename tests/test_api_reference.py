"""The partner API's reference page and its OpenAPI document: a page of its own under the CSP, every
operation with its fields, examples and curl lines, every problem type at its anchor; and schemas
whose patterns accept exactly what the server accepts."""

from __future__ import annotations

import html
import re
import subprocess
from datetime import date, timedelta
from typing import Any

import pytest
from browser import LiveServer, PageAudit
from conftest import make_app
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.api import openapi
from portal.api.errors import PROBLEMS
from portal.api.validation import CLAIM_FIELDS
from portal.identity import InvalidIdentifier, normalise_reference, normalise_ssn_last4, normalise_zip, parse_birth_date


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
    for text in ("1980-02-30", "1981-02-29", "1900-02-29", "2000-13-01", "2000-00-10", "2000-04-31", "80-01-01"):
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
