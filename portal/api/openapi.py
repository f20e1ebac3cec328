"""The partner API's contract, OpenAPI 3.1: served at /api/v1/openapi.json, and the source of the
reference page at /api/v1/docs.

Kept beside the views it describes; ``tests/test_api_contract.py`` runs schemathesis against a
live server with it, positive and negative data alike, so the schemas say exactly what the API
accepts: a request the document calls valid is answered, one it calls invalid is refused. The
birth-date pattern names the dates from 1900-01-01 to today, so the document is built per day.
"""

from __future__ import annotations

import calendar
import re
from datetime import date
from functools import lru_cache
from typing import Any

from portal.api.errors import PROBLEMS, ProblemType
from portal.api.validation import BOTH_FACTORS, CLAIM_FIELDS, NEITHER_FACTOR, TOKEN_MAX
from portal.exposure import FIELDS
from portal.identity import EARLIEST_BIRTH_DATE
from portal.sandbox import SANDBOX_PEOPLE

VERSION = "1.3.1"  # CHANGELOG.md, "Partner API"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe's keys


def _sandbox_body(person: dict[str, str]) -> dict[str, str]:
    return {
        "last_name": person["last_name"],
        "date_of_birth": person["date_of_birth"],
        "zip_code": person["zip"][:5],
        "ssn_last4": person["ssn"][-4:],
    }


# The sandbox's first person, in the shape partners send: the examples' person (the demo holds them).
EXAMPLE_PERSON = _sandbox_body(SANDBOX_PEOPLE[0])
EXAMPLE_TOKEN = "Hq1dV0xk3Yb7TQ2nLr9Wc8ZsFe4Ma6Pj5Ug0Ki2Ot1E"  # noqa: S105 (an example, not a secret)
EXAMPLE_REFERENCE = "7K3M-Q9TX-2B4H-8C1D-F6G5-J0NP"
EXAMPLE_CODE = {
    "activation_code": "IDP-7K3M-Q9TX-2B4H",
    "product": "Identity Protection 24 months",
    "enroll_by": "2027-06-30",
    "coverage_months": 24,
    "enrollment_url": "https://enroll.example.com/northwind",
}


# --- Patterns: exactly what the server accepts ----------------------------------------------------


def digits(low: int, high: int, width: int) -> str:
    """A regular expression for the integers ``low``..``high`` written with ``width`` digits."""
    first, last = f"{low:0{width}d}", f"{high:0{width}d}"
    if width == 1:
        return first if first == last else f"[{first}-{last}]"
    if first[0] == last[0]:
        return first[0] + digits(int(first[1:]), int(last[1:]), width - 1)
    rest, top = width - 1, 10 ** (width - 1) - 1
    parts, whole_from, whole_to = [], int(first[0]), int(last[0])
    if int(first[1:]):
        parts.append(first[0] + digits(int(first[1:]), top, rest))
        whole_from += 1
    tail = []
    if int(last[1:]) != top:
        tail.append(last[0] + digits(0, int(last[1:]), rest))
        whole_to -= 1
    if whole_from <= whole_to:
        parts.append(digits(whole_from, whole_to, 1) + f"[0-9]{{{rest}}}")
    return "(?:" + "|".join(parts + tail) + ")"


def _month_days(year: int, month: int, last_day: int | None = None) -> str:
    days = calendar.monthrange(year, month)[1] if last_day is None else last_day
    return f"{month:02d}-{digits(1, days, 2)}"


def birth_date_pattern(today: date) -> str:
    """``YYYY-MM-DD`` of a real date from 1900-01-01 to ``today``, as ``parse_birth_date`` accepts."""
    first_year = EARLIEST_BIRTH_DATE.year
    whole_years = digits(first_year, today.year - 1, 4)
    # Every month and day of a common year; 29 February only in the leap years.
    common_days = "(?:" + "|".join(_month_days(2001, month) for month in range(1, 13)) + ")"
    leap_years = "|".join(str(y) for y in range(first_year, today.year) if calendar.isleap(y))
    this_year = [_month_days(today.year, month) for month in range(1, today.month)]
    this_year.append(_month_days(today.year, today.month, today.day))
    alternatives = [
        f"{whole_years}-{common_days}",
        f"(?:{leap_years})-02-29",
        f"{today.year}-(?:{'|'.join(this_year)})",
    ]
    return "^(?:" + "|".join(alternatives) + ")$"


