"""Every API error is an RFC 9457 problem document, built by ``problem`` and nowhere else.

Each kind of problem has a type of its own: an absolute URI naming its section of the reference
page (``/api/v1/docs#problem-<slug>``), a ``title`` that names the problem and never changes, and a
default ``detail``. ``PROBLEMS`` is the catalogue the reference page and the OpenAPI document are
written from, so the three cannot drift apart. Problems are in English (``Content-Language: en``).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, g, json, request
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, SecurityError, ServiceUnavailable, TooManyRequests, Unauthorized

from portal import throttle
from portal.api.auth import BUDGET_REFUSAL
from portal.api.validation import InvalidFields
from portal.claims import PoolBusy, PoolEmpty
from portal.extensions import limiter
from portal.hashing_slots import HashingBusy
from portal.idempotency import InProgress, Reused

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 30
POOL_BUSY_RETRY_SECONDS = 5
POOL_EMPTY_RETRY_SECONDS = 3600
IN_PROGRESS_RETRY_SECONDS = 1
REFERENCE_PATH = "/api/v1/docs"
ANCHOR_PREFIX = "problem-"
KEY_PEOPLE_SCOPE = "api-key-people"  # the different people one key verified today


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    detail: str  # the default detail, said when nothing more specific is
    advice: str  # what the integrator should do (the reference page's text)


PROBLEMS: dict[str, ProblemType] = {
    problem.slug: problem
    for problem in (
        ProblemType(
            "malformed", 400, "Malformed JSON body", "The request body is not well-formed UTF-8 JSON.",
            "Send one JSON object encoded in UTF-8; NaN, Infinity and integers too long to read are refused.",
        ),
        ProblemType(
            "untrusted-host", 400, "Host not served", "This server does not answer for the Host header sent.",
            "Send requests to the host name of the base URL the operator gave you, with no other Host header.",
        ),
        ProblemType(
            "unauthorized", 401, "Missing or invalid API key",
            "Send a valid, unrevoked, unexpired key as Authorization: Bearer KEY.",
            "Check the key you send: an unknown, revoked and expired key get the same answer. Ask the operator "
            "for a new key.",
        ),
        ProblemType(
            "forbidden", 403, "Scope missing", "This key does not have the scope this endpoint needs.",
            "The operator gives a key the verify scope, the claim scope, or both.",
        ),
        ProblemType(
            "letter-required", 403, "Letter reference required",
            "Claiming a code now needs the reference printed on the person's letter: send it as reference. A "
            "person without their letter gets their code from the call center.",
            "Ask the person for the reference on their letter and send the claim again with it; the claim_token "
            "stays valid until it expires.",
        ),
        ProblemType(
            "not-found", 404, "No such endpoint", "There is no endpoint at this address.",
            "Check the path against this page; every path starts with /api/v1.",
        ),
        ProblemType(
            "method-not-allowed", 405, "Method not allowed", "This endpoint does not accept that method.",
            "The Allow header lists the methods the endpoint accepts.",
        ),
        ProblemType(
            "idempotency-key-in-use", 409, "Idempotency key in use",
            "A request with this Idempotency-Key is still being answered.",
            "Retry after Retry-After seconds: you will get the first request's answer.",
        ),
        ProblemType(
            "too-large", 413, "Body too large", "The request body is larger than the API accepts.",
            "A body is a few hundred bytes; the limit is 4 KiB unless the operator changed it.",
        ),
        ProblemType(
            "unsupported-media-type", 415, "Unsupported media type",
            "Send the body as Content-Type: application/json (UTF-8).",
            "Send Content-Type: application/json, with no charset or charset=utf-8.",
        ),
        ProblemType(
            "invalid-fields", 422, "Invalid fields", "One or more fields are missing or invalid; see errors.",
            "errors lists one {field, detail} per field in error (an unknown field included); a detail never "
            "repeats the value sent.",
        ),
        ProblemType(
            "idempotency-key-reused", 422, "Idempotency key reused",
            "This Idempotency-Key was used with another request in the last 24 hours.",
            "Use a new Idempotency-Key (a random UUID) for every new request, and the same one only to retry it "
            "unchanged.",
        ),
        ProblemType(
            "rate-limited", 429, "Key rate limit reached",
            "This key sent more requests than its rate allows; retry after Retry-After seconds.",
            "Your key's own request rate is spent: X-RateLimit-Remaining is 0. Wait Retry-After seconds (until "
            "X-RateLimit-Reset) before any further request with this key.",
        ),
        ProblemType(
            "failure-limit", 429, "Too many failed verifications",
            "Too many verifications failed: for this person, with this key, from this address or on the whole "
            "portal. Retry after Retry-After seconds.",
            "A failure limit protects people from guessing: it counts failed verifications per person, per key, per "
            "client address and for the whole portal, and does not say which one was reached. Do not retry before "
            "Retry-After; a person who cannot wait can be verified by the call center. Your key's request rate "
            "is not what refused, so this answer carries no X-RateLimit-*.",
        ),
        ProblemType(
            "too-many-people", 429, "Too many people for this key today",
            "This key verified as many different people today as it may; send further people to the call center. "
            "The same people again are still answered.",
            "Send further people to the call center until Retry-After; people this key verified today are still "
            "answered.",
        ),
        ProblemType(
            "internal", 500, "Internal error", "The request could not be completed; nothing was changed.",
            "Retry later; if it persists, tell the operator the X-Request-ID of the answer.",
        ),
        ProblemType(
            "unavailable", 503, "Service unavailable",
            "The service is busy or briefly unavailable; retry after Retry-After seconds.",
            "Every hashing slot is busy, or the database or the limit store cannot be reached. Retry after "
            "Retry-After seconds.",
        ),
        ProblemType(
            "pool-empty", 503, "No activation code left",
            "Every activation code is handed out; more are on the way.",
            "Retry after Retry-After seconds: the operator is adding codes. The claim_token may expire meanwhile; "
            "verify again then.",
        ),
    )
}  # fmt: skip
# The type an HTTP error of this status is, unless the API raised a more specific one.
BY_STATUS = {
    400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    409: "idempotency-key-in-use", 413: "too-large", 415: "unsupported-media-type", 422: "invalid-fields",
    429: "rate-limited", 500: "internal", 503: "unavailable",
}  # fmt: skip


class LetterRequired(Exception):
    """Claiming needs the reference printed on the person's letter (step-up); none was given."""


