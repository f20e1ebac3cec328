"""What one operation costs in instructions, SQL statements and Redis round trips, in-process.

Wall-clock ratios need a quiet machine; instruction counts do not: valgrind's callgrind counts the
user-space instructions of one process, which other tenants' load does not move. This runs the
portal in-process (cheap Argon2id, so the count is the request path; a SQLite file holding
``--people`` synthetic people and one partner key; the limits in Redis, as in ``verify_bench.py``,
under a key prefix of each run's own; the JSON log lines built and written to /dev/null and
Prometheus' multiprocess files, as served) and reports per operation the instructions callgrind
counts over ``--ops`` operations, after ``--warmup`` ones, divided by ``--ops``. The process runs
under ``valgrind --tool=callgrind --instr-atstart=no`` and switches the count on and off around the
measured operations (two calls into a few lines of C compiled here, callgrind's client requests;
needs valgrind, its headers and a C compiler), so that the start-up and the warm-up are left out.
A run without valgrind counts the SQL statements (and COMMITs) and the Redis round trips an
operation. Every measured process has the same string hash seed, and its start-up's objects frozen
out of the garbage collector after the warm-up (``gc.freeze``): otherwise whether one full
collection of them falls among the measured operations moves a landing page's count by 176,000
instructions a request.

Scenarios: ``web`` (GET + POST ``/lookup`` with the Flask test client, a new session:
``verify_bench.py``'s operation), ``visit`` (the same and the exposure page read back; always the
same person, so that the page is the one kept), ``api`` (``api_bench.py``'s ``POST
/api/v1/verifications``), ``page`` (``GET /`` through the WSGI callable as gunicorn calls it: a
fresh environ a request, the body read to the end, en, es and fr in turn by Accept-Language; then
the same for ``bench/hello_app.py``, and ``RATIO`` = hello / portal, unless ``--portal-only``.
Gunicorn's own share is the same for both apps and not counted, so the ratio is lower than
``pages_bench.py``'s). A run of the four scenarios takes a few minutes, and gives the same figures
whatever the machine's load (to a few tenths of a per cent). ``--profile`` prints a cProfile of the
measured operations instead (sorted by ``PROFILE_SORT``, default cumulative; no valgrind).

    .venv/bin/python bench/instructions_bench.py
    .venv/bin/python bench/instructions_bench.py --scenario api --ops 80
    .venv/bin/python bench/instructions_bench.py --scenario page --ops 300 --warmup 30 [--portal-only]
    PROFILE_SORT=tottime .venv/bin/python bench/instructions_bench.py --scenario page --profile --ops 3000
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as b

SCENARIOS = ("web", "visit", "api", "page")
LANGUAGES = ("en", "es", "fr")  # the landing page's, one request in three each
# Callgrind's client requests, callable through ctypes: the count runs only between the two.
TOGGLE_C = """
#include <valgrind/callgrind.h>
void measure_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void measure_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


@dataclass
class Prepared:
    """What every measured process of a run starts from."""

    tmp: Path
    env: dict[str, str]
    database: Path  # the prepared SQLite file, copied afresh for each measured process
    people: list[dict[str, str]]
    key: str
    warmup: int
    ops: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable (default: all)")
    parser.add_argument("--ops", type=int, default=40, help="operations measured (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="operations before them, in every run (default 5)")
    parser.add_argument("--people", type=int, default=100, help="synthetic people stored (default 100)")
    parser.add_argument("--limit-store", default=b.BENCH_REDIS, help=f"default {b.BENCH_REDIS}")
    parser.add_argument("--portal-only", action="store_true", help="page: not the hello app's requests beside it")
    parser.add_argument("--profile", action="store_true", help="a cProfile of the measured operations instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the measured process: its setup file
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child))
    if not args.profile and (shutil.which("valgrind") is None or shutil.which("cc") is None):
        raise SystemExit("needs valgrind and a C compiler (apt-get install valgrind gcc)")

    b.say(f"instructions_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        store = b.limit_store(bench, args.limit_store)
        env = b.portal_env(bench, bench.sqlite_url(), b.CHEAP_ARGON2, **store)
        env["PYTHONHASHSEED"] = "0"  # dict and set layouts, and so the counts, do not vary with it
        people = b.stored_people(env, args.people, tmp)
        database = Path(env["PORTAL_DATABASE_URL"].removeprefix("sqlite:///"))
        prepared = Prepared(tmp, env, database, people, b.api_key(env), args.warmup, args.ops)
        scenarios = args.scenario or SCENARIOS
        if args.profile:
            for scenario in scenarios:
                b.say(f"\n{scenario}: a cProfile of {args.ops} operations after {args.warmup}")
                run_child(prepared, scenario, "profile")
            return 0
        (tmp / "toggle.c").write_text(TOGGLE_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp / "toggle.so"), str(tmp / "toggle.c")], check=True)
        rows = []
        for scenario in scenarios:
            counts = run_child(prepared, scenario, "count")
            portal = run_child(prepared, scenario, "callgrind")["instructions"] / args.ops
            rows.append(row(scenario, portal, counts))
            if scenario == "page" and not args.portal_only:
                hello = run_child(prepared, scenario, "callgrind", app="hello")["instructions"] / args.ops
                rows.append(row("page: hello", hello, None))
                b.say(f"RATIO = hello / portal instructions a request = {hello / portal:.3f}")
        b.say(b.table(rows, ["scenario", "instructions an operation", "SQL statements (COMMITs)", "Redis round trips"]))
    return 0


