"""Logs: one JSON object per line, for requests, events, alerts and errors alike.

A structured line is logged as ``Fields`` (a dict): ``JsonFormatter`` puts its keys at the top
level beside the time, level, logger and the request id; a handler configured by the operator
with another formatter still prints it as JSON. Nothing logged here may carry an identifier or
a code: events carry the patient's random public id at most, requests their endpoint, never a
path with its query string or a form value.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime

from flask import Flask, g, has_request_context
from flask.logging import wsgi_errors_stream

_handler_marker = "portal.json"


class Fields(dict[str, object]):
    """A log message made of named fields (turned into text only if a handler writes it)."""

    def __str__(self) -> str:
        return json.dumps(self, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        if isinstance(record.msg, Fields):
            entry.update(record.msg)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the stack; never the exception's message, which may quote a value.
            entry["error"] = record.exc_info[0].__name__
            entry["stack"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(entry, separators=(",", ":"), default=str)


def init_app(app: Flask) -> None:
    """JSON lines on the error stream (gunicorn's error log), unless logging was configured already.

    Runs before anything touches ``app.logger``, so that Flask does not add its own text handler.
    """
    logger = logging.getLogger("portal")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if logging.getLogger().handlers or any(getattr(h, "name", None) == _handler_marker for h in logger.handlers):
        return
    handler = logging.StreamHandler(wsgi_errors_stream)  # type: ignore[arg-type]
    handler.set_name(_handler_marker)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
