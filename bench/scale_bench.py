"""Does verification slow down as the table grows? find_patient latency at 10k vs 200k (1M) records.

For each backend (SQLite always; PostgreSQL at ``--database-url``, default the local test server,
skipped with a note if unreachable) two databases are built:

* 2,000 synthetic people go through the real ``portal import-patients --workers N`` with the
  CHEAPEST Argon2id params (t=1, m=8 KiB, Argon2's minimum), so they can be looked up;
* filler records are then inserted in bulk SQL (random-looking digests under the same hash
  scheme; they match no one) up to the size, and the table is ANALYZEd.

The measured thing is ``portal.identity.find_patient`` in-process with the same (cheap) params as
the table: the active-scheme query + one Argon2id (~0.03 ms at these params) + the indexed
digest probe. Half the lookups are hits, half misses (wrong last four). Rounds alternate
small/large so machine drift hits both. With production params each lookup also spends a
constant ~22 ms in Argon2id, which only pulls the ratio closer to 1.

RATIO = p50 latency with the small table / p50 latency with the large table; target 0.80-1.25.

    .venv/bin/python bench/scale_bench.py                   # 10,000 vs 200,000, SQLite + PostgreSQL
    .venv/bin/python bench/scale_bench.py --full            # 10,000 vs 1,000,000
    .venv/bin/python bench/scale_bench.py --database-url postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import argparse
import random
import time

import benchlib as b

REAL = 2_000


def build(bench: b.Bench, base_url: str | None, size: int, csv_path, letters, first: bool) -> tuple[dict, float]:
    """A database with the REAL people imported and filler up to ``size``; returns (env, seconds)."""
    started = time.perf_counter()
    url = bench.database(base_url)
    env = b.portal_env(bench, url, b.CHEAP_ARGON2)
    b.migrate(env)
    b.portal(
        env,
        "import-patients",
        str(csv_path),
        "--workers",
        str(b.CORES),
        *(["--letters", str(letters)] if first else []),
    )
    b.fill_patients(url, size)
    return env, time.perf_counter() - started


def measure(env: dict, identities: list[dict[str, str]], lookups: int, rng: random.Random):
    """Yields a callable that runs ``lookups`` find_patient calls and returns their latencies."""
    from portal.app import create_app
    from portal.extensions import db
    from portal.identity import IdentityClaim, find_patient
    from portal.services import services

    app = create_app(b.app_config(env))
    hits = [IdentityClaim.from_input(**i) for i in identities]
    misses = []
    for i in identities:
        if i["ssn_last4"]:
            wrong = f"{(int(i['ssn_last4']) + 1) % 10000:04d}"
            misses.append(IdentityClaim.from_input(**{**i, "ssn_last4": wrong}))

    def run() -> tuple[list[float], int, int]:
        latencies, found, wrong = [], 0, 0
        with app.app_context():
            hasher = services().hasher
            for n in range(lookups):
                hit = n % 2 == 0
                claim = rng.choice(hits if hit else misses)
                began = time.perf_counter()
                patient = find_patient(db.session, hasher, claim)
                latencies.append(time.perf_counter() - began)
                db.session.rollback()
                found += patient is not None
                wrong += (patient is not None) != hit
        return latencies, found, wrong

    def close() -> None:
        with app.app_context():
            db.engine.dispose()

    return run, close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="10,000 vs 1,000,000 records")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, help="default 200,000 (1,000,000 with --full)")
    parser.add_argument("--database-url", default=b.DEFAULT_PG_URL, help="PostgreSQL URL (private schemas, dropped)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per table")
    parser.add_argument("--lookups", type=int, default=500, help="find_patient calls per round")
    args = parser.parse_args()
    large = args.large or (1_000_000 if args.full else 200_000)

    b.say(f"scale_bench  {b.machine_line()}")
    b.say(
        f"tables: {args.small:,} vs {large:,} records ({REAL:,} imported by portal import-patients with"
        f" {b.describe_argon2(b.CHEAP_ARGON2)}, the rest bulk SQL filler); {args.rounds} x {args.lookups}"
        " find_patient calls per table, half hits, alternating"
    )
    backends: list[tuple[str, str | None]] = [("SQLite", None)]
    if not args.no_postgres:
        problem = b.postgres_reachable(args.database_url)
        if problem:
            b.say(f"PostgreSQL SKIPPED ({problem})")
        else:
            backends.append(("PostgreSQL", args.database_url))
    ok = True
    rows = []
    with b.Bench() as bench:
        tmp = bench.tempdir()
        rng = random.Random(5)
        for name, base in backends:
            csv_path = tmp / "people.csv"
            letters = tmp / "letters.csv"
            if not csv_path.exists():
                b.generate_patients(b.portal_env(bench, "sqlite://"), REAL, csv_path, seed=3)
            small_env, small_build = build(bench, base, args.small, csv_path, letters, first=not letters.exists())
            large_env, large_build = build(bench, base, large, csv_path, letters, first=False)
            b.say(f"{name}: built {args.small:,} in {small_build:.1f} s, {large:,} in {large_build:.1f} s")
            identities = b.read_identities(csv_path, letters)
            runners = {
                "small": measure(small_env, identities, args.lookups, rng),
                "large": measure(large_env, identities, args.lookups, rng),
            }
            for _run, close in runners.values():
                bench.callback(close)
            for run, _ in runners.values():
                run()  # warm-up: connections, caches, statement compilation
            latencies = {"small": [], "large": []}
            found = {"small": [0, 0], "large": [0, 0]}
            for _ in range(args.rounds):
                for key, (run, _close) in runners.items():
                    lat, hits, wrong = run()
                    latencies[key] += lat
                    found[key][0] += hits
                    found[key][1] += wrong
            for key, size in (("small", args.small), ("large", large)):
                ordered = sorted(latencies[key])
                rows.append(
                    (
                        name,
                        f"{size:,}",
                        b.ms(b.percentile(ordered, 50)),
                        b.ms(b.percentile(ordered, 95)),
                        b.ms(b.percentile(ordered, 99)),
                        b.ms(sum(ordered) / len(ordered)),
                        f"{found[key][0]:,}/{len(ordered):,}",
                        found[key][1],
                    )
                )
                if found[key][1]:
                    ok = False
            p50 = {k: b.percentile(sorted(v), 50) for k, v in latencies.items()}
            mean = {k: sum(v) / len(v) for k, v in latencies.items()}
            b.say(
                f"{name}: p50 {b.ms(p50['small'])} vs {b.ms(p50['large'])};"
                f" mean ratio {mean['small'] / mean['large']:.3f}"
            )
            name_ratio = f"{name} p50 latency {args.small:,} / {large:,} records"
            ok = b.verdict(name_ratio, p50["small"] / p50["large"], 0.80, 1.25) and ok
        b.say(b.table(rows, ["backend", "records", "p50", "p95", "p99", "mean", "found", "wrong answers"]))
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
