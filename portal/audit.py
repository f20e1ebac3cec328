"""The audit trail: append-only, hash-chained security events, anchored outside the database (no HTTP here).

The trail is ``LANES`` chains ("lanes") written side by side. Each row's ``chain_hash`` is
HMAC-SHA256, under a subkey of ``PORTAL_AUDIT_KEY``, of the previous row's hash in its lane and this
row's fields, position included; a lane's first row follows the lane's own genesis value. Without
the key nobody can edit, delete or insert a row and recompute the links after it: ``verify`` walks
every lane and names the first row that does not fit.

Why lanes: an append holds its lane's head row from its first statement to its commit. With one
head, every event of every server queued on that one row lock (bench/audit_bench.py: fewer events
per second with 64 writers than with one). An append takes the first lane no other transaction
holds (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer at a time anyway, so it
always gets lane 1), and waits only when all are taken: 64 lanes against the ~20 appends in flight
at a 190-million-person notice's peak (bench/README.md). Within a lane every position is used
exactly once. The event's hourly counts are kept per lane too (``portal.stats``), so the lane's
lock covers them and no counter row is a queue either.

The tail: deleting a lane's newest rows *and* rewinding its head row is the one change the chain
alone cannot show. So each append's new head (``lane/position:MAC``) goes into its event's log
line (``portal.events``) and every lane's head to ``/metrics`` (``portal.metrics``), both kept
outside the database; ``verify`` checks heads noted from there or kept by the operator (``portal
audit verify --expect-head`` / ``--checkpoint``), and a published row that is gone or different is
a break. An empty trail is never intact.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from portal.config import decode_key
from portal.identity import Keyring
from portal.models import AuditChainHead, AuditEvent, utcnow

LANES = 64  # head rows created by the migration; ``verify`` expects every one of them
EVENTS = AuditEvent.__table__
HEAD = AuditChainHead.__table__
# Chained, in this order (the values only: the column was called ``id`` before there were lanes).
FIELDS = ("position", "at", "actor", "action", "outcome", "channel", "record_ref", "client", "request_id")
COLUMNS = ("lane", *FIELDS)  # what the console shows and exports
Item = TypeVar("Item")
Result = TypeVar("Result")
MAC_MIN_HEX = 12  # a published MAC may be shortened to this many hex digits (48 bits, as /metrics carries it)


def genesis(lane: int) -> bytes:
    """The "previous hash" of a lane's first row: lane 1's is all zeros, as the single chain's was."""
    return (lane - 1).to_bytes(32, "big")


