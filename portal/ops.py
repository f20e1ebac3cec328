"""Health, readiness and metrics for the people and machines operating the portal (blueprint).

``/healthz`` says the process answers. ``/readyz`` and ``/metrics`` are served only to the
operators' hosts or networks (``PORTAL_OPS_HOSTS``, ``PORTAL_OPS_NETWORKS``); to anyone else
they do not exist (404). Neither carries anything about a person.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, current_app, request
from limits.storage import Storage
from redis import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import NotFound

from portal import metrics
from portal.extensions import db
from portal.network import within
from portal.throttle import limit_store

bp = Blueprint("ops", __name__)

PLAIN = {"Content-Type": "text/plain; charset=utf-8"}


def init_app(app: Flask) -> None:
    app.extensions["portal.ops_networks"] = [ipaddress.ip_network(n) for n in app.config["OPS_NETWORKS"]]
    app.register_blueprint(bp)


def operators_only(view: Callable[[], Any]) -> Callable[[], Any]:
    """Answer only requests addressed to an operators' host name or coming from their networks."""

    @wraps(view)
    def guarded() -> Any:
        if request.host.partition(":")[0] in current_app.config["OPS_HOSTS"] or _from_ops_network():
            return view()
        raise NotFound()

    return guarded


def _from_ops_network() -> bool:
    return within(request.remote_addr, current_app.extensions["portal.ops_networks"])


@bp.get("/healthz")
def healthz() -> tuple[str, int, dict[str, str]]:
    """The process is alive and answering; nothing else is checked (a restart would not help that)."""
    return "ok\n", 200, PLAIN


@bp.get("/readyz")
@operators_only
def readyz() -> tuple[dict[str, str], int]:
    """Ready to serve: the database and the rate-limit store answer. 503 names which one does not."""
    checks = {"database": _database_answers(), "limit_store": _limit_store_answers()}
    ready = all(checks.values())
    return {name: "ok" if up else "unavailable" for name, up in checks.items()}, 200 if ready else 503


def _database_answers() -> bool:
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def _limit_store_answers() -> bool:
    store: Storage = limit_store()
    try:
        return bool(store.check())
    except (RedisError, OSError):
        return False


@bp.get("/metrics")
@operators_only
def prometheus_metrics() -> tuple[bytes, int, dict[str, str]]:
    return metrics.exposition(db.session), 200, {"Content-Type": metrics.CONTENT_TYPE}
