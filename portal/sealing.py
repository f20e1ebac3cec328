"""Every value the portal encrypts at rest is sealed here, and re-sealed here when its key rotates.

A sealed value is stored as ``nonce || AES-256-GCM ciphertext and tag`` beside the version of the
master key it was sealed under: activation codes and staff TOTP secrets under the code key, the
record ids kept for replacement letters under the identifier key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Select, Update
from sqlalchemy.orm import Session

from portal.identity import Keyring

NONCE_SIZE = 12  # random for each seal: GCM's 96-bit nonce, safe for 2**32 seals under one key
RESEAL_BATCH = 500  # rows re-sealed per transaction

Model = TypeVar("Model")


class KeyVersionMissing(LookupError):
    """A value is sealed under a key version the configuration no longer holds."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


class Sealer:
    """Seals text for one purpose; ``context`` names what the value belongs to.

    The key is the master key's subkey for ``purpose``, so a value sealed for one purpose does not
    open as another. The context (a row's digest, a username) is GCM's associated data, so a sealed
    value copied onto another row does not open either.
    """

    def __init__(self, keyring: Keyring, purpose: str) -> None:
        self.keyring = keyring
        self._aead = {version: AESGCM(keyring.subkey(purpose, version)) for version in keyring.keys}

    def seal(self, text: str, context: bytes) -> tuple[bytes, int]:
        """The sealed text and the key version to store with it."""
        version = self.keyring.current_version
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead[version].encrypt(nonce, text.encode(), context), version

    def open(self, sealed: bytes, version: int, context: bytes) -> str:
        """The text; ``InvalidTag`` when it was altered or sealed under another key, purpose or context,
        ``KeyVersionMissing`` when its key version is not configured."""
        if version not in self._aead:
            raise KeyVersionMissing(version)
        return self._aead[version].decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], context).decode()


def reseal_stale(
    session: Session, stale: Select[tuple[Model]], reseal: Callable[[Model], Update], batch_size: int = RESEAL_BATCH
) -> int:
    """Run ``reseal`` on every row ``stale`` selects (those under an old key version); return how many it changed.

    Crash-safe and resumable: ``reseal`` is one UPDATE of a row's sealed value and key version
    together, each batch commits, and a rerun selects only the rows still stale. Its condition
    (the sealed bytes unchanged) skips a row rewritten meanwhile, such as by an MFA reset.
    """
    resealed = 0
    while rows := session.scalars(stale.limit(batch_size)).all():
        resealed += sum(session.execute(reseal(row)).rowcount for row in rows)
        session.commit()
    return resealed
