"""JSON in: strict UTF-8 JSON objects, turned into the same plain values the public form produces.

Bounds and types are checked here; what a value *means* is decided by the domain
(``IdentityClaim.from_input``), exactly as for the form, so both surfaces accept the same people.
"""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from portal.identity import IdentityClaim, InvalidIdentifier

# Longest value accepted per field (the form's bounds), counted before surrounding blanks are removed.
CLAIM_FIELDS = {"last_name": 100, "date_of_birth": 10, "zip_code": 10, "ssn_last4": 4, "reference": 40}
REQUIRED = ("last_name", "date_of_birth", "zip_code")
TOKEN_MAX = 100


class InvalidFields(Exception):
    """The body is a JSON object but some fields are missing, of the wrong type or invalid."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("invalid fields")
        self.errors = [{"field": field, "detail": detail} for field, detail in errors.items()]


def json_object() -> dict[str, Any]:
    """The body as a JSON object: 415 unless JSON in UTF-8, 400 unless well-formed, 422 unless an object."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    if request.mimetype_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType()
    raw = request.get_data(cache=False)  # RequestEntityTooLarge beyond the blueprint's body limit
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, NaN, integers too long to convert
        raise BadRequest() from None
    if not isinstance(data, dict):
        raise InvalidFields({"": "the body must be a JSON object"})
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _strings(data: dict[str, Any], bounds: dict[str, int], required: tuple[str, ...]) -> dict[str, str]:
    """Each known field as a stripped string within its bound; every problem collected, per field."""
    errors = {str(name)[:40]: "unknown field" for name in data if name not in bounds}
    values: dict[str, str] = {}
    for name, longest in bounds.items():
        value = data.get(name, "")
        if not isinstance(value, str):
            errors[name] = "must be a string"
            continue
        if len(value) > longest:
            errors[name] = f"must be at most {longest} characters"
            continue
        value = value.strip()
        if name in required and not value:
            errors[name] = "is required"
        values[name] = value
    if errors:
        raise InvalidFields(errors)
    return values


def identity_claim(data: dict[str, Any]) -> IdentityClaim:
    """A verification body -> the normalised claim; the messages never repeat a submitted value."""
    values = _strings(data, CLAIM_FIELDS, REQUIRED)
    if bool(values["ssn_last4"]) == bool(values["reference"]):
        raise InvalidFields({"ssn_last4": "give either ssn_last4 or reference, not both"})
    try:
        return IdentityClaim.from_input(**values)
    except InvalidIdentifier as error:
        raise InvalidFields({error.field: str(error)}) from None


def claim_request(data: dict[str, Any]) -> tuple[str, str]:
    """A claim body -> (claim_token, reference); the reference is "" when not given."""
    values = _strings(data, {"claim_token": TOKEN_MAX, "reference": CLAIM_FIELDS["reference"]}, ("claim_token",))
    return values["claim_token"], values["reference"]
