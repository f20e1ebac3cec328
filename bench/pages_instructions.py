"""The landing page's CPU as instructions, which a busy machine does not change: ``/`` vs the bare hello app.

Runs each app in-process (the WSGI callable, as gunicorn calls it: a fresh environ per request,
the body read to the end) under ``valgrind --tool=callgrind``, counting only inside one
``functools.reduce`` call that makes the ``--requests`` measured requests (``--toggle-collect``),
so that the start-up (imports, catalogues, the page rendered once per language) and the warm-up
are left out:

    instructions a request = instructions counted / N The portal
runs as served: ``wsgi:app`` with the bench's environment, the JSON log line on stderr (to
/dev/null here) and Prometheus' multiprocess files, one request in three in each of en, es and fr
(picked by Accept-Language). Gunicorn's own share (the socket, the parsing) is the same for both
apps and not counted, so the ratio here is lower than the served one.

    .venv/bin/python bench/pages_instructions.py                 # a few minutes; RATIO = hello / portal
    PROFILE_SORT=tottime .venv/bin/python bench/pages_instructions.py --profile   # a cProfile of the portal instead
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchlib as b

LANGUAGES = ("en", "es", "fr")


def serve(app_name: str, warmup: int, requests: int, profile: bool) -> None:
    """In the measured process: build the app, then call it warmup + requests times."""
    module, _, attribute = app_name.partition(":")
    sys.path[:0] = [str(b.ROOT), str(b.BENCH_DIR)]
    sys.stderr = open(os.devnull, "w")  # the log lines' stream, as gunicorn's error log
    app = getattr(__import__(module), attribute)
    environs = [_environ(language) for language in LANGUAGES]

    def one(index: int) -> None:
        environ = dict(environs[index % len(environs)], **{"wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr})
        statuses: list[str] = []
        body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        assert statuses == ["200 OK"], statuses

    for index in range(warmup):
        one(index)
    # The start-up's objects out of the collector's way: otherwise whether one full collection of
    # them falls among the N requests moved the count by 176,000 instructions a request (N = 300).
    gc.collect()
    gc.freeze()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [one(index) for index in range(requests)])
        sys.stdout.flush()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(60)  # or tottime
        return
    # Callgrind counts inside this reduce only (nothing in a request calls functools.reduce).
    functools.reduce(lambda _, index: one(index), range(requests), None)


def _environ(language: str) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(
        path="/",
        base_url="http://127.0.0.1:8000",
        headers={"Accept-Language": f"{language},en;q=0.5", "User-Agent": "bench", "Accept": "text/html"},
        environ_base={"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "SERVER_SOFTWARE": "gunicorn/bench"},
    ).get_environ()
    environ["wsgi.multithread"] = True
    environ["wsgi.multiprocess"] = True
    return environ


def instructions(env: dict[str, str], app_name: str, warmup: int, requests: int) -> int:
    """Instructions callgrind counts in the measured requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--serve",
            app_name,
            "--warmup",
            str(warmup),
            "--requests",
            str(requests),
        ]
        subprocess.run(command, env=env, check=True, capture_output=True)
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        assert match is not None
        return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="measured requests (default 600)")
    parser.add_argument("--warmup", type=int, default=60, help="requests before them (default 60)")
    parser.add_argument(
        "--portal-only", action="store_true", help="count the portal's requests only, not the hello app's"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the portal's requests instead")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the measured process itself
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.warmup, args.requests, args.profile)
        return 0
    with b.Bench() as bench:
        tmp = bench.tempdir()
        env = b.portal_env(bench, bench.sqlite_url())
        b.migrate(env)
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        env["PYTHONHASHSEED"] = "0"
        if args.profile:
            serve_command = [sys.executable, __file__, "--serve", "wsgi:app", "--requests", str(args.requests)]
            subprocess.run([*serve_command, "--warmup", str(args.warmup), "--profile"], env=env, check=True)
            return 0
        b.say(f"pages_instructions: {args.warmup} warm-up + {args.requests} requests, valgrind --tool=callgrind")
        per_request = {}
        apps = [("portal /", "wsgi:app")] + ([] if args.portal_only else [("hello", "hello_app:app")])
        for name, app_name in apps:
            per_request[name] = instructions(env, app_name, args.warmup, args.requests) / args.requests
            b.say(f"{name:>9}: {per_request[name]:,.0f} instructions a request")
        if "hello" in per_request:
            ratio = per_request["hello"] / per_request["portal /"]
            b.say(f"RATIO = hello / portal instructions a request = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    b.run_main(main)
