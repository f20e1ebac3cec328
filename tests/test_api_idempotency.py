"""Idempotency-Key on the partner API's POSTs: a retry gets the first answer, without a second hash,
budget unit or claim; another body is refused; nothing stored names a person; and it holds across
workers, servers and simultaneous retries."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import create_api_key, numbered
from flask import Flask
from flask.testing import FlaskClient
from live import Answer, LiveServer, all_at_once
from sqlalchemy import func, select, text, update
from test_api import PERSON, api_app, assert_problem, call
from test_api_live import gunicorn, served_database

from portal.extensions import db
from portal.idempotency import LEASE, WINDOW
from portal.identity import IdentifierHasher
from portal.importer import import_codes
from portal.models import AuditEvent, IdempotentRequest, utcnow
from portal.services import services

WRONG = {**PERSON, "ssn_last4": "0000"}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


@pytest.fixture
def app(database_url: str) -> Flask:
    return api_app(database_url, API_VERIFY_LIMIT_PERSON="2 per 15 minutes")


@pytest.fixture
def key(app: Flask) -> str:
    return create_api_key(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every lookup's Argon2 hashing, counted."""
    made: list[int] = []
    original = IdentifierHasher.lookup_digests

    def counted(self: IdentifierHasher, *args: Any) -> list[bytes]:
        made.append(1)
        return original(self, *args)

    monkeypatch.setattr(IdentifierHasher, "lookup_digests", counted)
    return made


def verification_events(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).where(AuditEvent.action == "verification")) or 0


def test_a_retried_failure_is_answered_again_without_a_hash_or_a_budget_unit(
    app: Flask, client: FlaskClient, key: str, hashes: list[int]
) -> None:
    first = call(client, key, "POST", "/verifications", WRONG, headers=keyed("retry-1"))
    retries = [call(client, key, "POST", "/verifications", WRONG, headers=keyed("retry-1")) for _ in range(4)]
    assert first.get_json() == {"verified": False} and "Idempotent-Replayed" not in first.headers
    assert all(r.status_code == 200 and r.get_json() == {"verified": False} for r in retries)
    assert {r.headers["Idempotent-Replayed"] for r in retries} == {"true"}
    assert len(hashes) == 1 and verification_events(app) == 1
    # The person's limit is 2 failures: the retries took none of it, so one more failure is still answered.
    assert call(client, key, "POST", "/verifications", {**PERSON, "ssn_last4": "0001"}).status_code == 200
    assert_problem(call(client, key, "POST", "/verifications", {**PERSON, "ssn_last4": "0002"}), 429)


def test_without_a_key_each_retry_is_a_new_attempt(client: FlaskClient, key: str, hashes: list[int]) -> None:
    """The control: the same failures sent again without Idempotency-Key count each time."""
    statuses = [call(client, key, "POST", "/verifications", WRONG).status_code for _ in range(3)]
    assert statuses == [200, 200, 429] and len(hashes) == 2


def test_a_retried_verification_gives_the_same_claim_token_and_a_retried_claim_the_first_answer(
    client: FlaskClient, key: str
) -> None:
    verified = [call(client, key, "POST", "/verifications", PERSON, headers=keyed("v-1")) for _ in range(2)]
    assert verified[0].get_json() == verified[1].get_json()
    token = verified[0].get_json()["claim_token"]
    claims = [call(client, key, "POST", "/claims", {"claim_token": token}, headers=keyed("c-1")) for _ in range(2)]
    # The retry is the first answer, 201 included; a new claim without the key says 200 (held already).
    assert [c.status_code for c in claims] == [201, 201] and claims[0].get_json() == claims[1].get_json()
    assert call(client, key, "POST", "/claims", {"claim_token": token}).status_code == 200


def test_the_same_key_with_another_request_is_refused(client: FlaskClient, key: str, hashes: list[int]) -> None:
    call(client, key, "POST", "/verifications", PERSON, headers=keyed("k-1"))
    body = assert_problem(call(client, key, "POST", "/verifications", WRONG, headers=keyed("k-1")), 422)
    assert body["type"].endswith("#problem-idempotency-key-reused") and body["title"] == "Idempotency key reused"
    # Another endpoint is another request too; the same JSON spelt otherwise is the same request.
    assert_problem(call(client, key, "POST", "/claims", {"claim_token": "x"}, headers=keyed("k-1")), 422)
    respelt = json.dumps(dict(reversed(PERSON.items())), indent=2)
    same = call(
        client, key, "POST", "/verifications", data=respelt, content_type="application/json", headers=keyed("k-1")
    )
    assert same.headers["Idempotent-Replayed"] == "true" and len(hashes) == 1


def test_each_partner_key_has_its_own_idempotency_keys(app: Flask, client: FlaskClient, key: str) -> None:
    other = create_api_key(app)
    call(client, key, "POST", "/verifications", PERSON, headers=keyed("shared"))
    answer = call(client, other, "POST", "/verifications", WRONG, headers=keyed("shared"))
    assert answer.get_json() == {"verified": False} and "Idempotent-Replayed" not in answer.headers


