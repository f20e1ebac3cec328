"""Landing-page throughput: the portal's ``/`` vs a bare Flask "hello" app, same gunicorn settings.

Both run as ``gunicorn -c python:portal.gunicorn_config APP`` (workers = cores, 4 gthread threads
each, no access log) at the same time on two loopback ports; the load alternates between them in
rounds (A B A B ...) so that drift on the machine hits both alike.

RATIO = portal ``/`` requests/s / hello requests/s. Target >= 0.70.

    .venv/bin/python bench/pages_bench.py
    .venv/bin/python bench/pages_bench.py --full        # 5 rounds of 20 s each
"""

from __future__ import annotations

import argparse

import benchlib as b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="5 rounds of 20 s per app")
    parser.add_argument("--rounds", type=int, help="alternating rounds per app (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 10)")
    parser.add_argument("--clients", type=int, default=4 * b.CORES, help="concurrent clients (default 4 x cores)")
    parser.add_argument("--load-processes", type=int, default=1, help="load generator processes (default 1)")
    b.add_app_options(parser)
    parser.add_argument("--no-keepalive", action="store_true", help="a new connection per request")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.full else 3)
    seconds = args.seconds or (20.0 if args.full else 10.0)

    b.say(f"pages_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        env = b.portal_env(bench, bench.sqlite_url())
        b.migrate(env)
        portal = b.start_portal(bench, args, env, tmp / "portal.log")
        hello_args = ["--pythonpath", str(b.BENCH_DIR)]
        hello = b.Server(bench, "hello_app:app", env, tmp / "hello.log", hello_args).wait_ready("/")
        b.say(
            f"gunicorn -c python:portal.gunicorn_config: {args.app} on :{portal.port},"
            f" bench/hello_app.py on :{hello.port}"
            f" ({b.CORES} workers x 4 threads each)"
        )
        b.say(
            f"load: {args.clients} clients, {'new connection per request' if args.no_keepalive else 'keep-alive'},"
            f" {args.load_processes} load process(es), {rounds} alternating rounds of {seconds:.0f} s (+2 s warm-up)"
        )
        scenario = b.GetPage("/")
        results: dict[str, list[b.LoadResult]] = {"portal /": [], "hello": []}
        rows = []
        for index in range(rounds):
            for name, server in (("portal /", portal), ("hello", hello)):
                result = b.run_load(
                    server,
                    scenario,
                    args.clients,
                    seconds,
                    warmup=2.0,
                    processes=args.load_processes,
                    keepalive=not args.no_keepalive,
                )
                results[name].append(result)
                bad = {k: v for k, v in result.statuses.items() if k != "200"}
                rows.append(
                    (
                        f"{index + 1}",
                        name,
                        f"{result.rate:,.0f}",
                        b.ms(result.pct(50)),
                        b.ms(result.pct(99)),
                        b.ms(result.server_cpu / max(result.ops, 1)),
                        b.ms(result.client_cpu / max(result.ops, 1)),
                        str(bad or "") + str(dict(result.errors) or ""),
                    )
                )
        b.say(b.table(rows, ["round", "app", "req/s", "p50", "p99", "server CPU/req", "load CPU/req", "non-200"]))
        rate = {name: sum(r.ops for r in rs) / sum(r.seconds for r in rs) for name, rs in results.items()}
        for name, rs in results.items():
            latencies = [x for r in rs for x in r.latencies]
            cpu = sum(r.server_cpu for r in rs) / sum(r.ops for r in rs)
            b.say(
                f"{name:>9}: {rate[name]:,.0f} requests/s; {b.latency_line(latencies)}; server CPU {b.ms(cpu)}/request"
            )
        cpu = {name: sum(r.server_cpu for r in rs) / sum(r.ops for r in rs) for name, rs in results.items()}
        b.say(
            f"CPU-only view (less sensitive to other tenants): hello server CPU per request / portal's ="
            f" {cpu['hello'] / cpu['portal /']:.3f}"
        )
        failures = sum(v for rs in results.values() for r in rs for k, v in r.statuses.items() if k != "200")
        errors = sum(sum(r.errors.values()) for rs in results.values() for r in rs)
        ok = b.verdict("portal / requests/s / bare Flask hello requests/s", rate["portal /"] / rate["hello"], 0.70)
        if failures or errors:
            b.say(f"FAIL: {failures} non-200 responses, {errors} connection errors")
            ok = False
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
