"""The audit trail: every event chained, tampering found by `portal audit verify`, never an identifier."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import multiprocessing
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from agent_helpers import make_staff, post_form, signed_in
from conftest import (
    REDIS_URL,
    hkdf_sha256,
    import_patients,
    lookup,
    make_app,
    make_config,
    patient_row,
    postgres_schema_url,
)
from flask import Flask
from live import LiveServer, Visitor, all_at_once
from sqlalchemy.exc import DBAPIError

from portal.audit import (
    FIELDS,
    LANES,
    MAC_MIN_HEX,
    BrokenLink,
    Filter,
    GroupCommit,
    Head,
    genesis,
    heads,
    spreadsheet_safe,
    throttled_staff,
)
from portal.audit import events as audit_events
from portal.config import decode_key, write_development_secrets
from portal.events import Event, connection_lost, record
from portal.extensions import db
from portal.models import AuditChainHead, AuditEvent, utcnow
from portal.services import services

WRITERS = 4
EVENTS_EACH = 25


def append_events(app: Flask, count: int) -> None:
    with app.app_context():
        for i in range(count):
            record(Event("verification", "failure", "cli", client=f"10.0.0.{i % 250}"))


def verify(app: Flask, *options: str) -> Any:
    return app.test_cli_runner().invoke(args=["audit", "verify", *options])


def execute(app: Flask, statement: str, **params: Any) -> None:
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def published(app: Flask) -> list[Head]:
    """The heads as the log and /metrics publish them now (the tests below check that they do)."""
    with app.app_context(), db.engine.connect() as connection:
        return [head for head in heads(connection) if head.position]


def anchored(heads_: list[Head]) -> list[str]:
    return [option for head in heads_ for option in ("--expect-head", str(head))]


def assert_broken(result: Any, where: str, reason: str) -> None:
    """Exit 1 and one line naming the row and then why (SECURITY.md's words): never a traceback."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"audit trail BROKEN at row {where}: {reason}"), result.output


def test_an_untouched_trail_verifies(app: Flask) -> None:
    append_events(app, 5)
    result = verify(app)
    assert result.exit_code == 0 and "intact: 5 rows; heads 1/5:" in result.output
    assert "not anchored" in result.output
    # Anchored on the very heads it has now (nothing since): still intact, not "gone".
    anchored_now = verify(app, *anchored(published(app)))
    assert anchored_now.exit_code == 0 and "anchored: 1 published heads still there" in anchored_now.output


@pytest.mark.parametrize(
    "tamper, broken_at, reason",
    [
        ("UPDATE audit_events SET outcome = 'success' WHERE position = 3", "1/3", "contents changed since written"),
        ("UPDATE audit_events SET actor = 'staff:99' WHERE position = 5", "1/5", "contents changed since written"),
        ("DELETE FROM audit_events WHERE position = 3", "1/3", "row missing"),
        ("UPDATE audit_events SET lane = 2 WHERE position = 3", "1/3", "row missing"),
        ("UPDATE audit_events SET prev_hash = chain_hash WHERE position = 4", "1/4", "does not follow the row before"),
        (
            "UPDATE audit_chain_head SET last_hash = (SELECT prev_hash FROM audit_events WHERE position = 6)",
            "1/6",
            "the lane's head does not name its last row",
        ),
    ],
    ids=["edit-outcome", "edit-actor", "delete-middle", "move-to-another-lane", "relinked", "head-hash-edited"],
)
def test_verify_names_the_first_edited_or_deleted_row(app: Flask, tamper: str, broken_at: str, reason: str) -> None:
    append_events(app, 6)
    execute(app, tamper)
    assert_broken(verify(app), broken_at, reason)


# The columns that hold the chain's links rather than what happened (``lane`` places a row in its
# chain: a row moved to another lane breaks it, see move-to-another-lane above). Every other column
# of the table must be a field the chain's MAC covers (FIELDS): a column added later without joining
# that list fails the test below, which names it.
LINK_COLUMNS = ("lane", "prev_hash", "chain_hash")
COLUMNS = tuple(column.name for column in AuditEvent.__table__.c)


def tampered(value: object) -> object:
    """The smallest edit of a stored value: one character, one bit, one microsecond, another position."""
    if isinstance(value, bool) or value is None:
        raise AssertionError(f"no edit known for {value!r}: give every field a value in full_rows")
    if isinstance(value, int):
        return value + 1000
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, str):
        return value[:-1] + ("y" if value.endswith("x") else "x")
    raise AssertionError(f"no edit known for a {type(value).__name__}: add one to tampered()")


def full_rows(app: Flask, count: int) -> None:
    """Rows with every field filled, as a console request writes them."""
    for n in range(count):
        with app.test_request_context("/agent/call"):
            record(Event("verification", "success", "agent", f"{n:032x}", f"192.0.2.{n}", f"staff:{n}"))


@pytest.mark.parametrize("column", sorted(set(COLUMNS) | set(FIELDS)))
def test_an_edit_of_any_column_is_found_at_its_row(app: Flask, column: str) -> None:
    assert column in COLUMNS, f"{column} is in the trail's field list but not a column of audit_events"
    assert column in FIELDS or column in LINK_COLUMNS, f"audit_events.{column} is not covered by the chain"
    full_rows(app, 5)
    events = AuditEvent.__table__
    third = sa.and_(events.c.lane == 1, events.c.position == 3)
    with app.app_context(), db.engine.begin() as connection:
        row = connection.execute(sa.select(events).where(third)).mappings().one()
        connection.execute(sa.update(events).where(third).values({column: tampered(row[column])}))
    result = verify(app)
    assert result.exit_code == 1 and "BROKEN at row 1/3" in result.output, result.output


