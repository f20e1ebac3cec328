"""Every API error is an RFC 9457 problem document, built by ``problem`` and nowhere else."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from flask import Blueprint, Response, json
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, ServiceUnavailable, TooManyRequests, Unauthorized
from werkzeug.http import HTTP_STATUS_CODES

from portal import throttle
from portal.api.validation import InvalidFields
from portal.claims import PoolBusy, PoolEmpty
from portal.extensions import limiter
from portal.hashing_slots import HashingBusy

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 30
POOL_BUSY_RETRY_SECONDS = 5
POOL_EMPTY_RETRY_SECONDS = 3600
# Each problem type is a section of the self-hosted reference page.
TYPE_BASE = "/api/v1/docs#problem-"
KEY_PEOPLE_SCOPE = "api-key-people"  # the different people one key verified today


class LetterRequired(Exception):
    """Claiming needs the reference printed on the person's letter (step-up); none was given."""


PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("malformed", "The request body is not well-formed UTF-8 JSON."),
    401: ("unauthorized", "Send a valid, unrevoked, unexpired key as Authorization: Bearer KEY."),
    403: ("forbidden", "This key does not have the scope this endpoint needs."),
    404: ("not-found", "There is no endpoint at this address."),
    405: ("method-not-allowed", "This endpoint does not accept that method."),
    413: ("too-large", "The request body is larger than the API accepts."),
    415: ("unsupported-media-type", "Send the body as Content-Type: application/json (UTF-8)."),
    422: ("invalid-fields", "One or more fields are missing or invalid; see errors."),
    429: ("rate-limited", "A limit was reached; retry after the number of seconds in Retry-After."),
    500: ("internal", "The request could not be completed; nothing was changed."),
    503: ("unavailable", "The service is busy or briefly unavailable; retry after Retry-After seconds."),
}
# Problems more specific than their status's own: slug -> (status, detail).
SPECIFIC_PROBLEMS: dict[str, tuple[int, str]] = {
    "pool-empty": (503, "Every activation code is handed out; more are on the way."),
    "letter-required": (
        403,
        "Claiming a code now needs the reference printed on the person's letter: send it as reference. A person "
        "without their letter gets their code from the call center.",
    ),
    "too-many-people": (
        429,
        "This key verified as many different people today as it may; send further people to the call center. "
        "The same people again are still answered.",
    ),
}


def problem(
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    errors: list[dict[str, str]] | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An ``application/problem+json`` answer; ``slug`` names a more specific type than the status's own."""
    default_slug, default_detail = PROBLEMS.get(status, PROBLEMS[400])
    body: dict[str, Any] = {
        "type": TYPE_BASE + (slug or default_slug),
        "title": HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": detail or default_detail,
    }
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_TYPE)
    response.headers.update(headers or {})
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, retry_after))
    return response


def specific_problem(slug: str, retry_after: int | None = None) -> Response:
    status, detail = SPECIFIC_PROBLEMS[slug]
    return problem(status, detail, slug=slug, retry_after=retry_after)


def http_problem(error: HTTPException) -> Response:
    """A werkzeug HTTP error as a problem; our own descriptions are kept, werkzeug's HTML-ish ones are not."""
    status = error.code or 500
    own = error.description if error.description != type(error).description else None
    headers = {name: value for name, value in error.get_headers() if name == "Allow"}
    if status == Unauthorized.code:
        headers["WWW-Authenticate"] = 'Bearer realm="partner-api"'
    if status == TooManyRequests.code:  # the key's own rate (Flask-Limiter)
        return problem(status, retry_after=_key_rate_retry_after())
    if status == ServiceUnavailable.code:
        return problem(status, own, retry_after=RETRY_AFTER_SECONDS)
    return problem(status, own, headers=headers)


def init_blueprint(bp: Blueprint) -> None:
    """Errors raised by partner views answer problem+json; routing errors reach ``http_problem``
    through the application's handler, which sends every ``/api/`` path here."""
    bp.register_error_handler(HTTPException, http_problem)
    bp.register_error_handler(InvalidFields, lambda error: problem(422, errors=error.errors))
    bp.register_error_handler(throttle.Throttled, _throttled)
    bp.register_error_handler(LetterRequired, lambda _error: specific_problem("letter-required"))
    bp.register_error_handler(
        throttle.LimitStoreDown, lambda error: problem(503, retry_after=throttle.LimitStoreDown.retry_after)
    )
    bp.register_error_handler(HashingBusy, lambda _error: problem(503, retry_after=RETRY_AFTER_SECONDS))
    bp.register_error_handler(OperationalError, _database_unavailable)
    bp.register_error_handler(PoolTimeout, _database_unavailable)
    bp.register_error_handler(
        PoolEmpty, lambda _error: specific_problem("pool-empty", retry_after=POOL_EMPTY_RETRY_SECONDS)
    )
    bp.register_error_handler(PoolBusy, lambda _error: problem(503, retry_after=POOL_BUSY_RETRY_SECONDS))
    bp.register_error_handler(Exception, _unexpected)


def _throttled(error: throttle.Throttled) -> Response:
    if error.scope == KEY_PEOPLE_SCOPE:
        return specific_problem("too-many-people", retry_after=error.retry_after)
    return problem(429, "Too many failed verifications.", retry_after=error.retry_after)


def _key_rate_retry_after() -> int:
    """When the key's broken rate lets it in again."""
    breached = limiter.current_limit
    try:
        return breached.reset_at - int(time.time()) if breached else RETRY_AFTER_SECONDS
    except Exception:  # the limit store went away since the check: any honest hint will do
        return RETRY_AFTER_SECONDS


def _database_unavailable(error: SQLAlchemyError) -> Response:
    log.warning("database unavailable: %s", error.__class__.__name__)
    return problem(503, retry_after=RETRY_AFTER_SECONDS)


def _unexpected(error: Exception) -> Response:
    # The type and the stack for the operators; not the message, which may quote a value.
    log.error("unhandled %s\n%s", error.__class__.__name__, "".join(traceback.format_tb(error.__traceback__)))
    return problem(500)
