"""Every value the portal encrypts at rest is sealed here.

A sealed value is stored as ``nonce || AES-256-GCM ciphertext and tag`` beside the version of the
master key it was sealed under: activation codes and staff TOTP secrets under the code key, the
record ids kept for replacement letters under the identifier key.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portal.identity import Keyring

NONCE_SIZE = 12  # random for each seal: GCM's 96-bit nonce, safe for 2**32 seals under one key


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
        """The text; ``InvalidTag`` when it was altered or sealed under another key, purpose or context."""
        return self._aead[version].decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], context).decode()
