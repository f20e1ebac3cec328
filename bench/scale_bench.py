"""Do a lookup and a claim stay as fast as the tables grow, and what does a row cost? PostgreSQL.

Sizes: 10,000 and 200,000 patients and codes by default; ``--full``: 10,000, 1,000,000 and
10,000,000. Each size lives in a private schema on ``--database-url`` (dropped afterwards).

How the rows are made, fast:

* ``REAL`` synthetic people (400) go through the real ``portal import-patients --workers N`` with
  the PRODUCTION Argon2id parameters, once, into the first schema; the other sizes get the same
  rows and hash scheme copied in SQL. Their digests are what a lookup computes.
* The bulk is COPYed (``benchlib.fill_patients``): public_id, record_key, lookup_digest and
  reference_digest are MD5/SHA-256 of (a run nonce, the row number) under the same hash scheme.
  Why that is the same index work: a B-tree orders 32-byte strings by their bytes and never looks
  at how they were made; SHA-256 output is as uniformly spread as Argon2id's or an HMAC's, so the
  bulk digests land in the index pages the way imported ones do, the tree has the same depth and
  fan-out, and a probe for a real person's digest walks it exactly as in production. Only the
  Argon2id of each row is skipped (it is what makes an import take hours).
* Indexes are dropped for the COPY and rebuilt after it with the fill an import leaves
  (``benchlib.copy_rows``: leaves of indexes filled in random key order 70 % full).
* The code pool: ``size`` codes in id order (one enrolment date), the bulk with SHA-256 digests and
  random ciphertexts of a sealed code's length; the codes the measured claims will take are sealed
  for real under the run's CODE_KEY (a claim decrypts what it hands out).

What is measured:

* lookups: ``portal.identity.find_patient`` in-process, 1 client, half hits, half misses (wrong
  last four), rounds alternating between the sizes (the order reversed each round). Each person's
  Argon2id is computed once beforehand with the real parameters, so the timed part is the
  database work (the scheme query and the digest's index probe); a production lookup adds one
  hash, the same at every size (``verify_bench.py`` measures it). Printed beside: the pages the
  probe reads for a hit and a miss (``EXPLAIN (ANALYZE, BUFFERS)``).
* claims: ``portal.claims.claim_code`` from ``--clients`` threads spread over
  ``--claim-processes`` processes (claims_bench's Claimer in each; one Python process would be a
  queue on its GIL), on distinct people, with 10 %, 50 % and 95 % of the pool claimed. Claims
  reach each level as real ones do (UPDATEs, in the claim query's order). A claimed code's entry
  stays in the partial index of free codes, dead, until VACUUM removes it, and every claim walks
  past the dead ones: the claims since the last VACUUM are the ones autovacuum lets pile up
  (threshold + scale factor x rows, the table's own settings, else the server's), then one scan
  marks them dead as the claims one by one would. At each level every size is set up first,
  then measured in ``--claim-rounds`` rounds alternating between the sizes (the order reversed
  each round); each round opens fresh connections and warms each with one untimed claim.
  Printed beside each: the pages the claim's scan reads before and after the rounds, the oldest
  snapshot another session held then, and the CPU the PostgreSQL backends spent a claim. For
  every size, lookups and claims alike: the load average and where the machine's CPU went
  while it was measured (this run, its PostgreSQL backends, everything else).
* storage: heap and index bytes per row (``pg_relation_size``), after the build, and the pool's
  after the claims; the audit trail's with ``--audit-rows`` rows (default: the largest size) COPYed
  into the largest schema, where ``portal purge`` is then timed, routine and at programme end.

RATIO = figure at the largest size / figure at the smallest (p50s); target <= 1.25.

    .venv/bin/python bench/scale_bench.py                    # ~5 min: 10,000 vs 200,000
    .venv/bin/python bench/scale_bench.py --full             # ~1 h: 10,000, 1,000,000, 10,000,000
    .venv/bin/python bench/scale_bench.py --database-url postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import secrets
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta

import benchlib as b
from claims_bench import Claimer

REAL = 400
LEVELS = (10, 50, 95)  # % of the pool claimed
ENROLL_BY = date.today() + timedelta(days=400)


def schema_of(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).query["application_name"]


def build(bench: b.Bench, base_url: str, size: int, extra: int, first_url: str | None, files) -> tuple[str, dict]:
    """A schema with the real people (imported, or copied from ``first_url``), filler up to
    ``size + extra`` patients, and ``size`` codes; returns (url, env)."""
    import sqlalchemy as sa

    url = bench.postgres_schema(base_url)
    env = b.portal_env(bench, url)
    b.migrate(env)
    csv_path, letters = files
    if first_url is None:
        b.portal(env, "import-patients", str(csv_path), "--workers", str(b.CORES), "--letters", str(letters))
    else:
        engine = sa.create_engine(url)
        source = schema_of(first_url)
        with engine.begin() as connection:
            for table in ("hash_schemes", "patients", "letter_records"):
                connection.execute(sa.text(f"INSERT INTO {table} SELECT * FROM {source}.{table}"))
                connection.execute(sa.text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"))
        engine.dispose()
    b.fill_patients(url, size + extra)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        count, top = connection.execute(sa.text("SELECT count(*), max(id) FROM patients")).one()
    engine.dispose()
    if count != top:  # claims pick people by id
        raise RuntimeError(f"patient ids are not 1..{count:,} (max {top:,})")
    return url, env


def fill_codes(url: str, cipher, size: int, real: list[range]) -> None:  # type: ignore[no-untyped-def]
    """``size`` free codes in id order; those with ids in ``real`` sealed for real."""
    from portal.importer import DEFAULT_PRODUCT

    nonce = secrets.token_bytes(8)
    now = datetime.now(UTC).replace(tzinfo=None)
    sealed_length = len(cipher.seal("SCALE-000000000").ciphertext)

    def rows():  # type: ignore[no-untyped-def]
        for code_id in range(1, size + 1):
            if any(code_id in window for window in real):
                sealed = cipher.seal(f"SCALE-{code_id:09d}")
                digest, ciphertext = sealed.code_digest, sealed.ciphertext
            else:
                digest = hashlib.sha256(nonce + code_id.to_bytes(8, "big")).digest()
                ciphertext = os.urandom(sealed_length)
            yield digest, ciphertext, 1, DEFAULT_PRODUCT, ENROLL_BY, now

    columns = {
        "code_digest": "bytea",
        "ciphertext": "bytea",
        "key_version": "int4",
        "product": "varchar",
        "enroll_by": "date",
        "imported_at": "timestamp",
    }
    b.copy_rows(url, "activation_codes", columns, rows())


def fill_audit(url: str, count: int) -> None:
    """``count`` audit rows in lane 1, spread over seven years (some past the six-year retention),
    in position but with random links: ``portal purge`` counts and deletes, it does not verify."""
    import sqlalchemy as sa

    now = datetime.now(UTC).replace(tzinfo=None)
    span = timedelta(days=7 * 365).total_seconds()
    actions = [("verification", "success"), ("verification", "failure"), ("exposure", "viewed"), ("claim", "success")]
    rng = random.Random(8)
    last = os.urandom(32)

    def rows():  # type: ignore[no-untyped-def]
        nonlocal last
        prev = bytes(32)
        for position in range(1, count + 1):
            at = now - timedelta(seconds=span * (1 - position / count))
            action, outcome = actions[position % len(actions)]
            person = hashlib.md5(position.to_bytes(8, "big")).hexdigest()
            last = os.urandom(32)
            yield (
                1, position, at, f"public:{person[:16]}", action, outcome, "public", person,
                f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}", person, prev, last,
            )  # fmt: skip
            prev = last

    columns = {
        "lane": "int2",
        "position": "int8",
        "at": "timestamp",
        "actor": "varchar",
        "action": "varchar",
        "outcome": "varchar",
        "channel": "varchar",
        "record_ref": "varchar",
        "client": "varchar",
        "request_id": "varchar",
        "prev_hash": "bytea",
        "chain_hash": "bytea",
    }
    b.copy_rows(url, "audit_events", columns, rows())
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE audit_chain_head SET position = :n, last_hash = :h WHERE id = 1"), {"n": count, "h": last}
        )
    engine.dispose()


class Memoised:
    """``find_patient``'s hasher, with each claim's Argon2id computed beforehand (``digests``)."""

    def __init__(self, hasher, digests: dict) -> None:  # type: ignore[no-untyped-def]
        self.keyring, self.params, self._digests = hasher.keyring, hasher.params, digests

    def lookup_digests(self, claim, schemes) -> list[bytes]:  # type: ignore[no-untyped-def]
        return self._digests[claim]


def claims_to_look_up(identities: list[dict[str, str]]) -> tuple[list, list]:
    from portal.identity import IdentityClaim

    hits = [IdentityClaim.from_input(**i) for i in identities]
    misses = []
    for i in identities:
        if i["ssn_last4"]:
            wrong = f"{(int(i['ssn_last4']) + 1) % 10000:04d}"
            misses.append(IdentityClaim.from_input(**{**i, "ssn_last4": wrong}))
    return hits, misses


def real_digests(env: dict, claims: list) -> dict:
    """Every claim's lookup digest under the imported scheme: the real Argon2id, on every core."""
    from portal.app import create_app
    from portal.extensions import db
    from portal.identity import lookup_schemes, scheme_params
    from portal.importer import stretch_all
    from portal.services import services

    app = create_app(b.app_config(env))
    with app.app_context():
        hasher = services().hasher
        (scheme,) = lookup_schemes(db.session, hasher)
        messages = [hasher.lookup_message(claim, scheme.key_version) for claim in claims]
        params = scheme_params(scheme)
        db.engine.dispose()
    chunks = [messages[i : i + 25] for i in range(0, len(messages), 25)]
    with ProcessPoolExecutor(b.CORES) as pool:
        stretched = [
            d
            for part in pool.map(stretch_all, chunks, [scheme.salt] * len(chunks), [params] * len(chunks))
            for d in part
        ]
    return {claim: [digest] for claim, digest in zip(claims, stretched, strict=True)}


