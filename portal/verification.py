"""One verification attempt, made the same way by every surface: the site, the console and the API.

Counted in the surface's budgets, one lookup of the same work whatever the answer, one event
either way, and on success a stored verification whose token the surface hands to its client (a
session cookie, the console's call, or the API's ``claim_token``). The surfaces only choose their
budgets and say who acts; what an attempt is stays here.

Whoever holds the stolen records passes every verification, so a claim may also ask for the
reference printed on the person's letter (``letter_required``): always, while a success-side alert
is active, or never, as the programme chooses (``claim_step_up``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from limits.errors import StorageError
from redis import RedisError
from sqlalchemy import Row

from portal import throttle
from portal.events import Event, record
from portal.extensions import db
from portal.identity import IdentityClaim, find_patient, start_verification
from portal.models import Verification, utcnow
from portal.services import services


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
    api_key_id: int | None = None,
) -> Verified | None:
    """The verification of ``claim``, or None for an unknown person or a wrong field alike.

    Raises ``throttle.Throttled`` or ``throttle.LimitStoreDown`` before any lookup when a budget
    refuses the attempt. ``actor`` names who acted for the person when the request does not
    (``events.act_as``), such as a partner key; the token works only on ``channel`` and, for the
    API, with the key ``api_key_id``.
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
    with_letter = claim.reference is not None  # verified with the letter itself: already stepped up
    token = start_verification(db.session, patient, channel, ttl, api_key_id, with_letter)
    return Verified(patient, token, expires_at)


def letter_required(verification: Verification) -> bool:
    """Whether claiming a code on this verification needs the letter's reference first."""
    if verification.with_letter:
        return False
    step_up = services().programme.claim_step_up
    if step_up != "on-alert":
        return step_up == "always"
    try:
        return bool(current_app.extensions["portal.detector"].step_up_active(utcnow()))
    except (RedisError, StorageError, OSError):
        return True  # whether an alert is active cannot be read: ask, as during one
