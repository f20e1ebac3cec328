"""Per request: a request id, the request's count and latency in the metrics, one JSON log line.

One ``before_request`` and one ``after_request`` hook for all of it: they run on every page,
and the landing page is benchmarked against a bare Flask app.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, Response, current_app, g, request

from portal import metrics
from portal.logs import Fields

log = logging.getLogger("portal.requests")

# What a proxy's id may look like to be kept (nginx's $request_id, a UUID, ...): bounded, no spaces.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")


def init_app(app: Flask) -> None:
    app.before_request(start_request)
    app.after_request(finish_request)


def request_id() -> str:
    """The proxy's X-Request-ID when a trusted proxy is in front and the id is well-formed, else a new one."""
    incoming = request.headers.get("X-Request-ID", "")
    if current_app.config["TRUSTED_PROXIES"] and REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def start_request() -> None:
    g.started = time.perf_counter()
    g.request_id = request_id()


def finish_request(response: Response) -> Response:
    # Both set by start_request, unless an earlier before_request hook answered first.
    started = g.get("started") or time.perf_counter()
    response.headers["X-Request-ID"] = g.get("request_id") or request_id()
    seconds = time.perf_counter() - started
    metrics.observe_request(request.endpoint, response.status_code, seconds)
    if log.isEnabledFor(logging.INFO):
        # The endpoint, not the path: a path may hold whatever a visitor typed into the address bar.
        log.info(
            Fields(
                request_id=response.headers["X-Request-ID"],
                method=request.method,
                endpoint=request.endpoint,
                status=response.status_code,
                ms=round(seconds * 1000, 1),
            )
        )
    return response
