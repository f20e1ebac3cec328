"""What one operation costs in instructions, SQL statements and Redis round trips, in-process.

Wall-clock ratios need a quiet machine; instruction counts do not: valgrind's callgrind counts the
user-space instructions of one process, which other tenants' load does not move. This runs the
portal in-process (the Flask test client; cheap Argon2id, so the count is the request path; a
SQLite file holding ``--people`` synthetic people and one partner key; the limits in Redis, as in
``verify_bench.py``, under a key prefix of each run's own) and reports per operation the
instructions callgrind counts over ``--ops`` operations, after ``--warmup`` ones, divided by
``--ops``: the process runs under ``valgrind --tool=callgrind --instr-atstart=no`` and switches the
count on and off around the measured operations (through two calls into a few lines of C compiled
here, callgrind's client requests; needs valgrind, its headers and a C compiler). A run without
valgrind counts the SQL statements (and COMMITs) and the Redis round trips an operation.
Scenarios: ``web`` (GET + POST ``/lookup``, a new session: ``verify_bench.py``'s operation),
``visit`` (the same and the exposure page read back; always the same person, so that the page is
the one kept), ``api`` (``api_bench.py``'s ``POST /api/v1/verifications``), ``page`` (``GET /``).
A run of the four scenarios takes a few minutes, and gives the same figures whatever the machine's
load (to about 0.1 %).

    .venv/bin/python bench/instructions_bench.py
    .venv/bin/python bench/instructions_bench.py --scenario api --ops 80
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchlib as b

SCENARIOS = ("web", "visit", "api", "page")
CSRF = re.compile(rb'name="csrf_token"[^>]*value="([^"]+)"')
# Callgrind's client requests, callable through ctypes: the count runs only between the two.
TOGGLE_C = """
#include <valgrind/callgrind.h>
void measure_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void measure_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable (default: all)")
    parser.add_argument("--ops", type=int, default=40, help="operations measured (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="operations before them, in both runs (default 5)")
    parser.add_argument("--people", type=int, default=100, help="synthetic people stored (default 100)")
    parser.add_argument("--limit-store", default=b.BENCH_REDIS, help=f"default {b.BENCH_REDIS}")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the measured process: its setup file
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child))
    if shutil.which("valgrind") is None or shutil.which("cc") is None:
        raise SystemExit("needs valgrind and a C compiler (apt-get install valgrind gcc)")

    b.say(f"instructions_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        store = b.limit_store(bench, args.limit_store)
        env = b.portal_env(bench, bench.sqlite_url(), b.CHEAP_ARGON2, **store)
        people = b.stored_people(env, args.people, tmp)
        key = b.api_key(env)
        prepared = Path(env["PORTAL_DATABASE_URL"].removeprefix("sqlite:///"))
        (tmp / "toggle.c").write_text(TOGGLE_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp / "toggle.so"), str(tmp / "toggle.c")], check=True)
        rows = []
        for scenario in args.scenario or SCENARIOS:
            counts = run_child(tmp, env, prepared, people, key, scenario, args.warmup, args.ops, valgrind=False)
            total = run_child(tmp, env, prepared, people, key, scenario, args.warmup, args.ops, valgrind=True)
            per_op = total["instructions"] / args.ops
            rows.append(
                (
                    scenario,
                    f"{per_op / 1e6:.3f} M",
                    f"{counts['sql'] / args.ops:.2f} ({counts['commits'] / args.ops:.2f})",
                    f"{counts['redis'] / args.ops:.2f}",
                )
            )
            b.say(f"{scenario}: {rows[-1][1]} instructions an operation ({total['instructions']:,} in all)")
        b.say(b.table(rows, ["scenario", "instructions an operation", "SQL statements (COMMITs)", "Redis round trips"]))
    return 0


