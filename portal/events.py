"""Security-relevant events, raised in one place and never carrying an identifier.

Each event is one structured line on the ``portal.events`` logger and one row of the audit
trail (``portal/audit.py``), whatever the surface: public site, console, API or command line.
The row names who acted (the event's ``actor``, such as ``api-key:7``; else ``act_as``'s, such
as ``staff:3``; else the public visitor's session or the command-line user) and the request it
belongs to (``g.request_id``, made here when no one set it).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import secrets
from dataclasses import dataclass

from flask import Flask, current_app, g, has_request_context, session

from portal.audit import Entry
from portal.extensions import db

log = logging.getLogger("portal.events")

PUBLIC_SESSION_KEY = "verification"  # the public blueprint's session slot for its token


def init_app(app: Flask) -> None:
    """Events are INFO lines: written unless logging was configured otherwise.

    They go through the handler Flask gives the app's logger when none is configured: the
    request's error stream, which gunicorn keeps in its error log.
    """
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    _ = app.logger  # creating the app's logger attaches that handler


@dataclass(frozen=True)
class Event:
    action: str  # verification, claim, sign-out, staff-login, ...
    outcome: str  # success, failure, throttled, pool-empty, ...
    channel: str  # public, agent, api, cli
    patient_ref: str | None = None  # Patient.public_id: random, meaningless outside the database
    client: str | None = None  # client address as the trusted proxies report it
    actor: str | None = None  # who acted for the person: "api-key:7" for a partner key; None for the person


def act_as(actor: str) -> None:
    """Name who acts in this request's events when the event does not: ``staff:<id>``."""
    g.audit_actor = actor


def request_id() -> str | None:
    """The request's id: one set earlier (from ``X-Request-ID``), else a new one for this request."""
    if not has_request_context():
        return None
    if "request_id" not in g:
        g.request_id = secrets.token_hex(8)
    return str(g.request_id)


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
    """One log line and one audit row; the actor is the event's own, else this request's (``act_as``)."""
    actor = event.actor or _actor()
    log.info(
        "action=%s outcome=%s channel=%s patient=%s client=%s actor=%s",
        event.action,
        event.outcome,
        event.channel,
        event.patient_ref or "-",
        event.client or "-",
        actor,
    )
    entry = Entry(
        actor=actor,
        action=event.action,
        outcome=event.outcome,
        channel=event.channel,
        record_ref=event.patient_ref,
        client=event.client,
        request_id=request_id(),
    )
    current_app.extensions["portal"].audit.append(db.engine, entry)