def lookups(env: dict, hits: list, misses: list, digests: dict, count: int, rng: random.Random):
    """A callable running ``count`` find_patient calls: (latencies, wall seconds, wrong answers)."""
    from portal.app import create_app
    from portal.extensions import db
    from portal.identity import find_patient
    from portal.services import services

    app = create_app(b.app_config(env))
    with app.app_context():
        hasher = Memoised(services().hasher, digests)

    def run() -> tuple[list[float], float, int]:
        latencies, wrong = [], 0
        with app.app_context():
            began_all = time.perf_counter()
            for n in range(count):
                hit = n % 2 == 0
                claim = rng.choice(hits if hit else misses)
                began = time.perf_counter()
                patient = find_patient(db.session, hasher, claim)  # type: ignore[arg-type]
                latencies.append(time.perf_counter() - began)
                db.session.rollback()
                wrong += (patient is not None) != hit
            return latencies, time.perf_counter() - began_all, wrong

    def close() -> None:
        with app.app_context():
            db.engine.dispose()

    return run, close


def lookup_pages(url: str, samples: int = 50) -> tuple[float, float]:
    """Pages the lookup's query reads, by ``EXPLAIN (ANALYZE, BUFFERS)`` (cached or not): the
    median over ``samples`` real people's digests (a hit: the index's levels and the row) and as
    many random ones (a miss: the index's levels only)."""
    import statistics

    import sqlalchemy as sa

    from portal.identity import PATIENT_BY_DIGEST

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        compiled = PATIENT_BY_DIGEST.compile(connection)
        probe = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}"
        digests = connection.scalars(
            sa.text("SELECT lookup_digest FROM patients ORDER BY id LIMIT :n"), {"n": samples}
        ).all()
        pages: dict[bool, list[int]] = {True: [], False: []}
        for hit, digest in [(True, d) for d in digests] + [(False, os.urandom(32)) for _ in digests]:
            found = connection.exec_driver_sql(probe, {**compiled.params, "digest": digest}).scalar()[0]["Plan"]
            pages[hit].append(found["Shared Hit Blocks"] + found["Shared Read Blocks"])
    engine.dispose()
    return statistics.median(pages[True]), statistics.median(pages[False])


