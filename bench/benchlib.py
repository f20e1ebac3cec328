"""Shared machinery for the portal benchmarks in bench/*.py (standard library + the app's own venv).

What lives here, once, so the scripts differ only in what they measure:

* ``Bench``: a cleanup stack (temp dirs, private PostgreSQL schemas, servers, child processes)
  that also runs on Ctrl+C and SIGTERM;
* ``portal_env``: a PORTAL_* environment with freshly generated keys (ENV=testing);
* ``Server``: ``gunicorn -c python:portal.gunicorn_config APP`` on a free loopback port
  (deploy/launch.py, which the tests and the production rehearsal start theirs with too);
* ``run_load``: a closed-loop load generator in separate processes (threads, each with a
  lean keep-alive HTTP/1.1 client on a plain socket), with ``GetPage`` and ``Lookup`` scenarios;
* ``argon2_baseline``: N processes doing nothing but ``portal.identity.stretch``;
* process-tree RSS/PSS/CPU from /proc, percentiles, table printing.

Nothing here imports Flask or the portal at module level: the load-generator processes stay light.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portal.config import DEFAULTS as PORTAL_DEFAULTS
from portal.config import SECRET_NAMES

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))
from launch import Gunicorn, portal_environment, private_schema, stop_group  # noqa: E402 (deploy/ first)

BENCH_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's bin/ when run as .venv/bin/python bench/x.py
PORTAL = str(BIN / "portal")
CORES = os.cpu_count() or 1
DEFAULT_PG_URL = os.environ.get("PORTAL_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# (time_cost, memory_cost KiB, parallelism)
PROD_ARGON2: tuple[int, int, int] = (
    PORTAL_DEFAULTS["ARGON2_TIME_COST"],
    PORTAL_DEFAULTS["ARGON2_MEMORY_COST"],
    PORTAL_DEFAULTS["ARGON2_PARALLELISM"],
)
CHEAP_ARGON2 = (1, 8, 1)  # Argon2's own minimum: t >= 1, m >= 8 * p KiB
BENCH_REDIS = "redis://127.0.0.1:6379/14"  # the limit store, when a Redis answers there
LOOSE_LIMIT = "1000000 per minute"  # VERIFY_LIMIT_*: high enough that throttling never interferes

_SPAWN = multiprocessing.get_context("spawn")


def say(*parts: object) -> None:
    print(*parts, flush=True)


# --- Cleanup -------------------------------------------------------------------------------------


class Bench(contextlib.ExitStack):
    """Everything a benchmark creates is registered here and undone on exit, Ctrl+C or SIGTERM."""

    def __enter__(self) -> Bench:
        super().__enter__()
        self._old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        self._old_hup = signal.signal(signal.SIGHUP, _raise_interrupt)
        self.keys = {name: secrets.token_urlsafe(32) for name in SECRET_NAMES}
        self.cpu = CpuWatch()
        self.cpu.start()
        self.callback(self.cpu.stop)
        return self

    def __exit__(self, *exc: Any) -> bool:
        # A second Ctrl+C must not cut the cleanup short.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return bool(super().__exit__(*exc))
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, self._old_term)
            signal.signal(signal.SIGHUP, self._old_hup)

    def tempdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="portal-bench-"))
        self.callback(shutil.rmtree, path, ignore_errors=True)
        return path

    def sqlite_url(self, name: str = "portal.sqlite3") -> str:
        return f"sqlite:///{self.tempdir() / name}"

    def postgres_schema(self, base_url: str) -> str:
        """A private schema on ``base_url`` (dropped at exit, after the servers that use it have
        stopped); returns a URL whose search_path is it."""
        return self.enter_context(private_schema(base_url, f"bench_{secrets.token_hex(5)}"))

    def database(self, database_url: str | None) -> str:
        """A fresh empty database: a temp SQLite file, or a private schema when a PostgreSQL URL is given."""
        return self.postgres_schema(database_url) if database_url else self.sqlite_url()

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A child in its own process group, killed (the group, by its id) at exit if still running."""
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.callback(stop_group, proc)
        return proc


class Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's main(); Ctrl+C or SIGTERM exits 130 after the cleanup stack has run."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary files and schemas removed", file=sys.stderr)
        code = 130
    sys.exit(code)


# --- Environment and the portal CLI --------------------------------------------------------------


def portal_env(
    bench: Bench, database_url: str, argon2: tuple[int, int, int] = PROD_ARGON2, **settings: Any
) -> dict[str, str]:
    """The process environment for the portal: inherited PORTAL_* dropped, ours set explicitly.

    ``settings`` are PORTAL_ names without the prefix (HASH_CONCURRENCY=2, WORKERS=4, ...).
    """
    time_cost, memory_cost, parallelism = argon2
    values: dict[str, Any] = {
        "ENV": "testing",
        **bench.keys,
        "DATABASE_URL": database_url,
        "ARGON2_TIME_COST": time_cost,
        "ARGON2_MEMORY_COST": memory_cost,
        "ARGON2_PARALLELISM": parallelism,
        "VERIFY_LIMIT_PERSON": LOOSE_LIMIT,
        "VERIFY_LIMIT_CLIENT": LOOSE_LIMIT,
        "VERIFY_LIMIT_CLIENT_ATTEMPTS": LOOSE_LIMIT,
        "VERIFY_LIMIT_GLOBAL": LOOSE_LIMIT,
        "API_VERIFY_LIMIT_PERSON": LOOSE_LIMIT,
        "API_VERIFY_LIMIT_KEY": LOOSE_LIMIT,
        "API_VERIFY_LIMIT_CLIENT": LOOSE_LIMIT,
        # Budgets added since the baseline: the same for them (an older checkout ignores them).
        "VERIFY_LIMIT_PERSON_SHARED": LOOSE_LIMIT,
        "VERIFY_LIMIT_CLIENT_PEOPLE": LOOSE_LIMIT,
        "API_VERIFY_LIMIT_KEY_PEOPLE": LOOSE_LIMIT,
        "RATELIMIT_STORAGE_URI": "memory://",
        # The benchmark's own switch (bench/ablation_app.py), carried through to the served app.
        "BENCH_ABLATE": os.environ.get("PORTAL_BENCH_ABLATE"),
        **settings,
    }
    return portal_environment(values)


