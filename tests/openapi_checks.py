"""A real answer of the partner API checked against the OpenAPI document partners read, in-process
(``tests/test_api_contract.py`` fuzzes a live server with it; these check chosen answers in the
tests' own process): its status is documented, its body is valid against the schema of its media
type, and each header partners rely on is documented for it, present when required, with a value
its schema allows."""

from __future__ import annotations

from typing import Any

import jsonschema_rs

# The headers partners act on: each one an answer carries is documented for that answer.
RELIED_ON = (
    "Content-Language",
    "Retry-After",
    "WWW-Authenticate",
    "Allow",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Idempotent-Replayed",
)


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` (within the document) points to."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_errors(document: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (its formats included), whose ``$ref``s point
    into the document."""
    validator = jsonschema_rs.Draft202012Validator(
        {**schema, "components": document["components"]}, validate_formats=True
    )
    return [f"{error.instance_path}: {error.message}" for error in validator.iter_errors(value)]


def check_answer(document: dict[str, Any], documented: dict[str, Any], response: Any) -> None:
    """``response`` is what ``documented`` (a response of the document, or its ``$ref``) says."""
    spec = resolve(document, documented)
    content = spec["content"]
    assert response.mimetype in content, (response.mimetype, list(content))
    body = response.get_json(force=True)
    assert not schema_errors(document, content[response.mimetype]["schema"], body), body
    headers = {name.lower(): resolve(document, header) for name, header in spec.get("headers", {}).items()}
    for name in RELIED_ON:
        value = response.headers.get(name)
        if value is not None:
            assert name.lower() in headers, f"{name} is not documented for a {response.status_code}"
            assert not schema_errors(document, headers[name.lower()]["schema"], value), (name, value)
    for name, header in headers.items():
        assert name in {n.lower() for n in response.headers.keys()} or not header.get("required"), name


def check_operation_answer(document: dict[str, Any], path: str, method: str, response: Any) -> None:
    """``response``, an answer of ``method path``, is one the document describes for it."""
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in responses, f"{method} {path}: {response.status_code} is not documented"
    check_answer(document, responses[str(response.status_code)], response)