def test_every_link_is_the_documented_hmac_that_an_auditor_can_recompute(database_url: str) -> None:
    """The chain is a stored format: rows written by one release must verify under the next, and
    whoever holds PORTAL_AUDIT_KEY can check them without the portal. Each row's ``chain_hash`` is
    HMAC-SHA256, under HKDF(key, "portal/audit-chain"), of the previous hash in its lane (lane L starts
    from L - 1 as 32 big-endian bytes: lane 1 from zeros) followed by the fields joined by 0x1f (none
    empty, the time as ISO 8601 to the microsecond). Recomputed here from that description alone."""
    app = make_app(database_url)
    full_rows(app, 3)
    with app.app_context():
        record(Event("verification", "failure", "cli"))  # no record, client or request id: empty fields
        postgres = db.engine.dialect.name == "postgresql"
        if postgres:  # a second lane: lane 1 held by another transaction
            with db.engine.connect() as holder:
                holder.execute(sa.text("SELECT * FROM audit_chain_head WHERE id = 1 FOR UPDATE"))
                full_rows(app, 2)
                holder.rollback()
    key = hkdf_sha256(decode_key(app.config["AUDIT_KEY"], "PORTAL_AUDIT_KEY"), b"portal/audit-chain")
    with app.app_context(), db.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM audit_events ORDER BY lane, position")).mappings().all()
        head_rows = {lane: (position, bytes(last)) for lane, position, last in connection.execute(sa.text(
            "SELECT id, position, last_hash FROM audit_chain_head"))}  # fmt: skip
    assert len(rows) == (6 if postgres else 4) and rows[3]["client"] is None
    previous: dict[int, bytes] = {}
    for row in rows:
        prev = previous.get(row["lane"], (row["lane"] - 1).to_bytes(32, "big"))
        at = row["at"] if isinstance(row["at"], datetime) else datetime.fromisoformat(row["at"])
        values = [f"{at:%Y-%m-%dT%H:%M:%S.%f}" if name == "at" else row[name] for name in FIELDS]
        message = prev + "\x1f".join("" if value is None else str(value) for value in values).encode()
        assert bytes(row["prev_hash"]) == prev, (row["lane"], row["position"])
        assert bytes(row["chain_hash"]) == hmac.new(key, message, hashlib.sha256).digest(), dict(row)
        previous[row["lane"]] = bytes(row["chain_hash"])
    for lane, last in previous.items():
        assert head_rows[lane] == (max(r["position"] for r in rows if r["lane"] == lane), last)
    assert head_rows[LANES] == (0, (LANES - 1).to_bytes(32, "big"))  # an unused lane: its genesis


def test_a_lanes_rows_moved_whole_to_another_lane_break(app: Flask) -> None:
    """Each lane starts from its own genesis value, so a row belongs to its lane (SECURITY.md): even
    every row of a lane moved, with the two head rows swapped to match, does not verify."""
    append_events(app, 3)
    execute(app, "UPDATE audit_events SET lane = 2 WHERE lane = 1")
    execute(
        app,
        "UPDATE audit_chain_head SET position = 3,"
        " last_hash = (SELECT chain_hash FROM audit_events WHERE position = 3) WHERE id = 2",
    )
    execute(app, "UPDATE audit_chain_head SET position = 0, last_hash = :zero WHERE id = 1", zero=bytes(32))
    assert_broken(verify(app), "2/1", "does not follow the row before")


def test_a_lane_read_a_batch_at_a_time_is_read_to_its_end(app: Flask) -> None:
    """verify keeps memory flat by reading a lane in batches: every batch is checked, the last
    included, so an edit past the first batch is found as surely as one in it."""
    append_events(app, 7)
    with app.app_context(), db.engine.connect() as connection:
        intact = services().audit.verify(connection, batch=2)
    assert (intact.rows, intact.broken, [str(head).split(":")[0] for head in intact.heads]) == (7, None, ["1/7"])
    execute(app, "UPDATE audit_events SET outcome = 'success' WHERE position = 6")
    with app.app_context(), db.engine.connect() as connection:
        edited = services().audit.verify(connection, batch=2)
    assert (edited.rows, edited.broken) == (5, BrokenLink(1, 6, "contents changed since written (edited?)"))


def test_the_newest_row_deleted_is_broken_even_unanchored(app: Flask) -> None:
    append_events(app, 6)
    execute(app, "DELETE FROM audit_events WHERE position = 6")
    assert_broken(verify(app), "1/6", "the lane's rows end at 5 but its head says 6")


def rewind(app: Flask, keep: int) -> None:
    """What someone with database access but without the key can do: drop lane 1's newest rows and
    set its head back to the last row kept, so that the chain alone holds."""
    execute(app, "DELETE FROM audit_events WHERE lane = 1 AND position > :keep", keep=keep)
    execute(
        app,
        "UPDATE audit_chain_head SET position = :keep,"
        " last_hash = (SELECT chain_hash FROM audit_events WHERE lane = 1 AND position = :keep) WHERE id = 1",
        keep=keep,
    )