def row(name: str, instructions: float, counts: dict[str, int] | None) -> tuple[str, str, str, str]:
    """One line of the table, also said as soon as it is measured."""
    b.say(f"{name}: {instructions:,.0f} instructions an operation")
    if counts is None:
        return (name, f"{instructions / 1e6:.3f} M", "", "")
    ops = counts["ops"]
    return (
        name,
        f"{instructions / 1e6:.3f} M",
        f"{counts['sql'] / ops:.2f} ({counts['commits'] / ops:.2f})",
        f"{counts['redis'] / ops:.2f}",
    )


def run_child(prepared: Prepared, scenario: str, mode: str, app: str = "portal") -> dict[str, int]:
    """One measured process (``mode``: count, callgrind or profile) on a fresh copy of the prepared
    database, under a fresh Redis prefix, with empty Prometheus multiprocess files."""
    tmp = prepared.tmp
    database = tmp / "measured.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
        if Path(f"{prepared.database}{suffix}").exists():
            shutil.copyfile(f"{prepared.database}{suffix}", f"{database}{suffix}")
    metrics = tmp / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    config = b.app_config(prepared.env)
    config["DATABASE_URL"] = f"sqlite:///{database}"
    if "RATELIMIT_KEY_PREFIX" in config:
        config["RATELIMIT_KEY_PREFIX"] = f"bench{secrets.token_hex(4)}"  # the same length in every run
    setup = tmp / "child.json"
    report = tmp / "child-report.json"
    fields = ("people", "key", "warmup", "ops")
    setup.write_text(
        json.dumps(
            {
                **{name: getattr(prepared, name) for name in fields},
                "config": config,
                "scenario": scenario,
                "app": app,
                "mode": mode,
                "toggle": str(tmp / "toggle.so"),
            }
        )
    )
    command = [sys.executable, __file__, "--child", str(setup)]
    out = tmp / "callgrind.out"
    if mode == "callgrind":
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *command]
    env = {**prepared.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    stdout = None if mode == "profile" else subprocess.DEVNULL
    try:
        subprocess.run(command, check=True, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"the measured process failed:\n{error.stderr[-3000:]}") from error
    finally:
        _delete_prefix(config)
    if mode == "callgrind":
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        assert totals is not None, "no total in callgrind's output"
        return {"instructions": int(totals.group(1))}
    return json.loads(report.read_text()) if mode == "count" else {}


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
    ``ops`` alone, or cProfile profiles them, or the process counts their statements and round trips
    and writes them beside its setup."""
    setup = json.loads(setup_path.read_text())
    operation, app = _operation(setup)
    for n in range(setup["warmup"]):
        operation(n)
    measured = range(setup["warmup"], setup["warmup"] + setup["ops"])
    gc.collect()
    gc.freeze()
    if setup["mode"] == "profile":
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [operation(n) for n in measured])
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(60)
        return 0
    counted = {"ops": setup["ops"], "sql": 0, "commits": 0, "redis": 0}
    toggle = ctypes.CDLL(setup["toggle"]) if setup["mode"] == "callgrind" else None
    if toggle is not None:
        toggle.measure_start()
    else:  # only where callgrind does not run: no hook in its count
        _count(app, counted)
    for n in measured:
        operation(n)
    if toggle is not None:
        toggle.measure_stop()
    setup_path.with_name("child-report.json").write_text(json.dumps(counted))
    return 0


def _operation(setup: dict[str, Any]) -> tuple[Callable[[int], None], Any]:
    """The scenario's n-th operation, and the app it runs on."""
    if setup["app"] == "hello":
        sys.path.insert(0, str(b.BENCH_DIR))
        from hello_app import app
    else:
        from portal import identity
        from portal.app import create_app

        # A verification sweeps expired rows once a second per connection: one lookup in fifty or more
        # under load, but every other one at valgrind's pace. Swept once here, in the warm-up.
        identity.SWEEP_PAUSE_SECONDS = float("inf")
        app = create_app(setup["config"])
        for handler in logging.getLogger("portal").handlers:  # the lines are still built and written
            handler.stream = open(os.devnull, "w")
    scenario, people = setup["scenario"], setup["people"]
    if scenario == "page":
        return _page(app), app
    client = app.test_client()

    def lookup(person: dict[str, str]) -> None:
        client.delete_cookie(app.config["SESSION_COOKIE_NAME"])
        form = client.get("/lookup")
        token = b.CSRF.search(form.data)
        assert token is not None, form.status_code
        answer = client.post("/lookup", data={**person, "csrf_token": token.group(1).decode()})
        assert answer.status_code == 303, answer.status_code

    def visit(n: int) -> None:
        lookup(people[0])
        page = client.get("/exposure")
        assert page.status_code == 200, page.status_code

    def api(n: int) -> None:
        headers = {"Authorization": f"Bearer {setup['key']}"}
        answer = client.post("/api/v1/verifications", json=people[n % len(people)], headers=headers)
        assert answer.status_code == 200 and answer.json["verified"], answer.status_code

    operations = {"web": lambda n: lookup(people[n % len(people)]), "visit": visit, "api": api}
    return operations[scenario], app


def _page(app: Any) -> Callable[[int], None]:
    """``GET /`` as gunicorn calls the app: a fresh environ a request, the body read to the end."""
    from werkzeug.test import EnvironBuilder

    environs = []
    for language in LANGUAGES:
        environ = EnvironBuilder(
            path="/",
            base_url="http://127.0.0.1:8000",
            headers={"Accept-Language": f"{language},en;q=0.5", "User-Agent": "bench", "Accept": "text/html"},
            environ_base={"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "SERVER_SOFTWARE": "gunicorn/bench"},
        ).get_environ()
        environ.update({"wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.errors": open(os.devnull, "w")})
        environs.append(environ)

    def get(n: int) -> None:
        environ = dict(environs[n % len(environs)], **{"wsgi.input": io.BytesIO()})
        statuses: list[str] = []
        body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        assert statuses == ["200 OK"], statuses

    return get


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
