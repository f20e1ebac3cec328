"""The activation-code pool: encrypted at rest, handed out exactly once, always the same one per person.

Guarantees, and what makes them hold:
* two people never share a code — a claim takes one free row with ``FOR UPDATE SKIP LOCKED``
  (PostgreSQL) or under SQLite's single-writer lock, and re-checks ``patient_id IS NULL``;
* a person never holds two codes — a partial unique index on ``patient_id``; the loser of a
  race gets the winner's code back;
* a crash or retry changes nothing — the claim is one committed UPDATE, and a repeat finds it;
* a code someone else used is replaced in one transaction — the reported row is revoked (it stays
  the person's, never returns to the pool) and a free one is taken, or neither happens; a repeat
  names the revoked row again and so never revokes the replacement.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, Update, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.identity import Keyring
from portal.models import ActivationCode, Patient, PoolCount, utcnow
from portal.sealing import RESEAL_BATCH, Sealer, reseal_stale

CODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]{3,63}")
PRODUCT_MAX = 80
CLAIM_ATTEMPTS = 8
RETRY_PAUSE = 0.01  # seconds before the second attempt; doubles each time (with jitter), at most:
RETRY_PAUSE_MAX = 0.25


class PoolEmpty(Exception):
    """No unclaimed, unexpired code is left; nothing was changed."""


class PoolBusy(Exception):
    """Free codes exist but other claims kept them locked on every attempt; retrying is safe."""


class NotHeld(Exception):
    """The person holds no live code to replace; nothing was changed."""


@dataclass(frozen=True)
class ClaimedCode:
    code: str
    product: str
    enroll_by: date
    claimed_at: datetime
    row_id: int  # names this very code in a report that someone else used it (``reissue_code``)


@dataclass(frozen=True)
class Reissue:
    """The person's live code after a report; ``replaced`` is False when the reported code had
    already been replaced (a double submit, a stale page) and nothing was changed."""

    code: ClaimedCode
    replaced: bool


@dataclass(frozen=True)
class RevokedCode:
    code: str
    product: str
    enroll_by: date
    claimed_at: datetime
    revoked_at: datetime


class CodeCipher:
    """Codes at rest: sealed, and bound to a keyed digest that finds duplicates without the plaintext."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._sealer = Sealer(keyring, "code-encryption")
        self._index_key = keyring.subkey("code-index")

    def digest(self, code: str) -> bytes:
        return hmac.new(self._index_key, code.encode("ascii"), hashlib.sha256).digest()

    def seal(self, code: str) -> ActivationCode:
        """A new pool row for ``code``; the digest is the sealing context, binding ciphertext to row."""
        digest = self.digest(code)
        ciphertext, version = self._sealer.seal(code, digest)
        return ActivationCode(code_digest=digest, ciphertext=ciphertext, key_version=version)

    def open(self, row: ActivationCode) -> str:
        return self._sealer.open(row.ciphertext, row.key_version, row.code_digest)


def normalise_code(text: str) -> str:
    code = text.strip()
    if not CODE_PATTERN.fullmatch(code):
        raise ValueError("code must be 4 to 64 letters, digits or dashes")
    return code


def _reveal(cipher: CodeCipher, row: ActivationCode) -> ClaimedCode:
    assert row.claimed_at is not None
    return ClaimedCode(cipher.open(row), row.product, row.enroll_by, row.claimed_at, row.id)


# The person's code; a revoked one is theirs no more to use. Built once: every verified page asks.
_HELD = (ActivationCode.patient_id == bindparam("patient_id"), ActivationCode.revoked_at.is_(None))
HELD_CODE = select(ActivationCode).where(*_HELD)
HELD_CODE_ID = select(ActivationCode.id).where(*_HELD)


def code_of(session: Session, cipher: CodeCipher, patient: Patient) -> ClaimedCode | None:
    """The code this person holds, if any."""
    row = session.scalar(HELD_CODE, {"patient_id": patient.id})
    return _reveal(cipher, row) if row else None


def holds_code(session: Session, patient: Patient) -> bool:
    """Whether this person holds a code, for a page that only says so: neither loaded nor opened."""
    return session.scalar(HELD_CODE_ID, {"patient_id": patient.id}) is not None


def claim_code(session: Session, cipher: CodeCipher, patient: Patient, today: date | None = None) -> ClaimedCode:
    """Give ``patient`` their code: the one they hold, or the next free one that can still be enrolled.

    Raises PoolEmpty when no usable code is left, PoolBusy when contention outlasted the retries.
    """
    today = today or date.today()
    for attempt in range(CLAIM_ATTEMPTS):
        held = code_of(session, cipher, patient)
        if held:
            return held
        try:
            taken = session.execute(_take_free(patient, today)).scalar_one_or_none()
            session.commit()
        except IntegrityError:
            # A concurrent claim for the same person won; the next turn returns its code.
            session.rollback()
            continue
        if taken is not None:
            return _reveal(cipher, session.get_one(ActivationCode, taken, populate_existing=True))
        if not _has_free_code(session, today):
            # Dry now; but a concurrent claim for this same person (a double submit) may have
            # served them since our first look and then the pool ran out: their code is the answer.
            held = code_of(session, cipher, patient)
            session.rollback()
            if held:
                return held
            raise PoolEmpty()
        _back_off(attempt)
    raise PoolBusy()