def run_child(
    tmp: Path,
    env: dict[str, str],
    prepared: Path,
    people: list[dict[str, str]],
    key: str,
    scenario: str,
    warmup: int,
    ops: int,
    valgrind: bool,
) -> dict[str, int]:
    """One measured process on a fresh copy of the prepared database, under a fresh Redis prefix."""
    database = tmp / "measured.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
        if Path(f"{prepared}{suffix}").exists():
            shutil.copyfile(f"{prepared}{suffix}", f"{database}{suffix}")
    config = b.app_config(env)
    config["DATABASE_URL"] = f"sqlite:///{database}"
    if "RATELIMIT_KEY_PREFIX" in config:
        config["RATELIMIT_KEY_PREFIX"] = f"bench{secrets.token_hex(4)}"  # the same length in every run
    setup = tmp / "child.json"
    report = tmp / "child-report.json"
    setup.write_text(
        json.dumps(
            {
                "config": config,
                "people": people,
                "key": key,
                "scenario": scenario,
                "warmup": warmup,
                "ops": ops,
                "toggle": str(tmp / "toggle.so") if valgrind else None,
            }
        )
    )
    command = [sys.executable, __file__, "--child", str(setup)]
    if valgrind:
        out = tmp / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *command]
    try:
        # One string hash seed for every run: dict and set layouts, and so the counts, do not vary with it.
        child_env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env)
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"the measured process failed:\n{error.stderr[-3000:]}") from error
    finally:
        _delete_prefix(config)
    if valgrind:
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        assert totals is not None, "no total in callgrind's output"
        return {"instructions": int(totals.group(1))}
    return json.loads(report.read_text())


def _delete_prefix(config: dict[str, Any]) -> None:
    prefix = config.get("RATELIMIT_KEY_PREFIX")
    if not prefix:
        return
    import redis

    client = redis.Redis.from_url(config["RATELIMIT_STORAGE_URI"])
    for name in client.scan_iter(match=f"*{prefix}*"):
        client.delete(name)


def child(setup_path: Path) -> int:
    """The measured process: warm-up and ``ops`` operations of one scenario; callgrind counts the
    ``ops`` alone, or the process counts their statements and round trips and writes them beside its setup."""
    setup = json.loads(setup_path.read_text())
    from portal import identity
    from portal.app import create_app

    # A verification sweeps expired rows once a second per connection: one lookup in fifty or more
    # under load, but every other one at valgrind's pace. Swept once here, in the warm-up.
    identity.SWEEP_PAUSE_SECONDS = float("inf")
    app = create_app(setup["config"])
    for handler in logging.getLogger("portal").handlers:  # the lines are still built and written
        handler.stream = open(os.devnull, "w")
    client = app.test_client()
    people, scenario = setup["people"], setup["scenario"]
    api_headers = {"Authorization": f"Bearer {setup['key']}"}
    counted = {"sql": 0, "commits": 0, "redis": 0}

    def lookup(person: dict[str, str]) -> None:
        client.delete_cookie(app.config["SESSION_COOKIE_NAME"])
        form = client.get("/lookup")
        token = CSRF.search(form.data)
        assert token is not None, form.status_code
        answer = client.post("/lookup", data={**person, "csrf_token": token.group(1).decode()})
        assert answer.status_code == 303, answer.status_code

    toggle = ctypes.CDLL(setup["toggle"]) if setup["toggle"] else None
    for n in range(setup["warmup"] + setup["ops"]):
        if n == setup["warmup"]:
            if toggle is not None:
                toggle.measure_start()
            else:  # only where callgrind does not run: no hook in its count
                _count(app, counted)
        if scenario == "web":
            lookup(people[n % len(people)])
        elif scenario == "visit":
            lookup(people[0])
            page = client.get("/exposure")
            assert page.status_code == 200, page.status_code
        elif scenario == "api":
            answer = client.post("/api/v1/verifications", json=people[n % len(people)], headers=api_headers)
            assert answer.status_code == 200 and answer.json["verified"], answer.status_code
        else:
            assert client.get("/").status_code == 200
    if toggle is not None:
        toggle.measure_stop()
    setup_path.with_name("child-report.json").write_text(json.dumps(counted))
    return 0


def _count(app: Any, counted: dict[str, int]) -> None:
    """Count SQL statements, COMMITs and Redis round trips (one a command sent, or a pipeline)."""
    from redis.connection import AbstractConnection
    from sqlalchemy import event

    from portal.extensions import db

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:
        counted["sql"] += 1

    @event.listens_for(engine, "commit")
    def _commit(*_args: Any) -> None:
        counted["commits"] += 1

    send = AbstractConnection.send_packed_command

    def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        counted["redis"] += 1
        send(self, command, check_health)

    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]


if __name__ == "__main__":
    b.run_main(main)
