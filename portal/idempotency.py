"""Idempotent retries: a request sent again with the same ``Idempotency-Key`` and body within 24
hours gets the first answer, without being made again (no second hash, budget unit or claim).
No HTTP here.

The record lives in the shared database, so every worker and server sees it, and holds nothing
that names a person or opens without the request itself:

* ``slot`` = HMAC(subkey, key id, Idempotency-Key) finds the record; the key id keeps partners apart;
* ``fingerprint`` = HMAC(subkey, key id, Idempotency-Key, endpoint, body) tells the same request
  from another one sent with the same Idempotency-Key (refused: ``Reused``);
* ``answer`` is the answer sealed (AES-256-GCM) under HMAC(subkey, "answer", the same inputs):
  it opens only for someone who sends the same request again.

The subkey comes from ``PORTAL_IDENTIFIER_KEY``, which guards every other keyed hash of a person,
and the Idempotency-Key itself is never stored: without it, a stolen database and key cannot test
a body against a fingerprint.

Two retries at once: the first to insert the record answers; the other sees it unfinished and is
told to retry in a second (``InProgress``), then gets the first answer. A request that fails
(an error, a refusal) removes its record, so its retry is made afresh; one that dies without
removing it is taken over once ``LEASE`` has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.identity import Keyring
from portal.models import IdempotentRequest, utcnow

WINDOW = timedelta(hours=24)  # how long a first answer is given again
# A request unfinished after this long died (gunicorn's timeout is 30 s; a lookup waits 10 s at most for a slot).
LEASE = timedelta(seconds=60)
NONCE_SIZE = 12
SUBKEY_PURPOSE = "idempotency"
_TABLE = IdempotentRequest.__table__  # Core statements: rows are only inserted, read and replaced whole


class Reused(Exception):
    """This Idempotency-Key was used, within the window, with another request."""


class InProgress(Exception):
    """The first request with this Idempotency-Key is still being answered: retry shortly."""


@dataclass(frozen=True)
class Replay:
    """The first answer, to be given again."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """This request holds the record: it answers, then ``finish`` or ``abandon``."""

    slot: bytes
    owner: bytes
    answer_key: bytes


class IdempotencyStore:
    def __init__(self, keyring: Keyring) -> None:
        self._key = keyring.subkey(SUBKEY_PURPOSE)

    def _mac(self, *parts: bytes) -> bytes:
        # Each part's length first: no two different lists of parts give the same message.
        message = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def begin(
        self, session: Session, key_id: int, idempotency_key: str, endpoint: str, body: dict[str, Any]
    ) -> Claim | Replay:
        """Take the record of this request, or get its first answer.

        Raises ``Reused`` (another request had this Idempotency-Key) or ``InProgress``. Commits.
        """
        key_part, who = idempotency_key.encode(), str(key_id).encode()
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        slot = self._mac(b"slot", who, key_part)
        fingerprint = self._mac(b"request", who, key_part, endpoint.encode(), canonical)
        answer_key = self._mac(b"answer", who, key_part, endpoint.encode(), canonical)
        now = utcnow()
        claim = Claim(slot, secrets.token_bytes(16), answer_key)
        while True:
            try:
                session.execute(
                    insert(_TABLE).values(slot=slot, fingerprint=fingerprint, owner=claim.owner, created_at=now)
                )
                session.commit()
                return claim
            except IntegrityError:
                session.rollback()
            row = session.execute(select(_TABLE).where(_TABLE.c.slot == slot)).first()
            session.rollback()  # read only: no lock held while deciding
            if row is None:  # removed since the insert failed: try again
                continue
            if row.created_at <= now - WINDOW or (row.status is None and row.created_at <= now - LEASE):
                # Expired, or its request died: replace it, unless another retry just did.
                if _take_over(session, row.slot, row.owner, fingerprint, claim.owner, now):
                    return claim
                continue
            if not hmac.compare_digest(row.fingerprint, fingerprint):
                raise Reused()
            if row.status is None:
                raise InProgress()
            sealed = row.answer
            plain = AESGCM(answer_key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], slot)
            return Replay(row.status, json.loads(plain))

    def finish(self, session: Session, claim: Claim, status: int, body: dict[str, Any]) -> None:
        """Keep the answer, sealed, for the retries to come. Commits."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        plain = json.dumps(body, separators=(",", ":")).encode()
        sealed = nonce + AESGCM(claim.answer_key).encrypt(nonce, plain, claim.slot)
        session.execute(update(_TABLE).where(*_held(claim)).values(status=status, answer=sealed))
        session.commit()

    @staticmethod
    def abandon(session: Session, claim: Claim) -> None:
        """Remove the record of a request that got no answer worth giving again. Commits."""
        session.rollback()
        session.execute(delete(_TABLE).where(*_held(claim)))
        session.commit()


def _held(claim: Claim) -> tuple[Any, ...]:
    return _TABLE.c.slot == claim.slot, _TABLE.c.owner == claim.owner


def _take_over(
    session: Session, slot: bytes, old_owner: bytes, fingerprint: bytes, owner: bytes, now: datetime
) -> bool:
    """Replace the record held by ``old_owner``; False when another request replaced it first."""
    taken = session.execute(
        update(_TABLE)
        .where(_TABLE.c.slot == slot, _TABLE.c.owner == old_owner)
        .values(fingerprint=fingerprint, owner=owner, created_at=now, status=None, answer=None)
    ).rowcount
    session.commit()
    return taken == 1


def expired_before(moment: datetime) -> Any:
    """The records no retry can use any more at ``moment`` (for the purge)."""
    return IdempotentRequest.created_at < moment - WINDOW