# Built once: every event runs them, and building a statement costs more than running it.
# Taking a lane moves its position past ``count`` new rows and returns it with the lane's previous
# link, in the same statement, under its lock.
_taken = (
    update(HEAD)
    .values(position=HEAD.c.position + bindparam("count"))
    .returning(HEAD.c.id, HEAD.c.position, HEAD.c.last_hash)
)
_TAKE_FREE_LANE = _taken.where(
    HEAD.c.id == select(HEAD.c.id).order_by(HEAD.c.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
)
_WAIT_FOR_A_LANE = _taken.where(
    HEAD.c.id == select(HEAD.c.id).order_by(func.random()).limit(1).with_for_update().scalar_subquery()
)
_ADD_ROW = insert(EVENTS)
_MOVE_HEAD = update(HEAD).where(HEAD.c.id == bindparam("lane")).values(last_hash=bindparam("new_hash"))


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
class Head:
    """A lane's newest row as published: ``lane/position:MAC`` (the MAC in hex, perhaps shortened)."""

    lane: int
    position: int
    mac: str

    def __str__(self) -> str:
        return f"{self.lane}/{self.position}:{self.mac}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """``[LANE/]POSITION:MAC`` (lane 1 when left out); ValueError with the reason otherwise."""
        found = re.fullmatch(rf"(?:(\d{{1,3}})/)?(\d{{1,19}}):([0-9a-fA-F]{{{MAC_MIN_HEX},64}})", text.strip())
        if not found:
            raise ValueError(f"{text[:80]!r} is not [LANE/]POSITION:MAC (a MAC of {MAC_MIN_HEX} to 64 hex digits)")
        lane, position, mac = found.groups()
        if not 1 <= int(lane or 1) <= LANES or int(position) < 1:
            raise ValueError(f"{text[:80]!r}: lanes are 1 to {LANES}, positions start at 1")
        return cls(int(lane or 1), int(position), mac.lower())

    def names(self, chain_hash: bytes) -> bool:
        return chain_hash.hex().startswith(self.mac)


@dataclass(frozen=True)
class BrokenLink:
    lane: int
    position: int  # the first row that does not fit (or where one is missing)
    reason: str


@dataclass(frozen=True)
class Verdict:
    rows: int  # rows that hold (before the break, if any)
    heads: list[Head]  # every lane's newest row, when nothing is broken
    broken: BrokenLink | None


class AuditChain:
    """Computes and checks the links; holds the only copy of the chain key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AuditChain:
        master = decode_key(config["AUDIT_KEY"], "PORTAL_AUDIT_KEY")
        return cls(Keyring(1, {1: master}).subkey("audit-chain"))

    def link(self, prev_hash: bytes, row: Mapping[str, Any]) -> bytes:
        return self._mac(prev_hash, [row[name] for name in FIELDS])

    def _mac(self, prev_hash: bytes, values: Sequence[object]) -> bytes:
        message = prev_hash + "\x1f".join(map(_text, values)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def append(self, connection: Connection, entry: Entry) -> Head:
        """Add ``entry`` at the end of a free lane in the caller's transaction; returns the lane's new head."""
        return self.append_many(connection, [entry])[0]

    def append_many(self, connection: Connection, entries: Sequence[Entry]) -> list[Head]:
        """Add ``entries``, in order, at the end of one free lane in the caller's transaction: one
        lane lock and one head move for all of them. Returns each row's head (the last is the lane's).

        The UPDATE comes first: it takes the lane's row lock (PostgreSQL) or the write lock
        (SQLite) before anything is read, so no two writers can read the same head."""
        count = {"count": len(entries)}
        taken = connection.execute(_TAKE_FREE_LANE, count).one_or_none()
        taken = taken or connection.execute(_WAIT_FOR_A_LANE, count).one_or_none()
        if taken is None:
            raise LookupError("the audit trail has no chain head left (deleted): run portal audit verify")
        lane, last, prev_hash = taken
        rows, heads, at = [], [], utcnow()
        for position, entry in enumerate(entries, start=last - len(entries) + 1):
            row = {"lane": lane, "position": position, "at": at, **entry.__dict__}
            chain_hash = self.link(prev_hash, row)
            rows.append({**row, "prev_hash": prev_hash, "chain_hash": chain_hash})
            heads.append(Head(lane, position, chain_hash.hex()))
            prev_hash = chain_hash
        connection.execute(_ADD_ROW, rows)
        connection.execute(_MOVE_HEAD, {"lane": lane, "new_hash": prev_hash})
        return heads

    def verify(self, connection: Connection, expected: Iterable[Head] = (), batch: int = 5000) -> Verdict:
        """Walk every lane, in flat memory: how many rows hold, each lane's head, the first break if any.

        ``expected`` are heads published earlier (the log, ``/metrics``, a checkpoint): each must
        still be there, the same row. Without them, rows deleted from a lane's end with its head
        rewound cannot show; with none and no rows at all, the trail is broken, never intact."""
        heads = {lane: (position, bytes(last)) for lane, position, last in connection.execute(select(HEAD))}
        anchors: dict[int, list[Head]] = {}
        for head in expected:
            anchors.setdefault(head.lane, []).append(head)
        checked, found = 0, []
        for lane in range(1, LANES + 1):
            if lane not in heads:
                return Verdict(checked, [], BrokenLink(lane, 1, "the lane's chain head row is missing (deleted?)"))
            count, broken = self._walk(connection, lane, heads[lane], anchors.get(lane, []), batch)
            checked += count
            if broken is not None:
                return Verdict(checked, [], broken)
            if heads[lane][0]:
                found.append(Head(lane, heads[lane][0], heads[lane][1].hex()))
        stray = connection.execute(
            select(EVENTS.c.lane, EVENTS.c.position)
            .where(or_(EVENTS.c.lane < 1, EVENTS.c.lane > LANES))
            .order_by(EVENTS.c.lane, EVENTS.c.position)
            .limit(1)
        ).first()
        if stray is not None:
            return Verdict(checked, [], BrokenLink(stray.lane, stray.position, "a row outside every lane (inserted?)"))
        if checked == 0:
            return Verdict(0, [], BrokenLink(1, 1, "no rows at all: an empty trail proves nothing (all deleted?)"))
        return Verdict(checked, found, None)

    def _walk(
        self, connection: Connection, lane: int, head: tuple[int, bytes], anchors: list[Head], batch: int
    ) -> tuple[int, BrokenLink | None]:
        """One lane, first row to last: rows that hold and the first break."""
        position, prev_hash = 0, genesis(lane)
        published = {anchor.position: anchor for anchor in anchors}
        for *values, row_prev, chain_hash in _rows(connection, lane, batch):
            here = values[0]  # FIELDS[0]: the position
            if here != position + 1:
                return position, BrokenLink(lane, position + 1, "row missing (deleted?)")
            if row_prev != prev_hash:
                return position, BrokenLink(lane, here, "does not follow the row before (inserted?)")
            if not hmac.compare_digest(chain_hash, self._mac(prev_hash, values)):
                return position, BrokenLink(lane, here, "contents changed since written (edited?)")
            anchor = published.get(here)
            if anchor is not None and not anchor.names(chain_hash):
                reason = f"not the row published as head {anchor} (rows deleted, head rewound, new rows since?)"
                return position, BrokenLink(lane, here, reason)
            position, prev_hash = here, chain_hash
        beyond = [anchor for anchor in anchors if anchor.position > position]
        if beyond:
            gone = max(beyond, key=lambda anchor: anchor.position)
            return position, BrokenLink(lane, position + 1, f"the published head {gone} is gone (newest rows deleted?)")
        if head[0] != position:
            reason = f"the lane's rows end at {position} but its head says {head[0]} (newest rows deleted?)"
            return position, BrokenLink(lane, position + 1, reason)
        if head[1] != prev_hash:
            return position, BrokenLink(lane, position, "the lane's head does not name its last row (head edited?)")
        return position, None


class GroupCommit(Generic[Item, Result]):
    """Writes what the threads of one process hand in together, many items in one transaction.

    Why: a commit, not the lane's lock, is what limits the trail (bench/README.md: a database that
    commits a few hundred transactions a second appends no more events than that, one commit each).
    At most one batch per process is being written at a time; what arrives meanwhile waits and goes
    in the next one, all of it at once. So an event alone waits for nothing, and under load the
    batches grow with the load, with no timer. ``submit`` returns only once its item's batch has
    committed, or raises its error: nothing reported as written lives only in memory. When a batch
    fails, each of its items is written alone, so that one item's error stays its own; except when
    ``outcome_unknown`` says nobody can tell whether the batch committed (its connection died around
    the COMMIT): writing its items again could record them twice, so they all fail, as one item
    written alone would.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], list[Result]],
        outcome_unknown: Callable[[Exception], bool],
        most: int = 256,
    ) -> None:
        self._write = write  # one transaction for the batch: one result per item, in order
        self._outcome_unknown = outcome_unknown
        self._most = most
        self._lock = threading.Lock()
        self._waiting: list[_Pending[Item, Result]] = []
        self._writing = False

    def submit(self, item: Item) -> Result:
        mine = _Pending[Item, Result](item)
        with self._lock:
            self._waiting.append(mine)
            mine.leads = not self._writing
            self._writing = True
        if not mine.leads:
            mine.woken.wait()  # to lead the next batch, or because ours is written
        if mine.leads:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Write the waiting items (this thread's first), then wake them and hand the lead on."""
        # Let the threads the last batch woke queue first: without this yield the first of them to
        # come back leads a batch of one and the others wait for it (batches of 1, n, 1, n ...).
        time.sleep(0)
        with self._lock:
            batch, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
        try:
            self._write_batch(batch)
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting[0].leads = True
                    self._waiting[0].woken.set()
                else:
                    self._writing = False
            for pending in batch:
                pending.woken.set()

    def _write_batch(self, batch: list[_Pending[Item, Result]]) -> None:
        try:
            results = self._write([pending.item for pending in batch])
        except Exception as error:  # handed to its caller, whatever it is
            if len(batch) == 1 or self._outcome_unknown(error):
                for pending in batch:
                    pending.error = error
                return
            for pending in batch:
                try:
                    pending.result, pending.error = self._write([pending.item])[0], None
                except Exception as alone:
                    pending.error = alone
            return
        for pending, result in zip(batch, results, strict=True):
            pending.result, pending.error = result, None


class _Pending(Generic[Item, Result]):
    def __init__(self, item: Item) -> None:
        self.item = item
        self.leads = False
        self.woken = threading.Event()
        self.result: Result | None = None
        # Until a result replaces it: a batch cut short (the thread stopped) wrote nothing it can vouch for.
        self.error: Exception | None = RuntimeError("not written: its batch was cut short")


_LANE_ROWS = (
    select(*(EVENTS.c[name] for name in FIELDS), EVENTS.c.prev_hash, EVENTS.c.chain_hash)
    .where(and_(EVENTS.c.lane == bindparam("lane"), EVENTS.c.position > bindparam("after")))
    .order_by(EVENTS.c.position)
    .limit(bindparam("batch"))
)


def _rows(connection: Connection, lane: int, batch: int) -> Iterator[Sequence[Any]]:
    """A lane's rows in order as (*FIELDS, prev_hash, chain_hash), a batch at a time along the
    primary key: memory stays flat whatever the trail's length."""
    after = 0
    while rows := connection.execute(_LANE_ROWS, {"lane": lane, "after": after, "batch": batch}).all():
        yield from rows
        after = rows[-1][0]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        # As the database hands it back: naive UTC to the microsecond.
        return value.replace(tzinfo=None).isoformat(timespec="microseconds")
    return str(value)


def heads(connection: Connection) -> list[Head]:
    """Every lane's head as the database holds it now (what ``/metrics`` publishes)."""
    rows = connection.execute(select(HEAD).order_by(HEAD.c.id))
    return [Head(lane, position, bytes(last).hex()) for lane, position, last in rows]


@dataclass(frozen=True)
class Filter:
    """What a supervisor narrows the trail to; every part optional."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    record_ref: str | None = None


def events(connection: Connection, where: Filter, limit: int | None = None) -> Iterator[Mapping[str, Any]]:
    """Matching rows, newest first (by time: lanes fill side by side)."""
    query = select(*(EVENTS.c[name] for name in COLUMNS)).order_by(
        EVENTS.c.at.desc(), EVENTS.c.lane.desc(), EVENTS.c.position.desc()
    )
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
