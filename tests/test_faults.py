"""Faults under traffic: PostgreSQL restarted, Redis lost, more lookups than the hashing slots.

Every fault runs against a *private* server started by this module (never the shared ones on
5432/6379, which other tests use). The promises checked:

* a fault never turns into a 500 or a stack trace: the answer is a normal page or the plain
  503 "busy or briefly unavailable" page with Retry-After;
* the portal recovers by itself, without being recreated;
* an activation code goes to exactly one person, the same one every time, whatever crashed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from conftest import create_api_key, csrf_token, import_patients, make_app, numbered, patient_row
from flask import Flask, request
from flask.testing import FlaskClient
from launch import free_port
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import config, verification
from portal.claims import CodeCipher
from portal.extensions import db
from portal.importer import import_codes
from portal.models import ActivationCode
from portal.services import services

PG_BIN = Path(os.environ.get("PORTAL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
BUSY_TEXT = "busy or briefly unavailable"
LEAK_MARKERS = ("Traceback", 'File "', "OperationalError", "psycopg", "sqlalchemy", "ConnectionError")
CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
CODE_ON_PAGE = re.compile(r"<code>([^<]+)</code>")
ENROLL_BY = "2030-01-01"


def assert_clean_503(response: Any, where: str) -> None:
    """The only acceptable failure: 503, Retry-After, the plain page, nothing internal."""
    body = response.get_data(as_text=True)
    assert response.status_code == 503, f"{where}: {response.status_code}"
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) > 0, f"{where}: Retry-After {retry_after!r}"
    assert BUSY_TEXT in body, f"{where}: not the plain busy page"
    assert "Content-Security-Policy" in response.headers
    for marker in LEAK_MARKERS:
        assert marker not in body, f"{where}: {marker!r} leaked into the page"


def assert_no_leak(response: Any, where: str) -> None:
    body = response.get_data(as_text=True)
    assert response.status_code < 500 or response.status_code == 503, f"{where}: {response.status_code}"
    for marker in LEAK_MARKERS:
        assert marker not in body, f"{where}: {marker!r} leaked into the page"


# --- A private PostgreSQL cluster -----------------------------------------------------------------


@dataclass
class PrivateCluster:
    data_dir: Path
    port: int
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh database on this cluster: each test its own keys and its own rows."""
        name = f"t_{secrets.token_hex(6)}"
        admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE {name}"))
        finally:
            admin.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # PostgreSQL refuses to run as root: drop to the postgres account when we are root.
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}\n--- server log ---\n{log}")
        return done

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), *args, check=check)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-o", options, "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "-t", "30", "stop")

    def restart(self) -> None:
        # Not `pg_ctl restart`: it would drop the -l log file and leave our output pipe open forever.
        self.stop("fast")
        self.start()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivateCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"no PostgreSQL binaries under {PG_BIN} (set PORTAL_TEST_PG_BIN)")
    # Not under pytest's tmp_path: its parents are private to root and postgres could not enter.
    data_dir = Path(tempfile.mkdtemp(prefix="portal-faults-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    cluster = PrivateCluster(data_dir, free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


# --- Traffic --------------------------------------------------------------------------------------

PEOPLE = [
    # (record_id, last name, date of birth, ZIP, SSN)
    ("F-1", "Okafor", "1961-02-03", "10001", "219-09-1001"),
    ("F-2", "Lindqvist", "1972-05-06", "10002", "219-09-1002"),
    ("F-3", "Nakamura", "1983-08-09", "10003", "219-09-1003"),
    ("F-4", "Haddad", "1994-11-12", "10004", "219-09-1004"),
]


def person_rows() -> list[dict[str, str]]:
    return [
        patient_row(record_id=rid, last_name=name, date_of_birth=born, zip=zip_code, ssn=ssn)
        for rid, name, born, zip_code, ssn in PEOPLE
    ]


def load_codes(app: Flask, count: int) -> None:
    rows = [{"code": f"IDP-FALT-{i:04d}-{secrets.token_hex(2)}", "enroll_by": ENROLL_BY} for i in range(count)]
    rejected: list[tuple[int, str]] = []
    with app.app_context():
        import_codes(db.session, services().cipher, numbered(rows), on_reject=lambda *r: rejected.append(r))
    assert rejected == []


@dataclass
class Visitor:
    """One browser going through lookup → exposure → claim → code → sign-out, over and over."""

    app: Flask
    person: tuple[str, str, str, str, str]
    log: list[tuple[str, int]] = field(default_factory=list)
    codes_seen: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    full_rounds: int = 0

    def __post_init__(self) -> None:
        self.client: FlaskClient = self.app.test_client()

    def _send(self, method: str, path: str, allowed: tuple[int, ...], **kwargs: Any) -> Any:
        response = self.client.open(path, method=method, **kwargs)
        where = f"{self.person[1]} {method} {path}"
        self.log.append((f"{method} {path}", response.status_code))
        if response.status_code == 503:
            assert_clean_503(response, where)
        elif response.status_code not in allowed:
            raise AssertionError(f"{where}: unexpected {response.status_code}")
        assert_no_leak(response, where)
        return response

    def _token(self, page: Any) -> str:
        match = CSRF_FIELD.search(page.get_data(as_text=True))
        assert match, "page without a CSRF token"
        return match.group(1)

    def round(self) -> bool:
        """One visit; True when it went all the way to the code page."""
        _, last_name, born, zip_code, ssn = self.person
        form = self._send("GET", "/lookup", (200,))
        if form.status_code != 200:
            return False
        data = {
            "csrf_token": self._token(form), "last_name": last_name, "date_of_birth": born,
            "zip_code": zip_code, "ssn_last4": ssn[-4:], "reference": "",
        }  # fmt: skip
        found = self._send("POST", "/lookup", (303,), data=data)
        if found.status_code != 303:
            return False
        exposure = self._send("GET", "/exposure", (200,))
        if exposure.status_code == 200:
            claimed = self._send("POST", "/claim", (303,), data={"csrf_token": self._token(exposure)})
            if claimed.status_code == 303:
                assert claimed.headers["Location"].endswith("/code")
                page = self._send("GET", "/code", (200,))
                if page.status_code == 200:
                    match = CODE_ON_PAGE.search(page.get_data(as_text=True))
                    assert match, "code page without a code"
                    self.codes_seen.append(match.group(1))
                    self.full_rounds += 1
                    self._sign_out(page)
                    return True
        self._sign_out(exposure if exposure.status_code == 200 else None)
        return False

    def _sign_out(self, page: Any) -> None:
        if page is not None:
            self._send("POST", "/sign-out", (303,), data={"csrf_token": self._token(page)})

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.round()
        except BaseException as error:
            self.failures.append("".join(traceback.format_exception(error)))


def run_until(visitors: list[Visitor], condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        if any(v.failures for v in visitors):
            return
        time.sleep(0.05)


def claimed_codes(url: str, cipher: CodeCipher) -> dict[int, list[str]]:
    """patient id -> the plaintext codes the database says they hold (read on a fresh engine)."""
    engine = sa.create_engine(url)
    try:
        with Session(engine) as session:
            rows = session.scalars(select(ActivationCode).where(ActivationCode.patient_id.is_not(None))).all()
            held: dict[int, list[str]] = {}
            for row in rows:
                assert row.patient_id is not None
                held.setdefault(row.patient_id, []).append(cipher.open(row))
            return held
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_restart_under_traffic(private_postgres: PrivateCluster) -> None:
    url = private_postgres.new_database()
    app = make_app(url, PROPAGATE_EXCEPTIONS=False)
    assert import_patients(app, person_rows()) == []
    load_codes(app, len(PEOPLE) + 3)

    visitors = [Visitor(app, person) for person in PEOPLE]
    stop = threading.Event()
    threads = [threading.Thread(target=v.run, args=(stop,), daemon=True) for v in visitors]
    for thread in threads:
        thread.start()
    try:
        # Warm up: everyone has been all the way through once, so the pool holds live connections.
        run_until(visitors, lambda: all(v.full_rounds >= 1 for v in visitors), 30)
        before = [v.full_rounds for v in visitors]
        private_postgres.stop("fast")  # kills every pooled connection mid-traffic
        time.sleep(1.5)  # the outage: new connections are refused
        private_postgres.start()
        # The same app (no re-creation) serves every visitor all the way through again.
        run_until(visitors, lambda: all(v.full_rounds >= b + 2 for v, b in zip(visitors, before, strict=True)), 60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    for visitor in visitors:
        assert visitor.failures == [], visitor.failures[0]
    outage_503s = sum(status == 503 for v in visitors for _, status in v.log)
    assert outage_503s > 0, "the restart was not observed by any request: the test proved nothing"
    for visitor, done in zip(visitors, before, strict=True):
        assert visitor.full_rounds >= done + 2, f"{visitor.person[1]} never got through after the restart"

    # A quiet restart with a warm pool: the very next visit must work (pool_pre_ping), no 503 at all.
    private_postgres.restart()
    quiet = Visitor(app, PEOPLE[0])
    assert quiet.round(), quiet.log
    assert all(status != 503 for _, status in quiet.log), quiet.log

    # Exactly one code per person, the same one every time, never shared.
    with app.app_context():
        cipher = services().cipher
    held = claimed_codes(url, cipher)
    assert all(len(codes) == 1 for codes in held.values()), held
    all_held = [codes[0] for codes in held.values()]
    assert len(all_held) == len(set(all_held)) == len(PEOPLE)
    seen = {}
    for visitor in [*visitors, quiet]:
        assert visitor.codes_seen, f"{visitor.person[1]} never saw a code"
        assert len(set(visitor.codes_seen)) == 1, f"{visitor.person[1]} saw different codes: {visitor.codes_seen}"
        seen.setdefault(visitor.person[0], set()).add(visitor.codes_seen[0])
    assert all(len(codes) == 1 for codes in seen.values()), seen
    assert sorted(c for codes in seen.values() for c in codes) == sorted(all_held)

    # And nothing a person typed is in the database in clear.
    dump = subprocess.run(
        [*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []), str(PG_BIN / "pg_dump"),
         "-h", "127.0.0.1", "-p", str(private_postgres.port), "-U", "postgres", "--data-only", url.rsplit("/", 1)[1]],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "INSERT" in dump or "COPY" in dump
    for _, last_name, born, _, ssn in PEOPLE:
        for secret in (last_name, last_name.lower(), born, ssn, ssn.replace("-", "")):
            assert secret not in dump, f"{secret!r} is stored in clear"
    with app.app_context():
        db.engine.dispose()


@pytest.mark.postgres
def test_postgres_lost_after_the_last_query_of_a_request(private_postgres: PrivateCluster) -> None:
    """The page is rendered; PostgreSQL goes away before the request ends (its transaction is closed).

    The same race as above, made deterministic: the visitor must still get a normal page or the
    plain 503, and the next visit must work once PostgreSQL is back.
    """
    app = make_app(private_postgres.new_database(), PROPAGATE_EXCEPTIONS=False)
    armed: list[bool] = []
    stopped: list[bool] = []

    @app.after_request  # after the view's last query, before the app context is torn down
    def database_goes_away(response: Any) -> Any:
        if armed and request.path == "/exposure" and not stopped:
            private_postgres.stop("fast")
            stopped.append(True)
        return response

    assert import_patients(app, person_rows()[:1]) == []
    load_codes(app, 1)
    visitor = Visitor(app, PEOPLE[0])
    assert visitor.round()
    armed.append(True)

    client = visitor.client
    _, last_name, born, zip_code, ssn = PEOPLE[0]
    token = CSRF_FIELD.search(client.get("/lookup").get_data(as_text=True))
    assert token
    data = {"csrf_token": token.group(1), "last_name": last_name, "date_of_birth": born,
            "zip_code": zip_code, "ssn_last4": ssn[-4:], "reference": ""}  # fmt: skip
    assert client.post("/lookup", data=data).status_code == 303
    try:
        try:
            response = client.get("/exposure")
        except Exception as error:
            pytest.fail(f"a database lost at the end of the request escaped the app: {error.__class__.__name__}")
        assert stopped
        assert response.status_code in (200, 503)
        assert_no_leak(response, "GET /exposure")
    finally:
        private_postgres.start()
    again = Visitor(app, PEOPLE[0])
    assert again.round(), again.log
    assert again.codes_seen == visitor.codes_seen
    with app.app_context():
        db.engine.dispose()


# --- Redis lost and found -------------------------------------------------------------------------


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def limiter_keys(self) -> list[bytes]:
        return [key for key in self.client.keys("*") if b"verify-" in key]


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
        server.client.close()


UNKNOWN = {"last_name": "Nobody", "date_of_birth": "1975-01-02", "zip_code": "10001", "ssn_last4": "1111"}


def failed_attempt(app: Flask, address: str, n: int) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    form = client.get("/lookup")
    token = CSRF_FIELD.search(form.get_data(as_text=True))
    assert token
    data = {**UNKNOWN, "last_name": f"Nobody{chr(65 + n)}", "reference": "", "csrf_token": token.group(1)}
    response = client.post("/lookup", data=data)
    assert_no_leak(response, f"lookup from {address}")
    return response


def known_person_lookup(app: Flask, address: str) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    token = CSRF_FIELD.search(client.get("/lookup").get_data(as_text=True))
    assert token
    known = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001",
             "ssn_last4": "6789", "reference": "", "csrf_token": token.group(1)}  # fmt: skip
    return client.post("/lookup", data=known)


@pytest.mark.redis
def test_verifications_are_refused_while_redis_is_down(private_redis: PrivateRedis, tmp_path: Path) -> None:
    """Counting in each process's memory would multiply every budget by the number of processes:
    while the shared store is gone no attempt is made (503, Retry-After), and pages are still served."""
    app = make_app(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=private_redis.url,
        VERIFY_LIMIT_CLIENT="3 per hour",
        PROPAGATE_EXCEPTIONS=False,
    )
    assert import_patients(app, [patient_row()]) == []

    # Counting really goes to this Redis to begin with.
    assert failed_attempt(app, "192.0.2.1", 0).status_code == 200
    assert private_redis.limiter_keys(), "the limiter is not counting in the private Redis"

    private_redis.kill()
    for response in [failed_attempt(app, "192.0.2.2", n) for n in range(4)] + [known_person_lookup(app, "192.0.2.3")]:
        assert_clean_503(response, "lookup while Redis is down")
    assert app.test_client().get("/").status_code == 200
    assert app.test_client().get("/lookup").status_code == 200

    # Redis is back on the same port: counting resumes there at once, and the limits hold.
    private_redis.start()
    assert [failed_attempt(app, "192.0.2.4", n).status_code for n in range(4)] == [200, 200, 200, 429]
    assert private_redis.limiter_keys(), "counts did not go back to Redis after it recovered"
    assert known_person_lookup(app, "192.0.2.5").status_code == 303
    with app.app_context():
        db.engine.dispose()


@pytest.mark.redis
def test_redis_dying_during_a_lookup_is_not_a_500(
    private_redis: PrivateRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis dies after a lookup was counted and before its answer: in production that is every
    lookup in flight (each spends ~0.1 s hashing) when Redis goes."""
    app = make_app(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=private_redis.url,
        VERIFY_LIMIT_CLIENT="3 per hour",
        PROPAGATE_EXCEPTIONS=False,
    )
    assert import_patients(app, [patient_row()]) == []
    real_find = verification.find_patient

    def redis_dies_while_hashing(*args: Any) -> Any:
        private_redis.kill()
        return real_find(*args)

    monkeypatch.setattr(verification, "find_patient", redis_dies_while_hashing)
    assert failed_attempt(app, "192.0.2.20", 0).status_code == 200
    assert_clean_503(failed_attempt(app, "192.0.2.20", 1), "the next lookup")
    with app.app_context():
        db.engine.dispose()


@pytest.mark.redis
def test_a_full_limit_store_refuses_verifications_instead_of_forgetting(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Redis at its maxmemory with noeviction (as deploy/ sets it) refuses new counters: attempts
    are refused too, so an attacker who fills the store gains no uncounted guesses."""
    app = make_app(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}", RATELIMIT_STORAGE_URI=private_redis.url, PROPAGATE_EXCEPTIONS=False
    )
    assert import_patients(app, [patient_row()]) == []
    assert failed_attempt(app, "192.0.2.30", 0).status_code == 200
    used = int(private_redis.client.info("memory")["used_memory"])
    private_redis.client.config_set("maxmemory-policy", "noeviction")
    private_redis.client.config_set("maxmemory", str(used))
    assert_clean_503(failed_attempt(app, "192.0.2.31", 1), "a lookup with the limit store full")
    private_redis.client.config_set("maxmemory", "0")
    assert known_person_lookup(app, "192.0.2.32").status_code == 303
    with app.app_context():
        db.engine.dispose()


# --- Over capacity --------------------------------------------------------------------------------


def test_a_burst_beyond_the_hashing_slots_gets_a_clean_503(tmp_path: Path) -> None:
    app = make_app(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        ARGON2_TIME_COST=3,
        ARGON2_MEMORY_COST=65536,  # ~0.15 s a hash here: far longer than the 0.05 s wait
        HASH_CONCURRENCY=1,
        HASH_WAIT_SECONDS=0.05,
        PROPAGATE_EXCEPTIONS=False,
    )
    assert import_patients(app, [patient_row()]) == []
    known = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}

    def prepared() -> tuple[FlaskClient, dict[str, str]]:
        client = app.test_client()
        token = CSRF_FIELD.search(client.get("/lookup").get_data(as_text=True))
        assert token
        return client, {**known, "reference": "", "csrf_token": token.group(1)}

    def fire(start: threading.Barrier, client: FlaskClient, data: dict[str, str], out: list[Any]) -> None:
        start.wait()  # all eight ask at the same instant
        out.append(client.post("/lookup", data=data))

    responses: list[Any] = []
    for _burst in range(3):  # a loaded machine may spread one burst out; three never all are
        visitors = [prepared() for _ in range(8)]
        start = threading.Barrier(len(visitors))
        threads = [threading.Thread(target=fire, args=(start, *v, responses)) for v in visitors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        if any(r.status_code == 503 for r in responses):
            break

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {303, 503}, statuses
    assert 503 in statuses and 303 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert_clean_503(response, "burst lookup")
    # The burst is over: the next person is served without anything being restarted.
    client, data = prepared()
    assert client.post("/lookup", data=data).status_code == 303
    with app.app_context():
        db.engine.dispose()


@pytest.mark.postgres
def test_no_pooled_connection_free_in_time_is_a_clean_503_on_every_surface(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection of a process's pool taken (here by the test): the site, the console and the
    API answer 503 with Retry-After once the pool's wait runs out, never a 500."""
    sized = config.engine_options
    monkeypatch.setattr(config, "engine_options", lambda url, threads: {**sized(url, threads), "pool_timeout": 0.2})
    app = make_app(postgres_url, THREADS=1, PROPAGATE_EXCEPTIONS=False)
    pool = config.engine_options(postgres_url, 1)
    key = create_api_key(app)
    site, console = app.test_client(), app.test_client()
    person = {"last_name": "Nobody", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}
    login = {"username": "agent", "password": "a password", "code": "123456"}
    forms = {
        "site": {**person, "csrf_token": csrf_token(site)},
        "console": {**login, "csrf_token": csrf_token(console, "/agent/login")},
    }
    with app.app_context():
        held = [db.engine.connect() for _ in range(pool["pool_size"] + pool["max_overflow"])]
        try:
            answers = {
                "site": site.post("/lookup", data=forms["site"]),
                "console": console.post("/agent/login", data=forms["console"]),
                "api": app.test_client().get("/api/v1/program", headers={"Authorization": f"Bearer {key}"}),
            }
        finally:
            for connection in held:
                connection.close()
        db.engine.dispose()
    assert_clean_503(answers["site"], "site")
    assert_clean_503(answers["console"], "console")
    api = answers["api"]
    assert (api.status_code, api.mimetype, api.json["status"]) == (503, "application/problem+json", 503)
    assert int(api.headers["Retry-After"]) > 0