def test_the_last_rows_deleted_with_the_head_rewound_break_the_published_head(app: Flask) -> None:
    append_events(app, 8)
    head = published(app)
    rewind(app, 5)
    unanchored = verify(app)
    assert unanchored.exit_code == 0 and "intact: 5 rows" in unanchored.output  # the limit, said out loud
    assert "not anchored" in unanchored.output
    assert_broken(verify(app, *anchored(head)), "1/6", f"the published head {head[0]} is gone")


def test_of_several_published_heads_gone_the_newest_is_named(app: Flask) -> None:
    """How much was cut shows in the one line: the furthest published head that is gone."""
    append_events(app, 6)
    sixth = published(app)
    append_events(app, 2)
    eighth = published(app)
    rewind(app, 5)
    assert_broken(verify(app, *anchored(sixth + eighth)), "1/6", f"the published head {eighth[0]} is gone")


def test_rows_appended_after_a_rewind_are_not_the_published_ones(app: Flask) -> None:
    """Deleted and rewound, then the portal appends again up to the same position: the MAC differs."""
    append_events(app, 8)
    head = published(app)
    rewind(app, 5)
    append_events(app, 3)
    assert_broken(verify(app, *anchored(head)), "1/8", f"not the row published as head {head[0]}")


def test_every_row_deleted_and_the_head_zeroed_is_never_intact(app: Flask) -> None:
    append_events(app, 4)
    head = published(app)
    execute(app, "DELETE FROM audit_events")
    execute(app, "UPDATE audit_chain_head SET position = 0, last_hash = :zero WHERE id = 1", zero=genesis(1))
    assert_broken(verify(app), "1/1", "no rows at all")
    assert_broken(verify(app, *anchored(head)), "1/1", f"the published head {head[0]} is gone")


@pytest.mark.parametrize("lane", [1, 2, LANES])
def test_the_head_row_deleted_is_broken_not_a_traceback(app: Flask, lane: int) -> None:
    """Every lane is walked, the last one too, used or not."""
    append_events(app, 4)
    execute(app, "DELETE FROM audit_chain_head WHERE id = :lane", lane=lane)
    assert_broken(verify(app), f"{lane}/1", "the lane's chain head row is missing")


def test_a_dropped_table_is_broken_not_a_traceback(app: Flask) -> None:
    append_events(app, 2)
    execute(app, "DROP TABLE audit_events")
    result = verify(app)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("audit trail BROKEN: it cannot be read (") and len(result.output.splitlines()) == 1


def test_a_checkpoint_file_anchors_each_run_on_the_last(app: Flask, tmp_path: Path) -> None:
    kept = tmp_path / "audit-head"
    append_events(app, 3)
    first = verify(app, "--checkpoint", str(kept))
    assert first.exit_code == 0 and "none yet" in first.output and "1 heads written" in first.output
    assert kept.read_text().splitlines()[1:] == [str(head) for head in published(app)]
    append_events(app, 3)
    second = verify(app, "--checkpoint", str(kept))
    assert second.exit_code == 0 and "anchored: 1 published heads still there" in second.output
    noted = kept.read_text()
    rewind(app, 4)
    assert_broken(verify(app, "--checkpoint", str(kept)), "1/5", "the published head 1/6:")
    assert kept.read_text() == noted  # a broken trail never moves the checkpoint


@pytest.mark.parametrize("value", ["6", "1/6:abc", "65/6:" + "a" * 64, "1/0:" + "a" * 64, "x" * 500])
def test_a_malformed_expected_head_is_a_usage_error(app: Flask, value: str) -> None:
    append_events(app, 1)
    result = verify(app, "--expect-head", value)
    assert result.exit_code == 2
    assert "is not [LANE/]POSITION:MAC" in result.output or "lanes are 1 to" in result.output


MAC = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "text, head",
    [
        (f"1:{MAC}", Head(1, 1, MAC)),  # lane 1 when left out, as the single chain's heads were written
        (f"7:{MAC[:MAC_MIN_HEX]}", Head(1, 7, MAC[:MAC_MIN_HEX])),
        (f" 64/3:{MAC.upper()} ", Head(LANES, 3, MAC)),
        (f"5/1:{MAC}", Head(5, 1, MAC)),
    ],
)
def test_a_published_head_reads_back_as_the_row_it_names(text: str, head: Head) -> None:
    """Every lane and every position from the first, as the log and /metrics publish them."""
    assert Head.parse(text) == head


