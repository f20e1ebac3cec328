"""Import throughput: a real ``portal import-patients FILE --workers N`` vs N processes of raw Argon2id.

RATIO = records/s of the import (wall clock of the whole command, start-up included)
        / hashes/s of N processes doing nothing but portal.identity.stretch, same params, same run.
Target >= 0.90. Also prints the peak memory of the import (all its processes), and a memory
timeline of a larger import with the cheapest Argon2 params (t=1, m=8 KiB) to show that memory
stays flat as the file grows (``--full``: 1,000,000 rows).

    .venv/bin/python bench/import_bench.py                 # ~1.5 min: 3,000 rows + 50,000-row memory run
    .venv/bin/python bench/import_bench.py --full          # 20,000 rows + 1,000,000-row memory run
    .venv/bin/python bench/import_bench.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/import_bench.py --seen-keys 10000000   # also the duplicate check alone at 10M rows
"""

from __future__ import annotations

import argparse
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path

import benchlib as b


def count_rows(url: str) -> Callable[[], str]:
    """A cheap progress probe for the memory timeline: rows in patients right now."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)

    def probe() -> str:
        try:
            with engine.connect() as connection:
                return f"{connection.scalar(sa.text('SELECT count(*) FROM patients')):,} rows stored"
        except Exception as error:
            return error.__class__.__name__

    probe.dispose = engine.dispose  # type: ignore[attr-defined]
    return probe


# For --batch-size: the same CLI with portal.importer.BATCH_SIZE changed in the process (a proposal to measure).
PATCHED_CLI = (
    "import sys, portal.importer as m; m.BATCH_SIZE = int(sys.argv.pop(1)); sys.argv[0] = 'portal';"
    " from portal.app import main; main()"
)


def run_import(
    bench: b.Bench,
    env: dict,
    path: Path,
    workers: int,
    probe=None,
    interval: float = 0.25,
    batch_size: int | None = None,
):
    """``portal import-patients`` as a subprocess; returns (seconds, summary line, sampler)."""
    command = [b.PORTAL] if batch_size is None else [b.sys.executable, "-c", PATCHED_CLI, str(batch_size)]
    started = time.perf_counter()
    proc = bench.popen(
        [*command, "import-patients", str(path), "--workers", str(workers)],
        cwd=b.ROOT,
        env=env,
        stdout=b.subprocess.PIPE,
        stderr=b.subprocess.PIPE,
        text=True,
    )
    sampler = b.MemorySampler(proc.pid, interval=interval, note=probe)
    sampler.start()
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"import exited {proc.returncode}:\n{out[-1500:]}\n{err[-1500:]}")
    return elapsed, out.strip().splitlines()[-1], sampler


def seen_keys_process(count: int, out) -> None:  # type: ignore[no-untyped-def]
    """In a fresh process: ``count`` random 64-bit keys through the importer's duplicate check
    (``portal.importer.SeenKeys``), with CPU time and memory growth at every fifth of the way."""
    import os
    import random

    from portal.importer import SeenKeys

    rng, seen = random.Random(1), SeenKeys()
    base, began = b.rss_bytes(os.getpid()), time.process_time()
    marks = []
    for n in range(1, count + 1):
        seen.add(rng.getrandbits(64))
        if n % max(1, count // 5) == 0:
            marks.append((n, time.process_time() - began, b.rss_bytes(os.getpid()) - base))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    out.put((marks, peak))


def seen_keys(count: int) -> None:
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    proc = spawn.Process(target=seen_keys_process, args=(count, queue), daemon=True)
    proc.start()
    marks, peak = queue.get()
    proc.join()
    rows, last = [], (0, 0.0)
    for n, cpu, grown in marks:
        rows.append((f"{n:,}", f"{cpu:.0f} s", f"{(cpu - last[1]) / (n - last[0]) * 1e6:.1f} us", f"{grown / n:.1f}"))
        last = (n, cpu)
    b.say(f"\nthe duplicate check alone (portal.importer.SeenKeys), {count:,} random keys in a fresh process:")
    b.say(b.table(rows, ["keys", "CPU", "CPU a key, lately", "RSS growth, bytes a key"]))
    b.say(f"  peak RSS growth (while merging): {peak / count:.1f} bytes a key, {b.mib(peak)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="20,000 rows for throughput, 1,000,000 for memory")
    parser.add_argument("--rows", type=int, help="rows of the throughput import (default 3,000)")
    parser.add_argument("--memory-rows", type=int, help="rows of the cheap-params memory run (default 50,000; 0 skips)")
    parser.add_argument("--workers", type=int, default=b.CORES, help="import workers = raw hashing processes")
    parser.add_argument("--database-url", help="PostgreSQL URL (a private schema, dropped after); default SQLite")
    parser.add_argument("--baseline-seconds", type=float, default=6.0)
    parser.add_argument("--seen-keys", type=int, default=0, help="ALSO time the duplicate check alone with N keys")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="ALSO import with portal.importer.BATCH_SIZE=N (a proposed"
        " change, patched in a wrapper process) and print that ratio too",
    )
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.full else 3_000)
    memory_rows = args.memory_rows if args.memory_rows is not None else (1_000_000 if args.full else 50_000)

    b.say(f"import_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        url = bench.database(args.database_url)
        env = b.portal_env(bench, url, b.PROD_ARGON2)
        b.say(
            f"database: {'PostgreSQL (private schema)' if args.database_url else 'SQLite (temporary file)'};"
            f" {b.describe_argon2(b.PROD_ARGON2)}; {args.workers} workers; {rows:,} synthetic rows"
        )
        b.migrate(env)
        csv_path = b.generate_patients(env, rows, tmp / "patients.csv")

        first = b.argon2_baseline_detail(b.PROD_ARGON2, args.workers, args.baseline_seconds)
        before = first.rate
        b.say(f"raw Argon2id, {args.workers} processes (before): {before:,.1f} hashes/s")
        window = bench.cpu.snapshot()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        elapsed, summary, sampler = run_import(bench, env, csv_path, args.workers)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        import_cpu = bench.cpu.line(window)
        tree_cpu = (
            children_after.ru_utime + children_after.ru_stime - children_before.ru_utime - children_before.ru_stime
        )
        second = b.argon2_baseline_detail(b.PROD_ARGON2, args.workers, args.baseline_seconds)
        after = second.rate
        b.say(f"raw Argon2id, {args.workers} processes (after):  {after:,.1f} hashes/s")
        added = int(re.search(r"([\d,]+) added", summary).group(1).replace(",", ""))
        inner = float(re.search(r"in ([\d,.]+) s", summary).group(1).replace(",", ""))
        if added != rows:
            b.say(f"WARNING: {added:,} of {rows:,} rows added: {summary}")
        raw = (before + after) / 2
        rate = added / elapsed
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        b.say(f"portal import-patients: {summary}")
        b.say(
            f"  wall clock {elapsed:.1f} s (the command's own timer: {inner:.1f} s) -> {rate:,.1f} records/s"
            f" (own timer: {added / inner:,.1f}/s)"
        )
        b.say(
            f"  peak memory of the import, all processes summed: RSS {b.mib(sampler.peak_rss)},"
            f" PSS {b.mib(sampler.peak_pss)} ({max(s.processes for s in sampler.samples)} processes);"
            f" largest single child (getrusage): {b.mib(children)}"
        )
        hash_cpu = (first.cpu_per_hash + second.cpu_per_hash) / 2
        b.say(
            f"  CPU: the import used {tree_cpu:.1f} core-s ({tree_cpu / elapsed:.2f} cores on average),"
            f" {b.ms(tree_cpu / added)} per record; a raw hash costs {b.ms(hash_cpu)}"
        )
        b.say(
            f"  CPU-only view (less sensitive to other tenants): raw hash CPU / import CPU per record ="
            f" {hash_cpu / (tree_cpu / added):.3f}; the ratio cannot exceed this on a dedicated machine"
        )
        b.say(f"  {import_cpu}")
        ok = b.verdict("import records/s / raw Argon2id hashes/s", rate / raw, 0.90)
        b.say(f"  (with the command's own timer, start-up excluded: {added / inner / raw:.3f})")

        if args.batch_size:
            b.say(f"\nproposal: the same import with BATCH_SIZE={args.batch_size} (shipped: 200), fresh database")
            trial_url = bench.database(args.database_url)
            trial_env = b.portal_env(bench, trial_url, b.PROD_ARGON2)
            b.migrate(trial_env)
            t_before = b.argon2_baseline(b.PROD_ARGON2, args.workers, args.baseline_seconds)
            t_elapsed, t_summary, _ = run_import(bench, trial_env, csv_path, args.workers, batch_size=args.batch_size)
            t_after = b.argon2_baseline(b.PROD_ARGON2, args.workers, args.baseline_seconds)
            b.say(f"  raw {t_before:,.1f} / {t_after:,.1f} hashes/s; {t_summary}; wall {t_elapsed:.1f} s")
            b.say(
                f"  RATIO with BATCH_SIZE={args.batch_size}: {rows / t_elapsed / ((t_before + t_after) / 2):.3f}"
                f" (shipped code in this run: {rate / raw:.3f})"
            )

        if memory_rows:
            b.say(
                f"\nmemory flatness: {memory_rows:,} rows with the CHEAPEST Argon2 params"
                f" ({b.describe_argon2(b.CHEAP_ARGON2)}) so that it runs in minutes; same code path"
            )
            cheap_url = bench.database(args.database_url)
            cheap_env = b.portal_env(bench, cheap_url, b.CHEAP_ARGON2)
            b.migrate(cheap_env)
            big = b.generate_patients(cheap_env, memory_rows, tmp / "big.csv", seed=11)
            probe = count_rows(cheap_url)
            elapsed, summary, sampler = run_import(bench, cheap_env, big, args.workers, probe, interval=1.0)
            probe.dispose()
            b.say(f"portal import-patients: {summary}; wall clock {elapsed:.1f} s")
            step = max(1, len(sampler.samples) // 12)
            shown = sampler.samples[::step]
            if shown[-1] is not sampler.samples[-1]:
                shown.append(sampler.samples[-1])
            b.say(
                b.table(
                    [(f"{s.at:.0f} s", s.note, b.mib(s.rss), b.mib(s.pss), s.processes) for s in shown],
                    ["elapsed", "progress", "RSS sum", "PSS sum", "procs"],
                )
            )
            steady = [s for s in sampler.samples if s.processes > 1]
            if len(steady) >= 4:
                quarter = max(1, len(steady) // 4)
                early = max(s.pss for s in steady[:quarter])
                late = max(s.pss for s in steady[-quarter:])
                b.say(
                    f"  PSS peak: first quarter {b.mib(early)}, last quarter {b.mib(late)}"
                    f" (growth {b.mib(late - early)} over {memory_rows:,} rows)"
                )
            b.say(f"  peak over the whole run: RSS sum {b.mib(sampler.peak_rss)}, PSS sum {b.mib(sampler.peak_pss)}")
        if args.seen_keys:
            seen_keys(args.seen_keys)
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
