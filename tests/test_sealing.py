"""The one sealer of values at rest: the stored format never changes, and purposes and rows stay apart."""

from __future__ import annotations

import secrets

import pytest
from agent_helpers import make_staff, signed_in
from conftest import hkdf_sha256, import_patients, patient_row
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask
from sqlalchemy import select

from portal.extensions import db
from portal.identity import Keyring
from portal.letters import LetterVault
from portal.models import LetterRecord, Patient, Staff
from portal.sealing import Sealer
from portal.services import services


def stored_format(master: bytes, purpose: str) -> AESGCM:
    """The format values have always been stored in, written out here so that it cannot drift:
    nonce (12 bytes) || AES-256-GCM under HKDF-SHA256(master, "portal/<purpose>")."""
    return AESGCM(hkdf_sha256(master, f"portal/{purpose}".encode()))


def seal_as_stored(master: bytes, purpose: str, text: str, context: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + stored_format(master, purpose).encrypt(nonce, text.encode(), context)


def open_as_stored(master: bytes, purpose: str, sealed: bytes, context: bytes) -> str:
    return stored_format(master, purpose).decrypt(sealed[:12], sealed[12:], context).decode()


def test_totp_secrets_in_the_stored_format_open_and_new_ones_are_written_in_it(app: Flask) -> None:
    account = make_staff(app)
    with app.app_context():
        master = Keyring.from_config(app.config, "CODE_KEY").keys[1]
        staff = db.session.get_one(Staff, account.id)
        assert open_as_stored(master, "staff-totp", staff.totp_secret, b"alice") == account.secret
        staff.totp_secret = seal_as_stored(master, "staff-totp", account.secret, b"alice")
        db.session.commit()
    signed_in(app, account)  # the login view opens a secret sealed outside the portal's code


def test_letter_record_ids_in_the_stored_format_open_and_new_ones_are_written_in_it(app: Flask) -> None:
    assert import_patients(app, [patient_row(record_id="R-LOST", ssn="")]) == []
    with app.app_context():
        master = Keyring.from_config(app.config, "IDENTIFIER_KEY").keys[1]
        letter, public_id = db.session.execute(select(LetterRecord, Patient.public_id).join(Patient)).one()
        assert open_as_stored(master, "letter-record", letter.sealed_record_id, public_id.encode()) == "R-LOST"
        letter.sealed_record_id = seal_as_stored(master, "letter-record", "R-LOST", public_id.encode())
        assert LetterVault(services().hasher).open(letter, public_id) == "R-LOST"


def test_a_sealed_value_opens_only_for_its_purpose_its_context_and_its_key() -> None:
    keyring = Keyring(1, {1: secrets.token_bytes(32)})
    totp = Sealer(keyring, "staff-totp")
    sealed, version = totp.seal("JBSWY3DPEHPK3PXP", b"alice")
    assert totp.open(sealed, version, b"alice") == "JBSWY3DPEHPK3PXP"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for opener, value, context in [
        (Sealer(keyring, "code-encryption"), sealed, b"alice"),  # another purpose of the same key
        (totp, sealed, b"mallory"),  # copied onto another account
        (totp, tampered, b"alice"),
        (Sealer(Keyring(1, {1: secrets.token_bytes(32)}), "staff-totp"), sealed, b"alice"),  # another key
    ]:
        with pytest.raises(InvalidTag):
            opener.open(value, version, context)


def test_every_seal_has_a_fresh_random_nonce() -> None:
    """GCM under one key with a repeated nonce gives away the XOR of the texts and lets tags be
    forged: the same text sealed again, in this process or after a restart, shares no nonce."""
    keyring = Keyring(1, {1: secrets.token_bytes(32)})
    sealers = [Sealer(keyring, "code-encryption") for _ in range(2)]  # a restart: a new sealer, the same key
    sealed = [sealer.seal("IDP-TEST-0001", b"row") for sealer in sealers for _ in range(200)]
    nonces = {value[:12] for value, _version in sealed}
    assert len(nonces) == len(sealed)
    assert len({value[12:] for value, _version in sealed}) == len(sealed)
    assert all(sealers[1].open(value, version, b"row") == "IDP-TEST-0001" for value, version in sealed)