def dead_allowed(connection, rows: int) -> int:  # type: ignore[no-untyped-def]
    """Dead rows autovacuum lets ``activation_codes`` gather before it runs: the table's own
    threshold and scale factor (a migration may set them), else the server's."""
    import sqlalchemy as sa

    options = dict(
        item.split("=", 1)
        for item in connection.scalar(
            sa.text("SELECT reloptions FROM pg_class WHERE oid = 'activation_codes'::regclass")
        )
        or []
    )
    threshold = float(options.get("autovacuum_vacuum_threshold") or connection.scalar(
        sa.text("SELECT current_setting('autovacuum_vacuum_threshold')")
    ))  # fmt: skip
    scale = float(options.get("autovacuum_vacuum_scale_factor") or connection.scalar(
        sa.text("SELECT current_setting('autovacuum_vacuum_scale_factor')")
    ))  # fmt: skip
    return int(threshold + scale * rows)


FREE_SCAN = (  # the claim's search for a free code (portal.claims._take_free), without its lock
    "SELECT id FROM activation_codes WHERE patient_id IS NULL AND enroll_by >= CURRENT_DATE"
    " ORDER BY enroll_by, id LIMIT 1"
)


def scan_pages(connection) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Pages the claim's scan for a free code reads now (``EXPLAIN (ANALYZE, BUFFERS)``, cached or
    not), and the oldest snapshot another session holds on the database: while one older than
    the claims since the last VACUUM is open, no scan can mark their entries dead."""
    import sqlalchemy as sa

    plan = connection.scalar(sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {FREE_SCAN}"))[0]["Plan"]
    oldest = connection.execute(
        sa.text(
            "SELECT application_name, age(backend_xmin), extract(epoch FROM now() - xact_start)"
            " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_xmin IS NOT NULL ORDER BY age(backend_xmin) DESC LIMIT 1"
        )
    ).first()
    held = f"{oldest[1]:,} xids behind ({oldest[0] or '?'}, {oldest[2] or 0:.0f} s)" if oldest else "none"
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"], held


def claim_up_to(url: str, size: int, target: int) -> tuple[int, int, str, float]:
    """Claim codes (ids in claim order) up to ``target`` as claims do, with the last ones not yet
    vacuumed away; returns (how many are dead in the free-code index, pages a claim's scan then
    reads, the oldest other snapshot then, seconds)."""
    import sqlalchemy as sa

    began = time.perf_counter()
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    claim = sa.text(
        "UPDATE activation_codes SET patient_id = id, claimed_at = now() AT TIME ZONE 'utc'"
        " WHERE id > :low AND id <= :high AND patient_id IS NULL"
    )
    with engine.connect() as connection:
        done = connection.scalar(
            sa.text("SELECT coalesce(max(id), 0) FROM activation_codes WHERE patient_id IS NOT NULL")
        )
        dead = min(dead_allowed(connection, size), max(0, target - done))
        connection.execute(claim, {"low": done, "high": target - dead})
        connection.execute(sa.text("VACUUM (INDEX_CLEANUP ON) activation_codes"))
        connection.execute(claim, {"low": target - dead, "high": target})
        # The claims since that VACUUM went one by one, each marking the entries it passed dead:
        # one scan does the same here. It cannot while an older snapshot may still see those rows
        # (any long transaction on the server): then every claim reads the row behind each dead
        # entry, and the pages the next scan reads (printed) say so.
        connection.execute(sa.text(FREE_SCAN))
        pages, held = scan_pages(connection)
    engine.dispose()
    return dead, pages, held, time.perf_counter() - began


_worker: dict = {}  # in each claim-client process: the cipher and the barrier all of them start on


def _claim_worker_start(code_key: str, barrier) -> None:  # type: ignore[no-untyped-def]
    from portal.claims import CodeCipher
    from portal.config import decode_key
    from portal.identity import Keyring

    _worker["cipher"] = CodeCipher(Keyring(1, {1: decode_key(code_key, "CODE_KEY")}))
    _worker["barrier"] = barrier


def _claim_round(url: str, assignments: list[list[int]]) -> tuple[list[float], float, dict, dict, float]:
    """In a claim-client process: one thread a list of people, each first claiming one code
    untimed (its connection and backend warmed), then all processes' threads let go together.
    Returns (latencies, wall seconds, outcomes, codes told, CPU seconds of its backends)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, hide_parameters=True, pool_size=len(assignments) + 1, max_overflow=0)
    backends: list[int] = []

    @sa.event.listens_for(engine, "connect")
    def _backend(connection, _record) -> None:  # type: ignore[no-untyped-def]
        with connection.cursor() as cursor:
            backends.append(cursor.execute("SELECT pg_backend_pid()").fetchone()[0])

    try:
        claimer = Claimer(engine, _worker["cipher"])
        elapsed = claimer.run(assignments, ready=lambda: _worker["barrier"].wait(300), warmup=1)
        database = sum(b.cpu_seconds(pid) for pid in backends)  # their whole lives: this round's
        return claimer.latencies, elapsed, dict(claimer.outcomes), dict(claimer.returned), database
    finally:
        engine.dispose()