def app_config(env: dict[str, str]) -> dict[str, Any]:
    """The same settings as a ``create_app(test_config)`` mapping (for in-process measurements)."""
    import json

    config: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith("PORTAL_"):
            try:
                config[key[7:]] = json.loads(value)
            except ValueError:
                config[key[7:]] = value
    return config


def portal(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``portal`` command and capture its output."""
    proc = subprocess.Popen(
        [PORTAL, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # Ctrl+C or SIGTERM: the command (and its workers) must not outlive us
        stop_group(proc, grace=5)
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"portal {' '.join(args)} exited {done.returncode}:\n{output}")
    return done


def migrate(env: dict[str, str]) -> None:
    portal(env, "db", "upgrade")


def generate_patients(env: dict[str, str], count: int, path: Path, seed: int = 7) -> Path:
    portal(env, "generate-patients", str(count), "--seed", str(seed), "--out", str(path))
    return path


def read_identities(
    patients_csv: Path, letters_csv: Path | None = None, limit: int | None = None
) -> list[dict[str, str]]:
    """Lookup-form fields for the synthetic people of a CSV, as a person would type them.

    People without an SSN on file use the reference from ``--letters`` (the mail-house file).
    """
    references: dict[str, str] = {}
    if letters_csv is not None and letters_csv.exists():
        with open(letters_csv, newline="", encoding="utf-8") as stream:
            references = {row["record_id"]: row["reference"] for row in csv.DictReader(stream)}
    identities = []
    with open(patients_csv, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            digits = re.sub(r"\D", "", row["ssn"])
            if digits:
                factor = {"ssn_last4": digits[-4:], "reference": ""}
            elif row["record_id"] in references:
                factor = {"ssn_last4": "", "reference": references[row["record_id"]]}
            else:
                continue
            identities.append(
                {"last_name": row["last_name"], "date_of_birth": row["date_of_birth"], "zip_code": row["zip"], **factor}
            )
            if limit and len(identities) >= limit:
                break
    return identities


def stored_people(env: dict[str, str], count: int, tmp: Path) -> list[dict[str, str]]:
    """A migrated database holding ``count`` synthetic people imported with the real importer (their
    letters too); the identities to look them up with."""
    migrate(env)
    csv_path = generate_patients(env, count, tmp / "patients.csv")
    letters = tmp / "letters.csv"
    portal(env, "import-patients", str(csv_path), "--workers", str(CORES), "--letters", str(letters))
    identities = read_identities(csv_path, letters)
    say(f"stored {count:,} synthetic people with the real importer; {len(identities):,} identities to look up")
    return identities


def api_key(env: dict[str, str]) -> str:
    """A new partner key that may verify, at a rate out of reach (``portal create-api-key``)."""
    created = portal(env, "create-api-key", "--partner", "bench", "--scope", "verify", "--rate", LOOSE_LIMIT)
    return created.stdout.splitlines()[1]


def fill_patients(url: str, total: int) -> int:
    """Top ``patients`` up to ``total`` rows with filler records in bulk (no Argon2 at all).

    Filler rows look like imported ones: public_id, record_key, lookup_digest and reference_digest
    are MD5/SHA-256 of (a run nonce, the row number), 32 uniformly spread bytes under the existing
    hash scheme as Argon2id's output and the HMACs are, so they sort into the same B-tree pages
    in the same way, and match no one. PostgreSQL gets them by COPY (``copy_rows``), SQLite by
    executemany batches; both are ANALYZEd afterwards. Returns how many rows were added.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        scheme_id = connection.scalar(sa.text("SELECT id FROM hash_schemes ORDER BY id LIMIT 1"))
        if scheme_id is None:  # no import ran: a scheme of the production parameters
            connection.execute(
                sa.text(
                    "INSERT INTO hash_schemes (key_version, time_cost, memory_cost, parallelism, salt, active,"
                    " created_at) VALUES (1, :t, :m, :p, :salt, :yes, :now)"
                ),
                {
                    "t": PROD_ARGON2[0],
                    "m": PROD_ARGON2[1],
                    "p": PROD_ARGON2[2],
                    "salt": secrets.token_bytes(16),
                    "yes": True,
                    "now": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                },
            )
            scheme_id = connection.scalar(sa.text("SELECT id FROM hash_schemes ORDER BY id LIMIT 1"))
        present = connection.scalar(sa.text("SELECT count(*) FROM patients"))
    engine.dispose()
    missing = max(0, total - present)
    nonce = secrets.token_bytes(8)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(missing):
            seed = nonce + i.to_bytes(8, "big")
            yield (
                hashlib.md5(b"p" + seed).hexdigest(),
                hashlib.sha256(b"r" + seed).digest(),
                scheme_id,
                hashlib.sha256(b"d" + seed).digest(),
                1,
                hashlib.sha256(b"f" + seed).digest(),
                now,
                now,
            )

    columns = {
        "public_id": "varchar",
        "record_key": "bytea",
        "scheme_id": "int4",
        "lookup_digest": "bytea",
        "exposed_fields": "int4",
        "reference_digest": "bytea",
        "imported_at": "timestamp",
        "updated_at": "timestamp",
    }
    copy_rows(url, "patients", columns, rows())
    return missing


# B-tree leaves that inserts in random key order have split settle at about ln 2 full (an import
# writes digests in no order); a sorted build fills them to 90 %. A rebuild with this fillfactor
# gives the sizes an import leaves (1,000,000 patients: 76.7 MB for an index filled by inserts,
# 75.9 MB rebuilt at 70).
RANDOM_ORDER_FILLFACTOR = 70


def copy_rows(url: str, table: str, columns: dict[str, str], rows: Iterable[Sequence[Any]]) -> None:
    """Load ``rows`` into ``table``: COPY on PostgreSQL, ``columns`` naming each column's type.

    Maintaining every index row by row would make a 10-million-row load take most of an hour, so
    on PostgreSQL the secondary indexes are dropped, the rows COPYed, and the indexes built again
    (and their constraints re-attached) as they were: those whose order is unrelated to the rows'
    (``pg_stats.correlation`` of the first column under 0.5) with RANDOM_ORDER_FILLFACTOR, the
    others (ids, dates: appended in order, as an import appends them) with the default 90.
    SQLite: executemany. The table is ANALYZEd afterwards either way.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    names = ", ".join(columns)
    try:
        if engine.dialect.name != "postgresql":
            marks = ", ".join(f":{name}" for name in columns)
            insert = sa.text(f"INSERT INTO {table} ({names}) VALUES ({marks})")
            batch: list[dict[str, Any]] = []
            with engine.begin() as connection:
                for row in rows:
                    batch.append(dict(zip(columns, row, strict=True)))
                    if len(batch) >= 10_000:
                        connection.execute(insert, batch)
                        batch = []
                if batch:
                    connection.execute(insert, batch)
                connection.execute(sa.text(f"ANALYZE {table}"))
            return
        raw = engine.raw_connection()
        try:
            connection = raw.driver_connection
            indexes = connection.execute(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid), k.conname, k.contype,"
                " (SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid AND attnum = i.indkey[0])"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid"
                " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary",
                (table,),
            ).fetchall()
            for name, _definition, constraint, _kind, _column in indexes:
                if constraint:
                    connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
                else:
                    connection.execute(f"DROP INDEX {name}")
            connection.commit()
            with connection.cursor() as cursor:
                with cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(list(columns.values()))
                    for row in rows:
                        copy.write_row(row)
            connection.commit()
            connection.execute(f"ANALYZE {table}")
            connection.execute("SET maintenance_work_mem = '512MB'")
            for name, definition, constraint, kind, column in indexes:
                correlation = connection.execute(
                    "SELECT correlation FROM pg_stats WHERE schemaname = current_schema()"
                    " AND tablename = %s AND attname = %s",
                    (table, column),
                ).fetchone()
                scattered = correlation is None or correlation[0] is None or abs(correlation[0]) < 0.5
                head, where, predicate = definition.partition(" WHERE ")
                fill = f" WITH (fillfactor = {RANDOM_ORDER_FILLFACTOR})" if scattered else ""
                connection.execute(head + fill + where + predicate)
                if scattered:
                    connection.execute(f"ALTER INDEX {name} RESET (fillfactor)")
                if constraint:
                    word = {"u": "UNIQUE", "p": "PRIMARY KEY"}[kind]
                    connection.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} {word} USING INDEX {name}")
            connection.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def postgres_reachable(url: str) -> str | None:
    """None when ``url`` answers, else the reason."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:
        return f"{error.__class__.__name__}: {str(error).splitlines()[0][:120]}"


# --- /proc: memory and CPU of a process tree -----------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stream:
                stat = stream.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as stream:
            return int(stream.read().split()[1]) * _PAGE
    except OSError:
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared (copy-on-write) pages split between the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as stream:
            for line in stream:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss_bytes(pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            fields = stream.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except OSError:
        return 0.0


def hashing_cpu_seconds(pid: int) -> float:
    """User + system CPU of the process's Argon2id threads (the portal names them ``argon2_N``)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as stream:
                name, fields = stream.read().split(b" (", 1)[1].rsplit(b")", 1)
        except OSError:
            continue
        if name.startswith(b"argon2"):
            fields_list = fields.split()
            total += int(fields_list[11]) + int(fields_list[12])
    return total / _TICK


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


@dataclass
class MemorySample:
    at: float
    rss: int
    pss: int
    processes: int
    note: str = ""


class MemorySampler(threading.Thread):
    """Samples the RSS (and PSS) summed over a process tree every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25, note: Callable[[], str] | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.note = pid, interval, note
        self.samples: list[MemorySample] = []
        self._halt = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        pids = process_tree(self.pid)
        rss = sum(rss_bytes(p) for p in pids)
        if rss:
            pss = sum(pss_bytes(p) for p in pids)
            note = self.note() if self.note else ""
            self.samples.append(MemorySample(time.monotonic() - self.started_at, rss, pss, len(pids), note))

    def stop(self) -> MemorySampler:
        self._halt.set()
        self.join()
        return self

    @property
    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)

    @property
    def peak_pss(self) -> int:
        return max((s.pss for s in self.samples), default=0)


class CpuWatch(threading.Thread):
    """Whole-machine busy CPU (/proc/stat) vs the CPU of this benchmark's own process tree.

    The machine may be shared: ``others`` is the CPU that processes outside this run used, a
    direct measure of how much the run's figures can be trusted. ``snapshot()`` gives cumulative
    (machine busy, ours) core-seconds; subtract two snapshots for a window.
    """

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.root = os.getpid()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._busy0 = self._machine_busy()
        self._last = {pid: cpu_seconds(pid) for pid in process_tree(self.root)}
        self._ours = 0.0
        self.started_at = time.monotonic()

    @staticmethod
    def _machine_busy() -> float:
        with open("/proc/stat") as stream:
            values = [int(v) for v in stream.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return (sum(values[:8]) - idle) / _TICK  # user..steal; guest time is already in user

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        current = {pid: cpu_seconds(pid) for pid in process_tree(self.root)}
        with self._lock:
            self._ours += sum(max(0.0, cpu - self._last.get(pid, 0.0)) for pid, cpu in current.items())
            self._last = current

    def snapshot(self) -> tuple[float, float, float]:
        """(wall seconds, machine busy core-seconds, ours core-seconds) since the watch started."""
        self._sample()
        with self._lock:
            return time.monotonic() - self.started_at, self._machine_busy() - self._busy0, self._ours

    def line(self, since: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> str:
        wall, busy, ours = (a - b for a, b in zip(self.snapshot(), since, strict=True))
        others = max(0.0, busy - ours)
        warn = "  WARNING: the machine was shared, figures are noisy" if others > 0.15 * wall * CORES else ""
        return (
            f"machine CPU over {wall:.0f} s: {busy / wall:.2f} of {CORES} cores busy; this run {ours / wall:.2f},"
            f" other processes {others / wall:.2f}{warn}"
        )

    def stop(self) -> None:
        self._halt.set()


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


# --- gunicorn ------------------------------------------------------------------------------------


class Server(Gunicorn):
    """The portal (or another ``APP``) under gunicorn, stopped with the benchmark's cleanup."""

    def __init__(self, bench: Bench, app: str, env: dict[str, str], log: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(app, log, options=extra)
        process = self.start(env).process
        bench.callback(self.stop)
        assert process is not None
        self.pid = process.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss(self) -> int:
        return sum(rss_bytes(p) for p in self.pids())

    def error_lines(self) -> list[str]:
        """Tracebacks and worker timeouts/crashes the server logged."""
        pattern = re.compile(r"Traceback|WORKER TIMEOUT|Worker .* was sent|\[ERROR\]|unhandled")
        return [line for line in self.log_text().splitlines() if pattern.search(line)]


def add_app_options(parser: Any) -> None:
    """--app/--pythonpath: measure another WSGI module (e.g. the app with a proposed change applied);
    --limit-store: where the limits count."""
    parser.add_argument("--app", default="wsgi:app", help="WSGI app to serve (default wsgi:app, the real one)")
    parser.add_argument("--pythonpath", help="extra import path for --app")
    parser.add_argument(
        "--limit-store",
        default=BENCH_REDIS,
        help=f"limit store (default {BENCH_REDIS} as in production, memory:// when no Redis answers there)",
    )


def add_argon2_option(parser: Any) -> None:
    parser.add_argument(
        "--argon2",
        default=PROD_ARGON2,
        type=lambda text: tuple(int(x) for x in text.split(",")),
        metavar="T,M,P",
        help="Argon2id params (default the production 2,19456,1; 1,8,1 isolates the non-hash cost)",
    )


def limit_store(bench: Bench, uri: str) -> dict[str, str]:
    """The limit-store settings: Redis as in production, where a server of several workers refuses
    memory://, under a key prefix of this run's own (its keys deleted at exit); memory:// when asked
    for, or when no Redis answers at ``uri``."""
    if uri == "memory://":
        return {"RATELIMIT_STORAGE_URI": uri}
    import redis

    client = redis.Redis.from_url(uri, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        say(f"no Redis answers at {uri}: the limits count in each worker's memory (memory://)")
        return {"RATELIMIT_STORAGE_URI": "memory://"}
    prefix = f"bench{secrets.token_hex(4)}"

    def delete_keys() -> None:
        for key in client.scan_iter(match=f"*{prefix}*"):
            client.delete(key)

    bench.callback(delete_keys)
    return {"RATELIMIT_STORAGE_URI": uri, "RATELIMIT_KEY_PREFIX": prefix}


def start_portal(bench: Bench, args: Any, env: dict[str, str], log: Path, ready: str = "/") -> Server:
    extra = ["--pythonpath", args.pythonpath] if args.pythonpath else []
    server = Server(bench, args.app, env, log, extra).wait_ready(ready)
    if args.app != "wsgi:app":
        say(f"NOTE: serving {args.app} (from {args.pythonpath}), not the project's wsgi:app")
    return server


def add_floor_option(parser: Any) -> None:
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also serve bench/floor_app.py (the request read, one Argon2id, a minimal answer) under the same"
        " gunicorn settings, loaded in the same rounds: the ceiling of this stack on this machine",
    )


def start_floor(bench: Bench, args: Any, env: dict[str, str], log: Path, ready: str) -> Server | None:
    """The floor app beside the portal when ``--floor`` asks for it (same settings, its own port)."""
    if not args.floor:
        return None
    return Server(bench, "floor_app:app", env, log, ["--pythonpath", str(BENCH_DIR)]).wait_ready(ready)


def floor_verdict(name: str, rounds: Rounds) -> None:
    """The floor's ratio beside the portal's, and the share of the floor the portal reaches."""
    if rounds.floor_ratio is None:
        return
    share = f"{rounds.ratio / rounds.floor_ratio:.3f}" if rounds.floor_ratio else "none"
    say(
        f"FLOOR {name} = {rounds.floor_ratio:.3f}  (bench/floor_app.py, same rounds: this stack's ceiling here);"
        f" the portal {rounds.ratio:.3f} = {share} of it"
    )


# --- Load generator ------------------------------------------------------------------------------

CSRF = re.compile(rb'name="csrf_token"[^>]*value="([^"]+)"')


class GetPage:
    """One operation = GET ``path`` (the status of the response)."""

    def __init__(self, path: str = "/") -> None:
        self.path = path

    def __call__(self, client: _Client, n: int) -> tuple[str, bool]:
        status, headers, _body = client.request("GET", self.path)
        return str(status), _retry_after_ok(status, headers)


class Lookup:
    """One operation = GET /lookup (CSRF token + session cookie), then POST /lookup with an identity.

    A real browser's first visit: a fresh session each time, both requests on one kept-alive
    connection. By default each client keeps its connection for all its visits, as a proxy that
    pools its upstream connections does; ``new_connections`` opens one per visit instead, as
    visitors reaching gunicorn directly (or through a proxy without a pool) do, and then the
    workers compete to accept each visit.
    The operation's status is the POST's (303 = verified), or "GET nnn" when the form failed.
    ``read_back``: the whole visit a person makes, the exposure page read with the new session
    after the redirect (its status replaces the POST's when it is not 200: "exposure nnn").
    """

    def __init__(
        self, identities: list[dict[str, str]], new_connections: bool = False, read_back: bool = False
    ) -> None:
        self.identities = identities
        self.new_connections = new_connections
        self.read_back = read_back

    def __call__(self, client: _Client, n: int) -> tuple[str, bool]:
        status, headers, body = client.request("GET", "/lookup")
        match = CSRF.search(body)
        if status != 200 or not match:
            return f"GET {status}", _retry_after_ok(status, headers)
        cookie = _cookies(headers)
        form = {**self.identities[n % len(self.identities)], "csrf_token": match.group(1).decode()}
        status, headers, _ = client.request(
            "POST",
            "/lookup",
            urllib.parse.urlencode(form),
            {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
        )
        outcome = str(status)
        if self.read_back and status == 303:
            page, headers, _ = client.request("GET", "/exposure", None, {"Cookie": _cookies(headers)})
            if page != 200:
                outcome, status = f"exposure {page}", page
        if self.new_connections:
            client.close()
        return outcome, _retry_after_ok(status, headers)


class ApiVerification:
    """One operation = POST /api/v1/verifications with a partner key and a real identity.

    The operation's status is "200" for ``{"verified": true}``, "200 unverified" otherwise.
    """

    def __init__(self, identities: list[dict[str, str]], key: str) -> None:
        self.bodies = [json.dumps(identity) for identity in identities]
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def __call__(self, client: _Client, n: int) -> tuple[str, bool]:
        status, headers, body = client.request(
            "POST", "/api/v1/verifications", self.bodies[n % len(self.bodies)], self.headers
        )
        verified = status == 200 and b'"verified":true' in body
        return str(status) if verified or status != 200 else "200 unverified", _retry_after_ok(status, headers)


def _cookies(headers: _Headers) -> str:
    """A response's cookies as the next request's Cookie header."""
    return "; ".join(c.split(";", 1)[0] for c in headers.get_all("Set-Cookie") or [])


def _retry_after_ok(status: int, headers: Any) -> bool:
    return status != 503 or bool(headers.get("Retry-After"))


class _Headers:
    """Response headers, looked up case-insensitively (the little of http.client.HTTPMessage used here)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.pairs if key == name]

    def get(self, name: str, default: str | None = None) -> str | None:
        return next(iter(self.get_all(name)), default)


class _Client:
    """One keep-alive HTTP/1.1 connection on a plain socket, reopened after an error or a close.

    Lean on purpose (no http.client, whose header parsing goes through the email package): the
    load process shares the machine's cores with the server, and every cycle it spends is one the
    server does not get. It understands what gunicorn sends the portal: Content-Length bodies, or
    a body up to the close.
    """

    def __init__(self, port: int, keepalive: bool, timeout: float) -> None:
        self.port, self.keepalive, self.timeout = port, keepalive, timeout
        self.sock: socket.socket | None = None
        self.pending = b""  # bytes received beyond the last response

    def request(self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        payload = body.encode() if body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(payload)}")
        if not self.keepalive:
            lines.append("Connection: close")
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(message)
            status, response_headers, data, closing = self._response()
        except Exception:
            self.close()
            raise
        if closing or not self.keepalive:
            self.close()
        return status, response_headers, data

    def _receive(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def _response(self) -> tuple[int, _Headers, bytes, bool]:
        buffer = self.pending
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._receive()
        status_line, *header_lines = buffer[:end].decode("latin-1").split("\r\n")
        pairs = [(name.strip().lower(), value.strip()) for name, _, value in (h.partition(":") for h in header_lines)]
        headers = _Headers(pairs)
        closing = (headers.get("connection") or "").lower() == "close"
        body, length = buffer[end + 4 :], headers.get("content-length")
        if headers.get("transfer-encoding"):
            raise RuntimeError("chunked responses are not supported by the bench client")
        if length is None:  # the body runs to the close
            with contextlib.suppress(ConnectionError):
                while True:
                    body += self._receive()
            return int(status_line.split()[1]), headers, body, True
        while len(body) < int(length):
            body += self._receive()
        self.pending = body[int(length) :]
        return int(status_line.split()[1]), headers, body[: int(length)], closing

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.pending = b""


@dataclass
class LoadResult:
    clients: int
    seconds: float  # the measurement window
    ops: int  # operations completed inside the window
    latencies: list[float]  # seconds, of those operations
    statuses: Counter[str] = field(default_factory=Counter)  # every operation, window or not
    errors: Counter[str] = field(default_factory=Counter)  # connection errors by exception type
    missing_retry_after: int = 0  # 503s without a Retry-After header
    client_cpu: float = 0.0  # CPU seconds the load processes used
    server_cpu: float = 0.0  # CPU seconds the server tree used inside the window
    server_cpu_by_process: list[float] = field(default_factory=list)  # per gunicorn process, same window
    server_hash_cpu: float = 0.0  # of server_cpu, the Argon2id threads' (same window)
    server_peak_rss: int = 0
    late_start: float = 0.0  # how late the slowest load process started (should be ~0)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def pct(self, p: float) -> float:
        return percentile(sorted(self.latencies), p)


def _load_process(
    scenario: Any,
    port: int,
    clients: int,
    first: int,
    start: float,
    warm_end: float,
    end: float,
    keepalive: bool,
    timeout: float,
    out: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    missing = [0]
    lock = threading.Lock()
    late = max(0.0, time.time() - start)

    def client_thread(index: int) -> None:
        client = _Client(port, keepalive, timeout)
        mine: list[float] = []
        my_statuses: Counter[str] = Counter()
        my_errors: Counter[str] = Counter()
        n = index * 7919
        time.sleep(max(0.0, start - time.time()))
        while (began := time.time()) < end:
            n += 1
            try:
                status, retry_ok = scenario(client, n)
            except Exception as error:
                my_errors[type(error).__name__] += 1
                time.sleep(0.01)
                continue
            done = time.time()
            my_statuses[status] += 1
            if not retry_ok:
                missing[0] += 1
            if warm_end <= done <= end:
                mine.append(done - began)
        client.close()
        with lock:
            latencies.extend(mine)
            statuses.update(my_statuses)
            errors.update(my_errors)

    threads = [threading.Thread(target=client_thread, args=(first + i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = os.times()
    out.put((latencies, statuses, errors, missing[0], usage.user + usage.system, late))


def run_load(
    server: Server,
    scenario: Any,
    clients: int,
    seconds: float,
    warmup: float = 2.0,
    processes: int = 1,
    keepalive: bool = True,
    timeout: float = 120.0,
    on_tick: Callable[[float], None] | None = None,
) -> LoadResult:
    """Closed loop: ``clients`` threads over ``processes`` load processes, each doing one operation after another.

    Only operations completed inside the ``seconds`` window after ``warmup`` are counted for rate
    and latency; the server's CPU and RSS are read over the same window from /proc.
    """
    processes = max(1, min(processes, clients))
    queue = _SPAWN.Queue()
    start = time.time() + 1.5 + 0.3 * processes  # room for the load processes to spawn
    warm_end, end = start + warmup, start + warmup + seconds
    procs = []
    first = 0
    for index in range(processes):
        share = clients // processes + (1 if index < clients % processes else 0)
        proc = _SPAWN.Process(
            target=_load_process,
            args=(scenario, server.port, share, first, start, warm_end, end, keepalive, timeout, queue),
            daemon=True,
        )
        first += share
        proc.start()
        procs.append(proc)
    result = LoadResult(clients, seconds, 0, [])
    sampler = MemorySampler(server.pid, interval=0.5)
    try:
        sampler.start()
        time.sleep(max(0.0, warm_end - time.time()))
        cpu_before = {pid: cpu_seconds(pid) for pid in server.pids()}
        hash_before = {pid: hashing_cpu_seconds(pid) for pid in cpu_before}
        while (now := time.time()) < end:
            time.sleep(min(1.0, end - now))
            if on_tick:
                on_tick(now - warm_end)
        cpu_after = {pid: cpu_seconds(pid) for pid in server.pids()}
        result.server_hash_cpu = sum(hashing_cpu_seconds(pid) - hash_before.get(pid, 0.0) for pid in cpu_after)
        by_process = [cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items()]
        result.server_cpu = sum(by_process)
        result.server_cpu_by_process = sorted(by_process, reverse=True)
        for _ in procs:
            latencies, statuses, errors, missing, cpu, late = queue.get(timeout=timeout + 30)
            result.latencies.extend(latencies)
            result.statuses.update(statuses)
            result.errors.update(errors)
            result.missing_retry_after += missing
            result.client_cpu += cpu
            result.late_start = max(result.late_start, late)
        for proc in procs:
            proc.join(10)
    finally:
        sampler.stop()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    result.ops = len(result.latencies)
    result.server_peak_rss = sampler.peak_rss
    if result.late_start > warmup:
        say(f"  WARNING: a load process started {result.late_start:.1f} s late (after the warm-up)")
    return result


def timed_request(server: Server, scenario: Any, n: int = 0) -> tuple[str, float]:
    """One operation from this process: (status, seconds)."""
    client = _Client(server.port, True, 60.0)
    began = time.perf_counter()
    status, _ = scenario(client, n)
    elapsed = time.perf_counter() - began
    client.close()
    return status, elapsed


@dataclass
class Rounds:
    """What ``alternating_rounds`` measured: the portal's ratio and budget, and the floor's when served."""

    ratio: float  # operations/s / raw hashes/s
    good: bool  # every operation ended in the expected status, no connection errors
    peak_rss: int
    besides_hash: float  # server CPU seconds an operation less a raw hash's CPU (the budget)
    floor_ratio: float | None = None  # the floor app's operations/s / raw hashes/s, same rounds


def alternating_rounds(
    bench: Bench,
    server: Server,
    scenario: Any,
    argon2: tuple[int, int, int],
    clients: int,
    seconds: float,
    rounds: int,
    baseline_seconds: float,
    new_connections: bool,
    success: str,
    what: str,
    floor: Server | None = None,
) -> Rounds:
    """Rounds of raw Argon2id on every core, then HTTP load (then the same load on ``floor``, the
    bare app of ``floor_app.py``, when given); prints the table and the summary."""
    # Alternating rounds (raw Argon2id, then HTTP load) so that drift on the machine hits both alike.
    raws: list[float] = []
    hash_cpus: list[float] = []
    loads: list[LoadResult] = []
    floors: list[LoadResult] = []
    window = bench.cpu.snapshot()
    round_rows = []
    for index in range(rounds):
        baseline = argon2_baseline_detail(argon2, CORES, baseline_seconds)
        raws.append(baseline.rate)
        hash_cpus.append(baseline.cpu_per_hash)
        loads.append(run_load(server, scenario, clients, seconds, warmup=3.0))
        by_process = " ".join(f"{c / seconds:.2f}" for c in loads[-1].server_cpu_by_process)
        row: tuple[object, ...] = (
            index + 1,
            f"{raws[-1]:,.1f}",
            f"{loads[-1].rate:,.1f}",
            f"{loads[-1].rate / raws[-1]:.3f}",
        )
        if floor is not None:
            floors.append(run_load(floor, scenario, clients, seconds, warmup=3.0))
            row += (f"{floors[-1].rate:,.1f}", f"{floors[-1].rate / raws[-1]:.3f}")
        round_rows.append((*row, by_process))
    load_cpu = bench.cpu.line(window)
    lopsided = [
        str(i + 1)
        for i, r in enumerate(loads)
        if len(r.server_cpu_by_process) > 2 and r.server_cpu_by_process[1] < 0.25 * r.server_cpu_by_process[0]
    ]
    raw = sum(raws) / len(raws)
    ops = sum(r.ops for r in loads)
    rate = ops / (seconds * rounds)
    statuses = sum((r.statuses for r in loads), Counter())
    errors = sum((r.errors for r in loads), Counter())
    peak_rss = max(r.server_peak_rss for r in loads)
    say(
        f"{rounds} rounds of: raw Argon2id with {CORES} processes for {baseline_seconds:.0f} s, then"
        f" {clients} HTTP clients for {seconds:.0f} s (after 3 s warm-up; 1 load process;"
        f" {'a new connection per visit' if new_connections else 'one kept-alive connection per client'})"
        + (", then the same on the floor app" if floor is not None else "")
    )
    floor_columns = ["floor/s", "floor ratio"] if floor is not None else []
    header = ["round", "raw hashes/s", f"{what}/s", "ratio", *floor_columns, "server CPU by process (cores)"]
    say(table(round_rows, header))
    say(
        f"  {ops:,} verified {what} -> {rate:,.1f} {what}/s vs {raw:,.1f} raw hashes/s;"
        f" statuses {dict(statuses)}  connection errors {dict(errors) or 0}"
    )
    hash_cpu = sum(hash_cpus) / len(hash_cpus)
    server_cpu = _cpu_lines(loads, hash_cpu)
    say(f"  server RSS peak (master + workers): {mib(peak_rss)}")
    besides_hash = server_cpu - hash_cpu
    if lopsided:
        say(
            f"  NOTE: in round(s) {', '.join(lopsided)} the kept-alive connections landed (almost) all on one"
            " worker (it still hashes on every core: the server's hashing slots are shared by its workers)"
        )
    good = statuses.get(success, 0) == sum(statuses.values()) and not errors
    floor_ratio = None
    if floor is not None:
        floor_ops = sum(r.ops for r in floors)
        floor_statuses = sum((r.statuses for r in floors), Counter())
        floor_ratio = floor_ops / (seconds * rounds) / raw
        say(
            f"  the floor app (bench/floor_app.py: the request read, one Argon2id, a minimal answer; same gunicorn"
            f" settings and hashing slots): {floor_ops / (seconds * rounds):,.1f} {what}/s;"
            f" statuses {dict(floor_statuses)}"
        )
        _cpu_lines(floors, hash_cpu, "  floor: ")
        good = good and floor_statuses.get(success, 0) == sum(floor_statuses.values())
    say(f"  {load_cpu}")
    if not good:
        say(f"  FAIL: some {what} did not end in {success}")
    return Rounds(rate / raw, good, peak_rss, besides_hash, floor_ratio)


def _cpu_lines(loads: list[LoadResult], hash_cpu: float, prefix: str = "  ") -> float:
    """Print latency and CPU an operation of these loads (server, by thread, load generator, the
    CPU-only view); return the server's CPU seconds an operation."""
    ops = max(sum(r.ops for r in loads), 1)
    answered = max(sum(sum(r.statuses.values()) for r in loads), 1)
    server_cpu = sum(r.server_cpu for r in loads)
    client_cpu = sum(r.client_cpu for r in loads)
    say(f"{prefix}latency per operation: {latency_line([x for r in loads for x in r.latencies])}")
    say(
        f"{prefix}CPU per operation: server {ms(server_cpu / ops)}, load generator"
        f" {ms(client_cpu / answered)}; raw Argon2id hash {ms(hash_cpu)}"
    )
    server_hash_cpu = sum(r.server_hash_cpu for r in loads)
    if server_hash_cpu:
        say(
            f"{prefix}server CPU per operation by thread: the Argon2id threads {ms(server_hash_cpu / ops)}"
            f" (a raw hash {ms(hash_cpu)}), the request path (every other thread)"
            f" {ms((server_cpu - server_hash_cpu) / ops)}"
        )
    cpu_bound = hash_cpu / ((server_cpu + client_cpu) / ops)
    say(
        f"{prefix}CPU-only view (less sensitive to other tenants): Argon2id core-time / all CPU per operation"
        f" (server + load generator) = {cpu_bound:.3f}; the ratio cannot exceed this on a dedicated machine"
    )
    return server_cpu / ops


# --- Raw Argon2id baseline -----------------------------------------------------------------------


def _hash_process(params: tuple[int, int, int], seconds: float, barrier: Any, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from portal.identity import Argon2Params, stretch

    argon2 = Argon2Params(*params)
    salt = secrets.token_bytes(16)
    stretch(b"warm-up", salt, argon2)
    barrier.wait()
    count, began, cpu = 0, time.perf_counter(), time.process_time()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        stretch(count.to_bytes(32, "big"), salt, argon2)  # a 32-byte message, as the HMAC output is
        count += 1
    out.put((count / (time.perf_counter() - began), (time.process_time() - cpu) / count))


@dataclass
class Baseline:
    rate: float  # hashes/s, all processes together
    cpu_per_hash: float  # CPU seconds one hash costs (mean over processes)

    def __float__(self) -> float:
        return self.rate


def argon2_baseline(params: tuple[int, int, int], processes: int = CORES, seconds: float = 6.0) -> float:
    """Hashes per second of ``processes`` processes doing nothing but ``portal.identity.stretch``."""
    return argon2_baseline_detail(params, processes, seconds).rate


def argon2_baseline_detail(params: tuple[int, int, int], processes: int = CORES, seconds: float = 6.0) -> Baseline:
    """Hashes/s of ``processes`` processes doing nothing but ``stretch``, and the CPU time of one hash."""
    queue = _SPAWN.Queue()
    barrier = _SPAWN.Barrier(processes)
    procs = [
        _SPAWN.Process(target=_hash_process, args=(params, seconds, barrier, queue), daemon=True)
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=seconds + 60) for _ in procs]
        for proc in procs:
            proc.join(10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    return Baseline(sum(r for r, _ in results), sum(c for _, c in results) / len(results))


# --- Statistics and printing ---------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks, on already sorted data."""
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:,.2f} ms" if value < 10 else f"{value:,.1f} ms"


def latency_line(latencies: Iterable[float]) -> str:
    ordered = sorted(latencies)
    line = "  ".join(f"p{p} {ms(percentile(ordered, p))}" for p in (50, 95, 99))
    return f"{line}  max {ms(ordered[-1] if ordered else 0)}"


def table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def verdict(name: str, ratio: float, low: float, high: float | None = None) -> bool:
    ok = ratio >= low and (high is None or ratio <= high)
    target = f">= {low:.2f}" if high is None else f"within {low:.2f}-{high:.2f}"
    say(f"RATIO {name} = {ratio:.3f}  (target {target}: {'MET' if ok else 'MISSED'})")
    return ok


def budget(name: str, seconds: float, target: float) -> bool:
    """The CPU budget of the work around the hash: what a later change to the request path would spend.

    Server CPU an operation less a raw hash's CPU (both measured in the run): the request's Python,
    SQL and Redis work, plus what sharing the caches with a running hash costs it."""
    ok = seconds <= target
    say(f"BUDGET {name} = {seconds * 1000:.2f} ms  (target <= {target * 1000:.1f} ms: {'KEPT' if ok else 'SPENT'})")
    return ok


def describe_argon2(params: tuple[int, int, int]) -> str:
    return f"Argon2id t={params[0]} m={params[1]} KiB p={params[2]}"


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as stream:
            model = next((x.split(":", 1)[1].strip() for x in stream if x.startswith("model name")), "")
    return f"{time.strftime('%Y-%m-%d %H:%M %Z')}  {CORES} cores ({model})  Python {sys.version.split()[0]}"
