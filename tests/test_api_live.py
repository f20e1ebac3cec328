"""The partner API under gunicorn, where attackers and partners meet it: several workers and
threads, two servers on one Redis, simultaneous requests, keys revoked from another process."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_URL, create_api_key, import_patients, make_app, make_config, patient_row
from flask import Flask
from live import Answer, LiveServer, all_at_once

from portal.extensions import db
from portal.hashing_slots import ServerSlots

PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}


@contextlib.contextmanager
def gunicorn(folder: Path, config: dict[str, Any], workers: int = 2, threads: int = 4) -> Iterator[LiveServer]:
    server = LiveServer(folder / f"gunicorn-{secrets.token_hex(3)}.log", config, workers, threads)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def call(server: LiveServer, key: str, method: str, path: str, body: Any = None) -> Answer:
    """One request on a new connection (so gunicorn may hand it to any worker)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return server.request(method, f"/api/v1{path}", json.dumps(body).encode() if body is not None else None, headers)


def served_database(folder: Any, database_url: str = "", **overrides: Any) -> tuple[Flask, dict[str, Any]]:
    """A database (SQLite unless ``database_url`` names one) with one patient, and the configuration
    servers of it should run with."""
    config = make_config(
        database_url or f"sqlite:///{folder / 'portal.sqlite3'}", RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **overrides
    )
    app = make_app(config["DATABASE_URL"], **config)
    assert import_patients(app, [patient_row()]) == []
    return app, config


@pytest.fixture
def served(tmp_path: Any) -> tuple[Flask, dict[str, Any]]:
    return served_database(tmp_path)


def test_a_key_revoked_by_the_operator_is_refused_by_every_worker(
    tmp_path: Path, served: tuple[Flask, dict[str, Any]]
) -> None:
    app, config = served
    key = create_api_key(app)
    with gunicorn(tmp_path, config, workers=2, threads=2) as server:
        assert {call(server, key, "GET", "/program").status for _ in range(6)} == {200}
        assert app.test_cli_runner().invoke(args=["revoke-api-key", "1"]).exit_code == 0  # this test's process
        assert {call(server, key, "GET", "/program").status for _ in range(6)} == {401}


@pytest.mark.redis
def test_two_servers_on_one_redis_hold_a_key_to_its_rate(tmp_path: Path, served: tuple[Flask, dict[str, Any]]) -> None:
    app, config = served
    config = {**config, "RATELIMIT_STORAGE_URI": REDIS_URL}
    key = create_api_key(app, rate="6/minute")
    with gunicorn(tmp_path, config, workers=1, threads=2) as one, gunicorn(tmp_path, config, 1, 2) as two:
        answers = [call(server, key, "GET", "/program") for server in [one, two] * 5]
    assert [answer.status for answer in answers] == [200] * 6 + [429] * 4
    assert [answer.headers["X-RateLimit-Remaining"] for answer in answers[:6]] == ["5", "4", "3", "2", "1", "0"]
    assert all(int(answer.headers["Retry-After"]) > 0 for answer in answers[6:])


@pytest.mark.redis
def test_simultaneous_guesses_are_held_to_the_person_budget(
    tmp_path: Path, served: tuple[Flask, dict[str, Any]]
) -> None:
    app, config = served
    config = {**config, "RATELIMIT_STORAGE_URI": REDIS_URL, "API_VERIFY_LIMIT_PERSON": "3 per 15 minutes"}
    key = create_api_key(app)
    guesses = [{**PERSON, "ssn_last4": f"{n:04d}"} for n in range(12)]
    with gunicorn(tmp_path, config, workers=2, threads=8) as server:
        answers = all_at_once([lambda g=g: call(server, key, "POST", "/verifications", g) for g in guesses])
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] * 3 + [429] * 9, statuses


def test_hashing_slots_are_shared_by_the_workers_of_a_server(tmp_path: Any) -> None:
    """One slot for the server: with two workers allowed four hashes each on their own, a burst
    still finds it taken (503 with Retry-After) and is then served again."""
    # Records hashed at about 0.1 s a lookup here: far longer than the 0.02 s wait for a slot.
    slow = {"ARGON2_TIME_COST": 4, "ARGON2_MEMORY_COST": 32768, "HASH_CONCURRENCY": 4, "HASH_WAIT_SECONDS": 0.02}
    app, config = served_database(tmp_path, **slow)
    key = create_api_key(app)
    # PORTAL_HASH_SLOTS is read by the gunicorn master (portal/gunicorn_config.py), not by the app.
    with gunicorn(tmp_path, {**config, "HASH_SLOTS": 1}, workers=2, threads=4) as server:
        answers: list[Answer] = []
        for _burst in range(3):
            answers += all_at_once([lambda: call(server, key, "POST", "/verifications", PERSON)] * 8)
            if any(answer.status == 503 for answer in answers):
                break
        after = call(server, key, "POST", "/verifications", PERSON)
    assert {answer.status for answer in answers} == {200, 503}
    assert all(int(answer.headers["Retry-After"]) > 0 for answer in answers if answer.status == 503)
    assert after.status == 200


def _hold_a_slot(slots: ServerSlots, held: Any) -> None:
    slots.bind(1)
    assert slots.acquire(timeout=5)
    held.set()
    threading.Event().wait(60)  # killed before this ends


def test_a_worker_killed_holding_a_slot_gives_it_back() -> None:
    slots = ServerSlots(1)
    held = multiprocessing.get_context("fork").Event()
    worker = multiprocessing.get_context("fork").Process(target=_hold_a_slot, args=(slots, held))
    worker.start()
    try:
        assert held.wait(10)
        assert not slots.acquire(timeout=0.05)  # the other process holds the server's only slot
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(10)
        slots.reclaim(1)  # what the master's child_exit hook does
        assert slots.acquire(timeout=1)
        slots.release()
    finally:
        if worker.is_alive():
            worker.kill()


@pytest.mark.postgres
def test_more_threads_than_the_old_pool_held_are_all_answered(tmp_path: Path, postgres_url: str) -> None:
    """Sixteen threads a worker, 32 verifications at once on PostgreSQL: each request holds its
    session's connection (through the hashing wait) and takes a second for its event's audit row.
    A pool of 5 + 5 a process left most of them waiting for each other until the pool's timeout
    (500); one sized from the threads serves every one."""
    app, config = served_database(tmp_path, postgres_url)
    key = create_api_key(app)
    with app.app_context():
        db.engine.dispose()
    with gunicorn(tmp_path, config, workers=2, threads=16) as server:
        answers = all_at_once([lambda: call(server, key, "POST", "/verifications", PERSON)] * 32)
        log = server.log()
    assert [answer.status for answer in answers] == [200] * 32, log[-3000:]
    assert "Traceback" not in log and "unhandled" not in log


def test_an_oversized_body_is_a_413_under_gunicorn_whether_chunked_or_not(
    tmp_path: Path, served: tuple[Flask, dict[str, Any]]
) -> None:
    """Gunicorn ends a chunked body itself: cut at the limit, it must not read as malformed JSON (400)."""
    app, config = served
    key = create_api_key(app)
    body = json.dumps(PERSON).encode() + b" " * 5000
    head = f"POST /api/v1/verifications HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    head += "Content-Type: application/json\r\nConnection: close\r\n"
    chunked = f"{head}Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    sized = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    with gunicorn(tmp_path, config, workers=1, threads=2) as server:
        assert [server.raw(request).split()[1] for request in (chunked, sized)] == [b"413", b"413"]