class ClaimClients:
    """``clients`` concurrent claimers as threads in ``processes`` processes (each with its own
    engine and interpreter), so that the clients' Python does not queue on one GIL and the
    latency measured is the portal's and the database's. A round opens fresh connections (one a
    client, so that the sizes' schemas never hold 32 each at once), warms each with one claim,
    then times the rest."""

    def __init__(self, bench: b.Bench, code_key: str, clients: int, processes: int) -> None:
        self.clients, self.processes = clients, max(1, min(processes, clients))
        barrier = b._SPAWN.Barrier(self.processes)
        self.pool = ProcessPoolExecutor(
            self.processes, mp_context=b._SPAWN, initializer=_claim_worker_start, initargs=(code_key, barrier)
        )
        bench.callback(self.pool.shutdown, cancel_futures=True)
        self.returned: dict[tuple[str, int], set[str]] = {}  # (schema's URL, person) -> codes told
        self.database_seconds = 0.0  # CPU of the PostgreSQL backends that served the rounds so far

    def run(self, url: str, people: list[int]) -> tuple[list[float], float, Counter]:
        """Claims for ``people`` (the first ``clients`` of them the untimed warm-up); returns
        (latencies, wall seconds, outcomes)."""
        lists = [people[i :: self.clients] for i in range(self.clients)]
        futures = [self.pool.submit(_claim_round, url, lists[k :: self.processes]) for k in range(self.processes)]
        latencies: list[float] = []
        elapsed, outcomes = 0.0, Counter()
        for future in futures:
            mine, seconds, counted, returned, database = future.result()
            self.database_seconds += database
            latencies += mine
            elapsed = max(elapsed, seconds)
            outcomes.update(counted)
            for person, codes in returned.items():
                self.returned.setdefault((url, person), set()).update(codes)
        return latencies, elapsed, outcomes

    def problems(self) -> list[str]:
        """A person told two codes, or a code told to two people, over every round (each size's
        schema on its own: they hold the same people and codes)."""
        told = Counter((url, code) for (url, _), codes in self.returned.items() for code in codes)
        found = []
        several = sum(1 for codes in self.returned.values() if len(codes) > 1)
        if several:
            found.append(f"{several} people were told two different codes")
        twice = sum(1 for n in told.values() if n > 1)
        if twice:
            found.append(f"{twice} codes were told to two different people")
        return found


