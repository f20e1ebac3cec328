"""Logs: one JSON object per line, for requests, events, alerts and errors alike.

A structured line is logged as ``Fields`` (a dict): ``JsonFormatter`` puts its keys at the top
level beside the time, level, logger and the request id; a handler configured by the operator
with another formatter still prints it as JSON. Nothing logged here may carry an identifier or
a code: events carry the patient's random public id at most, requests their endpoint, never a
path with its query string or a form value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from typing import Any

from flask import Flask, g, has_request_context

_handler_marker = "portal.json"
# Built once: json.dumps with options builds a new encoder on every call.
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


class Fields(dict[str, object]):
    """A log message made of named fields (turned into text only if a handler writes it)."""

    def __str__(self) -> str:
        return _encode(self)


def write(logger: logging.Logger, level: int, fields: Fields) -> None:
    """``logger.log(level, fields)``, cheaply: this runs for every request.

    When the portal's own JSON handler is the only place the line would go (the default), the
    line is written to its stream directly: building a LogRecord and passing it down the logging
    machinery cost more than the rest of the request's bookkeeping together. Otherwise (logging
    configured by the operator, or a test's capture) the record takes the ordinary way, without
    the stack walk for the caller's file and line, which a JSON line does not show.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _sole_json_handler(logger, level)
    if handler is None:
        logger.handle(logger.makeRecord(logger.name, level, "", 0, fields, None, None))
        return
    assert isinstance(handler.formatter, JsonFormatter)
    text = handler.formatter.line(time.time(), logging.getLevelName(level), logger.name, fields) + "\n"
    with handler.lock or contextlib.nullcontext():
        handler.stream.write(text)


def _sole_json_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    """The portal's JSON handler if a record of ``logger`` would reach it and nothing else."""
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or handler.name != _handler_marker or handler.filters or handler.level > level:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found if isinstance(found, logging.StreamHandler) else None


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, the request id, then the message's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second = (-1, "")  # the formatted time of the last second seen: a line a request

    def _time(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second, text = int(created), time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            self._second = (second, text)
        return f"{text}.{int(created % 1 * 1000):03d}Z"

    def line(self, created: float, level: str, name: str, fields: dict[str, object]) -> str:
        entry: dict[str, object] = {"time": self._time(created), "level": level, "logger": name, **fields}
        if "request_id" not in entry and has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        return _encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = record.msg if isinstance(record.msg, Fields) else {"message": record.getMessage()}
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the stack; never the exception's message, which may quote a value.
            fields = {**fields, "error": record.exc_info[0].__name__}
            fields["stack"] = "".join(traceback.format_tb(record.exc_info[2]))
        return self.line(record.created, record.levelname, record.name, fields)


def init_app(app: Flask) -> None:
    """JSON lines on stderr (gunicorn's error log, ``errorlog = "-"``), unless logging was configured
    already. Stderr itself rather than Flask's per-request error stream, which is looked up again
    at each write: that lookup was half of a request line's cost.

    Runs before anything touches ``app.logger``, so that Flask does not add its own text handler.
    """
    logger = logging.getLogger("portal")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if logging.getLogger().handlers or any(getattr(h, "name", None) == _handler_marker for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_handler_marker)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
