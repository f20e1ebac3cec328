"""The audit append alone on PostgreSQL: events/s and latency with 1, 8, 32 and 64 concurrent writers.

Each writer is a thread with its own connection, spread over up to 8 spawned processes (so that one
Python process's GIL is not what is measured, and as a server's threads are spread over its
workers), appending realistic entries in a closed loop, each waiting for its commit as
``portal.events.record`` does (the hourly counts, detection and the log line are other costs).
Four designs, measured one after the other at each writer count in the same run:

* ``one head``: the design before lanes, every append waits for the single head row (lane 1);
* ``lanes``: ``AuditChain.append`` one event a transaction, the first free of 64 lanes (SKIP LOCKED),
  as ``portal.events.record`` did before group commit;
* ``group``: as ``portal.events.record`` does now: the writers of one process hand their events to
  its ``GroupCommit``, which writes what arrived during the previous write together
  (``AuditChain.append_many``: one lane, one commit for the batch); each writer returns once its
  event is committed. Its events per commit are printed;
* ``floor``: the same row inserted and committed with no chain head at all, into a table of its
  own: what this database commits per second, which no design with one commit per event can pass.

After the rounds ``AuditChain.verify`` must find the trail intact with every appended row
(PASS/FAIL; exit 1 on FAIL). The last line is the ceiling: the best lanes events/s and its writers.

``--verify-rows N`` instead times ``portal audit verify`` (the real command, a subprocess, its
peak RSS sampled) on a trail of N/10 rows and then of N rows: a valid chain over the 64 lanes,
computed here with the run's audit key and loaded with COPY into the table made UNLOGGED, its
four secondary indexes dropped (a faster load; verify reads the same rows along the primary key).
Verify must say intact with every row; its memory at N against N/10 shows whether it streams.

Setup: a private schema on ``--database-url`` (``portal db upgrade``), dropped afterwards.

    .venv/bin/python bench/audit_bench.py                  # ~4 min: 10 s per round, 16 rounds
    .venv/bin/python bench/audit_bench.py --seconds 30     # steadier figures
    .venv/bin/python bench/audit_bench.py --writers 1,8,32,64,128
    .venv/bin/python bench/audit_bench.py --verify-rows 10000000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/audit_bench    # ~4.5 GB, 20-40 min
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import benchlib as b

_SPAWN = multiprocessing.get_context("spawn")
MAX_PROCESSES = 8
START_LEAD = 5.0  # seconds for every writer of a round to connect before the common start
DESIGNS = ("one head", "lanes", "group", "floor")


def _appender(design: str, key: bytes, engine: Any, commits: list[int]) -> Any:
    """A function(connection, entry) that appends as ``design`` does, in a transaction of its own
    (``group``: the process's shared one), counting the commits in ``commits``."""
    from portal.audit import AuditChain, GroupCommit
    from portal.events import connection_lost

    chain = AuditChain(key)
    if design == "group":

        def write(entries: list[Any]) -> list[Any]:
            with engine.begin() as connection:
                heads = chain.append_many(connection, entries)
            commits.append(1)
            return heads

        group = GroupCommit(write, connection_lost)
        return lambda _connection, entry: group.submit(entry)
    alone = _one_by_one(design, chain)

    def append(connection: Any, entry: Any) -> None:
        with connection.begin():
            alone(connection, entry)
        commits.append(1)

    return append


def _one_by_one(design: str, chain: Any) -> Any:
    """A function(connection, entry) that appends one event as ``design`` does, in the caller's transaction."""
    from sqlalchemy import insert, table, update

    from portal.audit import EVENTS, HEAD, genesis
    from portal.models import utcnow

    if design == "lanes":
        return chain.append
    if design == "floor":
        floor = insert(table("audit_floor", *(EVENTS.c[name].copy() for name in EVENTS.c.keys())))

        def unchained(connection: Any, entry: Any) -> None:
            row = {"lane": 1, "position": secrets.randbits(62), "at": utcnow(), **entry.__dict__}
            connection.execute(floor, {**row, "prev_hash": genesis(1), "chain_hash": chain.link(genesis(1), row)})

        return unchained
    take = update(HEAD).where(HEAD.c.id == 1).values(position=HEAD.c.position + 1)
    take = take.returning(HEAD.c.position, HEAD.c.last_hash)
    move = update(HEAD).where(HEAD.c.id == 1)
    add = insert(EVENTS)

    def one_head(connection: Any, entry: Any) -> None:
        position, prev_hash = connection.execute(take).one()
        row = {"lane": 1, "position": position, "at": utcnow(), **entry.__dict__}
        chain_hash = chain.link(prev_hash, row)
        connection.execute(add, {**row, "prev_hash": prev_hash, "chain_hash": chain_hash})
        connection.execute(move.values(last_hash=chain_hash))

    return one_head


def _entry(n: int) -> Any:
    from portal.audit import Entry

    return Entry(
        actor=f"public:{secrets.token_hex(8)}",
        action="verification",
        outcome="success" if n % 3 else "failure",
        channel="public",
        record_ref=secrets.token_hex(16),
        client="203.0.113.0",
        request_id=secrets.token_hex(16),
    )


def _writer_process(url: str, key: bytes, commands: Any, out: Any) -> None:
    """Rounds on command, (design, threads, seconds, start_at), until None: ``threads`` writers each
    round from the wall-clock ``start_at`` on (every process starts together), their latencies sent
    back once the time is up. Kept between rounds: a spawn costs seconds on a busy machine."""
    import sqlalchemy as sa

    entries = [_entry(n) for n in range(64)]  # built once: a writer's own cost is not what is measured
    while (command := commands.recv()) is not None:
        design, threads, seconds, start_at = command
        engine = sa.create_engine(url, pool_size=max(threads, 1) + 1, max_overflow=0)
        commits: list[int] = []
        append = _appender(design, key, engine, commits)
        latencies: list[list[float]] = [[] for _ in range(threads)]
        ready, start = threading.Barrier(threads + 1), threading.Event()

        workers = [
            threading.Thread(target=_write, args=(engine, append, entries, seconds, ready, start, mine))
            for mine in latencies
        ]
        for worker in workers:
            worker.start()
        ready.wait()  # every thread connected
        time.sleep(max(0.0, start_at - time.time()))
        start.set()
        for worker in workers:
            worker.join()
        engine.dispose()
        out.send(([x for mine in latencies for x in mine], len(commits)))


def _write(
    engine: Any,
    append: Any,
    entries: list[Any],
    seconds: float,
    ready: threading.Barrier,
    start: threading.Event,
    latencies: list[float],
) -> None:
    """One writer: appends in a closed loop for ``seconds``, each append waiting for its commit."""
    with engine.connect() as connection:
        ready.wait()
        start.wait()
        deadline = time.perf_counter() + seconds
        n = 0
        while (now := time.perf_counter()) < deadline:
            append(connection, entries[n % 64])
            latencies.append(time.perf_counter() - now)
            n += 1


class Writers:
    """Up to MAX_PROCESSES writer processes, started once for all the rounds."""

    def __init__(self, bench: Any, url: str, key: bytes) -> None:
        self.links = []
        for _ in range(MAX_PROCESSES):
            commands_out, commands_in = _SPAWN.Pipe(duplex=False)
            results_in, results_out = _SPAWN.Pipe(duplex=False)
            child = _SPAWN.Process(target=_writer_process, args=(url, key, commands_out, results_out), daemon=True)
            child.start()
            bench.callback(self._stop, child, commands_in)
            self.links.append((commands_in, results_in))

    @staticmethod
    def _stop(child: Any, commands: Any) -> None:
        with contextlib.suppress(OSError):
            commands.send(None)
        child.join(30)
        if child.is_alive():
            child.kill()

    def measure(self, design: str, writers: int, seconds: float) -> tuple[int, int, list[float]]:
        """Appends done, commits, sorted latencies of ``writers`` concurrent writers."""
        processes = min(writers, MAX_PROCESSES)
        shares = [writers // processes + (1 if i < writers % processes else 0) for i in range(processes)]
        start_at = time.time() + START_LEAD
        for (commands, _), share in zip(self.links, shares, strict=False):
            commands.send((design, share, seconds, start_at))
        replies = [results.recv() for _, results in self.links[:processes]]
        latencies = sorted(x for mine, _ in replies for x in mine)
        return len(latencies), sum(commits for _, commits in replies), latencies


def fill_trail(url: str, chain: Any, total: int, base: Any) -> None:
    """Extend the trail to ``total`` rows, round-robin over every lane, with COPY: valid links computed
    here, then each lane's head moved to its last row, as appends would have left them."""
    import sqlalchemy as sa

    from portal.audit import LANES

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        done = connection.scalar(sa.text("SELECT count(*) FROM audit_events")) or 0
        last = {
            lane: (position, bytes(h))
            for lane, position, h in connection.execute(sa.text("SELECT * FROM audit_chain_head"))
        }
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = (
            "lane, position, at, actor, action, outcome, channel, record_ref, client, request_id, prev_hash, chain_hash"
        )
        with cursor.copy(f"COPY audit_events ({columns}) FROM STDIN") as copy:
            lines = []
            for n in range(done, total):
                lane = n % LANES + 1
                position, prev_hash = last[lane]
                row = {
                    "position": position + 1,
                    "at": base + timedelta(microseconds=n * 977),
                    "actor": f"public:{n * 2654435761 % 2**64:016x}",
                    "action": ("verification", "exposure", "claim", "code")[n % 4],
                    "outcome": "success",
                    "channel": "public",
                    "record_ref": f"{n * 11400714819323198485 % 2**128:032x}",
                    "client": "203.0.113.0",
                    "request_id": f"{n:032x}",
                }
                chain_hash = chain.link(prev_hash, row)
                last[lane] = (position + 1, chain_hash)
                stamp = row["at"].isoformat(timespec="microseconds")
                lines.append(
                    f"{lane}\t{position + 1}\t{stamp}\t{row['actor']}\t{row['action']}\tsuccess\tpublic"
                    f"\t{row['record_ref']}\t203.0.113.0\t{row['request_id']}\t\\\\x{prev_hash.hex()}\t\\\\x{chain_hash.hex()}\n"
                )
                if len(lines) == 10_000:
                    copy.write("".join(lines))
                    lines = []
            copy.write("".join(lines))
        for lane, (position, last_hash) in last.items():
            cursor.execute(
                "UPDATE audit_chain_head SET position = %s, last_hash = %s WHERE id = %s", (position, last_hash, lane)
            )
        cursor.execute("ANALYZE audit_events")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def timed_verify(bench: Any, env: dict[str, str]) -> tuple[float, int, str]:
    """``portal audit verify`` as an operator runs it: wall seconds, peak RSS, its first line."""
    import subprocess

    proc = bench.popen(
        [b.PORTAL, "audit", "verify"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = b.MemorySampler(proc.pid, interval=0.5)
    began = time.perf_counter()
    sampler.start()
    output, _ = proc.communicate()
    elapsed = time.perf_counter() - began
    sampler.stop()
    return elapsed, sampler.peak_rss, output.splitlines()[0] if output else f"(no output, exit {proc.returncode})"


def verify_at_scale(args: Any) -> int:
    import sqlalchemy as sa

    from portal.audit import AuditChain

    sizes = [args.verify_rows // 10, args.verify_rows]
    with b.Bench() as bench:
        url = bench.postgres_schema(args.database_url)
        env = b.portal_env(bench, url)
        b.migrate(env)
        chain = AuditChain.from_config({"AUDIT_KEY": bench.keys["AUDIT_KEY"]})
        engine = sa.create_engine(url)
        bench.callback(engine.dispose)
        with engine.begin() as connection:
            for column in ("at", "actor", "action", "record_ref"):
                connection.execute(sa.text(f"DROP INDEX ix_audit_events_{column}"))
            connection.execute(sa.text("ALTER TABLE audit_events SET UNLOGGED"))
        rows, peaks, ok = [], [], True
        base = datetime(2026, 9, 1)
        for size in sizes:
            began = time.perf_counter()
            fill_trail(url, chain, size, base)
            filled = time.perf_counter() - began
            with engine.connect() as connection:
                size_bytes = connection.scalar(sa.text("SELECT pg_total_relation_size('audit_events')"))
            b.say(f"  {size:,} rows made and copied in {filled:.0f} s; table + primary key {b.mib(size_bytes)}")
            elapsed, peak, line = timed_verify(bench, env)
            b.say(f"  portal audit verify: {elapsed:.1f} s, peak RSS {b.mib(peak)}: {line[:90]}")
            peaks.append(peak)
            ok = ok and line.startswith(f"audit trail intact: {size:,} rows")
            rows.append(
                [f"{size:,}", f"{elapsed:,.1f} s", f"{size / elapsed:,.0f}", b.mib(peak), f"{size_bytes / size:,.0f}"]
            )
        b.say(b.table(rows, ["audit rows", "verify", "rows/s", "peak RSS", "bytes/row (table+pk)"]))
        b.say(f"RSS at {sizes[1]:,} rows ÷ at {sizes[0]:,} rows = {peaks[1] / peaks[0]:.2f}")
        b.say(f"{'PASS' if ok else 'FAIL'}: verify said intact with every row at both sizes")
        b.say(bench.cpu.line())
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=b.DEFAULT_PG_URL, help="PostgreSQL URL (a private schema is used)")
    parser.add_argument("--writers", default="1,8,32,64", help="comma-separated writer counts, one round each")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    parser.add_argument("--verify-rows", type=int, help="time portal audit verify at this many rows (and a tenth)")
    args = parser.parse_args()
    counts = [int(n) for n in args.writers.split(",")]

    b.say(f"audit_bench  {b.machine_line()}")
    problem = b.postgres_reachable(args.database_url)
    if problem:
        b.say(f"FAIL: PostgreSQL at --database-url is unreachable ({problem})")
        return 1
    if args.verify_rows:
        return verify_at_scale(args)
    import sqlalchemy as sa

    from portal.audit import AuditChain

    with b.Bench() as bench:
        url = bench.postgres_schema(args.database_url)
        b.migrate(b.portal_env(bench, url))
        key = secrets.token_bytes(32)
        engine = sa.create_engine(url)
        bench.callback(engine.dispose)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE audit_floor (LIKE audit_events INCLUDING ALL)"))
            settings = dict(
                connection.execute(
                    sa.text(
                        "SELECT name, setting FROM pg_settings"
                        " WHERE name IN ('fsync', 'synchronous_commit', 'commit_delay', 'max_connections')"
                    )
                ).all()
            )
        b.say(f"PostgreSQL settings: {settings}; {args.seconds:g} s per round")
        results: dict[tuple[str, int], tuple[float, float, float]] = {}
        chained = 0
        writers_pool = Writers(bench, url, key)
        for writers in counts:
            for design in DESIGNS:
                done, commits, latencies = writers_pool.measure(design, writers, args.seconds)
                chained += done if design != "floor" else 0
                per_commit = done / max(commits, 1)
                results[(design, writers)] = (done / args.seconds, b.percentile(latencies, 99), per_commit)
                b.say(
                    f"  {design:>8}, {writers:>3} writers: {done / args.seconds:7,.0f} events/s"
                    f"  {per_commit:5.2f} events/commit  {b.latency_line(latencies)}"
                )
        with engine.connect() as connection:
            lanes_used = connection.scalar(sa.text("SELECT count(DISTINCT lane) FROM audit_events"))
        header = ["writers"] + [f"{d} {what}" for d in DESIGNS for what in ("events/s", "p99")]
        header += ["group events/commit", "lanes ÷ one head", "group ÷ lanes", "group ÷ floor"]
        rows = []
        for writers in counts:
            rate = {design: results[(design, writers)][0] for design in DESIGNS}
            row: list[object] = [writers]
            for design in DESIGNS:
                row += [f"{rate[design]:,.0f}", b.ms(results[(design, writers)][1])]
            row.append(f"{results[('group', writers)][2]:.2f}")
            row += [
                f"{rate[x] / rate[y]:.2f}" for x, y in (("lanes", "one head"), ("group", "lanes"), ("group", "floor"))
            ]
            rows.append(row)
        b.say(b.table(rows, header))
        with engine.connect() as connection:
            verdict = AuditChain(key).verify(connection)
        ok = verdict.broken is None and verdict.rows == chained
        b.say(
            f"{'PASS' if ok else 'FAIL'}: verify found {verdict.rows:,} rows of {chained:,} appended"
            f" in {lanes_used} lanes, broken: {verdict.broken}"
        )
        for design in ("lanes", "group"):
            best = max(counts, key=lambda w, d=design: results[(d, w)][0])
            rate, p99, per_commit = results[(design, best)]
            b.say(
                f"audit append ceiling ({design}): {rate:,.0f} events/s at {best} writers"
                f" (p99 {b.ms(p99)}, {per_commit:.2f} events a commit)"
            )
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
