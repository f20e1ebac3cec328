"""Per request: a request id, the request's count and latency in the metrics, one JSON log line.

The landing page is benchmarked against a bare Flask app, so this is kept to a WSGI wrapper
(the start time) and two small hooks.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, g, request

from portal import metrics
from portal.logs import Fields, write
from portal.network import VIA_PROXY

log = logging.getLogger("portal.requests")

# What our proxy's id must look like to be kept: nginx's $request_id (16 random bytes in hex), the
# same shape as the ids the portal makes itself.
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
STARTED = "portal.started"  # WSGI environ key: when the request reached the app


def init_app(app: Flask) -> None:
    app.wsgi_app = _timed(app.wsgi_app)  # type: ignore[method-assign]
    app.before_request(start_request)
    app.after_request(finish_request)


def _timed(wsgi_app: Any) -> Any:
    def timed(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ[STARTED] = time.perf_counter()
        return wsgi_app(environ, start_response)

    return timed


def request_id() -> str:
    """This request's id, in ``g.request_id`` (the audit trail reads it): the X-Request-ID our proxy
    set (nginx's ``$request_id``) when the request came through it, else a new one. A client's own
    is never kept: it could tie its requests to a chosen id, or pass for another's in the trail."""
    if "request_id" not in g:
        incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
        trusted = request.environ.get(VIA_PROXY) and REQUEST_ID.fullmatch(incoming)
        g.request_id = incoming if trusted else secrets.token_hex(16)
    return str(g.request_id)


def start_request() -> None:
    """``g.request_id`` from the start, for whatever reads it during the request."""
    request_id()


def finish_request(response: Response) -> Response:
    rid = response.headers["X-Request-ID"] = request_id()
    seconds = time.perf_counter() - request.environ.get(STARTED, time.perf_counter())
    endpoint, status = request.endpoint, response.status_code
    metrics.observe_request(endpoint, status, seconds)
    # The endpoint, not the path: a path may hold whatever a visitor typed into the address bar.
    fields = Fields(
        request_id=rid, method=request.method, endpoint=endpoint, status=status, ms=round(seconds * 1000, 1)
    )
    write(log, logging.INFO, fields)
    return response
