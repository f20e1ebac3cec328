"""Every error becomes a short, plain page with the right status: never a stack trace."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import partial

from babel.dates import format_timedelta
from flask import Flask, Response, render_template, request
from flask.globals import request_ctx
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable, TooManyRequests

from portal.hashing_slots import HashingBusy
from portal.throttle import PEOPLE_SCOPE, LimitStoreDown, Throttled

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
FEW_SECONDS = 10  # a wait this short is "a few seconds": a number would sound more exact than it is

MESSAGES = {
    400: _l("We could not read that request. Please go back and try again."),
    403: _l("You do not have access to this page."),
    404: _l("There is no page at this address."),
    405: _l("This page cannot be used that way."),
    413: _l("That request is too large."),
    429: _l(
        "Too many attempts were made with these details. For your protection, no more can be checked for a "
        "while. We can also check your details by phone."
    ),
    500: _l("Something went wrong on our side. Nothing you entered was stored. Please try again."),
    503: _l("The service is busy or briefly unavailable."),
}
CSRF_MESSAGE = _l("This form expired or was sent from another page. Please reload the page and try again.")


def init_app(app: Flask, routing_errors: Mapping[str, Callable[[HTTPException], Response]]) -> None:
    """``routing_errors``: per path prefix, who answers an HTTP error raised before any blueprint was
    chosen (a 404, a 405) under it, such as the partner API's problem+json: given by the factory,
    so these pages need not know the surfaces above them."""
    app.register_error_handler(HTTPException, partial(handle_http_error, routing_errors))
    app.register_error_handler(OperationalError, handle_database_unavailable)
    app.register_error_handler(PoolTimeout, handle_database_unavailable)
    app.register_error_handler(HashingBusy, handle_over_capacity)
    app.register_error_handler(Throttled, handle_throttled)
    app.register_error_handler(LimitStoreDown, handle_limit_store_down)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.jinja_env.globals["wait_in_words"] = wait_in_words


def wait_in_words(seconds: int, english: bool = False) -> str:
    """The wait a ``Retry-After`` of ``seconds`` asks for, as people say it: "a few seconds", "about
    15 minutes", "about 1 hour" (Babel rounds to the largest unit that fits). In the page's language,
    or in English for the console, which speaks only English whatever the browser asks for."""
    if seconds <= FEW_SECONDS:
        return "a few seconds" if english else _("a few seconds")
    about = "about %(wait)s" if english else _("about %(wait)s")
    return about % {"wait": format_timedelta(timedelta(seconds=seconds), locale="en" if english else get_locale())}


def render_error(status: int, message: object = None, retry_after: int | None = None):  # type: ignore[no-untyped-def]
    """The error page; with ``retry_after``, the ``Retry-After`` header and the same wait in words."""
    text = message or MESSAGES.get(status, MESSAGES[400])
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if request_ctx.url_adapter is None:
        # Refused before routing (an untrusted Host header): no page can link anywhere, so plain text.
        return f"{text}\n", status, {**headers, "Content-Type": "text/plain; charset=utf-8"}
    # A blueprint may speak to its own audience (the console to staff): its own error.html first.
    templates = [f"{request.blueprint}/error.html", "error.html"] if request.blueprint else "error.html"
    body = render_template(
        templates, status=status, message=text, explained=message is not None, retry_after=retry_after
    )
    return body, status, headers


def handle_http_error(  # type: ignore[no-untyped-def]
    routing_errors: Mapping[str, Callable[[HTTPException], Response]], error: HTTPException
):
    for prefix, answer in routing_errors.items():
        if request.path.startswith(prefix):
            return answer(error)
    status = error.code or 500
    if isinstance(error, CSRFError):
        return render_error(400, CSRF_MESSAGE)
    return render_error(status, retry_after=RETRY_AFTER_SECONDS if status in (429, 503) else None)


def handle_throttled(error: Throttled):  # type: ignore[no-untyped-def]
    """A spent budget: the same page whoever the person is, with the wait the budget imposes. A
    network that verified many people today sends the next one to the call center instead."""
    message = None
    if error.scope == PEOPLE_SCOPE:
        message = _(
            "Many different people have already been checked from your internet connection today, so no one "
            "else can be checked from it until tomorrow. This protects people whose details were stolen. If "
            "you are checking your own notice, call us (the number is below): we can check your details and "
            "give you your activation code by phone."
        )
    return render_error(TooManyRequests.code, message, retry_after=error.retry_after)


def handle_limit_store_down(error: LimitStoreDown):  # type: ignore[no-untyped-def]
    """Attempts cannot be counted: none is made (pages that do not verify are still served)."""
    return render_error(ServiceUnavailable.code, retry_after=error.retry_after)


def handle_database_unavailable(error: SQLAlchemyError):  # type: ignore[no-untyped-def]
    """A lost or locked database, or no pooled connection free in time: the request is refused
    cleanly (the pool reconnects on its own, connections come free as requests end)."""
    log.warning("database unavailable: %s", error.__class__.__name__)
    return render_error(ServiceUnavailable.code, retry_after=RETRY_AFTER_SECONDS)


def handle_over_capacity(_error: HashingBusy):  # type: ignore[no-untyped-def]
    """More lookups than the cores can hash: refuse quickly and say when to come back."""
    return render_error(ServiceUnavailable.code, retry_after=RETRY_AFTER_SECONDS)


def handle_unexpected_error(error: Exception):  # type: ignore[no-untyped-def]
    # The type and the stack for the operators; not the message, which may quote a value.
    stack = "".join(traceback.format_tb(error.__traceback__))
    log.error("unhandled %s\n%s", error.__class__.__name__, stack)
    return render_error(InternalServerError.code)
