"""What a running Argon2id hash does to the request path beside it: the same visits' CPU next to an
idle core, next to a core that hashes, and on a core that hashes too.

One process, pinned to core 0, serves web visits in-process (the Flask test client: GET + POST
``/lookup``, cheap Argon2id so that the visit is the request path alone, the limits in Redis as in
``verify_bench.py``); a separate process hashes with the production parameters the whole time,
pinned to core 1 or to core 0, or is not running. Rounds alternate the three cases; each prints the
visits' thread CPU. Under gunicorn both cores hash nearly all the time, so the third case is the
one the server lives in; the gap to the first is what no change to the request path removes.

    .venv/bin/python bench/interference_bench.py
    .venv/bin/python bench/interference_bench.py --visits 300 --rounds 6
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import statistics
import time
from typing import Any

import benchlib as b

CSRF = re.compile(rb'name="csrf_token" type="hidden" value="([^"]+)"')
SPAWN = multiprocessing.get_context("spawn")
CASES = (("nothing of ours on the other core", None), ("a hash on the other core", 1), ("a hash on the same core", 0))


def hash_forever(core: int, stop: Any) -> None:
    """A raw hash after another with the production parameters, on ``core`` only, until ``stop``."""
    os.sched_setaffinity(0, {core})
    from portal.identity import Argon2Params, stretch

    params = Argon2Params(*b.PROD_ARGON2)
    while not stop.is_set():
        stretch(os.urandom(32), bytes(16), params)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visits", type=int, default=150, help="visits a round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the three cases")
    b.add_app_options(parser)
    args = parser.parse_args()
    if b.CORES < 2:
        raise SystemExit("needs two cores")

    b.say(f"interference_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        store = b.limit_store(bench, args.limit_store)
        env = b.portal_env(bench, bench.sqlite_url(), b.CHEAP_ARGON2, **store)
        people = b.stored_people(env, 200, tmp)
        from portal.app import create_app

        app = create_app(b.app_config(env))
        for handler in logging.getLogger("portal").handlers:  # the lines cost the same in every case
            handler.stream = bench.enter_context(open(os.devnull, "w"))
        client = app.test_client()
        os.sched_setaffinity(0, {0})

        def visit(n: int) -> None:
            client.delete_cookie("session")
            form_page = client.get("/lookup")
            token = CSRF.search(form_page.data)
            assert token is not None, form_page.status_code
            answer = client.post("/lookup", data={**people[n % len(people)], "csrf_token": token.group(1).decode()})
            assert answer.status_code == 303, answer.status_code

        for n in range(50):
            visit(n)
        results: dict[str, list[float]] = {label: [] for label, _core in CASES}
        for _round in range(args.rounds):
            for label, core in CASES:
                stop = SPAWN.Event()
                hasher = None
                if core is not None:
                    hasher = SPAWN.Process(target=hash_forever, args=(core, stop), daemon=True)
                    hasher.start()
                    time.sleep(1.0)  # spawned and hashing
                began = time.thread_time()
                for n in range(args.visits):
                    visit(n)
                results[label].append((time.thread_time() - began) / args.visits)
                if hasher is not None:
                    stop.set()
                    hasher.join(10)
        idle = statistics.median(results[CASES[0][0]])
        rows = [
            (label, ", ".join(b.ms(x) for x in xs), b.ms(median), f"{median / idle - 1:+.0%}")
            for label, xs in results.items()
            for median in [statistics.median(xs)]
        ]
        b.say(b.table(rows, ["beside the visits", "CPU a visit, by round", "median", "vs idle"]))
        b.say(bench.cpu.line())
    return 0


if __name__ == "__main__":
    b.run_main(main)