SEPARATOR = r"[\s-]"  # spaces and dashes, ignored wherever they are
BLANK = r"^\s*$"  # a blank value is no value
NOT_BLANK = r"\S"
PATTERNS = {
    # At least one letter or digit of any script (the modifier letters read as apostrophes are not).
    "last_name": "[^\\W_\u02b9-\u02bf]",
    "zip_code": rf"^{SEPARATOR}*(?:[0-9]{SEPARATOR}*){{5}}(?:(?:[0-9]{SEPARATOR}*){{4}})?$",
    "ssn_last4": rf"{BLANK}|^{SEPARATOR}*(?:[0-9]{SEPARATOR}*){{4}}$",
    # Crockford's base 32, where I and L read as 1 and O as 0: every letter but U, in either case.
    "reference": rf"{BLANK}|^{SEPARATOR}*(?:[0-9A-TV-Za-tv-z]{SEPARATOR}*){{24}}$",
}
FIELD_DESCRIPTIONS = {
    "last_name": "The last name as on the letter. Case, accents, spaces, apostrophes, hyphens and other "
    "punctuation are ignored: `O'Brien` = `o brien` = `OBRIEN`, `García-López` = `garcia lopez`.",
    "date_of_birth": "`YYYY-MM-DD`: a real date from 1900-01-01 to today.",
    "zip_code": "The 5-digit ZIP code, or ZIP+4; spaces and dashes are ignored (`10001` = `10001-2345`).",
    "ssn_last4": "The last four digits of the person's SSN (spaces and dashes ignored). Give `ssn_last4` or "
    "`reference`, not both: `ssn_last4` unless the person has no SSN on file. A blank value counts as not given.",
    "reference": "The 24-character reference printed on the person's letter (case, spaces and dashes ignored; "
    "I and L read as 1, O as 0), for a person with no SSN on file. Give `ssn_last4` or `reference`, not both.",
}


# --- Building blocks ------------------------------------------------------------------------------


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _json(schema: str, description: str, examples: dict[str, Any], headers: tuple[str, ...] = RATE_HEADERS) -> dict:
    return {
        "description": description,
        "headers": {name: _ref(name, "headers") for name in headers},
        "content": {
            "application/json": {
                "schema": _ref(schema),
                "examples": {name: {"summary": summary, "value": value} for name, (summary, value) in examples.items()},
            }
        },
    }


def _problems_of(status: int) -> list[ProblemType]:
    return [kind for kind in PROBLEMS.values() if kind.status == status]


PROBLEM_HEADERS = {
    401: ("WWW-Authenticate",),
    405: ("Allow",),
    409: ("Retry-After",),
    429: ("Retry-After",),
    503: ("Retry-After",),
}
# Answered before a key is read, so never counted by its rate: no X-RateLimit-*. Every other problem
# may come after the key's rate counted the request, and then carries them.
UNCOUNTED = (401, 404, 405)