def test_each_event_publishes_the_new_head_in_its_log_line_and_metrics(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portal.events")
    append_events(app, 3)
    lines = [json.loads(str(r.msg)) for r in caplog.records if r.name == "portal.events"]
    head = published(app)[0]
    assert [line["audit_head"] for line in lines][-1] == str(head)
    assert [line["audit_head"].split(":")[0] for line in lines] == ["1/1", "1/2", "1/3"]
    scraped = scraped_heads(app.test_client().get("/metrics").get_data(as_text=True))
    assert scraped == [Head(1, 3, head.mac[:MAC_MIN_HEX])]  # lanes 2-64 shown at position 0, left out


def scraped_heads(text: str) -> list[Head]:
    """The heads a scrape of /metrics shows, as an operator turns them into --expect-head values."""
    values = {}
    for line in text.splitlines():
        found = re.fullmatch(r'portal_audit_head_(position|mac48)\{lane="(\d+)"\} (\S+)', line)
        if found:
            values[(found[1], int(found[2]))] = int(float(found[3]))
    assert len(values) == 2 * LANES, text
    return [
        Head(lane, values[("position", lane)], f"{values[('mac48', lane)]:012x}")
        for lane in range(1, LANES + 1)
        if values[("position", lane)]
    ]


@pytest.mark.postgres
def test_a_writer_takes_a_free_lane_instead_of_waiting(pg_app: Flask) -> None:
    """Lane 1 held by a transaction that has not committed: the next append goes to lane 2 at once
    (the test database gives up on a row lock after 5 s, so waiting would fail)."""
    app = pg_app
    append_events(app, 2)
    with app.app_context(), db.engine.connect() as holder:
        holder.execute(sa.text("SELECT * FROM audit_chain_head WHERE id = 1 FOR UPDATE"))
        append_events(app, 2)
        holder.rollback()
    with app.app_context(), db.engine.connect() as connection:
        lanes = connection.execute(sa.text("SELECT lane, count(*) FROM audit_events GROUP BY lane ORDER BY lane"))
        assert [tuple(row) for row in lanes] == [(1, 2), (2, 2)]
    result = verify(app)
    assert result.exit_code == 0 and "intact: 4 rows; heads 1/2:" in result.output and " 2/2:" in result.output


def test_rows_outside_every_lane_are_found_the_first_named(app: Flask) -> None:
    """A row no lane's walk reaches (lane 0, or past the last) is an insertion too; of several, the
    first by lane and position is named."""
    append_events(app, 3)
    for lane, position, first in ((LANES + 1, 1, f"{LANES + 1}/1"), (0, 5, "0/5"), (0, 2, "0/2")):
        execute(
            app,
            "INSERT INTO audit_events (lane, position, at, actor, action, outcome, channel, client, prev_hash,"
            " chain_hash) SELECT :lane, :position, at, actor, action, outcome, channel, client, prev_hash,"
            " chain_hash FROM audit_events WHERE lane = 1 AND position = 2",
            lane=lane,
            position=position,
        )
        assert_broken(verify(app), first, "a row outside every lane")


def test_the_last_lanes_rows_are_walked_as_a_lane(app: Flask) -> None:
    """Lane 64 is a lane like lane 1: its rows are counted and its head named, never taken for rows
    outside every lane. (SQLite writes lane 1 only: lane 64's row is chained here as the portal would.)"""
    append_events(app, 2)
    row = {name: None for name in FIELDS} | {"position": 1, "at": utcnow(), "actor": "cli:x", "action": "purge"}
    row |= {"outcome": "success", "channel": "cli"}
    with app.app_context(), db.engine.begin() as connection:
        chain_hash = services().audit.link(genesis(LANES), row)
        connection.execute(
            sa.insert(AuditEvent).values(**row, lane=LANES, prev_hash=genesis(LANES), chain_hash=chain_hash)
        )
        head = AuditChainHead.__table__.c
        connection.execute(sa.update(AuditChainHead).where(head.id == LANES).values(position=1, last_hash=chain_hash))
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert "intact: 3 rows; heads 1/2:" in result.output and f" {LANES}/1:{chain_hash.hex()}" in result.output


def dated(app: Flask, events: list[Event]) -> None:
    """The events recorded, each row then dated at its event's ``at``: lane 1's rows, in this order."""
    with app.app_context():
        for event in events:
            record(event)
        row = AuditEvent.__table__.c
        for position, event in enumerate(events, start=1):
            db.session.execute(sa.update(AuditEvent).where(row.lane == 1, row.position == position).values(at=event.at))
        db.session.commit()


def test_the_dashboards_throttled_staff_are_staff_refused_by_a_limit_since_then_most_first(app: Flask) -> None:
    """Counted per member of staff over every limit's name, from ``since`` itself on; a refusal of
    someone else, a refusal before ``since`` and a failure are not counted."""
    since = utcnow() - timedelta(hours=24)

    def by(actor: str, outcome: str, at: datetime) -> Event:
        return Event("verification", outcome, "agent", actor=actor, at=at)

    dated(
        app,
        [
            by("staff:1", "throttled:agent-failures", since),
            by("staff:2", "throttled:agent-locates", since + timedelta(hours=1)),
            by("staff:2", "throttled:verify-person-agent", since + timedelta(hours=2)),
            by("staff:2", "failure", since + timedelta(hours=3)),
            by("staff:3", "throttled:agent-failures", since - timedelta(microseconds=1)),
            *[by("anonymous", "throttled:verify-person", since + timedelta(hours=4))] * 3,
            by("staff:1", "success", since + timedelta(hours=5)),
        ],
    )
    with app.app_context(), db.engine.connect() as connection:
        assert throttled_staff(connection, since) == [("staff:2", 2), ("staff:1", 1)]


def test_the_trails_filters_narrow_it_from_since_to_before_until_newest_first(app: Flask) -> None:
    """Each filter keeps its equal rows only, ``since`` itself in and ``until`` itself out; rows of
    one time (a batch written together) are listed by lane, then position, newest first."""
    since = utcnow() - timedelta(days=1)
    until, hour = since + timedelta(hours=5), since + timedelta(hours=1)
    dated(
        app,
        [
            Event("verification", "success", "agent", "ref-1", actor="staff:1", at=since),
            Event("verification", "failure", "agent", "ref-1", actor="staff:2", at=since + timedelta(hours=2)),
            Event("exposure", "viewed", "agent", "ref-2", actor="staff:1", at=hour),
            Event("verification", "success", "agent", actor="staff:1", at=until),
            Event("verification", "success", "agent", actor="staff:1", at=since - timedelta(microseconds=1)),
            Event("verification", "failure", "agent", "ref-1", actor="staff:1", at=hour),
            Event("verification", "failure", "agent", "ref-1", actor="staff:1", at=hour),
        ],
    )
    execute(app, "UPDATE audit_events SET lane = 2, position = 1 WHERE lane = 1 AND position = 6")

    def listed(limit: int | None = None, **narrowed: Any) -> list[str]:
        with app.app_context(), db.engine.connect() as connection:
            rows = audit_events(connection, Filter(**{"since": since, "until": until, **narrowed}), limit)
            return [f"{row['lane']}/{row['position']}" for row in rows]

    assert listed() == ["1/2", "2/1", "1/7", "1/3", "1/1"]
    assert listed(since=None, until=None) == ["1/4", "1/2", "2/1", "1/7", "1/3", "1/1", "1/5"]
    assert listed(actor="staff:1") == ["2/1", "1/7", "1/3", "1/1"]
    assert listed(action="verification") == ["1/2", "2/1", "1/7", "1/1"]
    assert listed(record_ref="ref-1") == ["1/2", "2/1", "1/7", "1/1"]
    assert listed(actor="staff:1", action="verification", record_ref="ref-1") == ["2/1", "1/7", "1/1"]
    assert listed(2) == ["1/2", "2/1"]


@pytest.mark.parametrize(
    ("value", "cell"),
    [(None, ""), ("", ""), (7, "7"), ("staff:7", "staff:7"), ("a=b", "a=b"), ("=1+1", "'=1+1"), ("-7", "'-7")],
)
def test_an_exported_cell_is_its_value_as_text_made_inert_when_a_spreadsheet_would_run_it(
    value: object, cell: str
) -> None:
    assert spreadsheet_safe(value) == cell


@pytest.mark.postgres
def test_the_trail_lists_newest_first_across_lanes(pg_app: Flask) -> None:
    """Lanes fill side by side, so what a supervisor reads newest first is ordered by time, not by
    lane: lane 1, then lane 2 while lane 1 is held, then lane 1 again."""
    app = pg_app
    with app.app_context():
        record(Event("verification", "failure", "cli", actor="staff:1"))
        with db.engine.connect() as holder:
            holder.execute(sa.text("SELECT * FROM audit_chain_head WHERE id = 1 FOR UPDATE"))
            record(Event("verification", "failure", "cli", actor="staff:2"))
            holder.rollback()
        record(Event("verification", "failure", "cli", actor="staff:3"))
        with db.engine.connect() as connection:
            listed = [(row["lane"], row["actor"]) for row in audit_events(connection, Filter())]
    assert listed == [(1, "staff:3"), (2, "staff:2"), (1, "staff:1")]


@pytest.mark.postgres
def test_a_writer_that_finds_every_lane_taken_waits_for_one(pg_app: Flask) -> None:
    """Every lane but the last held by transactions that have not committed: the next append takes
    the last lane. Then every lane held: the next append waits for a lane (it is not lost, and does
    not fail) and lands once one is let go. Each row in the last lane verifies as any other."""
    app = pg_app
    append_events(app, 1)
    with app.app_context(), db.engine.connect() as holder:
        holder.execute(sa.text("SELECT * FROM audit_chain_head WHERE id < :last FOR UPDATE"), {"last": LANES})
        append_events(app, 1)
        holder.execute(sa.text("SELECT * FROM audit_chain_head FOR UPDATE"))
        writer = threading.Thread(target=append_events, args=(app, 1))
        writer.start()
        writer.join(1)
        assert writer.is_alive()  # waiting for a lane
        holder.rollback()
    writer.join(30)
    assert not writer.is_alive()
    result = verify(app)
    assert result.exit_code == 0 and "intact: 3 rows" in result.output and f" {LANES}/1:" in result.output, (
        result.output
    )


def test_verify_catches_a_row_inserted_behind_the_apps_back(app: Flask) -> None:
    append_events(app, 4)
    with app.app_context(), db.engine.begin() as connection:
        rows = connection.execute(sa.select(AuditEvent.__table__).order_by(AuditEvent.position)).mappings().all()
        # Shift rows 3.. one up and forge a row 3 copying row 2's hash as its predecessor.
        connection.execute(sa.text("UPDATE audit_events SET position = position + 100 WHERE position >= 3"))
        connection.execute(sa.text("UPDATE audit_events SET position = position - 99 WHERE position >= 103"))
        forged = {**rows[2], "position": 3, "outcome": "success", "prev_hash": rows[1]["chain_hash"]}
        connection.execute(sa.insert(AuditEvent.__table__).values(**forged))
        connection.execute(sa.text("UPDATE audit_chain_head SET position = position + 1 WHERE id = 1"))
    assert_broken(verify(app), "1/3", "contents changed since written")


@pytest.mark.redis
@pytest.mark.postgres
def test_the_heads_a_live_server_publishes_catch_a_truncation(tmp_path: Path) -> None:
    """Two gunicorn workers on PostgreSQL: the heads /metrics shows, and the log lines carry, are what
    verify needs to catch the newest rows deleted with the head rewound."""
    urls = postgres_schema_url()
    config = make_config(next(urls), RATELIMIT_STORAGE_URI=REDIS_URL, RATELIMIT_KEY_PREFIX=secrets.token_hex(4))
    app = make_app(config["DATABASE_URL"], **config)
    server = LiveServer(tmp_path / "gunicorn.log", config, workers=2, threads=4).wait_ready()
    try:
        visitors = [Visitor(server).prepare() for _ in range(24)]
        made_up = {"last_name": "Nobody", "date_of_birth": "1970-01-01", "zip_code": "99999", "ssn_last4": "0000"}
        answers = all_at_once([lambda v=v: v.submit(made_up) for v in visitors])
        assert {answer.status for answer in answers} == {200}
        text = server.request("GET", "/metrics").body
    finally:
        server.stop()
    scraped = scraped_heads(text)
    assert sum(head.position for head in scraped) == 24
    logged = re.findall(r'"audit_head":"(\d+/\d+:[0-9a-f]{64})"', server.log())
    assert len(set(logged)) == 24  # one line per event, each naming the head it made
    assert all(any(full.startswith(str(head)) for full in logged) for head in scraped)
    assert verify(app, *anchored(scraped)).exit_code == 0
    busiest = max(scraped, key=lambda head: head.position)
    execute(
        app,
        "DELETE FROM audit_events WHERE lane = :lane AND position > :keep",
        lane=busiest.lane,
        keep=busiest.position - 3,
    )
    execute(
        app,
        "UPDATE audit_chain_head SET position = :keep, last_hash = (SELECT chain_hash FROM audit_events"
        " WHERE lane = :lane AND position = :keep) WHERE id = :lane",
        lane=busiest.lane,
        keep=busiest.position - 3,
    )
    where = f"{busiest.lane}/{busiest.position - 2}"
    assert_broken(verify(app, *anchored(scraped)), where, f"the published head {busiest} is gone")
    with app.app_context():
        db.engine.dispose()
    urls.close()


def test_a_trail_rewritten_with_another_key_does_not_verify(database_url: str) -> None:
    first = make_app(database_url)
    append_events(first, 3)
    other_key = make_app(database_url)  # a fresh PORTAL_AUDIT_KEY: what a forger without ours has
    result = verify(other_key)
    assert result.exit_code == 1 and "BROKEN at row 1/1" in result.output


def _writer(database_url: str, config: dict[str, Any], count: int) -> None:
    app = make_app(database_url, **config)
    append_events(app, count)


def test_concurrent_writers_in_several_processes_keep_one_unbroken_chain(app: Flask, database_url: str) -> None:
    """As several gunicorn workers do: each process appends at once; every position is used once."""
    keys = {name: app.config[name] for name in ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY")}
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(database_url, keys, EVENTS_EACH)) for _ in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert f"intact: {WRITERS * EVENTS_EACH} rows" in result.output
    with app.app_context(), db.engine.connect() as connection:
        counted = connection.scalar(sa.text("SELECT sum(count) FROM hourly_counts WHERE action = 'verification'"))
    assert counted == WRITERS * EVENTS_EACH  # the lanes' counts add up to every event


def test_threads_of_one_process_share_commits_and_keep_one_unbroken_chain(app: Flask) -> None:
    """As a gunicorn worker's threads do: their events go in together, fewer commits than events,
    every position used once and every count kept."""
    with app.app_context():
        commits = []
        sa.event.listen(db.engine, "commit", lambda _connection: commits.append(1))
    threads = [threading.Thread(target=append_events, args=(app, EVENTS_EACH)) for _ in range(2 * WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    events = 2 * WRITERS * EVENTS_EACH
    result = verify(app)
    assert result.exit_code == 0 and f"intact: {events} rows" in result.output, result.output
    with app.app_context(), db.engine.connect() as connection:
        counted = connection.scalar(sa.text("SELECT sum(count) FROM hourly_counts WHERE action = 'verification'"))
    assert counted == events
    assert len(commits) < events


class ConnectionDied(ValueError):
    """Stands for a batch's connection lost around its COMMIT: whether it took is unknown."""


def grouped(write: Callable[[list[str]], list[str]], items: list[str]) -> tuple[list[list[str]], dict[str, Any]]:
    """``items`` submitted from threads of their own while the first is being written: the batches
    written, and what each submit returned or raised."""
    batches: list[list[str]] = []
    writing, release = threading.Event(), threading.Event()

    def held(batch: list[str]) -> list[str]:
        batches.append(batch)
        if len(batches) == 1:
            writing.set()
            release.wait(30)
        return write(batch)

    writer = GroupCommit(held, lambda error: isinstance(error, ConnectionDied))
    outcomes: dict[str, Any] = {}

    def submit(item: str) -> None:
        try:
            outcomes[item] = writer.submit(item)
        except ValueError as error:
            outcomes[item] = error

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    threads[0].start()
    writing.wait(30)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.3)  # every other thread is waiting now
    assert outcomes == {}  # nobody returns before its own batch is written
    release.set()
    for thread in threads:
        thread.join(30)
    return [sorted(batch) for batch in batches], outcomes


def refusing_bad(batch: list[str]) -> list[str]:
    """A write that the table refuses when its batch holds "bad"."""
    if "bad" in batch:
        raise ValueError("a value the table refuses")
    return [f"wrote {item}" for item in batch]


def test_what_arrives_during_a_write_goes_in_the_next_one_together() -> None:
    batches, outcomes = grouped(lambda batch: [f"wrote {item}" for item in batch], ["a", "b", "c", "d"])
    assert batches == [["a"], ["b", "c", "d"]]
    assert outcomes == {item: f"wrote {item}" for item in "abcd"}


def test_a_failing_item_fails_alone_and_its_batch_mates_are_written() -> None:
    batches, outcomes = grouped(refusing_bad, ["a", "b", "bad", "c"])
    assert batches[:2] == [["a"], ["b", "bad", "c"]] and sorted(batches[2:]) == [["b"], ["bad"], ["c"]]
    assert isinstance(outcomes.pop("bad"), ValueError)
    assert outcomes == {item: f"wrote {item}" for item in "abc"}


def test_a_batch_whose_commit_may_have_taken_is_not_written_again() -> None:
    """Writing the items again, one by one, could record each of them twice: they all fail instead."""

    def write(batch: list[str]) -> list[str]:
        if len(batch) > 1:
            raise ConnectionDied("server closed the connection unexpectedly")
        return [f"wrote {item}" for item in batch]

    batches, outcomes = grouped(write, ["a", "b", "c", "d"])
    assert batches == [["a"], ["b", "c", "d"]]  # no batch of one after the failed one
    assert outcomes.pop("a") == "wrote a"
    assert all(isinstance(outcomes[item], ConnectionDied) for item in "bcd")


def test_an_item_that_fails_written_alone_is_not_written_again() -> None:
    batches, outcomes = grouped(refusing_bad, ["bad", "b", "c"])
    assert batches == [["bad"], ["b", "c"]]
    assert isinstance(outcomes.pop("bad"), ValueError)
    assert outcomes == {item: f"wrote {item}" for item in "bc"}


@pytest.mark.parametrize("results", [[], ["wrote a", "wrote b"]], ids=["too-few", "too-many"])
def test_a_write_that_returns_other_than_one_result_per_item_is_an_error(results: list[str]) -> None:
    """Never an item handed another's result (its head), nor a result without its item."""
    writer = GroupCommit[str, str](lambda batch: results, lambda error: False)
    with pytest.raises(ValueError, match="zip"):
        writer.submit("a")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("trigger_does", "lost"),
    [("PERFORM pg_terminate_backend(pg_backend_pid())", True), ("RAISE EXCEPTION 'refused'", False)],
    ids=["connection-killed", "statement-refused"],
)
def test_a_lost_connection_is_told_apart_from_a_refused_write(pg_app: Flask, trigger_does: str, lost: bool) -> None:
    """The real write path on PostgreSQL: its connection killed mid-write is an unknown outcome (no
    retry), a statement the database refuses is not (its batch mates are written alone)."""
    with pg_app.app_context():
        with db.engine.begin() as connection:
            connection.exec_driver_sql(
                f"CREATE FUNCTION stop_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {trigger_does}; "
                "RETURN NEW; END $$; CREATE TRIGGER stop_write BEFORE INSERT ON audit_events "
                "FOR EACH ROW EXECUTE FUNCTION stop_write()"
            )
        with pytest.raises(DBAPIError) as failed:
            record(Event("verification", "failure", "cli"))
        assert connection_lost(failed.value) is lost
        with db.engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT count(*) FROM audit_events")) == 0


REFUSE_A_ROW = {  # a trigger refusing the rows of one outcome, as a check constraint or a full disk would
    "sqlite": "CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.outcome = 'refused' "
    "BEGIN SELECT RAISE(ABORT, 'refused'); END",
    "postgresql": "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.outcome = 'refused' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$; "
    "CREATE TRIGGER refuse BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse()",
}


def test_an_event_the_database_refuses_fails_alone_and_its_batch_mates_are_written(
    app: Flask, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's own writer: three events queue behind one being written and go in together; the
    database refuses one of them, which is no lost connection, so the other two are written alone
    and only the refused one fails, its line with no head (it is in no trail)."""
    with app.app_context(), db.engine.begin() as connection:
        connection.exec_driver_sql(REFUSE_A_ROW[connection.dialect.name])
    writer: GroupCommit[Any, Head] = app.extensions["portal.audit_writer"]
    write, writing, release, batches = writer._write, threading.Event(), threading.Event(), []

    def held(batch: list[Any]) -> list[Head]:
        batches.append(len(batch))
        if len(batches) == 1:
            writing.set()
            release.wait(30)
        return write(batch)

    monkeypatch.setattr(writer, "_write", held)
    caplog.set_level(logging.INFO, logger="portal.events")
    failed: dict[str, Exception] = {}

    def submit(outcome: str) -> None:
        with app.app_context():
            try:
                record(Event("verification", outcome, "cli"))
            except DBAPIError as error:
                failed[outcome] = error

    threads = [threading.Thread(target=submit, args=(outcome,)) for outcome in ("first", "a", "refused", "b")]
    threads[0].start()
    writing.wait(30)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.3)  # the other three wait for the first's write
    release.set()
    for thread in threads:
        thread.join(30)
    assert batches == [1, 3, 1, 1, 1] and list(failed) == ["refused"]
    with app.app_context():
        written = db.session.scalars(sa.select(AuditEvent.outcome)).all()
    assert sorted(written) == ["a", "b", "first"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.events"]
    heads = {line["outcome"]: line["audit_head"] for line in lines}
    assert heads.pop("refused") is None and all(heads.values()) and len(heads) == 3


def test_an_alert_goes_out_even_when_its_events_row_cannot_be_written(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An alert is raised once a window, by the event whose count reaches the threshold: if that
    event's row is refused (a database struggling under the very flood that raises it), the alert
    is still logged, or it would never be raised in that window."""
    app = make_app(database_url, ALERT_CLIENT_FAILURES="1 per year")
    execute(app, "DROP TABLE audit_events")
    caplog.set_level(logging.INFO, logger="portal")
    with app.app_context(), pytest.raises(DBAPIError):
        record(Event("verification", "failure", "public", client="192.0.2.1"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.alerts"]
    assert [(line["alert"], line["subject"]) for line in lines] == [("client-failures", "192.0.2.1")]


def test_no_imported_identifier_reaches_the_audit_table_its_export_or_the_logs(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(database_url, VERIFY_LIMIT_PERSON="2 per hour")
    row = patient_row()
    no_ssn = patient_row(record_id="R-NOSSN-77", last_name="Ødegård", ssn="", zip="20002", date_of_birth="1961-07-19")
    assert import_patients(app, [row, no_ssn]) == []
    caplog.set_level(logging.DEBUG)
    person = {"last_name": row["last_name"], "date_of_birth": row["date_of_birth"], "zip_code": row["zip"]}
    for digits in ("0000", "1111", "6789"):
        lookup(app.test_client(), **person, ssn_last4=digits)
    supervisor = signed_in(app, make_staff(app, "boss", "supervisor"))
    post_form(supervisor, "/agent/call", "/agent/", **person, ssn_last4="6789", reference="")
    post_form(supervisor, "/agent/call", "/agent/", **person, ssn_last4="1234", reference="")
    export = supervisor.get("/agent/audit/export.csv")
    assert export.status_code == 200

    # Every column that can hold text; the others are a number, a time and two HMACs, whose random
    # digits (a timestamp's microseconds, say) would sometimes spell four digits of an identifier.
    text_columns = [column for column in AuditEvent.__table__.c if isinstance(column.type, sa.String)]
    with app.app_context(), db.engine.connect() as connection:
        table = "\n".join(str(tuple(r)) for r in connection.execute(sa.select(*text_columns)))
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for label, text in (("table", table), ("export", export.get_data(as_text=True)), ("logs", logs)):
        text = re.sub(r"[0-9a-f]{16,}", "HEX", text)  # public ids and request ids are random hex
        # When each event happened: a time's microseconds would sometimes spell four digits of an SSN.
        text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?", "TIME", text)
        for value in (*row.values(), *no_ssn.values()):
            for piece in re.split(r"[;\s]+", value):
                if len(piece) >= 4 and piece not in EXPOSURE_TOKENS:
                    assert piece.lower() not in text.lower(), (label, piece)
        assert "6789" not in text and "1234" not in text, label


EXPOSURE_TOKENS = {"name", "date_of_birth", "address", "phone", "ssn", "email"}


def test_an_older_demo_instance_gains_the_audit_key_and_keeps_its_others(tmp_path: Path) -> None:
    older = '# demo\nENV = "development"\nSECRET_KEY = "s"\nIDENTIFIER_KEY = "i"\nCODE_KEY = "c"\n'
    (tmp_path / "config.py").write_text(older, encoding="utf-8")
    write_development_secrets(str(tmp_path))
    text = (tmp_path / "config.py").read_text(encoding="utf-8")
    assert text.startswith(older) and re.search(r'^AUDIT_KEY = "[\w-]{43}"$', text, re.MULTILINE)
    write_development_secrets(str(tmp_path))
    assert (tmp_path / "config.py").read_text(encoding="utf-8") == text


def test_the_public_site_leaves_its_trail_under_a_session_pseudonym(app: Flask) -> None:
    assert import_patients(app, [patient_row()]) == []
    client = app.test_client()
    person = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
    lookup(client, **person, ssn_last4="0000")
    assert lookup(client, **person, ssn_last4="6789").status_code == 303
    client.get("/exposure")
    with app.app_context():
        rows = db.session.execute(sa.select(AuditEvent.actor, AuditEvent.action, AuditEvent.outcome)).all()
    assert [(action, outcome) for _, action, outcome in rows] == [
        ("verification", "failure"),
        ("verification", "success"),
        ("exposure", "viewed"),
    ]
    assert rows[0].actor == rows[1].actor == "anonymous"  # not yet verified
    assert re.fullmatch(r"public:[0-9a-f]{16}", rows[2].actor)
