"""JSON in: strict UTF-8 JSON objects, turned into the same plain values the public form produces.

Bounds and types are checked here; what a value *means* is decided by the domain
(``IdentityClaim.from_input``), exactly as for the form, so both surfaces accept the same people.
Every field in error is named at once, each with one message that never repeats its value.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.wsgi import get_input_stream

from portal.identity import (
    IdentityClaim,
    InvalidIdentifier,
    normalise_last_name,
    normalise_reference,
    normalise_ssn_last4,
    normalise_zip,
    parse_birth_date,
)

# Longest value accepted per field (the form's bounds), counted before surrounding blanks are removed.
CLAIM_FIELDS = {"last_name": 100, "date_of_birth": 10, "zip_code": 10, "ssn_last4": 4, "reference": 40}
REQUIRED = ("last_name", "date_of_birth", "zip_code")
FACTORS = ("ssn_last4", "reference")  # exactly one of them, whichever the person's letter asks for
TOKEN_MAX = 100
NEITHER_FACTOR = "give ssn_last4, or reference for a person with no SSN on file"
BOTH_FACTORS = "give either ssn_last4 or reference, not both"
_CHECKS = {
    "last_name": normalise_last_name,
    "date_of_birth": parse_birth_date,
    "zip_code": normalise_zip,
    "ssn_last4": normalise_ssn_last4,
    "reference": normalise_reference,
}


class InvalidFields(Exception):
    """The body is a JSON object but some fields are missing, of the wrong type or invalid."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("invalid fields")
        self.errors = [{"field": field, "detail": detail} for field, detail in errors.items()]


def json_object() -> dict[str, Any]:
    """The body as a JSON object: 415 unless JSON in UTF-8, 413 when too long (whether it came with
    a Content-Length or in chunks), 400 unless well-formed, 422 unless an object."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    if request.mimetype_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType()
    limit = current_app.config["API_MAX_CONTENT_LENGTH"]
    # One byte past the limit is read, not just the limit: a chunked body cut at the limit would
    # otherwise look complete (and be refused as malformed JSON instead of too large).
    raw = get_input_stream(request.environ, max_content_length=limit + 1).read()
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, NaN, integers too long to convert
        raise BadRequest() from None
    if not isinstance(data, dict):
        raise InvalidFields({"": "the body must be a JSON object"})
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _strings(data: dict[str, Any], bounds: dict[str, int], errors: dict[str, str]) -> dict[str, str]:
    """Each known field as a stripped string within its bound ("" when absent); problems go to ``errors``."""
    errors.update({str(name)[:40]: "unknown field" for name in data if name not in bounds})
    values: dict[str, str] = {}
    for name, longest in bounds.items():
        value = data.get(name, "")
        if not isinstance(value, str):
            errors[name] = "must be a string"
        elif len(value) > longest:
            errors[name] = f"must be at most {longest} characters"
        else:
            values[name] = value.strip()
    return values


def identity_claim(data: dict[str, Any]) -> IdentityClaim:
    """A verification body -> the normalised claim, or every field's problem at once."""
    errors: dict[str, str] = {}
    values = _strings(data, CLAIM_FIELDS, errors)
    for name in REQUIRED:
        if values.get(name) == "":
            errors[name] = "is required"
    given = [name for name in FACTORS if values.get(name)]
    if not given and not any(name in errors for name in FACTORS):
        errors["ssn_last4"] = NEITHER_FACTOR
    elif len(given) == 2:
        errors["reference"] = BOTH_FACTORS
    for name, check in _CHECKS.items():
        if values.get(name) and name not in errors and not (name in FACTORS and len(given) == 2):
            try:
                check(values[name])
            except InvalidIdentifier as error:
                errors[name] = str(error)
    if errors:
        raise InvalidFields(errors)
    return IdentityClaim.from_input(**values)


def claim_request(data: dict[str, Any]) -> tuple[str, str]:
    """A claim body -> (claim_token, reference); the reference is "" when not given."""
    errors: dict[str, str] = {}
    values = _strings(data, {"claim_token": TOKEN_MAX, "reference": CLAIM_FIELDS["reference"]}, errors)
    if values.get("claim_token") == "":
        errors["claim_token"] = "is required"  # noqa: S105 (a message, not a password)
    if errors:
        raise InvalidFields(errors)
    return values["claim_token"], values["reference"]