class Share:
    """Where the machine went while each size was measured, summed over its rounds: load
    average, this run's Python (the clients), the PostgreSQL backends serving that size (its
    schema's connections, by application_name), and every other process (other jobs, and
    PostgreSQL's own background work)."""

    def __init__(self, bench: b.Bench, urls: dict[int, str]) -> None:
        import sqlalchemy as sa

        self.bench = bench
        self.engines = {size: sa.create_engine(url, isolation_level="AUTOCOMMIT") for size, url in urls.items()}
        for engine in self.engines.values():
            bench.callback(engine.dispose)
        self.totals: dict[int, list[float]] = {size: [0.0, 0.0, 0.0, 0.0] for size in urls}
        self.loads: dict[int, list[float]] = {size: [] for size in urls}
        self.last_database = 0.0  # the PostgreSQL CPU seconds of the last measurement

    def _backends(self, size: int) -> dict[int, float]:
        import sqlalchemy as sa

        with self.engines[size].connect() as connection:
            pids = connection.scalars(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = current_setting('application_name')"
                    " AND pid <> pg_backend_pid()"
                )
            ).all()
        return {pid: b.cpu_seconds(pid) for pid in pids}

    def measure(self, size: int, work, database=None):  # type: ignore[no-untyped-def]
        """Run ``work()`` for ``size`` and add up where the CPU went meanwhile. ``database``: the
        CPU seconds its PostgreSQL backends used so far, when they do not outlive ``work``."""
        self.loads[size].append(os.getloadavg()[0])
        before, backends = self.bench.cpu.snapshot(), self._backends(size)
        served = database() if database else 0.0
        result = work()
        after = self.bench.cpu.snapshot()
        if database:
            served = database() - served
        else:
            served = sum(cpu - backends.get(pid, 0.0) for pid, cpu in self._backends(size).items())
        self.loads[size].append(os.getloadavg()[0])
        wall, busy, ours = (a - z for a, z in zip(after, before, strict=True))
        self.last_database = served
        for n, value in enumerate((wall, busy, ours, served)):
            self.totals[size][n] += value
        return result

    def rows(self) -> list[tuple]:
        rows = []
        for size, (wall, busy, ours, database) in self.totals.items():
            loads = self.loads[size]
            rows.append(
                (
                    f"{size:,}",
                    f"{wall:.0f} s",
                    f"{min(loads):.1f}–{max(loads):.1f}",
                    f"{busy / wall:.2f}",
                    f"{ours / wall:.2f}",
                    f"{database / wall:.2f}",
                    f"{max(0.0, busy - ours - database) / wall:.2f}",
                )
            )
        return rows

    HEADER = ("size", "measured for", "load avg (1 min)", "cores busy", "this run", "its PostgreSQL", "others")


