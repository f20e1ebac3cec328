"""Security-relevant events, raised in one place and never carrying an identifier.

Each event goes through ``record``, the one place for all of them: one JSON line on the
``portal.events`` logger (with the audit trail's new head), one row of the audit trail
(``portal/audit.py``), its count in the metrics, attack detection, and one more in its hourly
count (``portal.stats``), which the dashboard and ``portal stats`` read and which survives the
retention purge, whatever the surface: public site, console, API or command line. The row names
who acted (the event's ``actor``, such as ``api-key:7``; else ``act_as``'s, such as ``staff:3``;
else the public visitor's session or the command-line user) and the request it belongs to
(``portal.telemetry.request_id``).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from flask import Flask, current_app, g, has_request_context, session
from limits.errors import StorageError
from redis import RedisError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from portal import alerts, metrics, stats
from portal.audit import Entry, GroupCommit, Head
from portal.extensions import db
from portal.logs import Fields, write
from portal.models import utcnow
from portal.network import client_key, client_network, recorded_client
from portal.services import services
from portal.telemetry import request_id

log = logging.getLogger("portal.events")

PUBLIC_SESSION_KEY = "verification"  # the public blueprint's session slot for its token
Written = tuple[Entry, list[tuple[datetime, str, str, str]]]  # an audit row and its hourly counts


def init_app(app: Flask) -> None:
    """Events are INFO lines on the ``portal`` logger's JSON handler (``portal.logs``)."""
    app.extensions["portal.audit_writer"] = GroupCommit(_write_events, connection_lost)
    app.extensions["portal.detector"] = alerts.Detector(
        alerts.Thresholds.from_config(app.config),
        # The rate-limit store: Redis in production, so every worker adds to the same counts.
        app.extensions["portal.limit_store"],
        alerts.CachedRate(partial(_usual_per_minute, stats.usual_failures_per_minute)),
        alerts.CachedRate(partial(_usual_per_minute, stats.usual_claims_per_minute)),
        client_key,
        client_network,
        app.config["RATELIMIT_KEY_PREFIX"],
    )


def _usual_per_minute(read: Callable[[Connection, datetime], float], now: datetime) -> float:
    with db.engine.connect() as connection:
        return read(connection, now)


@dataclass(frozen=True)
class Event:
    action: str  # verification, exposure, claim, sign-out, purge
    outcome: str  # success, failure, throttled:<limit>, viewed, pool-empty, ...
    channel: str  # the surface: public, agent, api (cli for commands)
    patient_ref: str | None = None  # Patient.public_id: random, meaningless outside the database
    client: str | None = None  # client address as the trusted proxies report it (recorded as its network)
    actor: str | None = None  # who acted for the person: "api-key:7" for a partner key; None for the person
    at: datetime = field(default_factory=utcnow)


def act_as(actor: str) -> None:
    """Name who acts in this request's events when the event does not: ``staff:<id>``."""
    g.audit_actor = actor


def _actor() -> str:
    if has_request_context():
        if "audit_actor" in g:
            return str(g.audit_actor)
        token = session.get(PUBLIC_SESSION_KEY)
        # The verification's token, hashed: ties one visitor's events together, names no one.
        return "public:" + hashlib.sha256(token.encode()).hexdigest()[:16] if token else "anonymous"
    try:
        return "cli:" + getpass.getuser()[:40]
    except (KeyError, OSError):
        return "cli:unknown"


def record(event: Event) -> None:
    """One JSON line, one audit row, its metrics, attack detection and its hourly count; the actor
    is the event's own, else this request's (``act_as``)."""
    actor = event.actor or _actor()
    entry = Entry(
        actor=actor,
        action=event.action,
        outcome=event.outcome,
        channel=event.channel,
        record_ref=event.patient_ref,
        client=recorded_client(event.client),
        request_id=request_id() if has_request_context() else None,
    )
    metrics.observe_event(event.action, event.outcome, event.channel)
    raised = _detect(event, entry.actor)
    counts = [(event.at, event.action, event.outcome, event.channel)]
    counts += [(event.at, "alert", alert.kind, alert.channel) for alert in raised]
    head = None
    try:
        writer: GroupCommit[Written, Head] = current_app.extensions["portal.audit_writer"]
        head = str(writer.submit((entry, counts)))  # committed: only now is it a head of the trail
    finally:
        # The new head goes out with the line: the log, kept apart from the database, is what
        # shows a later truncation of the trail (``portal audit verify --expect-head``).
        write(log, logging.INFO, Fields({**vars(entry), "audit_head": head}))
        # Whatever the write did: an alert is raised once a window, by this event alone.
        for alert in raised:
            alerts.announce(alert)
            metrics.observe_event("alert", alert.kind, alert.channel)


def _write_events(events: list[Written]) -> list[Head]:
    """The rows and their counts, in one short transaction of their own (committed whatever the
    requests do with theirs): the events that this process's threads raised meanwhile, together."""
    with db.engine.begin() as connection:
        heads = services().audit.append_many(connection, [entry for entry, _ in events])
        stats.add_counts(connection, heads[0].lane, [count for _, counts in events for count in counts])
    return heads


def connection_lost(error: Exception) -> bool:
    """Whether the database connection died during the write: its COMMIT may or may not have taken."""
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _detect(event: Event, actor: str | None) -> list[alerts.Alert]:
    detector: alerts.Detector = current_app.extensions["portal.detector"]
    try:
        return detector.observe(
            event.action, event.outcome, event.channel, event.client, actor, event.at, event.patient_ref
        )
    except (RedisError, StorageError, OSError, SQLAlchemyError) as error:
        # The limits themselves fall back to memory; detection waits for the store to return.
        log.warning("attack detection unavailable: %s", error.__class__.__name__)
        return []
