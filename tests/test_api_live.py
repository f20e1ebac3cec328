"""The partner API under gunicorn, where attackers and partners meet it: several workers and
threads, two servers on one Redis, simultaneous requests, keys revoked from another process."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import secrets
import signal
import threading
from typing import Any

import pytest
from conftest import REDIS_URL, create_api_key, gunicorn_server, import_patients, make_app, make_config, patient_row
from flask import Flask

from portal.identity import ServerSlots

PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}


def request(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """One request on a new connection (so gunicorn may hand it to any worker)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        connection.request(
            method, f"/api/v1{path}", body=json.dumps(body) if body is not None else None, headers=headers
        )
        response = connection.getresponse()
        payload = response.read()
        return response.status, dict(response.getheaders()), json.loads(payload) if payload else None
    finally:
        connection.close()


def simultaneously(count: int, send: Any) -> list[Any]:
    """``count`` requests released at the same instant."""
    start, results, lock = threading.Barrier(count), [], threading.Lock()

    def one(n: int) -> None:
        start.wait()
        result = send(n)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def served_database(folder: Any, **overrides: Any) -> tuple[Flask, dict[str, Any]]:
    """A SQLite database with one patient, and the configuration servers of it should run with."""
    config = make_config(
        f"sqlite:///{folder / 'portal.sqlite3'}", RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **overrides
    )
    app = make_app(config["DATABASE_URL"], **config)
    assert import_patients(app, [patient_row()]) == []
    return app, config


@pytest.fixture
def served(tmp_path: Any) -> tuple[Flask, dict[str, Any]]:
    return served_database(tmp_path)


def test_a_key_revoked_by_the_operator_is_refused_by_every_worker(served: tuple[Flask, dict[str, Any]]) -> None:
    app, config = served
    key = create_api_key(app)
    with gunicorn_server(config, workers=2, threads=2) as base:
        assert {request(base, key, "GET", "/program")[0] for _ in range(6)} == {200}
        assert app.test_cli_runner().invoke(args=["revoke-api-key", "1"]).exit_code == 0  # this test's process
        assert {request(base, key, "GET", "/program")[0] for _ in range(6)} == {401}


@pytest.mark.redis
def test_two_servers_on_one_redis_hold_a_key_to_its_rate(served: tuple[Flask, dict[str, Any]]) -> None:
    app, config = served
    config = {**config, "RATELIMIT_STORAGE_URI": REDIS_URL}
    key = create_api_key(app, rate="6/minute")
    with gunicorn_server(config, workers=1, threads=2) as one, gunicorn_server(config, workers=1, threads=2) as two:
        answers = [request(base, key, "GET", "/program") for base in [one, two] * 5]
    assert [status for status, _, _ in answers] == [200] * 6 + [429] * 4
    assert [headers["X-RateLimit-Remaining"] for _, headers, _ in answers[:6]] == ["5", "4", "3", "2", "1", "0"]
    assert all(int(headers["Retry-After"]) > 0 for _, headers, _ in answers[6:])


@pytest.mark.redis
def test_simultaneous_guesses_are_held_to_the_person_budget(served: tuple[Flask, dict[str, Any]]) -> None:
    app, config = served
    config = {**config, "RATELIMIT_STORAGE_URI": REDIS_URL, "API_VERIFY_LIMIT_PERSON": "3 per 15 minutes"}
    key = create_api_key(app)
    with gunicorn_server(config, workers=2, threads=4) as base:
        results = simultaneously(
            12, lambda n: request(base, key, "POST", "/verifications", {**PERSON, "ssn_last4": f"{n:04d}"})
        )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 3 + [429] * 9, statuses


def test_hashing_slots_are_shared_by_the_workers_of_a_server(tmp_path: Any) -> None:
    """One slot for the server: with two workers allowed four hashes each on their own, a burst
    still finds it taken (503 with Retry-After) and is then served again."""
    # Records hashed at about 0.1 s a lookup here: far longer than the 0.02 s wait for a slot.
    slow = {"ARGON2_TIME_COST": 4, "ARGON2_MEMORY_COST": 32768, "HASH_CONCURRENCY": 4, "HASH_WAIT_SECONDS": 0.02}
    app, config = served_database(tmp_path, **slow)
    key = create_api_key(app)
    # PORTAL_HASH_SLOTS is read by the gunicorn master (portal/gunicorn_config.py), not by the app.
    with gunicorn_server({**config, "HASH_SLOTS": 1}, workers=2, threads=4) as base:
        results: list[Any] = []
        for _burst in range(3):
            results += simultaneously(8, lambda _n: request(base, key, "POST", "/verifications", PERSON))
            if any(status == 503 for status, _, _ in results):
                break
        after = request(base, key, "POST", "/verifications", PERSON)
    statuses = {status for status, _, _ in results}
    assert statuses == {200, 503}, statuses
    assert all(int(headers["Retry-After"]) > 0 for status, headers, _ in results if status == 503)
    assert after[0] == 200


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
