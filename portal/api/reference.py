"""The reference page's content, read out of the OpenAPI document: operations with their headers,
fields, examples and curl lines, and the problem types.

A template of our own rather than a vendored renderer (Redoc, Swagger UI, Scalar): each of those
is a JavaScript application that injects its own styles, which the portal's Content-Security-Policy
(``default-src 'self'``, no inline script or style) refuses, and it would add a large asset to keep
patched for a page that is a few tables. This page is plain HTML and one stylesheet, readable
without script, and every word of it comes from the document, so the two cannot disagree.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from portal.api.errors import PROBLEMS, ProblemType
from portal.api.openapi import EXAMPLE_TOKEN
from portal.sandbox import PRACTICE, SANDBOX_PEOPLE

CODE_SPAN = re.compile(r"`([^`]+)`")


def inline(text: str) -> Markup:
    """The document's Markdown code spans (`x`) as <code>; everything else escaped."""
    # Safe: the text is escaped first; only the <code> tags are added.
    return Markup(CODE_SPAN.sub(lambda m: f"<code>{m.group(1)}</code>", str(escape(text))))  # noqa: S704


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    required: bool
    meaning: Markup
    deprecated: bool = False


@dataclass(frozen=True)
class Example:
    summary: str
    json: str
    curl: str = ""


@dataclass(frozen=True)
class Answer:
    status: str
    description: Markup
    headers: list[Row]
    variants: list[list[Row]]  # one table per shape the body may take
    examples: list[Example]
    problems: list[ProblemType]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    anchor: str
    summary: str
    description: Markup
    scope: str
    headers: list[Row]
    body: list[Row]
    body_note: Markup
    examples: list[Example]
    answers: list[Answer] = field(default_factory=list)


@dataclass(frozen=True)
class Person:
    last_name: str
    date_of_birth: str
    zip_code: str
    ssn_last4: str
    practice: str


@dataclass(frozen=True)
class Page:
    title: str
    version: str
    description: Markup
    operations: list[Operation]
    problems: list[ProblemType]
    problem_fields: list[Row]
    sandbox: list[Person]


def build(document: dict[str, Any], api_root: str) -> Page:
    resolve = _Resolver(document)
    operations = [
        _operation(resolve, path, method, spec, api_root)
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    ]
    info = document["info"]
    sandbox = [
        Person(p["last_name"], p["date_of_birth"], p["zip"][:5], p["ssn"][-4:], PRACTICE[p["record_id"]])
        for p in SANDBOX_PEOPLE
    ]
    return Page(
        info["title"], info["version"], inline(info["description"]), operations, list(PROBLEMS.values()),
        _rows(resolve, document["components"]["schemas"]["Problem"]), sandbox,
    )  # fmt: skip


