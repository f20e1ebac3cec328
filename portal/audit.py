"""The audit trail: an append-only, hash-chained table of security events (no HTTP here).

Each row's ``chain_hash`` is HMAC-SHA256, under a subkey of ``PORTAL_AUDIT_KEY``, of the
previous row's hash and this row's fields, position included. Without the key nobody can edit,
delete or insert a row and recompute the links after it: ``verify`` walks the chain and names
the first row that does not fit. Truncating the newest rows *and* rewinding the head row is the
one change the chain alone cannot show; compare the head an operator noted earlier
(``portal audit verify`` prints it).

Writers take the single ``audit_chain_head`` row first (an UPDATE, which locks the row on
PostgreSQL and takes SQLite's write lock), so any number of processes append one at a time and
every position is used exactly once. The caller gives each append a short transaction of its
own (``portal.events.record``), apart from the request's, so a rolled-back request still leaves
its trace and no request holds the lock long.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from portal.config import decode_key
from portal.identity import Keyring
from portal.models import AuditChainHead, AuditEvent, utcnow

GENESIS = bytes(32)  # the "previous hash" of the first row
HEAD_ID = 1
EVENTS = AuditEvent.__table__
HEAD = AuditChainHead.__table__
FIELDS = ("id", "at", "actor", "action", "outcome", "channel", "record_ref", "client", "request_id")

# Built once: every event runs them, and building a statement costs more than running it.
# Taking the next position returns the previous link in the same statement, under the lock.
_TAKE_POSITION = (
    update(HEAD)
    .where(HEAD.c.id == HEAD_ID)
    .values(position=HEAD.c.position + 1)
    .returning(HEAD.c.position, HEAD.c.last_hash)
)
_ADD_ROW = insert(EVENTS)
_MOVE_HEAD = update(HEAD).where(HEAD.c.id == HEAD_ID).values(last_hash=bindparam("new_hash"))


@dataclass(frozen=True)
class Entry:
    """What is recorded. Never an identifier or a code: ``record_ref`` is a Patient.public_id."""

    actor: str
    action: str
    outcome: str
    channel: str
    record_ref: str | None = None
    client: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class BrokenLink:
    position: int  # the first row that does not fit (or where one is missing)
    reason: str


class AuditChain:
    """Computes and checks the links; holds the only copy of the chain key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AuditChain:
        master = decode_key(config["AUDIT_KEY"], "PORTAL_AUDIT_KEY")
        return cls(Keyring(1, {1: master}).subkey("audit-chain"))

    def link(self, prev_hash: bytes, row: Mapping[str, Any]) -> bytes:
        values = [_text(row[name]) for name in FIELDS]
        message = prev_hash + "\x1f".join(values).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def append(self, connection: Connection, entry: Entry) -> int:
        """Add ``entry`` at the end of the chain in the caller's transaction; returns its position.

        The UPDATE comes first: it takes the head's row lock (PostgreSQL) or the write lock
        (SQLite) before anything is read, so no two writers can read the same head."""
        position, prev_hash = connection.execute(_TAKE_POSITION).one()
        row = {"id": position, "at": utcnow(), **entry.__dict__}
        chain_hash = self.link(prev_hash, row)
        connection.execute(_ADD_ROW, {**row, "prev_hash": prev_hash, "chain_hash": chain_hash})
        connection.execute(_MOVE_HEAD, {"new_hash": chain_hash})
        return int(position)

    def verify(self, connection: Connection, batch: int = 1000) -> tuple[int, BrokenLink | None]:
        """Walk the whole chain: how many rows hold, and the first broken link if any.

        With no break, the last row's hash is the head: note it to detect a later truncation."""
        expected_position, prev_hash = 1, GENESIS
        for row in _rows(connection, batch):
            if row["id"] != expected_position:
                return expected_position - 1, BrokenLink(expected_position, "row missing (deleted?)")
            if row["prev_hash"] != prev_hash:
                return expected_position - 1, BrokenLink(row["id"], "does not follow the row before (inserted?)")
            if not hmac.compare_digest(row["chain_hash"], self.link(prev_hash, row)):
                return expected_position - 1, BrokenLink(row["id"], "contents changed since written (edited?)")
            expected_position, prev_hash = expected_position + 1, row["chain_hash"]
        head = connection.execute(select(HEAD).where(HEAD.c.id == HEAD_ID)).mappings().one()
        checked = expected_position - 1
        if head["position"] != checked or head["last_hash"] != prev_hash:
            return checked, BrokenLink(checked + 1, "the newest rows are missing (head does not match)")
        return checked, None


def _rows(connection: Connection, batch: int) -> Iterator[Mapping[str, Any]]:
    after = 0
    while True:
        rows = (
            connection.execute(select(EVENTS).where(EVENTS.c.id > after).order_by(EVENTS.c.id).limit(batch))
            .mappings()
            .all()
        )
        if not rows:
            return
        yield from rows
        after = rows[-1]["id"]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        # As the database hands it back: naive UTC to the microsecond.
        return value.replace(tzinfo=None).isoformat(timespec="microseconds")
    return str(value)


@dataclass(frozen=True)
class Filter:
    """What a supervisor narrows the trail to; every part optional."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    record_ref: str | None = None


def events(connection: Connection, where: Filter, limit: int | None = None) -> Iterator[Mapping[str, Any]]:
    """Matching rows, newest first."""
    query = select(*(EVENTS.c[name] for name in FIELDS)).order_by(EVENTS.c.id.desc())
    if where.since:
        query = query.where(EVENTS.c.at >= where.since)
    if where.until:
        query = query.where(EVENTS.c.at < where.until)
    for name in ("actor", "action", "record_ref"):
        if getattr(where, name):
            query = query.where(EVENTS.c[name] == getattr(where, name))
    if limit:
        query = query.limit(limit)
    yield from connection.execute(query).mappings()


# A cell a spreadsheet would read as a formula or a command when it starts with one of these (OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> str:
    """A CSV cell as text a spreadsheet will not run: a value starting with ``= + - @``, a tab or a
    carriage return gets a leading apostrophe (OWASP's CSV injection rule); the CSV writer quotes
    separators and quotes. An actor, a client or a request id may have come from outside."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def head_hash(connection: Connection) -> str:
    """The newest row's chain hash, for an operator to note (see the module docstring)."""
    return bytes(connection.execute(select(HEAD.c.last_hash).where(HEAD.c.id == HEAD_ID)).scalar_one()).hex()


def throttled_staff(connection: Connection, since: datetime) -> list[tuple[str, int]]:
    """Staff whose console verifications were refused by a failure budget since ``since``, most first."""
    refusals = func.count().label("refusals")
    query = (
        select(EVENTS.c.actor, refusals)
        .where(EVENTS.c.at >= since, EVENTS.c.actor.startswith("staff:"), EVENTS.c.outcome.startswith("throttled"))
        .group_by(EVENTS.c.actor)
        .order_by(refusals.desc())
    )
    return [(actor, count) for actor, count in connection.execute(query)]