def reissue_code(
    session: Session, cipher: CodeCipher, patient: Patient, reported: int, today: date | None = None
) -> Reissue:
    """Revoke the code ``patient`` reported someone else used (its row id, ``reported``) and give
    them a fresh one, in one transaction: both happen or neither does.

    The report names a row, not "whatever they hold now": a double submit or a stale page names
    the already revoked row, finds nothing to revoke, and gets the replacement back unchanged. Two
    concurrent reports queue on the reported row's lock (SQLite: on its single writer); the second
    then finds it revoked. Raises PoolEmpty (nothing changed), PoolBusy, or NotHeld when the person
    holds no live code at all.
    """
    today = today or date.today()
    for attempt in range(CLAIM_ATTEMPTS):
        now = utcnow()
        revoke = (
            update(ActivationCode)
            .where(
                ActivationCode.id == reported,
                ActivationCode.patient_id == patient.id,
                ActivationCode.revoked_at.is_(None),
            )
            .values(revoked_at=now)
            .returning(ActivationCode.id)
            .execution_options(synchronize_session=False)
        )
        try:
            if session.execute(revoke).scalar_one_or_none() is None:
                # Already replaced (or never theirs): their live code, if any, is the answer.
                session.rollback()
                held = code_of(session, cipher, patient)
                session.rollback()
                if held is None:
                    raise NotHeld()
                return Reissue(held, replaced=False)
            taken = session.execute(_take_free(patient, today, now)).scalar_one_or_none()
            if taken is not None:
                session.commit()
        except IntegrityError:
            # Another code reached this person meanwhile; the next turn sees how things stand.
            session.rollback()
            continue
        if taken is not None:
            return Reissue(_reveal(cipher, session.get_one(ActivationCode, taken, populate_existing=True)), True)
        session.rollback()  # the revocation goes too: a person is never left without a code
        if not _has_free_code(session, today):
            raise PoolEmpty()
        _back_off(attempt)
    raise PoolBusy()


def _take_free(patient: Patient, today: date, now: datetime | None = None) -> Update:
    """Hand the next free, usable code to ``patient`` (returns its id, or no row when none is free)."""
    free = (
        select(ActivationCode.id)
        .where(*_usable(today))
        .order_by(ActivationCode.enroll_by, ActivationCode.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(ActivationCode)
        .where(ActivationCode.id == free, ActivationCode.patient_id.is_(None))
        .values(patient_id=patient.id, claimed_at=now or utcnow())
        .returning(ActivationCode.id)
        .execution_options(synchronize_session=False)
    )


def _back_off(attempt: int) -> None:
    """Every free row was locked by other claims at that instant: let them finish, then try again."""
    if attempt + 1 < CLAIM_ATTEMPTS:
        pause = min(RETRY_PAUSE * 2**attempt, RETRY_PAUSE_MAX)
        time.sleep(pause * (0.5 + secrets.randbelow(1000) / 1000))


def _usable(today: date) -> tuple[ColumnElement[bool], ...]:
    """A code that can still be handed out: nobody holds it and its enrolment deadline has not passed."""
    return ActivationCode.patient_id.is_(None), ActivationCode.enroll_by >= today


def _has_free_code(session: Session, today: date) -> bool:
    found = session.scalar(select(ActivationCode.id).where(*_usable(today)).limit(1)) is not None
    session.rollback()
    return found


def revoked_since(session: Session, cipher: CodeCipher, since: datetime) -> Iterator[RevokedCode]:
    """Codes revoked at or after ``since``, oldest first, for the provider to refuse at enrolment."""
    rows = select(ActivationCode).where(ActivationCode.revoked_at >= since).order_by(ActivationCode.revoked_at)
    for row in session.scalars(rows):
        assert row.claimed_at is not None and row.revoked_at is not None
        yield RevokedCode(cipher.open(row), row.product, row.enroll_by, row.claimed_at, row.revoked_at)


@dataclass(frozen=True)
class PoolStatus:
    total: int
    claimed: int
    available: int


def pool_status(session: Session, today: date | None = None) -> PoolStatus:
    """The pool's counts, exact, from the counts the database keeps (``PoolCount``): a few rows per
    enrol-by date whatever the pool's size, so every metrics scrape can afford it."""
    today = today or date.today()
    free = PoolCount.codes - PoolCount.claimed
    usable = func.coalesce(func.sum(free).filter(PoolCount.enroll_by >= today), 0)
    total, claimed, available = session.execute(
        select(func.coalesce(func.sum(PoolCount.codes), 0), func.coalesce(func.sum(PoolCount.claimed), 0), usable)
    ).one()
    return PoolStatus(int(total), int(claimed), int(available))


def reseal_codes(session: Session, cipher: CodeCipher, batch_size: int = RESEAL_BATCH) -> int:
    """Re-seal every code still under an older key version with the current one; return how many.

    The digest is recomputed too, since the index key is derived from the same master key.
    """

    def reseal(row: ActivationCode) -> Update:
        fresh = cipher.seal(cipher.open(row))
        return (
            update(ActivationCode)
            .where(ActivationCode.id == row.id, ActivationCode.ciphertext == row.ciphertext)
            .values(code_digest=fresh.code_digest, ciphertext=fresh.ciphertext, key_version=fresh.key_version)
        )

    current = cipher.keyring.current_version
    stale = select(ActivationCode).where(ActivationCode.key_version != current).order_by(ActivationCode.id)
    return reseal_stale(session, stale, reseal, batch_size)
