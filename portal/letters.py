"""Replacement letters for people with no SSN on file, who cannot verify without their letter.

An agent identifies the caller's record by last name, birth date and ZIP (a keyed hash kept
only for these records; two or more matches identify no one) and requests a new letter;
``portal letters reissue`` hands the mail house each requested record id with its reference.
No HTTP here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal.identity import IdentifierHasher, format_reference
from portal.models import LetterRecord, Patient, utcnow
from portal.sealing import Sealer


class LetterVault:
    """The locate hash and the sealed record id, each under its own subkey of the identifier key."""

    def __init__(self, hasher: IdentifierHasher) -> None:
        self.hasher = hasher
        self._locate_key = hasher.keyring.subkey("letter-locate")
        self._sealer = Sealer(hasher.keyring, "letter-record")

    def locate_digest(self, last_name: str, date_of_birth: date, zip_code: str) -> bytes:
        message = "\x1f".join((last_name, date_of_birth.isoformat(), zip_code)).encode("utf-8")
        return hmac.new(self._locate_key, message, hashlib.sha256).digest()

    def open(self, row: LetterRecord, patient_ref: str) -> str:
        """The record id, sealed bound to its patient's public id."""
        return self._sealer.open(row.sealed_record_id, row.key_version, patient_ref.encode())

    def record(self, patient: Patient, record_id: str, last_name: str, born: date, zip_code: str) -> LetterRecord:
        sealed, version = self._sealer.seal(record_id, patient.public_id.encode())
        return LetterRecord(
            patient_id=patient.id,
            locate_digest=self.locate_digest(last_name, born, zip_code),
            sealed_record_id=sealed,
            key_version=version,
        )


@dataclass(frozen=True)
class Reissue:
    public_id: str  # Patient.public_id of the one record found
    already_requested: bool  # a letter was requested within the last days: it is in the mail, not sent again
    requested_at: datetime  # when the letter in the mail was requested (now, for a new request)


def request_reissue(
    session: Session, vault: LetterVault, last_name: str, born: date, zip_code: str, recent: timedelta
) -> Reissue | None:
    """Mark the one matching record for a new letter, unless one was requested within ``recent``;
    None when zero or several records match (the caller cannot be identified this way: escalate)."""
    digest = vault.locate_digest(last_name, born, zip_code)
    matches = session.execute(
        select(LetterRecord.id, LetterRecord.reissue_requested_at, Patient.public_id)
        .join(Patient, Patient.id == LetterRecord.patient_id)
        .where(LetterRecord.locate_digest == digest)
        .limit(2)
    ).all()
    if len(matches) != 1:
        return None
    letter_id, requested_at, public_id = matches[0]
    now = utcnow()
    if requested_at is not None and requested_at > now - recent:
        return Reissue(str(public_id), already_requested=True, requested_at=requested_at)
    session.execute(
        update(LetterRecord).where(LetterRecord.id == letter_id).values(reissue_requested_at=now, exported_at=None)
    )
    session.commit()
    return Reissue(str(public_id), already_requested=False, requested_at=now)


def export_requested(session: Session, vault: LetterVault) -> Iterator[tuple[str, str]]:
    """``(record_id, reference)`` of every record awaiting a letter; each is marked exported."""
    rows = session.execute(
        select(LetterRecord, Patient.public_id)
        .join(Patient, Patient.id == LetterRecord.patient_id)
        .where(LetterRecord.reissue_requested_at.is_not(None), LetterRecord.exported_at.is_(None))
        .order_by(LetterRecord.id)
    ).all()
    for letter, public_id in rows:
        record_id = vault.open(letter, public_id)
        yield record_id, format_reference(vault.hasher.letter_reference(record_id))
        letter.exported_at = utcnow()
    session.commit()