def _problem_response(status: int) -> dict[str, Any]:
    kinds = _problems_of(status)
    slugs = "|".join(kind.slug for kind in kinds)
    return {
        "description": " ".join(f"`{kind.slug}`: {kind.detail}" for kind in kinds),
        "headers": {
            "Content-Language": _ref("Content-Language", "headers"),
            **{name: _ref(name, "headers") for name in PROBLEM_HEADERS.get(status, ())},
            **{name: _ref(name, "headers") for name in RATE_HEADERS if status not in UNCOUNTED},
        },
        "content": {
            "application/problem+json": {
                "schema": {
                    "allOf": [
                        _ref("Problem"),
                        {
                            "properties": {
                                "type": {"pattern": f"/api/v1/docs#problem-(?:{slugs})$"},
                                "title": {"enum": [kind.title for kind in kinds]},
                                "status": {"const": status},
                            }
                        },
                    ]
                },
                "examples": {
                    kind.slug: {
                        "summary": kind.title,
                        "value": {
                            "type": f"http://127.0.0.1:5000/api/v1/docs#problem-{kind.slug}",
                            "title": kind.title,
                            "status": status,
                            "detail": kind.detail,
                            **(
                                {"errors": [{"field": "date_of_birth", "detail": "is required"}]}
                                if kind.slug == "invalid-fields"
                                else {}
                            ),
                        },
                    }
                    for kind in kinds
                },
            }
        },
    }


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    responses: dict[int, Any],
    body: tuple[str, dict[str, Any]] | None = None,
    parameters: tuple[str, ...] = (),
    problems: tuple[int, ...] = (),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "security": [{"partnerKey": []}],
        "parameters": [_ref(name, "parameters") for name in parameters],
        "responses": {
            str(status): response
            for status, response in sorted(
                {**responses, **{s: _ref(f"Problem{s}", "responses") for s in problems}}.items()
            )
        },
    }
    if body:
        schema, examples = body
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref(schema),
                    "examples": {name: {"summary": s, "value": value} for name, (s, value) in examples.items()},
                }
            },
        }
    return operation


BODY_PROBLEMS = (400, 401, 403, 409, 413, 415, 422, 429, 503)
SANDBOX_NO_SSN = SANDBOX_PEOPLE[2]


