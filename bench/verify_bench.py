"""Verified lookups per second through the real HTTP stack vs raw Argon2id on the same cores.

The portal runs as in production: ``gunicorn -c python:portal.gunicorn_config wsgi:app`` (workers =
cores, 4 threads each, PORTAL_HASH_SLOTS hashing slots shared by the workers, default one a core),
on a temporary SQLite file by default or a private schema of ``--database-url``. A separate load
process drives it over loopback at 2 x cores concurrent clients; each operation is a first visit:
GET /lookup (CSRF token and session cookie), then POST /lookup with a real synthetic identity,
expecting 303. Each client keeps one connection for all its visits, as a pooling proxy in front does
(``--new-connections``: one per visit).

RATIO = verified lookups/s / hashes/s of ``cores`` processes doing nothing but
portal.identity.stretch (same Argon2id params, measured before and after in the same run).
Target >= 0.80. PORTAL_VERIFY_LIMIT_PERSON/CLIENT/GLOBAL are set to "1000000 per minute" so the
failure throttle cannot interfere (only failures are counted, and every lookup here succeeds).

``--floor`` also serves ``bench/floor_app.py`` (the form read, one Argon2id, a 303; same gunicorn
settings and hashing slots) and loads it in the same rounds: its ratio is this stack's ceiling on
the machine, printed beside the portal's (FLOOR line).

``--overload`` adds a burst at 10 x that concurrency: counts of 303 / 503 (with Retry-After) /
other, connection errors, server RSS, and the latency of a single lookup afterwards (recovery).

    .venv/bin/python bench/verify_bench.py
    .venv/bin/python bench/verify_bench.py --overload
    .venv/bin/python bench/verify_bench.py --floor        # the floor app (bench/floor_app.py) in the same rounds
    .venv/bin/python bench/verify_bench.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse

import benchlib as b

# Server CPU a lookup (GET + POST /lookup) may spend besides its Argon2id hash, in seconds.
BUDGET = 0.006


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (a private schema, dropped after); default SQLite")
    parser.add_argument("--full", action="store_true", help="2,000 stored people, 120 s of load")
    parser.add_argument("--seconds", type=float, help="load window per round (default 10 s)")
    parser.add_argument("--rounds", type=int, help="alternating raw/HTTP rounds (default 4)")
    parser.add_argument("--people", type=int, help="synthetic people imported (default 400)")
    parser.add_argument("--clients", type=int, default=2 * b.CORES, help="concurrent clients (default 2 x cores)")
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="a new connection per visit (default: each client keeps one for all its visits)",
    )
    parser.add_argument(
        "--whole-visit",
        action="store_true",
        help="a person's whole visit: a new connection, the form, the POST and the exposure page read back",
    )
    parser.add_argument("--overload", action="store_true", help="also a burst at 10 x the concurrency")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--overload-factor", type=int, default=10, help="burst concurrency = factor x --clients")
    parser.add_argument("--hash-wait", type=float, help="PORTAL_HASH_WAIT_SECONDS (default: config's)")
    parser.add_argument("--workers", type=int, help="PORTAL_WORKERS (default: gunicorn_config's, = cores)")
    parser.add_argument("--threads", type=int, help="PORTAL_THREADS (default: gunicorn_config's, 4)")
    parser.add_argument("--hash-slots", type=int, help="PORTAL_HASH_SLOTS, shared by the workers (default: cores)")
    parser.add_argument("--baseline-seconds", type=float, default=4.0)
    b.add_argon2_option(parser)
    b.add_app_options(parser)
    b.add_floor_option(parser)
    args = parser.parse_args()
    argon2 = args.argon2
    hash_slots = args.hash_slots or b.CORES
    hash_wait = args.hash_wait or b.PORTAL_DEFAULTS["HASH_WAIT_SECONDS"]
    seconds = args.seconds or (30.0 if args.full else 10.0)
    rounds = args.rounds or (6 if args.full else 4)
    people = args.people or (2000 if args.full else 400)

    b.say(f"verify_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        url = bench.database(args.database_url)
        settings = {
            "WORKERS": args.workers,
            "THREADS": args.threads,
            "HASH_SLOTS": args.hash_slots,
            "HASH_WAIT_SECONDS": args.hash_wait,
            **b.limit_store(bench, args.limit_store),
        }
        env = b.portal_env(bench, url, argon2, **settings)
        b.say(
            f"database: {'PostgreSQL (private schema)' if args.database_url else 'SQLite (temporary file)'};"
            f" limits: {settings['RATELIMIT_STORAGE_URI']}; {b.describe_argon2(argon2)}"
        )
        b.say(
            f"gunicorn -c python:portal.gunicorn_config {args.app}: workers {args.workers or b.CORES}"
            f" (PORTAL_WORKERS), threads {args.threads or 4} (PORTAL_THREADS),"
            f" {hash_slots} hashing slots shared by the workers (PORTAL_HASH_SLOTS),"
            f" hash wait {hash_wait:g} s (PORTAL_HASH_WAIT_SECONDS)"
        )
        b.say(f"throttle: PORTAL_VERIFY_LIMIT_PERSON/CLIENT/GLOBAL = '{b.LOOSE_LIMIT}' (cannot interfere)")
        identities = b.stored_people(env, people, tmp)

        server = b.start_portal(bench, args, env, tmp / "gunicorn.log", "/lookup")
        scenario = b.Lookup(identities, args.new_connections or args.whole_visit, args.whole_visit)
        status, first = b.timed_request(server, scenario)
        if status != "303":
            raise RuntimeError(f"a real identity got {status}, not 303:\n{server.log_tail()}")

        floor = b.start_floor(bench, args, env, tmp / "floor.log", "/lookup")
        measured = b.alternating_rounds(
            bench, server, scenario, argon2, args.clients, seconds, rounds, args.baseline_seconds,
            args.new_connections or args.whole_visit, success="303", what="lookups", floor=floor,
        )  # fmt: skip
        peak_rss = measured.peak_rss
        ok = b.verdict("verified lookups/s / raw Argon2id hashes/s", measured.ratio, 0.80) and measured.good
        b.floor_verdict("floor lookups/s / raw Argon2id hashes/s", measured)
        ok = b.budget("server CPU a verified lookup besides its hash", measured.besides_hash, BUDGET) and ok

        if args.overload:
            clients = args.overload_factor * args.clients
            b.say(f"\noverload: {clients} clients ({args.overload_factor} x) for {args.overload_seconds:.0f} s")
            burst = b.run_load(server, scenario, clients, args.overload_seconds, warmup=0.0)
            total = sum(burst.statuses.values())
            s303, s503 = burst.statuses.get("303", 0), burst.statuses.get("503", 0) + burst.statuses.get("GET 503", 0)
            other = {k: v for k, v in burst.statuses.items() if k not in ("303", "503", "GET 503")}
            bad5xx = {k: v for k, v in other.items() if k.split()[-1].startswith("5")}
            b.say(
                f"  {total:,} operations: 303 {s303:,}; 503 {s503:,}"
                f" ({s503 - burst.missing_retry_after:,} with Retry-After); other {other or 0};"
                f" connection errors {dict(burst.errors) or 0}"
            )
            b.say(f"  {burst.rate:,.1f} completed operations/s; latency {b.latency_line(burst.latencies)}")
            b.say(
                f"  server RSS peak during the burst: {b.mib(burst.server_peak_rss)} (steady load: {b.mib(peak_rss)})"
            )
            status, recovery = b.timed_request(server, scenario, 12345)
            b.say(
                f"  recovery: one lookup right after the burst -> {status} in {b.ms(recovery)}"
                f" (idle before the runs: {b.ms(first)})"
            )
            log_errors = server.error_lines()
            b.say(f"  server log: {len(log_errors)} error lines" + (f", e.g. {log_errors[0]}" if log_errors else ""))
            overload_ok = (
                not bad5xx
                and not burst.errors
                and burst.missing_retry_after == 0
                and status == "303"
                and recovery < 2.0
            )
            b.say(
                f"OVERLOAD {'PASS' if overload_ok else 'FAIL'}: no 5xx but 503, every 503 with Retry-After,"
                " no connection errors, quick recovery"
            )
            ok = ok and overload_ok
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
