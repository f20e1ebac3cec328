"""Partner API keys: created, found, revoked. No HTTP here.

A key reads ``ppk_<12 hex>.<43 random characters>``. The part before the dot is the public
prefix that finds the row (and names the key in listings and events); the database keeps only
the SHA-256 of the whole key, compared in constant time. A revoked or expired key is refused on
its next request by every process, because every request reads the row again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from limits import parse_many
from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from portal.models import ApiKey, utcnow

SCOPES = ("verify", "claim")
KEY_SHAPE = re.compile(r"(ppk_[0-9a-f]{12})\.[A-Za-z0-9_-]{43}")
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most once a minute per key
# Compared against when no row has the prefix, so a made-up prefix costs the same comparison.
_NO_KEY_DIGEST = hashlib.sha256(b"no such key").digest()


class InvalidKeySetting(ValueError):
    """A scope, rate or expiry that a key cannot have; the message says which."""


@dataclass(frozen=True)
class PartnerKey:
    """What a request needs of its key, read from the row this request."""

    id: int
    prefix: str
    scopes: frozenset[str]
    rate: str

    @property
    def actor(self) -> str:
        return f"api-key:{self.id}"


@dataclass(frozen=True)
class NewKey:
    row: ApiKey
    secret: str  # the whole key: shown once, never stored


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def check_rate(rate: str) -> str:
    try:
        if parse_many(rate):
            return rate
    except ValueError:
        pass
    raise InvalidKeySetting(f"rate {rate!r} is not a limit such as 120/minute")


def create_key(session: Session, partner: str, scopes: list[str], rate: str, expires_on: date | None = None) -> NewKey:
    """A new key for ``partner``; it stops working at the end of ``expires_on`` (UTC) when given."""
    if not partner.strip() or len(partner) > 80:
        raise InvalidKeySetting("partner must be 1 to 80 characters")
    if not scopes or any(scope not in SCOPES for scope in scopes):
        raise InvalidKeySetting(f"scopes must be among: {', '.join(SCOPES)}")
    if expires_on is not None and expires_on < utcnow().date():
        raise InvalidKeySetting("the expiry date has passed")
    prefix = f"ppk_{secrets.token_hex(6)}"
    secret = f"{prefix}.{secrets.token_urlsafe(32)}"
    row = ApiKey(
        prefix=prefix,
        digest=_digest(secret),
        partner=partner.strip(),
        scopes=" ".join(sorted(set(scopes), key=SCOPES.index)),
        rate=check_rate(rate),
        expires_at=datetime.combine(expires_on + timedelta(days=1), time(), UTC) if expires_on else None,
    )
    session.add(row)
    session.commit()
    return NewKey(row, secret)


def key_state(key: ApiKey | Row[Any], now: datetime | None = None) -> str:
    now = now or utcnow()
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


_keys = ApiKey.__table__.c
# Built once: every partner request runs it. Core, not ORM: the row is only read.
KEY_BY_PREFIX = select(
    _keys.id, _keys.prefix, _keys.digest, _keys.scopes, _keys.rate, _keys.expires_at, _keys.revoked_at,
    _keys.last_used_at,
).where(_keys.prefix == bindparam("prefix"))  # fmt: skip
MARK_USED = update(ApiKey.__table__).where(_keys.id == bindparam("key_id")).values(last_used_at=bindparam("now"))


def authenticate(session: Session, presented: str) -> PartnerKey | None:
    """The active key ``presented`` is, or None (unknown, wrong, revoked or expired: one answer)."""
    shape = KEY_SHAPE.fullmatch(presented)
    row = session.connection().execute(KEY_BY_PREFIX, {"prefix": shape.group(1)}).first() if shape else None
    matches = hmac.compare_digest(row.digest if row else _NO_KEY_DIGEST, _digest(presented) if shape else b"")
    if row is None or not matches or key_state(row) != "active":
        return None
    found = PartnerKey(row.id, row.prefix, frozenset(row.scopes.split()), row.rate)
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        session.connection().execute(MARK_USED, {"key_id": row.id, "now": now})
        session.commit()
    return found


def revoke_key(session: Session, key_id: int) -> ApiKey | None:
    """Revoke a key for good (the next request with it is refused); None when there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def all_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
