"""Verified lookups per second through the real HTTP stack vs raw Argon2id on the same cores.

The portal runs as in production: ``gunicorn -c python:portal.gunicorn_config wsgi:app``
(workers = cores, 4 threads each, PORTAL_HASH_CONCURRENCY per worker as configured), on a temporary SQLite
file by default or a private schema of ``--database-url``. A separate load process drives it over
loopback at 2 x cores concurrent clients; each operation is a first visit: GET /lookup (CSRF token
and session cookie), then POST /lookup with a real synthetic identity, expecting 303. Each client
keeps one connection for all its visits, as a pooling proxy in front does (``--new-connections``:
one per visit).

RATIO = verified lookups/s / hashes/s of ``cores`` processes doing nothing but
portal.identity.stretch (same Argon2id params, measured before and after in the same run).
Target >= 0.80. PORTAL_VERIFY_LIMIT_PERSON/CLIENT/GLOBAL are set to "1000000 per minute" so the
failure throttle cannot interfere (only failures are counted, and every lookup here succeeds).

``--overload`` adds a burst at 10 x that concurrency: counts of 303 / 503 (with Retry-After) /
other, connection errors, server RSS, and the latency of a single lookup afterwards (recovery).

    .venv/bin/python bench/verify_bench.py
    .venv/bin/python bench/verify_bench.py --overload
    .venv/bin/python bench/verify_bench.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse

import benchlib as b


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
    parser.add_argument("--overload", action="store_true", help="also a burst at 10 x the concurrency")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--overload-factor", type=int, default=10, help="burst concurrency = factor x --clients")
    parser.add_argument("--hash-wait", type=float, help="PORTAL_HASH_WAIT_SECONDS (default: config's)")
    parser.add_argument("--workers", type=int, help="PORTAL_WORKERS (default: gunicorn_config's, = cores)")
    parser.add_argument("--threads", type=int, help="PORTAL_THREADS (default: gunicorn_config's, 4)")
    parser.add_argument("--hash-concurrency", type=int, help="PORTAL_HASH_CONCURRENCY (default: config's)")
    parser.add_argument("--baseline-seconds", type=float, default=4.0)
    parser.add_argument(
        "--argon2",
        default=",".join(map(str, b.PROD_ARGON2)),
        metavar="T,M,P",
        help="Argon2id params (default the production 2,19456,1; 1,8,1 isolates the non-hash cost)",
    )
    b.add_app_options(parser)
    args = parser.parse_args()
    argon2 = tuple(int(x) for x in args.argon2.split(","))
    hash_concurrency = args.hash_concurrency or b.PORTAL_DEFAULTS["HASH_CONCURRENCY"]
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
            "HASH_CONCURRENCY": args.hash_concurrency,
            "HASH_WAIT_SECONDS": args.hash_wait,
        }
        env = b.portal_env(bench, url, argon2, **settings)
        b.say(
            f"database: {'PostgreSQL (private schema)' if args.database_url else 'SQLite (temporary file)'};"
            f" {b.describe_argon2(argon2)}"
        )
        b.say(
            f"gunicorn -c python:portal.gunicorn_config {args.app}: workers {args.workers or b.CORES}"
            f" (PORTAL_WORKERS), threads {args.threads or 4} (PORTAL_THREADS),"
            f" hash concurrency {hash_concurrency} per worker (PORTAL_HASH_CONCURRENCY),"
            f" hash wait {hash_wait:g} s (PORTAL_HASH_WAIT_SECONDS)"
        )
        b.say(f"throttle: PORTAL_VERIFY_LIMIT_PERSON/CLIENT/GLOBAL = '{b.LOOSE_LIMIT}' (cannot interfere)")
        b.migrate(env)
        csv_path = b.generate_patients(env, people, tmp / "patients.csv")
        letters = tmp / "letters.csv"
        b.portal(env, "import-patients", str(csv_path), "--workers", str(b.CORES), "--letters", str(letters))
        identities = b.read_identities(csv_path, letters)
        b.say(f"stored {people:,} synthetic people with the real importer; {len(identities):,} identities to look up")

        server = b.start_portal(bench, args, env, tmp / "gunicorn.log", "/lookup")
        scenario = b.Lookup(identities, args.new_connections)
        status, first = b.timed_request(server, scenario)
        if status != "303":
            raise RuntimeError(f"a real identity got {status}, not 303:\n{server.log_tail()}")

        # Alternating rounds (raw Argon2id, then HTTP load) so that drift on the machine hits both alike.
        raws: list[float] = []
        hash_cpus: list[float] = []
        loads: list[b.LoadResult] = []
        window = bench.cpu.snapshot()
        round_rows = []
        for index in range(rounds):
            baseline = b.argon2_baseline_detail(argon2, b.CORES, args.baseline_seconds)
            raws.append(baseline.rate)
            hash_cpus.append(baseline.cpu_per_hash)
            loads.append(b.run_load(server, scenario, args.clients, seconds, warmup=3.0))
            by_process = " ".join(f"{c / seconds:.2f}" for c in loads[-1].server_cpu_by_process)
            round_rows.append(
                (
                    index + 1,
                    f"{raws[-1]:,.1f}",
                    f"{loads[-1].rate:,.1f}",
                    f"{loads[-1].rate / raws[-1]:.3f}",
                    by_process,
                )
            )
        load_cpu = bench.cpu.line(window)
        lopsided = [
            str(i + 1)
            for i, r in enumerate(loads)
            if len(r.server_cpu_by_process) > 2 and r.server_cpu_by_process[1] < 0.25 * r.server_cpu_by_process[0]
        ]
        raw = sum(raws) / len(raws)
        ops = sum(r.ops for r in loads)
        rate = ops / (seconds * rounds)
        latencies = [x for r in loads for x in r.latencies]
        statuses = sum((r.statuses for r in loads), b.Counter())
        errors = sum((r.errors for r in loads), b.Counter())
        server_cpu = sum(r.server_cpu for r in loads)
        client_cpu = sum(r.client_cpu for r in loads)
        peak_rss = max(r.server_peak_rss for r in loads)
        b.say(
            f"{rounds} rounds of: raw Argon2id with {b.CORES} processes for {args.baseline_seconds:.0f} s, then"
            f" {args.clients} HTTP clients for {seconds:.0f} s (after 3 s warm-up; 1 load process;"
            f" {'a new connection per visit' if args.new_connections else 'one kept-alive connection per client'})"
        )
        b.say(b.table(round_rows, ["round", "raw hashes/s", "lookups/s", "ratio", "server CPU by process (cores)"]))
        b.say(
            f"  {ops:,} verified lookups -> {rate:,.1f} lookups/s vs {raw:,.1f} raw hashes/s;"
            f" statuses {dict(statuses)}  connection errors {dict(errors) or 0}"
        )
        b.say(f"  latency (GET + POST): {b.latency_line(latencies)}")
        hash_cpu = sum(hash_cpus) / len(hash_cpus)
        b.say(
            f"  CPU per lookup: server {b.ms(server_cpu / max(ops, 1))}, load generator"
            f" {b.ms(client_cpu / max(sum(statuses.values()), 1))}; raw Argon2id hash {b.ms(hash_cpu)}"
        )
        cpu_bound = hash_cpu / ((server_cpu + client_cpu) / max(ops, 1))
        b.say(
            f"  CPU-only view (less sensitive to other tenants): Argon2id core-time / all CPU per lookup"
            f" (server + load generator) = {cpu_bound:.3f}; the ratio cannot exceed this on a dedicated machine"
        )
        b.say(f"  server RSS peak (master + workers): {b.mib(peak_rss)}")
        if lopsided:
            b.say(
                f"  NOTE: in round(s) {', '.join(lopsided)} the kept-alive connections landed (almost) all on one"
                " worker, which hashes on PORTAL_HASH_CONCURRENCY cores at most"
            )
        b.say(f"  {load_cpu}")
        good = statuses.get("303", 0) == sum(statuses.values()) and not errors
        if not good:
            b.say("  FAIL: some lookups did not end in 303")
        ok = b.verdict("verified lookups/s / raw Argon2id hashes/s", rate / raw, 0.80) and good

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