def test_only_successes_are_kept_so_a_refused_request_is_made_again(database_url: str) -> None:
    app = api_app(database_url, codes=0)
    key, client = create_api_key(app), app.test_client()
    token = call(client, key, "POST", "/verifications", PERSON).get_json()["claim_token"]
    assert_problem(call(client, key, "POST", "/claims", {"claim_token": token}, headers=keyed("c")), 503)
    with app.app_context():
        import_codes(db.session, services().cipher, numbered([{"code": "IDP-NEW-0001", "enroll_by": "2030-01-01"}]),
                     on_reject=lambda *_: None)  # fmt: skip
    retry = call(client, key, "POST", "/claims", {"claim_token": token}, headers=keyed("c"))
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers


@pytest.mark.parametrize("value", ["", "x" * 256, "with space", "caf\u00e9"])
def test_an_unusable_idempotency_key_is_a_field_error(client: FlaskClient, key: str, value: str) -> None:
    body = assert_problem(call(client, key, "POST", "/verifications", PERSON, headers=keyed(value)), 422)
    assert body["errors"][0]["field"] == "Idempotency-Key"


def test_nothing_stored_names_the_person_or_opens_without_the_request(
    app: Flask, client: FlaskClient, key: str
) -> None:
    verified = call(client, key, "POST", "/verifications", PERSON, headers=keyed("secret-idempotency-key")).get_json()
    token = verified["claim_token"]
    code = call(client, key, "POST", "/claims", {"claim_token": token}, headers=keyed("claim-key")).get_json()
    with app.app_context():
        rows = db.session.execute(text("SELECT * FROM idempotent_requests")).all()
    stored = b"".join(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for r in rows for v in r)
    assert len(rows) == 2
    for secret in ("García", "Garcia", "garcia", "1980-04-23", "10001", "6789", token, code["activation_code"],
                   "secret-idempotency-key", "claim-key", "verified", "claim_token"):  # fmt: skip
        assert secret.encode() not in stored, secret


def test_an_expired_record_and_one_whose_request_died_are_made_again(
    app: Flask, client: FlaskClient, key: str, hashes: list[int]
) -> None:
    call(client, key, "POST", "/verifications", WRONG, headers=keyed("old"))
    with app.app_context():
        db.session.execute(update(IdempotentRequest).values(created_at=utcnow() - WINDOW - timedelta(seconds=1)))
        db.session.commit()
    assert (
        "Idempotent-Replayed" not in call(client, key, "POST", "/verifications", PERSON, headers=keyed("old")).headers
    )
    # A request still being answered holds the key: a retry is asked to come back in a second ...
    with app.app_context():
        db.session.execute(update(IdempotentRequest).values(status=None, answer=None, created_at=utcnow()))
        db.session.commit()
    busy = call(client, key, "POST", "/verifications", PERSON, headers=keyed("old"))
    assert assert_problem(busy, 409)["type"].endswith("#problem-idempotency-key-in-use")
    assert busy.headers["Retry-After"] == "1"
    # ... until it has been unfinished too long to be alive: then the retry takes it over.
    with app.app_context():
        db.session.execute(update(IdempotentRequest).values(created_at=utcnow() - LEASE - timedelta(seconds=1)))
        db.session.commit()
    taken = call(client, key, "POST", "/verifications", PERSON, headers=keyed("old"))
    assert taken.get_json()["verified"] is True and "Idempotent-Replayed" not in taken.headers
    assert len(hashes) == 3


def test_the_purge_removes_records_past_their_24_hours(app: Flask, client: FlaskClient, key: str) -> None:
    call(client, key, "POST", "/verifications", WRONG, headers=keyed("old"))
    with app.app_context():
        db.session.execute(update(IdempotentRequest).values(created_at=utcnow() - timedelta(days=2)))
        db.session.commit()
    call(client, key, "POST", "/verifications", PERSON, headers=keyed("new"))
    assert app.test_cli_runner().invoke(args=["purge", "--before", utcnow().date().isoformat()]).exit_code == 0
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(IdempotentRequest)) == 1


def test_simultaneous_retries_on_two_servers_make_one_verification(tmp_path: Path, database_url: str) -> None:
    """Eight copies of one request at once, half to each of two servers (two workers each) on one
    database: one is made, every other gets its answer or is told to retry, and a retry then gets it."""
    served, config = served_database(tmp_path, database_url)
    partner = create_api_key(served)

    def send(server: LiveServer) -> Answer:
        headers = {"Authorization": f"Bearer {partner}", "Content-Type": "application/json", "Idempotency-Key": "once"}
        return server.request("POST", "/api/v1/verifications", json.dumps(WRONG).encode(), headers)

    with gunicorn(tmp_path, config, 2, 4) as one, gunicorn(tmp_path, config, 2, 4) as two:
        answers = all_at_once([lambda s=server: send(s) for server in [one, two] * 4])
        after = [send(one), send(two)]
    assert {a.status for a in answers} <= {200, 409} and 200 in {a.status for a in answers}
    assert all(a.body == '{"verified":false}\n' for a in answers + after if a.status == 200)
    assert [a.headers.get("Idempotent-Replayed") for a in after] == ["true", "true"]
    assert verification_events(served) == 1
