"""Per request: a request id, the request's count and latency in the metrics, one JSON log line.

The landing page is benchmarked against a bare Flask app, so this is kept to a WSGI wrapper
(the start time) and two small steps of the app's one before- and one after-request hook
(``portal/app.py``), which pass them the request.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, Request, Response, g, request

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


def _timed(wsgi_app: Any) -> Any:
    def timed(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ[STARTED] = time.perf_counter()
        return wsgi_app(environ, start_response)

    return timed


def request_id() -> str:
    """This request's id, in ``g.request_id`` (the audit trail reads it): the X-Request-ID our proxy
    set (nginx's ``$request_id``) when the request came through it, else a new one. A client's own
    is never kept: it could tie its requests to a chosen id, or pass for another's in the trail."""
    rid = g.get("request_id")
    if rid is None:
        rid = g.request_id = _assigned_id(request.environ)
    return str(rid)


def _assigned_id(environ: dict[str, Any]) -> str:
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    trusted = environ.get(VIA_PROXY) and REQUEST_ID.fullmatch(incoming)
    return incoming if trusted else secrets.token_hex(16)


def start_request(req: Request) -> None:
    """``g.request_id`` from the start, for whatever reads it during the request."""
    if "request_id" not in g:
        g.request_id = _assigned_id(req.environ)


def finish_request(req: Request, response: Response) -> None:
    """The response's X-Request-ID, the request in the metrics, and its JSON log line."""
    rid = response.headers["X-Request-ID"] = request_id()
    seconds = time.perf_counter() - req.environ.get(STARTED, time.perf_counter())
    endpoint, status = req.endpoint, response.status_code
    metrics.observe_request(endpoint, status, seconds)
    # The endpoint, not the path: a path may hold whatever a visitor typed into the address bar.
    fields = Fields(request_id=rid, method=req.method, endpoint=endpoint, status=status, ms=round(seconds * 1000, 1))
    write(log, logging.INFO, fields)