def type_uri(slug: str) -> str:
    """The problem type's absolute URI: its section of the reference page on this host. A request
    whose Host is not trusted (refused before routing) has no trustworthy origin: the reference."""
    try:
        origin = request.host_url.rstrip("/")
    except HTTPException:
        origin = ""
    return f"{origin}{REFERENCE_PATH}#{ANCHOR_PREFIX}{slug}"


def problem(
    slug: str,
    detail: str | None = None,
    *,
    errors: list[dict[str, str]] | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An ``application/problem+json`` answer of the type ``slug``."""
    kind = PROBLEMS[slug]
    body: dict[str, Any] = {
        "type": type_uri(slug),
        "title": kind.title,
        "status": kind.status,
        "detail": detail or kind.detail,
    }
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=kind.status, mimetype=PROBLEM_TYPE)
    response.headers.update(headers or {})
    response.headers["Content-Language"] = "en"
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, retry_after))
    return response


def http_problem(error: HTTPException) -> Response:
    """A werkzeug HTTP error as a problem; our own descriptions are kept, werkzeug's HTML-ish ones are not."""
    status = error.code or 500
    own = error.description if error.description != type(error).description else None
    headers = {name: value for name, value in error.get_headers() if name == "Allow"}
    if status == Unauthorized.code:
        headers["WWW-Authenticate"] = 'Bearer realm="partner-api"'
    if status == TooManyRequests.code:  # the key's own rate (Flask-Limiter)
        return problem("rate-limited", retry_after=_key_rate_retry_after())
    if status == ServiceUnavailable.code:
        return problem("unavailable", own, retry_after=RETRY_AFTER_SECONDS)
    if isinstance(error, SecurityError):  # its description repeats the Host sent: not said back
        return problem("untrusted-host")
    return problem(BY_STATUS.get(status, "malformed" if status < 500 else "internal"), own, headers=headers)


def init_blueprint(bp: Blueprint) -> None:
    """Errors raised by partner views answer problem+json; routing errors reach ``http_problem``
    through the application's handler, which sends every ``/api/`` path here."""
    bp.register_error_handler(HTTPException, http_problem)
    bp.register_error_handler(InvalidFields, lambda error: problem("invalid-fields", errors=error.errors))
    bp.register_error_handler(Reused, lambda _error: problem("idempotency-key-reused"))
    bp.register_error_handler(
        InProgress, lambda _error: problem("idempotency-key-in-use", retry_after=IN_PROGRESS_RETRY_SECONDS)
    )
    bp.register_error_handler(throttle.Throttled, _throttled)
    bp.register_error_handler(LetterRequired, lambda _error: problem("letter-required"))
    bp.register_error_handler(
        throttle.LimitStoreDown, lambda error: problem("unavailable", retry_after=throttle.LimitStoreDown.retry_after)
    )
    bp.register_error_handler(HashingBusy, lambda _error: problem("unavailable", retry_after=RETRY_AFTER_SECONDS))
    bp.register_error_handler(OperationalError, _database_unavailable)
    bp.register_error_handler(PoolTimeout, _database_unavailable)
    bp.register_error_handler(PoolEmpty, lambda _error: problem("pool-empty", retry_after=POOL_EMPTY_RETRY_SECONDS))
    bp.register_error_handler(PoolBusy, lambda _error: problem("unavailable", retry_after=POOL_BUSY_RETRY_SECONDS))
    bp.register_error_handler(Exception, _unexpected)


def _throttled(error: throttle.Throttled) -> Response:
    """A failure or people budget refused: not the key's rate, so no ``X-RateLimit-*`` (``auth``)."""
    setattr(g, BUDGET_REFUSAL, True)
    slug = "too-many-people" if error.scope == KEY_PEOPLE_SCOPE else "failure-limit"
    return problem(slug, retry_after=error.retry_after)


def _key_rate_retry_after() -> int:
    """When the key's broken rate lets it in again."""
    breached = limiter.current_limit
    try:
        return breached.reset_at - int(time.time()) if breached else RETRY_AFTER_SECONDS
    except Exception:  # the limit store went away since the check: any honest hint will do
        return RETRY_AFTER_SECONDS


def _database_unavailable(error: SQLAlchemyError) -> Response:
    log.warning("database unavailable: %s", error.__class__.__name__)
    return problem("unavailable", retry_after=RETRY_AFTER_SECONDS)


def _unexpected(error: Exception) -> Response:
    # The type and the stack for the operators; not the message, which may quote a value.
    log.error("unhandled %s\n%s", error.__class__.__name__, "".join(traceback.format_tb(error.__traceback__)))
    return problem("internal")
