"""Security-relevant events, raised in one place and never carrying an identifier.

Today each event is one structured line on the ``portal.events`` logger. The audit trail
(next on the roadmap) will append the same events to its own table from ``record``, and
daily counts of verifications, failures and claims can be read off the same stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

log = logging.getLogger("portal.events")


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
    action: str  # verification, claim, sign-out
    outcome: str  # success, failure, throttled, pool-empty, ...
    channel: str  # public today; agent and api later
    patient_ref: str | None = None  # Patient.public_id: random, meaningless outside the database
    client: str | None = None  # client address as the trusted proxies report it
    actor: str | None = None  # who acted for the person: "api-key:7" for a partner key; None for the person


def record(event: Event) -> None:
    log.info(
        "action=%s outcome=%s channel=%s patient=%s client=%s actor=%s",
        event.action,
        event.outcome,
        event.channel,
        event.patient_ref or "-",
        event.client or "-",
        event.actor or "-",
    )