def storage(url: str, tables: list[str]) -> dict[str, tuple[int, int, int]]:
    """(rows, heap bytes, index bytes) of each table."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    found = {}
    with engine.connect() as connection:
        for table in tables:
            rows = connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            heap = connection.scalar(sa.text(f"SELECT pg_table_size('{table}')"))
            index = connection.scalar(sa.text(f"SELECT pg_indexes_size('{table}')"))
            found[table] = (rows, heap, index)
    engine.dispose()
    return found


def pool_gauge_seconds(env: dict) -> tuple[float, float, bool]:
    """The pool gauge every metrics scrape reads, best of 3 each: the three ``count(*)`` over the
    pool it ran before (``counted``), and ``portal.claims.pool_status`` now (the counts the
    database keeps); and whether both said the same."""
    import sqlalchemy as sa

    from portal.app import create_app
    from portal.claims import PoolStatus, pool_status
    from portal.extensions import db
    from portal.models import ActivationCode

    count = sa.select(sa.func.count(ActivationCode.id))
    today = date.today()

    def counted() -> PoolStatus:
        return PoolStatus(
            db.session.scalar(count) or 0,
            db.session.scalar(count.where(ActivationCode.patient_id.is_not(None))) or 0,
            db.session.scalar(count.where(ActivationCode.patient_id.is_(None), ActivationCode.enroll_by >= today)) or 0,
        )

    app = create_app(b.app_config(env))
    best, said = [], []
    with app.app_context():
        for read in (counted, lambda: pool_status(db.session, today)):
            times = []
            for _ in range(3):
                began = time.perf_counter()
                status = read()
                times.append(time.perf_counter() - began)
                db.session.rollback()
            best.append(min(times))
            said.append(status)
        db.engine.dispose()
    return best[0], best[1], said[0] == said[1]


# The budgets a public lookup counts, at their production values (portal_env loosens them).
PRODUCTION_BUDGETS = (
    "VERIFY_LIMIT_PERSON", "VERIFY_LIMIT_PERSON_SHARED", "VERIFY_LIMIT_CLIENT", "VERIFY_LIMIT_CLIENT_ATTEMPTS",
    "VERIFY_LIMIT_CLIENT_PEOPLE", "VERIFY_LIMIT_GLOBAL",
)  # fmt: skip


def limit_store_bytes(
    bench: b.Bench, url: str, store: str, identities: list[dict[str, str]]
) -> tuple[float, float, int]:
    """What one visitor leaves in the limit store: each identity looked up once through the public
    site (GET and POST /lookup, Flask's test client) from an address of its own, half of them with
    a wrong last four, under the production budgets; then every key of the run's prefix is weighed
    with MEMORY USAGE. Returns (bytes a visitor, of which in keys that live over two days, keys a
    visitor, the longest time to live in seconds)."""
    import re

    import redis

    from portal.app import create_app

    prefix = f"scale-{secrets.token_hex(4)}"
    env = b.portal_env(bench, url, RATELIMIT_STORAGE_URI=store, RATELIMIT_KEY_PREFIX=prefix)
    config = {**b.app_config(env), **{name: b.PORTAL_DEFAULTS[name] for name in PRODUCTION_BUDGETS}}
    app = create_app(config)
    client_store = redis.Redis.from_url(store)

    def drop_keys() -> None:
        for key in client_store.scan_iter(f"*{prefix}*", count=1000):
            client_store.delete(key)

    bench.callback(drop_keys)
    logging.disable(logging.INFO)  # a JSON line per request and event
    for n, identity in enumerate(identities):
        wrong = n % 2 == 1 and identity["ssn_last4"]
        fields = {**identity, "ssn_last4": f"{(int(identity['ssn_last4']) + 1) % 10000:04d}"} if wrong else identity
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        page = client.get("/lookup").get_data(as_text=True)
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        client.post("/lookup", data={"reference": "", **fields, "csrf_token": token})
    logging.disable(logging.NOTSET)
    keys = list(client_store.scan_iter(f"*{prefix}*", count=1000))
    weights = [(client_store.memory_usage(key) or 0, client_store.ttl(key)) for key in keys]
    client_store.close()
    visitors = len(identities)
    lasting = sum(weight for weight, ttl in weights if ttl > 2 * 86400)
    longest = max((ttl for _, ttl in weights), default=0)
    return sum(w for w, _ in weights) / visitors, lasting / visitors, len(keys) / visitors, longest


def timed_portal(bench: b.Bench, env: dict, *args: str) -> tuple[float, int, str]:
    """A ``portal`` command as a subprocess: (seconds, peak RSS, its last output line)."""
    began = time.perf_counter()
    proc = bench.popen(
        [b.PORTAL, *args], cwd=b.ROOT, env=env, stdout=b.subprocess.PIPE, stderr=b.subprocess.PIPE, text=True
    )
    sampler = b.MemorySampler(proc.pid, interval=0.5)
    sampler.start()
    out, err = proc.communicate()
    elapsed = time.perf_counter() - began
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"portal {' '.join(args)} exited {proc.returncode}:\n{out[-1500:]}\n{err[-1500:]}")
    return elapsed, sampler.peak_rss, out.strip().splitlines()[-1] if out.strip() else ""


def _number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="10,000, 1,000,000 and 10,000,000 rows")
    parser.add_argument("--sizes", help="comma-separated patients (= codes) per schema, smallest first")
    parser.add_argument("--database-url", default=b.DEFAULT_PG_URL, help="PostgreSQL URL (private schemas, dropped)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating lookup rounds per size")
    parser.add_argument("--lookups", type=int, default=500, help="find_patient calls per round")
    parser.add_argument("--clients", type=int, default=32, help="concurrent claimers")
    parser.add_argument("--claim-processes", type=int, default=8, help="processes the claimers run in")
    parser.add_argument("--claim-rounds", type=int, default=3, help="alternating claim rounds per level and size")
    parser.add_argument("--claims", type=int, default=384, help="claims measured per level and size")
    parser.add_argument("--limit-store", default=b.BENCH_REDIS, help="Redis for the limit-store weighing ('' skips)")
    parser.add_argument("--audit-rows", type=int, help="audit rows for the purge (default: the largest size; 0 skips)")
    args = parser.parse_args()
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [10_000, 1_000_000, 10_000_000] if args.full else [10_000, 200_000]
    audit_rows = sizes[-1] if args.audit_rows is None else args.audit_rows
    per_level = args.claims + args.claim_rounds * args.clients  # measured, and a warm-up claim a client a round
    extra = per_level * len(LEVELS)  # people left to claim with at 95 %, at the smallest size too
    if sizes[0] - sizes[0] * LEVELS[-1] // 100 < per_level:
        b.say(
            f"FAIL: {per_level} claims a level do not fit in the {100 - LEVELS[-1]} % of {sizes[0]:,} codes left free"
        )
        return 2

    b.say(f"scale_bench  {b.machine_line()}")
    problem = b.postgres_reachable(args.database_url)
    if problem:
        b.say(f"FAIL: PostgreSQL at --database-url is unreachable ({problem})")
        return 1
    import sqlalchemy as sa

    from portal.claims import CodeCipher
    from portal.config import decode_key
    from portal.identity import Keyring

    ok = True
    with b.Bench() as bench:
        tmp = bench.tempdir()
        files = (tmp / "people.csv", tmp / "letters.csv")
        b.generate_patients(b.portal_env(bench, "sqlite://"), REAL, files[0], seed=3)
        cipher = CodeCipher(Keyring(1, {1: decode_key(bench.keys["CODE_KEY"], "CODE_KEY")}))
        urls: dict[int, str] = {}
        envs: dict[int, dict] = {}
        built = []
        for size in sizes:
            began = time.perf_counter()
            urls[size], envs[size] = build(bench, args.database_url, size, extra, urls.get(sizes[0]), files)
            patients_s = time.perf_counter() - began
            windows = []
            for level in LEVELS:
                start = size * level // 100
                windows.append(range(start + 1, start + per_level + 2 * args.clients + 1))
            began = time.perf_counter()
            fill_codes(urls[size], cipher, size, windows)
            built.append(
                (f"{size:,}", f"{size + extra:,}", f"{patients_s:.0f} s", f"{time.perf_counter() - began:.0f} s")
            )
            b.say(f"built {size:,}: patients {patients_s:.0f} s, codes {time.perf_counter() - began:.0f} s")
        b.say(b.table(built, ["size", "patients", "patients built in", "codes built in"]))
        stored = {size: storage(urls[size], ["patients", "activation_codes"]) for size in sizes}

        # Lookups, alternating rounds.
        identities = b.read_identities(*files)
        hits, misses = claims_to_look_up(identities)
        began = time.perf_counter()
        digests = real_digests(envs[sizes[0]], hits + misses)
        seconds = time.perf_counter() - began
        b.say(f"{len(digests):,} lookup digests with {b.describe_argon2(b.PROD_ARGON2)}: {seconds:.0f} s")
        rng = random.Random(5)
        runners = {size: lookups(envs[size], hits, misses, digests, args.lookups, rng) for size in sizes}
        for _run, close in runners.values():
            bench.callback(close)
        for run, _close in runners.values():
            run()  # warm-up: connections, statement compilation, the probed pages in cache
        found: dict[int, tuple[list[float], float, int]] = {size: ([], 0.0, 0) for size in sizes}
        lookup_share = Share(bench, urls)
        for round_ in range(args.rounds):
            for size in sizes if round_ % 2 == 0 else sizes[::-1]:
                latencies, wall, wrong = lookup_share.measure(size, runners[size][0])
                before = found[size]
                found[size] = (before[0] + latencies, before[1] + wall, before[2] + wrong)
        lookup_rows, lookup_p50 = [], {}
        for size in sizes:
            latencies, wall, wrong = found[size]
            ordered = sorted(latencies)
            lookup_p50[size] = b.percentile(ordered, 50)
            hit_pages, miss_pages = lookup_pages(urls[size])
            lookup_rows.append(
                (
                    f"{size:,}",
                    b.ms(lookup_p50[size]),
                    b.ms(b.percentile(ordered, 99)),
                    f"{len(ordered) / wall:,.0f}",
                    wrong,
                    f"{hit_pages:.0f} / {miss_pages:.0f}",
                )
            )
            ok = ok and not wrong
        b.say(
            b.table(
                lookup_rows,
                ["patients", "lookup p50", "p99", "lookups/s (1 client)", "wrong answers", "pages a hit / a miss"],
            )
        )
        b.say(b.table(lookup_share.rows(), ["lookups: " + Share.HEADER[0], *Share.HEADER[1:]]))

        # Claims: level by level; at each level every size is set up, then measured in rounds
        # alternating between the sizes (the order reversed each round), so that what else the
        # machine is doing falls on every size alike.
        claim_rows, claim_p50 = [], {}
        taken = {size: size + extra for size in sizes}  # people claim from the top of the id range down
        clients = ClaimClients(bench, bench.keys["CODE_KEY"], args.clients, args.claim_processes)
        claim_share = Share(bench, urls)
        per_round = -(-args.claims // args.claim_rounds)
        for level in LEVELS:
            scans = {size: claim_up_to(urls[size], size, size * level // 100) for size in sizes}
            results: dict[int, tuple[list[float], float, Counter]] = {size: ([], 0.0, Counter()) for size in sizes}
            served = dict.fromkeys(sizes, 0.0)  # CPU of the PostgreSQL backends that served the claims
            for round_ in range(args.claim_rounds):
                for size in sizes if round_ % 2 == 0 else sizes[::-1]:
                    count = min(per_round, args.claims - round_ * per_round) + args.clients
                    people = list(range(taken[size], taken[size] - count, -1))
                    taken[size] -= count
                    latencies, elapsed, outcomes = claim_share.measure(
                        size,
                        lambda: clients.run(urls[size], people),  # noqa: B023
                        lambda: clients.database_seconds,
                    )
                    served[size] += claim_share.last_database
                    had = results[size]
                    results[size] = (had[0] + latencies, had[1] + elapsed, had[2] + outcomes)
            for size in sizes:
                dead, pages, held, setup = scans[size]
                latencies, elapsed, outcomes = results[size]
                engine = sa.create_engine(urls[size])
                with engine.connect() as connection:
                    pages_after, held_after = scan_pages(connection)
                engine.dispose()
                b.say(
                    f"  {level} % of {size:,}: oldest other snapshot on the database at the scan before the"
                    f" claims: {held}; after them: {held_after}"
                )
                ordered = sorted(latencies)
                claim_p50[(level, size)] = b.percentile(ordered, 50)
                claim_rows.append(
                    (
                        f"{level} %", f"{size:,}", f"{dead:,}", f"{pages:,} / {pages_after:,}",
                        b.ms(served[size] / outcomes["claimed"]), b.ms(claim_p50[(level, size)]),
                        b.ms(b.percentile(ordered, 99)), f"{len(ordered) / elapsed:,.0f}",
                        outcomes.get("pool busy (retried)", 0), f"{setup:.0f} s",
                    )
                )  # fmt: skip
                if len(ordered) != args.claims:
                    b.say(f"  FAIL: {len(ordered)} of {args.claims} claims at {level} % of {size:,}: {outcomes}")
                    ok = False
        b.say(
            b.table(
                claim_rows,
                [
                    "claimed",
                    "codes",
                    "dead in free index",
                    "pages a scan reads (before / after)",
                    "PostgreSQL CPU a claim",
                    "claim p50",
                    "p99",
                    "claims/s",
                    "busy retries",
                    "setup",
                ],
            )
        )
        b.say(
            f"claims: {args.clients} clients as threads in {clients.processes} processes,"
            f" {args.claim_rounds} alternating rounds a level, one untimed claim a client a round"
        )
        b.say(b.table(claim_share.rows(), ["claims: " + Share.HEADER[0], *Share.HEADER[1:]]))
        told = clients.problems()
        for line in told:
            b.say(f"  problem: {line}")
        b.say(
            f"{'FAIL' if told else 'PASS'}: {len(clients.returned):,} people claimed, each told one code,"
            " no code told to two"
        )
        ok = ok and not told
        gauge = {size: pool_gauge_seconds(envs[size]) for size in sizes}
        same = all(agree for *_, agree in gauge.values())
        b.say(f"{'PASS' if same else 'FAIL'}: the pool counts the database keeps equal counting the rows, every size")
        ok = same and ok
        if args.limit_store:
            weight, lasting, keys, ttl = limit_store_bytes(bench, urls[sizes[0]], args.limit_store, identities)
            b.say(
                f"limit store: {len(identities):,} visitors (half with a wrong last four, each from its own"
                f" address) left {weight:,.0f} bytes in {keys:.1f} keys each (MEMORY USAGE), {lasting:,.0f}"
                f" of them in keys that live over two days (the longest: {ttl / 86400:,.0f} days)"
            )
        after = {size: storage(urls[size], ["activation_codes"]) for size in sizes}

        largest = sizes[-1]
        purge_rows = []
        if audit_rows:
            began = time.perf_counter()
            fill_audit(urls[largest], audit_rows)
            b.say(
                f"{audit_rows:,} audit rows COPYed into the {largest:,} schema in {time.perf_counter() - began:.0f} s"
            )
            stored[largest].update(storage(urls[largest], ["audit_events"]))
            today = date.today().isoformat()
            for label, extra_args in (("routine", ()), ("programme end", ("--programme-end", "--yes"))):
                seconds, peak, line = timed_portal(
                    bench, envs[largest], "purge", "--before", today, "--json", *extra_args
                )
                purge_rows.append((label, f"{seconds:.1f} s", b.mib(peak), line[:110]))

        storage_rows = []
        for size in sizes:
            tables = [*stored[size].items(), ("activation_codes, after the claims", after[size]["activation_codes"])]
            for table, (rows, heap, index) in tables:
                storage_rows.append(
                    (
                        f"{size:,}",
                        table,
                        f"{rows:,}",
                        f"{heap / rows:.0f}",
                        f"{index / rows:.0f}",
                        f"{(heap + index) / rows:.0f}",
                    )
                )
        b.say(b.table(storage_rows, ["size", "table", "rows", "heap B/row", "index B/row", "total B/row"]))
        b.say(
            b.table(
                [(f"{s:,}", b.ms(gauge[s][0]), b.ms(gauge[s][1]), f"{gauge[s][0] / gauge[s][1]:,.0f}") for s in sizes],
                ["codes", "pool gauge: 3 count(*) (before)", "pool_status: kept counts (now)", "before ÷ now"],
            )
        )
        if purge_rows:
            b.say(
                b.table(purge_rows, ["portal purge at " + f"{audit_rows:,} audit rows", "time", "peak RSS", "report"])
            )

        small = sizes[0]
        figures = [("lookup p50", lookup_rows, 1), ("lookup p99", lookup_rows, 2), ("lookups/s", lookup_rows, 3)]
        ratio_rows = [(name, rows[0][col], rows[-1][col]) for name, rows, col in figures]
        for level in LEVELS:
            mine = [r for r in claim_rows if r[0] == f"{level} %"]
            for name, col in (("claim p50", 5), ("claim p99", 6), ("claims/s", 7), ("PostgreSQL CPU a claim", 4)):
                ratio_rows.append((f"{name} at {level} % claimed", mine[0][col], mine[-1][col]))
        for label, table in (("patients", "patients"), ("codes", "activation_codes")):
            per_row = [(h + i) / r for r, h, i in (stored[small][table], stored[largest][table])]
            ratio_rows.append((f"{label}: table+index bytes a row", f"{per_row[0]:.0f}", f"{per_row[1]:.0f}"))
        b.say(
            b.table(
                [(name, low, high, f"{_number(high) / _number(low):.2f}") for name, low, high in ratio_rows],
                ["figure", f"{small:,}", f"{largest:,}", "ratio"],
            )
        )
        ok = b.verdict(f"lookup p50 {largest:,} / {small:,}", lookup_p50[largest] / lookup_p50[small], 0.0, 1.25) and ok
        for level in LEVELS:
            ratio = claim_p50[(level, largest)] / claim_p50[(level, small)]
            ok = b.verdict(f"claim p50 at {level} % claimed {largest:,} / {small:,}", ratio, 0.0, 1.25) and ok
        b.say(bench.cpu.line())
    return 0 if ok else 1


if __name__ == "__main__":
    b.run_main(main)
