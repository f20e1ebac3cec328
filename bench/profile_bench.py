"""Where a visit's server CPU goes: py-spy samples the gunicorn workers under load, by component.

The portal runs as in ``verify_bench.py`` (gunicorn with the shipped config, Redis limits, SQLite
or a PostgreSQL schema). A load process drives one scenario for ``--seconds`` while ``py-spy
record --nonblocking`` samples every worker (each thread that is running, not waiting); the
server's CPU over the same window comes from /proc. Each sample is put in the first component
(``COMPONENTS``) that one of its frames matches, leaf first, and

    ms of a component per operation = its share of the samples x server CPU per operation.

Shares are what a sampling profiler gives robustly, even on a shared machine; the ms follow the
/proc figure. Scenarios: ``web`` (GET + POST /lookup on a kept-alive connection, as
``verify_bench.py``), ``visit`` (a person's whole visit: a new connection, the form, the POST and
the exposure page read back), ``api`` (``api_bench.py``'s call), ``page`` (the landing page).
Needs py-spy (``.venv/bin/pip install -e ".[bench]"``) and the right to attach to the workers (root, or
ptrace_scope 0).

    .venv/bin/python bench/profile_bench.py --scenario web --argon2 1,8,1
    .venv/bin/python bench/profile_bench.py --scenario visit --folded /tmp/visit.txt
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import benchlib as b

# (component, pattern on one frame "function (path:line)"), most specific first: a sample is put in
# the first component one of its frames matches, anywhere in its stack.
COMPONENTS: list[tuple[str, str]] = [
    ("Argon2id hash", r"(^|\.)(stretch|hash_secret_raw) \("),
    ("JSON log lines", r"\(portal/logs\.py"),
    ("metrics (Prometheus files)", r"\((portal/metrics\.py|prometheus_client/)"),
    ("attack detection (Redis)", r"^_detect \(portal/events\.py"),
    ("audit row (chain append)", r"^AuditChain\.append(_many)? \("),
    ("hourly count (UPSERT)", r"^add_counts \(portal/stats\.py"),
    # The batch's transaction (group commit: whichever request leads writes the others' events too).
    (
        "event: its transaction (BEGIN, COMMIT, group commit)",
        r"^(record|_write_events) \(portal/events\.py|^GroupCommit\.",
    ),
    ("budgets: counting (Redis script)", r"^(_reserve|_give_back) \(portal/throttle\.py"),
    ("budgets: keys", r"(budgets?|person_key) \(portal/|\(portal/network\.py"),
    ("lookup: schemes and patient (SQL)", r"^(find_patient|lookup_schemes) \(portal/identity\.py"),
    ("verification row, sweep, COMMIT", r"^start_verification \(portal/identity\.py"),
    ("previous verification ended", r"^end_verification \(portal/identity\.py"),
    ("verification read (SQL)", r"^live_verification \(portal/identity\.py"),
    ("step-up check (Redis)", r"^letter_required \(portal/verification\.py"),
    ("code held? (SQL, decryption)", r"^code_of \(portal/claims\.py"),
    ("templates (Jinja2)", r"\(jinja2/|^(render_template|rendered_once) \("),
    ("CSRF token and check", r"\(flask_wtf/csrf\.py"),
    ("form (WTForms, normalising)", r"\((wtforms/|flask_wtf/|portal/forms\.py)"),
    # The key's rate: Flask-Limiter's own methods and the headers, not its decorator, which wraps the whole view.
    (
        "Flask-Limiter (API key rate, headers)",
        r"^(Limiter|LimitManager|RequestLimit)\.\S+ \(flask_limiter/"
        r"|^(rate_limit_headers|_window) \(portal/api/auth\.py",
    ),
    ("API key check (SQL)", r"^(_bearer_key|authenticate) \(portal/"),
    ("API body checks (JSON, normalising)", r"^(json_object|identity_claim|claim_request) \(portal/api/validation\.py"),
    ("session cookie (sign, parse)", r"\((flask/sessions\.py|itsdangerous/)|get_signing_serializer \("),
    ("language (Babel)", r"\((flask_babel/|babel/|portal/i18n\.py)"),
    ("request log line, request id", r"^(finish_request|start_request|request_id) \(portal/telemetry\.py"),
    ("security headers", r"^add_security_headers \("),
    ("database session (ORM, pool, close)", r"\((sqlalchemy/|flask_sqlalchemy_lite/)|^_close_session \("),
    ("Redis client", r"\((redis|limits)/"),
]
# Samples none of the above claims: the leaf-most frame of these says whose code it is.
OWNERS: list[tuple[str, str]] = [
    ("the portal's own code", r"\(portal/"),
    ("Flask and Werkzeug", r"\((flask|werkzeug)/"),
    ("gunicorn: accept, parse, write", r"\(gunicorn/"),
]


def component(stack: str) -> str:
    frames = stack.split(";")
    for name, pattern in _COMPONENTS:
        if any(pattern.search(frame) for frame in frames):
            return name
    for frame in reversed(frames):
        for name, pattern in _OWNERS:
            if pattern.search(frame):
                return name
    return "other (standard library, interpreter)"


_COMPONENTS = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
_OWNERS = [(name, re.compile(pattern)) for name, pattern in OWNERS]


def folded_samples(path: Path) -> Counter[str]:
    """py-spy's raw (collapsed) output: one ``frame;frame;... count`` line per distinct stack.

    A line without a count (seen once: a frame's name broken over two lines) is left out and said."""
    samples: Counter[str] = Counter()
    malformed = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[stack] += int(count)
        elif line.strip():
            malformed += 1
    if malformed:
        b.say(f"  {path.name}: {malformed} line(s) without a sample count left out")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("web", "visit", "api", "page"), default="web")
    parser.add_argument("--database-url", help="PostgreSQL URL (a private schema, dropped after); default SQLite")
    parser.add_argument("--seconds", type=float, default=20.0, help="sampled load window")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second per thread")
    parser.add_argument("--people", type=int, default=400, help="synthetic people imported")
    parser.add_argument("--clients", type=int, default=2 * b.CORES, help="concurrent clients (default 2 x cores)")
    parser.add_argument(
        "--running",
        action="store_true",
        help="sample every thread the OS shows running (default: only the thread holding the GIL, the"
        " Python work; on a busy machine 'running' includes threads waiting for a core)",
    )
    parser.add_argument("--folded", type=Path, help="also keep the workers' collapsed stacks in this file")
    b.add_argon2_option(parser)
    b.add_app_options(parser)
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(b.BIN)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")

    b.say(f"profile_bench  {b.machine_line()}")
    with b.Bench() as bench:
        tmp = bench.tempdir()
        store = b.limit_store(bench, args.limit_store)
        env = b.portal_env(bench, bench.database(args.database_url), args.argon2, **store)
        b.say(
            f"scenario {args.scenario}; {args.clients} clients; {b.describe_argon2(args.argon2)};"
            f" limits: {store['RATELIMIT_STORAGE_URI']};"
            f" database: {'PostgreSQL (private schema)' if args.database_url else 'SQLite (temporary file)'}"
        )
        identities = b.stored_people(env, args.people, tmp)
        if args.scenario == "api":
            scenario: object = b.ApiVerification(identities, b.api_key(env))
        elif args.scenario == "page":
            scenario = b.GetPage("/")
        else:
            whole = args.scenario == "visit"
            scenario = b.Lookup(identities, new_connections=whole, read_back=whole)
        raw = b.argon2_baseline_detail(args.argon2, b.CORES, 4.0)
        server = b.start_portal(bench, args, env, tmp / "gunicorn.log")
        b.run_load(server, scenario, args.clients, 3.0, warmup=1.0)  # warm every worker up

        workers = [pid for pid in server.pids() if pid != server.pid]
        outputs = [tmp / f"worker-{pid}.txt" for pid in workers]
        spies = []

        def start_spies(_elapsed: float) -> None:
            if spies:
                return
            for pid, output in zip(workers, outputs, strict=True):
                command = [spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--nonblocking"]
                command += [] if args.running else ["--gil"]
                command += ["--duration", str(int(args.seconds) - 1), "--format", "raw", "--output", str(output)]
                spies.append(bench.popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        result = b.run_load(server, scenario, args.clients, args.seconds, warmup=2.0, on_tick=start_spies)
        for proc in spies:
            proc.wait(timeout=60)
        samples: Counter[str] = Counter()
        for output in outputs:
            samples += folded_samples(output)
        if args.folded:
            args.folded.write_text("".join(f"{stack} {count}\n" for stack, count in samples.items()))

        statuses = dict(result.statuses)
        ops = max(result.ops, 1)
        cpu_per_op = result.server_cpu / ops
        total = sum(samples.values()) or 1
        by_component: Counter[str] = Counter()
        for stack, count in samples.items():
            by_component[component(stack)] += count
        # With --gil the hash, which runs without the GIL, is not sampled: the samples share out the
        # CPU besides a raw hash's (measured here). Otherwise the samples share out all of it.
        hashes = 0 if args.scenario == "page" else 1
        spread = cpu_per_op - (0.0 if args.running else hashes * raw.cpu_per_hash)
        b.say(
            f"{result.ops:,} operations in {args.seconds:.0f} s ({result.rate:,.1f}/s), statuses {statuses};"
            f" server CPU {b.ms(cpu_per_op)} an operation; a raw hash {b.ms(raw.cpu_per_hash)} of CPU;"
            f" {total:,} samples {'of running threads' if args.running else 'of the thread holding the GIL'}"
            f" share out {b.ms(spread)}"
        )
        rows = [
            (name, f"{count / total:.1%}", b.ms(spread * count / total)) for name, count in by_component.most_common()
        ]
        b.say(b.table(rows, ["component", "samples", "server CPU an operation"]))
        b.say(bench.cpu.line())
    return 0


if __name__ == "__main__":
    b.run_main(main)
