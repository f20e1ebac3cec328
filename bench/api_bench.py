"""Verified partner-API calls per second through gunicorn vs raw Argon2id on the same cores.

The portal runs as in production (``gunicorn -c python:portal.gunicorn_config wsgi:app``: workers =
cores, 4 threads each, the server's hashing slots shared by its workers) on a temporary SQLite
file by default or a private schema of ``--database-url``. A separate load process drives it over
loopback at 2 x cores concurrent clients, each keeping one connection; each operation is one
``POST /api/v1/verifications`` with a partner key (made with ``portal create-api-key``) and a real
synthetic identity, expecting ``{"verified": true}``. No session, form or page: one request per
verification, so the target is higher than the web lookup's.

RATIO = verified API calls/s / hashes/s of ``cores`` processes doing nothing but
portal.identity.stretch (same Argon2id params, alternating rounds in the same run). Target >= 0.90.
The failure budgets and the key's rate are set out of reach (every call here succeeds).

    .venv/bin/python bench/api_bench.py
    .venv/bin/python bench/api_bench.py --seconds 8 --rounds 3
    .venv/bin/python bench/api_bench.py --floor           # the floor app (bench/floor_app.py) in the same rounds
"""

from __future__ import annotations

import argparse

import benchlib as b

# Server CPU a verification call may spend besides its Argon2id hash, in seconds.
BUDGET = 0.004


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (a private schema, dropped after); default SQLite")
    parser.add_argument("--seconds", type=float, default=10.0, help="load window per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating raw/HTTP rounds")
    parser.add_argument("--people", type=int, default=400, help="synthetic people imported")
    parser.add_argument("--clients", type=int, default=2 * b.CORES, help="concurrent clients (default 2 x cores)")
    parser.add_argument("--baseline-seconds", type=float, default=4.0)
    b.add_argon2_option(parser)
    b.add_app_options(parser)
    b.add_floor_option(parser)
    args = parser.parse_args()
    argon2 = args.argon2

    b.say(f"api_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        store = b.limit_store(bench, args.limit_store)
        env = b.portal_env(bench, bench.database(args.database_url), argon2, **store)
        b.say(
            f"database: {'PostgreSQL (private schema)' if args.database_url else 'SQLite (temporary file)'};"
            f" limits: {store['RATELIMIT_STORAGE_URI']}; {b.describe_argon2(argon2)};"
            f" gunicorn -c python:portal.gunicorn_config {args.app}"
        )
        identities = b.stored_people(env, args.people, tmp)
        key = b.api_key(env)
        b.say(f"one partner key (rate '{b.LOOSE_LIMIT}')")

        server = b.start_portal(bench, args, env, tmp / "gunicorn.log", "/api/v1/openapi.json")
        scenario = b.ApiVerification(identities, key)
        status, _first = b.timed_request(server, scenario)
        if status != "200":
            raise RuntimeError(f"a real identity got {status}, not a verification:\n{server.log_tail()}")
        floor = b.start_floor(bench, args, env, tmp / "floor.log", "/api/v1/openapi.json")
        rounds = b.alternating_rounds(
            bench, server, scenario, argon2, args.clients, args.seconds, args.rounds, args.baseline_seconds,
            new_connections=False, success="200", what="verifications", floor=floor,
        )  # fmt: skip
        ok = b.verdict("verified API calls/s / raw Argon2id hashes/s", rounds.ratio, 0.90) and rounds.good
        b.floor_verdict("floor API calls/s / raw Argon2id hashes/s", rounds)
        ok = b.budget("server CPU a verified API call besides its hash", rounds.besides_hash, BUDGET) and ok
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
