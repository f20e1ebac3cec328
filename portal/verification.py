"""One verification attempt, made the same way by every surface: the site, the console and the API.

Counted in the surface's budgets, one lookup of the same work whatever the answer, one event
either way, and on success a stored verification whose token the surface hands to its client (a
session cookie, the console's call, or the API's ``claim_token``). The surfaces only choose their
budgets and say who acts; what an attempt is stays here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Row

from portal import services, throttle
from portal.events import Event, record
from portal.extensions import db
from portal.identity import IdentityClaim, find_patient, start_verification
from portal.models import utcnow


@dataclass(frozen=True)
class Verified:
    patient: Row[Any]  # the ``patients`` row: public_id and exposed_fields, never an identifier
    token: str  # for the client only; the database keeps its SHA-256
    expires_at: datetime  # a moment before the stored expiry, never after


def verify(
    claim: IdentityClaim,
    budgets: Sequence[throttle.Budget],
    channel: str,
    client: str | None,
    actor: str | None = None,
) -> Verified | None:
    """The verification of ``claim``, or None for an unknown person or a wrong field alike.

    Raises ``throttle.Throttled`` or ``throttle.LimitStoreDown`` before any lookup when a budget
    refuses the attempt. ``actor`` names who acted for the person when the request does not
    (``events.act_as``), such as a partner key.
    """
    with throttle.attempt(budgets, channel, client, actor) as attempt:
        patient = find_patient(db.session, services().hasher, claim)
        if patient is not None:
            attempt.succeeded()
    if patient is None:
        record(Event("verification", "failure", channel, None, client, actor))
        return None
    record(Event("verification", "success", channel, patient.public_id, client, actor))
    ttl = current_app.config["VERIFICATION_TTL_SECONDS"]
    expires_at = utcnow() + timedelta(seconds=ttl)
    return Verified(patient, start_verification(db.session, patient, channel, ttl), expires_at)