class _Resolver:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def __call__(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node


def _kind(schema: dict[str, Any]) -> str:
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    kind = schema.get("type", "object")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if schema.get("format"):
        kind += f" ({schema['format']})"
    if schema.get("maxLength"):
        kind += f", at most {schema['maxLength']} characters"
    return kind


def _rows(resolve: _Resolver, schema: dict[str, Any], prefix: str = "") -> list[Row]:
    """A row per property, nested objects and arrays of objects spelt ``field[].inner``."""
    schema = resolve(schema)
    rows = []
    for name, prop in schema.get("properties", {}).items():
        prop = resolve(prop)
        items = resolve(prop.get("items", {}))
        kind = f"array of {_kind(items)}" if prop.get("type") == "array" else _kind(prop)
        meaning = inline(prop.get("description", ""))
        rows.append(
            Row(prefix + name, kind, name in schema.get("required", ()), meaning, prop.get("deprecated", False))
        )
        if items.get("properties"):
            rows += _rows(resolve, items, f"{prefix}{name}[].")
    return rows


def _curl(method: str, url: str, headers: list[tuple[str, str]], body: Any) -> str:
    parts = ["curl -sS", *([f"-X {method}"] if method not in ("GET", "POST") else []), f'"{url}"']
    parts.append('-H "Authorization: Bearer $KEY"')
    parts += [f"-H {shlex.quote(f'{name}: {value}')}" for name, value in headers]
    if body is not None:
        parts.append("-d " + _shell_json(json.dumps(body, ensure_ascii=False)))
    return " ".join(parts)


def _shell_json(text: str) -> str:
    """JSON as one shell word: in single quotes, unless it holds an apostrophe (O'Brien) or the
    token of the verification made just before, which the shell reads from $TOKEN."""
    if "'" not in text and EXAMPLE_TOKEN not in text:
        return f"'{text}'"
    for special in ("\\", '"', "`", "$"):
        text = text.replace(special, "\\" + special)
    return '"' + text.replace(EXAMPLE_TOKEN, "$TOKEN") + '"'


def _operation(resolve: _Resolver, path: str, method: str, spec: dict[str, Any], api_root: str) -> Operation:
    parameters = [resolve(p) for p in spec.get("parameters", [])]
    headers = [Row("Authorization", "string", True, inline("`Bearer KEY`: your partner key."))]
    headers += [Row(p["name"], _kind(p["schema"]), p["required"], inline(p["description"])) for p in parameters]
    content = spec.get("requestBody", {}).get("content", {}).get("application/json")
    body_rows: list[Row] = []
    body_note = Markup("")
    examples = []
    if content:
        headers.insert(1, Row("Content-Type", "string", True, inline("`application/json` (UTF-8).")))
        schema = resolve(content["schema"])
        body_rows = _rows(resolve, schema)
        body_note = inline(schema.get("description", ""))
        for name, example in content["examples"].items():
            extra = [("Content-Type", "application/json")]
            if any(p["name"] == "Idempotency-Key" for p in parameters):
                # A key of its own for each example: the same key with another body would be refused.
                extra.append(("Idempotency-Key", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path}/{name}"))))
            examples.append(
                Example(
                    example["summary"],
                    json.dumps(example["value"], indent=2, ensure_ascii=False),
                    _curl(method.upper(), api_root + path, extra, example["value"]),
                )
            )
    else:
        extra = [(p["name"], p["example"]) for p in parameters if "example" in p]
        examples.append(Example("", "", _curl(method.upper(), api_root + path, extra, None)))
    scope = next((word.strip("`.") for word in spec["description"].split() if word in ("`verify`", "`claim`")), "")
    return Operation(
        method=method.upper(),
        path="/api/v1" + path,
        anchor=f"{method}-{path.strip('/')}",
        summary=spec["summary"],
        description=inline(spec["description"]),
        scope=scope,
        headers=headers,
        body=body_rows,
        body_note=body_note,
        examples=examples,
        answers=[_answer(resolve, status, response) for status, response in spec["responses"].items()],
    )


def _answer(resolve: _Resolver, status: str, response: dict[str, Any]) -> Answer:
    response = resolve(response)
    headers = [
        Row(name, _kind(resolve(header)["schema"]), resolve(header).get("required", False),
            inline(resolve(header)["description"]))
        for name, header in response.get("headers", {}).items()
    ]  # fmt: skip
    media = next(iter(response.get("content", {}).values()), {})
    problems = [kind for kind in PROBLEMS.values() if str(kind.status) == status]
    if media.get("schema", {}).get("allOf"):  # a problem: its types are listed, the shape is the Problem's
        return Answer(status, inline(""), headers, [], [], problems)
    schema = resolve(media.get("schema", {}))
    variants = [_rows(resolve, variant) for variant in schema.get("oneOf", [schema])]
    examples = [
        Example(example["summary"], json.dumps(example["value"], indent=2, ensure_ascii=False))
        for example in media.get("examples", {}).values()
    ]
    return Answer(status, inline(response["description"]), headers, variants, examples, [])
