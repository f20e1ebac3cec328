"""The audit append alone on PostgreSQL: events/s and latency with 1, 8, 32 and 64 concurrent writers.

Each writer is a thread with its own connection, spread over a few spawned processes (so that one
Python process's GIL is not what is measured), appending realistic entries in a closed loop, each
in its own short transaction exactly as ``portal.events.record`` does (``AuditChain.append``, then
commit). Nothing else runs in that transaction: the hourly counts, detection and the log line are
other costs. After each round ``AuditChain.verify`` must find the trail intact and every appended
row in it (PASS/FAIL; exit 1 on FAIL).

Setup: a private schema on ``--database-url`` (``portal db upgrade``), dropped afterwards.

    .venv/bin/python bench/audit_bench.py                  # ~1.5 min: 10 s per round
    .venv/bin/python bench/audit_bench.py --seconds 30     # steadier figures
    .venv/bin/python bench/audit_bench.py --writers 1,8,32,64,128
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import threading
import time
from typing import Any

import benchlib as b

_SPAWN = multiprocessing.get_context("spawn")
MAX_PROCESSES = 8


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


def _writer_process(url: str, key: bytes, threads: int, seconds: float, barrier: Any, out: Any) -> None:
    """``threads`` writers in this process; sends back (appends, latencies) once the time is up."""
    import sqlalchemy as sa

    from portal.audit import AuditChain

    chain = AuditChain(key)
    engine = sa.create_engine(url, pool_size=threads, max_overflow=0)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    entries = [_entry(n) for n in range(64)]  # built once: a writer's own cost is not what is measured
    with engine.connect():
        pass  # the pool's first connection open before the clock starts
    start = threading.Event()

    def write(mine: list[float]) -> None:
        with engine.connect() as connection:
            start.wait()
            deadline = time.perf_counter() + seconds
            n = 0
            while (now := time.perf_counter()) < deadline:
                with connection.begin():
                    chain.append(connection, entries[n % 64])
                mine.append(time.perf_counter() - now)
                n += 1

    workers = [threading.Thread(target=write, args=(mine,)) for mine in latencies]
    for worker in workers:
        worker.start()
    time.sleep(1)  # every thread connected and waiting
    barrier.wait()
    start.set()
    for worker in workers:
        worker.join()
    engine.dispose()
    out.send([x for mine in latencies for x in mine])


def measure(url: str, key: bytes, writers: int, seconds: float) -> tuple[int, float, list[float]]:
    """Appends done, wall seconds, sorted latencies of ``writers`` concurrent writers."""
    processes = min(writers, MAX_PROCESSES)
    shares = [writers // processes + (1 if i < writers % processes else 0) for i in range(processes)]
    barrier = _SPAWN.Barrier(processes + 1)
    pipes, children = [], []
    for share in shares:
        receive, send = _SPAWN.Pipe(duplex=False)
        child = _SPAWN.Process(target=_writer_process, args=(url, key, share, seconds, barrier, send), daemon=True)
        child.start()
        pipes.append(receive)
        children.append(child)
    try:
        barrier.wait(timeout=120)
        began = time.perf_counter()
        latencies = sorted(x for pipe in pipes for x in pipe.recv())
        elapsed = time.perf_counter() - began
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    return len(latencies), elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=b.DEFAULT_PG_URL, help="PostgreSQL URL (a private schema is used)")
    parser.add_argument("--writers", default="1,8,32,64", help="comma-separated writer counts, one round each")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    args = parser.parse_args()
    counts = [int(n) for n in args.writers.split(",")]

    b.say(f"audit_bench  {b.machine_line()}")
    problem = b.postgres_reachable(args.database_url)
    if problem:
        b.say(f"FAIL: PostgreSQL at --database-url is unreachable ({problem})")
        return 1
    import sqlalchemy as sa

    from portal.audit import AuditChain

    with b.Bench() as bench:
        url = bench.postgres_schema(args.database_url)
        b.migrate(b.portal_env(bench, url))
        key = secrets.token_bytes(32)
        engine = sa.create_engine(url)
        bench.callback(engine.dispose)
        with engine.connect() as connection:
            settings = dict(
                connection.execute(
                    sa.text(
                        "SELECT name, setting FROM pg_settings"
                        " WHERE name IN ('fsync', 'synchronous_commit', 'commit_delay', 'max_connections')"
                    )
                ).all()
            )
        b.say(f"PostgreSQL settings: {settings}; {args.seconds:g} s per round")
        rows, total = [], 0
        for writers in counts:
            done, elapsed, latencies = measure(url, key, writers, args.seconds)
            total += done
            rate = done / elapsed
            rows.append(
                [
                    writers,
                    f"{rate:,.0f}",
                    b.ms(b.percentile(latencies, 50)),
                    b.ms(b.percentile(latencies, 99)),
                    b.ms(latencies[-1]),
                ]
            )
            b.say(f"  {writers} writers: {done:,} appends in {elapsed:.1f} s")
        b.say(b.table(rows, ["writers", "events/s", "p50", "p99", "max"]))
        with engine.connect() as connection:
            checked, broken = AuditChain(key).verify(connection)
        ok = broken is None and checked == total
        b.say(f"{'PASS' if ok else 'FAIL'}: verify found {checked:,} rows of {total:,} appended, broken: {broken}")
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
