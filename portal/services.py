"""The domain objects an app is built with, and the one way every layer reaches them.

The factory builds them once from the configuration (``build_services``) and keeps them on the
app; views, the policy and the CLI ask ``services()`` for them, so nothing below the factory
imports it. One object per app, not module-level state: several programmes on one portal would
each bring their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app

from portal import metrics
from portal.audit import AuditChain
from portal.claims import CodeCipher
from portal.idempotency import IdempotencyStore
from portal.identity import Argon2Params, IdentifierHasher, Keyring
from portal.programme import Programme, load_programme
from portal.sealing import Sealer
from portal.staff import TOTP_PURPOSE

EXTENSION = "portal"  # the key in ``app.extensions``


@dataclass(frozen=True)
class Services:
    """The domain objects built once per app from its configuration."""

    hasher: IdentifierHasher
    cipher: CodeCipher
    totp: Sealer
    audit: AuditChain
    programme: Programme
    idempotency: IdempotencyStore


def build_services(config: Mapping[str, Any]) -> Services:
    code_key = Keyring.from_config(config, "CODE_KEY")
    identifier_key = Keyring.from_config(config, "IDENTIFIER_KEY")
    return Services(
        hasher=IdentifierHasher(
            identifier_key,
            Argon2Params.from_config(config),
            concurrency=config["HASH_CONCURRENCY"],
            wait_seconds=config["HASH_WAIT_SECONDS"],
            on_slot_wait=metrics.observe_hash_slot,
        ),
        cipher=CodeCipher(code_key),
        totp=Sealer(code_key, TOTP_PURPOSE),
        audit=AuditChain.from_config(config),
        programme=load_programme(config["PROGRAMME_FILE"]),
        idempotency=IdempotencyStore(identifier_key),
    )


def services() -> Services:
    """The current app's services (inside an app or request context)."""
    return current_app.extensions[EXTENSION]