@lru_cache(maxsize=2)
def document(today: date) -> dict[str, Any]:
    """The whole contract as of ``today`` (the last birth date it accepts)."""
    verification_fields = {
        name: {
            "type": "string",
            "maxLength": longest,
            "pattern": birth_date_pattern(today) if name == "date_of_birth" else PATTERNS[name],
            "description": FIELD_DESCRIPTIONS[name],
        }
        for name, longest in CLAIM_FIELDS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Affected-patient portal: partner API",
            "version": VERSION,
            "description": (
                "Verify people affected by the breach and hand out their identity-protection activation code "
                "from your own software. Send your key as `Authorization: Bearer KEY`. Every error is an RFC 9457 "
                "problem document (`application/problem+json`) whose `type` is a link to its section of this "
                "reference. `X-RateLimit-*` describe your key's own request rate, on every answer it counted. "
                "`POST` requests take an `Idempotency-Key`: a retry with the same key and body within 24 hours "
                "gets the first answer again, and nothing is done twice."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "paths": {
            "/verifications": {
                "post": _operation(
                    "verifyPerson",
                    "Verify a person",
                    "The same check as the public website. An unknown person and a wrong field get the same "
                    'answer, `{"verified": false}`, after the same work. Failed verifications count against '
                    "failure limits per person, per key, per client address and for the whole portal (429 "
                    "`failure-limit`); the different people a key verifies in a day are limited too (429 "
                    "`too-many-people`). Needs the `verify` scope.",
                    {
                        200: {
                            **_json(
                                "VerificationResult",
                                "The outcome, verified or not.",
                                {
                                    "verified": (
                                        "A person on the list",
                                        {
                                            "verified": True,
                                            "exposed_fields": ["name", "date_of_birth", "address", "ssn"],
                                            "claim_token": EXAMPLE_TOKEN,
                                            "expires_at": "2026-12-01T15:30:00Z",
                                        },
                                    ),
                                    "not_verified": ("An unknown person or a wrong field", {"verified": False}),
                                },
                                (*RATE_HEADERS, "Idempotent-Replayed"),
                            ),
                            "links": {
                                "claimCode": {
                                    "operationId": "claimCode",
                                    "description": "A successful verification's claim_token redeems the person's code.",
                                    "requestBody": {"claim_token": "$response.body#/claim_token"},
                                }
                            },
                        },
                    },
                    body=(
                        "VerificationRequest",
                        {
                            "ssn": ("With the last four SSN digits", EXAMPLE_PERSON),
                            "spelling": (
                                "Spelt otherwise: still the same person",
                                {
                                    **_sandbox_body(SANDBOX_PEOPLE[1]),
                                    "last_name": "garcia lopez",
                                    "zip_code": "62704-1234",
                                },
                            ),
                            "reference": (
                                "With the letter's reference (no SSN on file)",
                                {
                                    **{k: v for k, v in _sandbox_body(SANDBOX_NO_SSN).items() if k != "ssn_last4"},
                                    "reference": EXAMPLE_REFERENCE,
                                },
                            ),
                        },
                    ),
                    parameters=("Idempotency-Key",),
                    problems=BODY_PROBLEMS,
                )
            },
            "/claims": {
                "post": _operation(
                    "claimCode",
                    "Claim the person's activation code",
                    "Redeems a `claim_token` from a successful verification made with this same key: 201 with the "
                    "code the first time, 200 with the same code after (a person has one code, always the same). "
                    "Needs the `claim` scope. While the program asks for it (always, or while the portal sees a "
                    "mass claim), a claim also needs the `reference` printed on the person's letter: without it "
                    "the answer is 403 `letter-required`, and a person without their letter is sent to the call "
                    "center. An unknown or expired `claim_token` is a 422 naming `claim_token`: verify again.",
                    {
                        status: _json(
                            "ActivationCode",
                            description,
                            {name: (summary, EXAMPLE_CODE)},
                            (*RATE_HEADERS, "Idempotent-Replayed"),
                        )
                        for status, description, name, summary in (
                            (200, "The code this person already holds.", "again", "Claimed before"),
                            (201, "A code handed to this person now.", "new", "Claimed now"),
                        )
                    },
                    body=(
                        "ClaimRequest",
                        {
                            "token": ("The claim_token of a verification", {"claim_token": EXAMPLE_TOKEN}),
                            "step_up": (
                                "With the letter's reference, when a claim asks for it",
                                {
                                    "claim_token": EXAMPLE_TOKEN,
                                    "reference": EXAMPLE_REFERENCE,
                                },
                            ),
                        },
                    ),
                    parameters=("Idempotency-Key",),
                    problems=BODY_PROBLEMS,
                )
            },
            "/program": {
                "get": _operation(
                    "getProgram",
                    "The program's public facts",
                    "Who was breached, the dates, the call center, how to enroll, and what each exposed field "
                    "means with the steps that protect the person. In the language `Accept-Language` asks for "
                    "among English, Spanish and French, when every text of the answer exists in it; else all in "
                    "English, never mixed (`Content-Language` says which). Any live key.",
                    {
                        200: _json(
                            "Program",
                            "The facts, in one language.",
                            {
                                "facts": (
                                    "The program (abridged)",
                                    {
                                        "organization": "Northwind Health Records, Inc.",
                                        "organisation": "Northwind Health Records, Inc.",
                                        "incident_summary": "On 14 September 2026 an unauthorised party ...",
                                        "incident_discovered": "2026-09-16",
                                        "notice_date": "2026-11-23",
                                        "call_center_phone": "1-800-555-0142",
                                        "call_center_hours": "Monday to Friday 8 a.m. to 8 p.m.",
                                        "provider_name": "SafeWatch Identity Protection",
                                        "enrollment_url": "https://enroll.example.com/northwind",
                                        "enroll_by": "2027-06-30",
                                        "coverage_months": 24,
                                        "mailing_address": "Privacy Office, P.O. Box 0000",
                                        "exposed_fields": [
                                            {
                                                "name": "ssn",
                                                "label": "Social Security number",
                                                "risk": "A criminal could use it to open credit in your name.",
                                                "steps": [
                                                    {
                                                        "text": "Freeze your credit at all three bureaus.",
                                                        "link": "https://www.usa.gov/credit-freeze",
                                                        "link_text": "How to freeze your credit (USA.gov)",
                                                        "links": [
                                                            {
                                                                "url": "https://www.usa.gov/credit-freeze",
                                                                "text": "How to freeze your credit (USA.gov)",
                                                            }
                                                        ],
                                                    }
                                                ],
                                            }
                                        ],
                                    },
                                ),
                            },
                            (*RATE_HEADERS, "Content-Language", "Vary"),
                        ),
                    },
                    parameters=("Accept-Language",),
                    problems=(401, 429, 503),
                )
            },
        },
        "components": {
            "securitySchemes": {
                "partnerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Your key, `ppk_<12 hex>.<43 characters>`, from the operator "
                    "(`portal create-api-key`).",
                }
            },
            "parameters": {
                "Idempotency-Key": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A new random value (a UUID) for each new request, sent again unchanged with each "
                    "retry of it: within 24 hours the same key and body get the first answer again (with "
                    "`Idempotent-Replayed: true`), without a second verification or claim; the same key with "
                    "another body is a 422 `idempotency-key-reused`; while the first is still being answered, "
                    "409 `idempotency-key-in-use`. 1 to 255 visible ASCII characters.",
                    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
                    "example": "5f0c6a1e-8b1d-4c1f-9a57-3d2b7c1e0f42",
                },
                "Accept-Language": {
                    "name": "Accept-Language",
                    "in": "header",
                    "required": False,
                    "description": "`en`, `es` or `fr`, with the usual weights (`es, en;q=0.5`).",
                    "schema": {"type": "string"},
                    "example": "es",
                },
            },
            "headers": {
                "X-RateLimit-Limit": {
                    "description": "Requests your key may make per window of its rate (on every answer the rate "
                    "counted).",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "X-RateLimit-Remaining": {
                    "description": "Requests left in this window.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "X-RateLimit-Reset": {
                    "description": "When the window starts again, in Unix time (seconds).",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                },
                "Idempotent-Replayed": {
                    "description": "`true` when this is the first answer to the same Idempotency-Key and body, "
                    "given again.",
                    "schema": {"const": "true"},
                },
                "Content-Language": {
                    "description": "The language of the answer's text: all of it, never mixed.",
                    "required": True,
                    "schema": {"enum": ["en", "es", "fr"]},
                },
                "Vary": {"description": "Names `Accept-Language`.", "schema": {"type": "string"}},
                "WWW-Authenticate": {"description": '`Bearer realm="partner-api"`.', "schema": {"type": "string"}},
                "Allow": {"description": "The methods the endpoint accepts.", "schema": {"type": "string"}},
            },
            "responses": {
                f"Problem{status}": _problem_response(status)
                for status in sorted({k.status for k in PROBLEMS.values()})
            },
            "schemas": {
                "VerificationRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["last_name", "date_of_birth", "zip_code"],
                    "properties": verification_fields,
                    # Exactly one of the two, given (not blank): the server's "give ssn_last4, or
                    # reference ..." and "... not both".
                    "oneOf": [
                        {"required": [name], "properties": {name: {"pattern": NOT_BLANK}}}
                        for name in ("ssn_last4", "reference")
                    ],
                    "description": f'Without either factor: "{NEITHER_FACTOR}"; with both: "{BOTH_FACTORS}".',
                },
                "VerificationResult": {
                    "oneOf": [
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["verified"],
                            "properties": {
                                "verified": {"const": False, "description": "An unknown person or a wrong field."}
                            },
                        },
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["verified", "exposed_fields", "claim_token", "expires_at"],
                            "properties": {
                                "verified": {"const": True, "description": "The person is on the list."},
                                "exposed_fields": {
                                    "type": "array",
                                    "items": {"enum": [f.name for f in FIELDS]},
                                    "description": "Which of the person's data were exposed; `GET /program` says "
                                    "what each means and what to do.",
                                },
                                "claim_token": {
                                    "type": "string",
                                    "description": "A secret for `POST /claims` with this same key, until "
                                    "`expires_at`: keep it server-side, never show it to the person.",
                                },
                                "expires_at": {
                                    "type": "string",
                                    "format": "date-time",
                                    "description": "When `claim_token` stops working (UTC): verify again after.",
                                },
                            },
                        },
                    ]
                },
                "ClaimRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["claim_token"],
                    "properties": {
                        "claim_token": {
                            "type": "string",
                            "maxLength": TOKEN_MAX,
                            "pattern": NOT_BLANK,
                            "description": "The `claim_token` of a successful verification made with this key.",
                        },
                        "reference": {
                            "type": "string",
                            "maxLength": CLAIM_FIELDS["reference"],
                            "description": "The reference printed on the person's letter, when a claim asks for "
                            "it (403 `letter-required`); ignored otherwise.",
                        },
                    },
                },
                "ActivationCode": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["activation_code", "product", "enroll_by", "coverage_months", "enrollment_url"],
                    "properties": {
                        "activation_code": {"type": "string", "description": "The person's code: show it to them."},
                        "product": {"type": "string", "description": "The protection the code is for."},
                        "enroll_by": {"type": "string", "format": "date", "description": "The last day to enroll."},
                        "coverage_months": {"type": "integer", "description": "How long the protection lasts."},
                        "enrollment_url": {"type": "string", "description": "Where the person enrolls with the code."},
                    },
                },
                "Program": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [*PROGRAM_TEXT, *PROGRAM_FACTS, "organisation", "exposed_fields"],
                    "properties": {
                        **{name: {"type": "string", "description": meaning} for name, meaning in PROGRAM_TEXT.items()},
                        **{name: schema for name, schema in PROGRAM_FACTS.items()},
                        "organisation": {
                            "type": "string",
                            "deprecated": True,
                            "description": "Deprecated since 1.1.0: read `organization` (the same value).",
                        },
                        "exposed_fields": {
                            "type": "array",
                            "items": _ref("ExposedField"),
                            "description": "Every kind of data the breach list may mark as exposed.",
                        },
                    },
                },
                "ExposedField": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "label", "risk", "steps"],
                    "properties": {
                        "name": {"enum": [f.name for f in FIELDS], "description": "As in `exposed_fields`."},
                        "label": {"type": "string", "description": "Its name for people."},
                        "risk": {"type": "string", "description": "What someone could do with it."},
                        "steps": {
                            "type": "array",
                            "description": "What protects the person, most important first.",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["text", "link", "link_text", "links"],
                                "properties": {
                                    "text": {"type": "string"},
                                    "link": {
                                        "type": ["string", "null"],
                                        "description": "An official https page: the first of `links`.",
                                    },
                                    "link_text": {"type": ["string", "null"]},
                                    "links": {
                                        "type": "array",
                                        "description": "Every official https page of the step.",
                                        "items": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "required": ["url", "text"],
                                            "properties": {"url": {"type": "string"}, "text": {"type": "string"}},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "format": "uri",
                            "description": "What went wrong: a link to its section of this reference.",
                        },
                        "title": {
                            "type": "string",
                            "description": "The problem's name; the same for every answer of its type.",
                        },
                        "status": {"type": "integer", "description": "The HTTP status."},
                        "detail": {"type": "string", "description": "This occurrence, in English."},
                        "errors": {
                            "type": "array",
                            "description": "On 422 `invalid-fields`: one entry per field in error.",
                            "items": {
                                "type": "object",
                                "required": ["field", "detail"],
                                "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    }


PROGRAM_TEXT = {
    "organization": "Who was breached.",
    "incident_summary": "What happened, in plain words.",
    "call_center_phone": "Where people call for help.",
    "call_center_hours": "When the call center answers.",
    "provider_name": "Who provides the identity protection.",
    "enrollment_url": "Where people enroll with their code.",
    "mailing_address": "Where people write to.",
}
PROGRAM_FACTS = {
    "incident_discovered": {"type": "string", "format": "date", "description": "When the breach was discovered."},
    "notice_date": {"type": "string", "format": "date", "description": "When the notices were sent."},
    "enroll_by": {"type": "string", "format": "date", "description": "The last day to enroll."},
    "coverage_months": {"type": "integer", "description": "How long the protection lasts."},
}
