"""The partner API's contract, OpenAPI 3.1: served at /api/v1/openapi.json and as /api/v1/docs.

Kept beside the views it describes; ``tests/test_api_contract.py`` runs schemathesis against a
live server with it, so a response that strays from it fails CI.
"""

from __future__ import annotations

from typing import Any

from portal.api.validation import CLAIM_FIELDS, TOKEN_MAX
from portal.exposure import FIELDS

FIELD_DESCRIPTIONS = {
    "last_name": "As on the letter; case, accents, spaces and punctuation are ignored.",
    "date_of_birth": "YYYY-MM-DD.",
    "zip_code": "5 digits, or ZIP+4.",
    "ssn_last4": "The last four SSN digits. Give this or reference, not both.",
    "reference": "The 24-character reference printed on the letter of a person with no SSN on file.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def _problem(status: int) -> dict[str, str]:
    return {"$ref": f"#/components/responses/Problem{status}"}


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
PROBLEM_RESPONSES = {
    400: "The body is not well-formed UTF-8 JSON.",
    401: "No key, or a key that is unknown, revoked or expired.",
    403: "The key lacks the scope this operation needs; or (claims) the person's letter reference is needed.",
    413: "The body is larger than the API accepts.",
    415: "The body is not application/json in UTF-8.",
    422: "Fields missing, of the wrong type or invalid; `errors` names each field.",
    429: "A limit was reached: the key's rate, a failure budget, or the different people this key may verify "
    "today. Retry after `Retry-After` seconds.",
    503: "Busy, briefly unavailable, or (claims) the code pool is empty. Retry after `Retry-After` seconds.",
}
WITH_RETRY_AFTER = (429, 503)


# A made-up person, in the shape partners send (tests/test_api_contract.py imports exactly them).
EXAMPLE_PERSON = {"last_name": "Example-Doe", "date_of_birth": "1970-01-31", "zip_code": "10001", "ssn_last4": "1234"}


def _operation(
    operation_id: str, summary: str, description: str, responses: dict[int, Any], body: str | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "security": [{"partnerKey": []}],
        "responses": {str(status): response for status, response in sorted(responses.items())},
    }
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return operation


CLAIM_LINK = {
    "claimCode": {
        "operationId": "claimCode",
        "description": "A successful verification's claim_token redeems the person's code.",
        "requestBody": {"claim_token": "$response.body#/claim_token"},
    }
}
_body_problems = {status: _problem(status) for status in (400, 401, 403, 413, 415, 422, 429, 503)}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Affected-patient portal: partner API",
        "version": "1.0.0",
        "description": (
            "Verify affected people and hand out their identity-protection activation code from your own "
            "software. Send your key as `Authorization: Bearer KEY`. Every error is an RFC 9457 problem "
            "document (`application/problem+json`). `X-RateLimit-*` describe your key's own rate."
        ),
    },
    "servers": [{"url": "/api/v1"}],
    "paths": {
        "/verifications": {
            "post": _operation(
                "verifyPerson",
                "Verify a person",
                "The same check as the public site. An unknown person and a wrong field get the same answer, "
                '`{"verified": false}`, after the same work. Failures count against a per-person, per-key, '
                "per-client and overall budget. Needs the `verify` scope.",
                {
                    200: {**_json(_ref("VerificationResult"), "The outcome.", RATE_HEADERS), "links": CLAIM_LINK},
                    **_body_problems,
                },
                body="VerificationRequest",
            )
        },
        "/claims": {
            "post": _operation(
                "claimCode",
                "Claim the person's activation code",
                "Redeems a `claim_token` from a successful verification made with this same key: 201 with the "
                "code the first time, 200 with the same code after. Needs the `claim` scope. While the programme "
                "asks for it (always, or while the portal sees a mass claim), a claim also needs the "
                "`reference` printed on the person's letter: without it the answer is 403 `letter-required`, and a "
                "person without their letter is sent to the call center.",
                {
                    200: _json(_ref("ActivationCode"), "The code this person already holds.", RATE_HEADERS),
                    201: _json(_ref("ActivationCode"), "A code handed to this person now.", RATE_HEADERS),
                    **_body_problems,
                },
                body="ClaimRequest",
            )
        },
        "/program": {
            "get": _operation(
                "getProgram",
                "The programme's public facts",
                "Who was breached, the dates, the call center, and what each exposed field means. Any live key.",
                {
                    200: _json(_ref("Program"), "The facts.", RATE_HEADERS),
                    **{status: _problem(status) for status in (401, 429, 503)},
                },
            )
        },
    },
    "components": {
        "securitySchemes": {"partnerKey": {"type": "http", "scheme": "bearer", "description": "ppk_... key"}},
        "headers": {
            "X-RateLimit-Limit": {
                "description": "Requests your key may make per window.",
                "schema": {"type": "string"},
            },
            "X-RateLimit-Remaining": {"description": "Left in the window.", "schema": {"type": "string"}},
            "X-RateLimit-Reset": {"description": "Unix time the window resets.", "schema": {"type": "string"}},
            "Retry-After": {
                "description": "Seconds to wait.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            },
        },
        "responses": {
            f"Problem{status}": {
                "description": description,
                "content": {"application/problem+json": {"schema": _ref("Problem")}},
                **(
                    {"headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}}
                    if status in WITH_RETRY_AFTER
                    else {}
                ),
            }
            for status, description in PROBLEM_RESPONSES.items()
        },
        "schemas": {
            "VerificationRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["last_name", "date_of_birth", "zip_code"],
                "properties": {
                    name: {"type": "string", "maxLength": longest, "description": FIELD_DESCRIPTIONS[name]}
                    for name, longest in CLAIM_FIELDS.items()
                },
                "examples": [
                    EXAMPLE_PERSON,
                    {**EXAMPLE_PERSON, "ssn_last4": "9999"},
                    {
                        **{k: v for k, v in EXAMPLE_PERSON.items() if k != "ssn_last4"},
                        "reference": "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01",
                    },
                ],
            },
            "VerificationResult": {
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["verified"],
                        "properties": {"verified": {"const": False}},
                    },
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["verified", "exposed_fields", "claim_token", "expires_at"],
                        "properties": {
                            "verified": {"const": True},
                            "exposed_fields": {"type": "array", "items": {"enum": [f.name for f in FIELDS]}},
                            "claim_token": {"type": "string", "description": "For POST /claims, until expires_at."},
                            "expires_at": {"type": "string", "format": "date-time"},
                        },
                    },
                ]
            },
            "ClaimRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["claim_token"],
                "properties": {
                    "claim_token": {"type": "string", "maxLength": TOKEN_MAX, "minLength": 1},
                    "reference": {
                        "type": "string",
                        "maxLength": 40,
                        "description": "The reference printed on the person's letter, when a claim asks for it.",
                    },
                },
                "examples": [
                    {"claim_token": "token-from-a-successful-verification"},
                    {
                        "claim_token": "token-from-a-successful-verification",
                        "reference": "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01",
                    },
                ],
            },
            "ActivationCode": {
                "type": "object",
                "additionalProperties": False,
                "required": ["activation_code", "product", "enroll_by", "coverage_months", "enrollment_url"],
                "properties": {
                    "activation_code": {"type": "string"},
                    "product": {"type": "string"},
                    "enroll_by": {"type": "string", "format": "date"},
                    "coverage_months": {"type": "integer"},
                    "enrollment_url": {"type": "string"},
                },
            },
            "Program": {
                "type": "object",
                "required": [
                    "organisation",
                    "incident_summary",
                    "incident_discovered",
                    "notice_date",
                    "call_center_phone",
                    "call_center_hours",
                    "provider_name",
                    "enrollment_url",
                    "enroll_by",
                    "coverage_months",
                    "mailing_address",
                    "exposed_fields",
                ],
                "properties": {
                    **{
                        name: {"type": "string"}
                        for name in (
                            "organisation",
                            "incident_summary",
                            "call_center_phone",
                            "call_center_hours",
                            "provider_name",
                            "enrollment_url",
                            "mailing_address",
                        )
                    },
                    **{
                        name: {"type": "string", "format": "date"}
                        for name in ("incident_discovered", "notice_date", "enroll_by")
                    },
                    "coverage_months": {"type": "integer"},
                    "exposed_fields": {"type": "array", "items": _ref("ExposedField")},
                },
            },
            "ExposedField": {
                "type": "object",
                "required": ["name", "label", "risk", "steps"],
                "properties": {
                    "name": {"type": "string"},
                    "label": {"type": "string"},
                    "risk": {"type": "string"},
                    "steps": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["text", "link", "link_text"],
                            "properties": {
                                "text": {"type": "string"},
                                "link": {"type": ["string", "null"]},
                                "link_text": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {
                        "type": "array",
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


def reference_operations() -> list[dict[str, Any]]:
    """The document's operations with their references resolved, for the reference page."""
    components = DOCUMENT["components"]
    operations = []
    for path, methods in DOCUMENT["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            schema = components["schemas"][body["$ref"].rsplit("/", 1)[1]] if body else {"properties": {}}
            responses = []
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = components["responses"][response["$ref"].rsplit("/", 1)[1]]
                responses.append((status, response["description"]))
            operations.append(
                {
                    "method": method.upper(),
                    "path": DOCUMENT["servers"][0]["url"] + path,
                    "anchor": f"{method}-{path.strip('/')}",
                    "summary": operation["summary"],
                    "description": operation["description"],
                    "fields": [
                        (name, field.get("maxLength"), name in schema.get("required", ()), field.get("description", ""))
                        for name, field in schema["properties"].items()
                    ],
                    "responses": responses,
                }
            )
    return operations
