"""The failure limits as a determined guesser meets them: a live gunicorn with several workers and
threads, simultaneous requests over real sockets, the limit store in Redis.

Each test reproduces one way the limits were once beaten (bursts in flight, padded names, floods
of successes, malformed framing, IPv6 address hopping, probes of others' budgets, echoed digits,
foreign Host headers, an unbounded limit store) and fails if that protection is taken away.
"""

from __future__ import annotations

import csv
import itertools
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from conftest import REDIS_URL, import_patients, lookup, make_app, make_config, patient_row, write_programme
from live import Answer, LiveServer, Visitor, all_at_once

from portal import identity, schema
from portal.app import create_app
from portal.extensions import db
from portal.identity import start_verification
from portal.models import Patient, Verification, utcnow

KNOWN = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
RIGHT, WRONG = "6789", "0000"
ANSWERED = {200, 303}  # not matched, or verified: either way the guesser learnt something
PERSON_COUNTER_BYTES = 200  # Redis MEMORY USAGE of one person counter (key, value, expiry), as SECURITY.md says


@contextmanager
def live_portal(
    tmp_path: Path, database_url: str, workers: int = 2, threads: int = 4, **settings: Any
) -> Iterator[LiveServer]:
    """The portal with one known person imported, served by gunicorn with the given settings."""
    config = make_config(database_url, ARGON2_MEMORY_COST=8192, RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **settings)
    app = create_app(config)
    with app.app_context():
        schema.upgrade(db.engine)
    assert import_patients(app, [patient_row()]) == []
    with app.app_context():
        db.engine.dispose()
    server = LiveServer(tmp_path / "gunicorn.log", config, workers=workers, threads=threads)
    try:
        yield server.wait_ready()
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "unhandled" not in log, log[-3000:]


def guess(server: LiveServer, last4: str, forwarded_for: str | None = None, **person: str) -> Answer:
    return Visitor(server, forwarded_for).prepare().submit({**KNOWN, **person, "ssn_last4": last4})


@pytest.mark.redis
def test_a_burst_of_guesses_gets_no_more_answers_than_the_budget(tmp_path: Path, database_url: str) -> None:
    """32 wrong guesses and the right one, each from its own session, released at one instant
    against 2 workers x 16 threads: at most the budget's 5 failures are answered, whatever is in flight."""
    with live_portal(
        tmp_path, database_url, threads=16,
        RATELIMIT_STORAGE_URI=REDIS_URL, VERIFY_LIMIT_PERSON="5 per 15 minutes; 100 per year",
    ) as server:  # fmt: skip
        visitors = [Visitor(server).prepare() for _ in range(33)]
        fields = [{**KNOWN, "ssn_last4": WRONG}] * 32 + [{**KNOWN, "ssn_last4": RIGHT}]
        answers = all_at_once([lambda v=v, f=f: v.submit(f) for v, f in zip(visitors, fields, strict=True)])
        statuses = [answer.status for answer in answers]
        # At most the budget's 5 "not matched" answers. The right digits may be answered too when
        # they reserve before the budget is spent: a success gives its unit back, which a later
        # guess of the burst may take, but never a sixth failure.
        assert statuses.count(200) <= 5 and statuses.count(303) <= 1, statuses
        assert set(statuses) <= ANSWERED | {429}, statuses
        assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status == 429)
        # Whatever was left of the budget (a success gives its unit back) goes to the next guesses,
        # never more: five failures answered in all, then even the right digits are refused.
        failures = statuses.count(200)
        assert [guess(server, WRONG).status for _ in range(6 - failures)] == [200] * (5 - failures) + [429]
        assert guess(server, RIGHT).status == 429


@pytest.mark.redis
def test_a_padded_or_respelt_name_meets_the_same_budget(tmp_path: Path) -> None:
    with live_portal(
        tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=REDIS_URL, VERIFY_LIMIT_PERSON="5 per 15 minutes",
    ) as server:  # fmt: skip
        assert [guess(server, WRONG).status for _ in range(5)] == [200] * 5
        for spelling in ("García-López" + " " * 90, "GARCIA LOPEZ", "  garcia-lopez", "Garci\u0301a Lo\u0301pez"):
            assert guess(server, RIGHT, last_name=spelling).status == 429, spelling
        # Another birth date is another person's budget.
        assert guess(server, WRONG, date_of_birth="1980-04-24").status == 200


@pytest.mark.redis
def test_one_address_cannot_verify_in_a_loop(tmp_path: Path) -> None:
    """Successes are not failures, but every attempt counts against the address's own budget."""
    with live_portal(
        tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=REDIS_URL, TRUSTED_PROXIES=1, TRUSTED_PROXY_NETWORKS=["127.0.0.1/32"],
        VERIFY_LIMIT_CLIENT_ATTEMPTS="5 per minute",
    ) as server:  # fmt: skip
        loop = [guess(server, RIGHT, "198.51.100.7").status for _ in range(6)]
        assert loop == [303] * 5 + [429]
        assert guess(server, RIGHT, "198.51.100.8").status == 303  # its neighbour is served


@pytest.mark.redis
def test_an_ipv6_subscriber_is_one_client_however_many_addresses(tmp_path: Path) -> None:
    """A subscriber routinely holds a whole /64: counting single addresses would count nothing."""
    with live_portal(
        tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=REDIS_URL, TRUSTED_PROXIES=1, TRUSTED_PROXY_NETWORKS=["127.0.0.1/32"],
        VERIFY_LIMIT_CLIENT="3 per hour",
    ) as server:  # fmt: skip
        hops = [guess(server, WRONG, f"2001:db8:7:9::{n:x}", last_name=f"Person{chr(65 + n)}") for n in range(1, 5)]
        assert [answer.status for answer in hops] == [200, 200, 200, 429]
        assert guess(server, WRONG, "2001:db8:7:a::1", last_name="Other").status == 200


@pytest.mark.redis
def test_an_invalid_submission_tells_nothing_of_anyones_budget(tmp_path: Path) -> None:
    """Refused before any budget is read: the same 400 for a throttled person and a fresh one."""
    with live_portal(
        tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=REDIS_URL, VERIFY_LIMIT_PERSON="2 per 15 minutes",
    ) as server:  # fmt: skip
        assert [guess(server, WRONG).status for _ in range(3)] == [200, 200, 429]
        throttled = guess(server, WRONG, zip_code="1234")
        fresh = guess(server, WRONG, zip_code="1234", date_of_birth="1971-01-01")

        def page(answer: Answer) -> tuple[int, str, str | None]:
            body = re.sub(r'value="[^"]*"', 'value=""', answer.body)
            return answer.status, body, answer.headers.get("Retry-After")

        assert page(throttled)[0] == 400
        assert page(throttled) == page(fresh)


def test_malformed_request_framing_is_a_4xx_without_a_stack_trace(tmp_path: Path) -> None:
    framings = {
        "chunk size not hex": b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        "chunk without its terminator": b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        "chunk size negative": b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        "length not a number": b"Content-Length: ten\r\n\r\nabc",
        "length and chunked together": b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "unknown coding": b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    }
    with live_portal(tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}") as server:
        for path in ("/lookup", "/claim", "/sign-out"):
            for name, framing in framings.items():
                head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                status_line = server.raw(head.encode() + framing)
                assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), (path, name, status_line)


def test_ssn_digits_and_references_are_never_written_back(tmp_path: Path) -> None:
    with live_portal(tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}") as server:
        full_ssn = guess(server, "123456789")
        assert full_ssn.status == 400 and "123456789" not in full_ssn.body
        reference = "7" * 23
        answer = Visitor(server).prepare().submit({**KNOWN, "reference": reference})
        assert answer.status == 400 and reference not in answer.body


def test_a_foreign_host_header_is_refused_not_followed(tmp_path: Path) -> None:
    """Production names its hosts (it refuses to start otherwise); any other Host gets a 400."""
    production = {
        "ENV": "production",
        "PROGRAMME_FILE": str(write_programme(tmp_path)),
        "TRUSTED_HOSTS": ["notice.example.org"],
        "ARGON2_TIME_COST": 2,
        "ARGON2_MEMORY_COST": 19456,
        "WORKERS": 1,
        "SINGLE_PROCESS": True,  # memory:// limits, allowed for one declared process only
    }
    database = f"sqlite:///{tmp_path / 'portal.sqlite3'}"
    config = {**make_config(database), **production}
    app = create_app(config)
    with app.app_context():
        schema.upgrade(db.engine)
        db.engine.dispose()
    server = LiveServer(tmp_path / "gunicorn.log", config, workers=1).wait_ready("notice.example.org")
    try:
        for path in ("/", "/exposure", "/code"):
            refused = server.request("GET", path, headers={"Host": "phishing.example.net"})
            assert refused.status == 400, path
            assert "Location" not in refused.headers and "phishing" not in refused.body
    finally:
        server.stop()


def test_the_letters_file_is_for_the_operator_only(runner: Any, app: Any, tmp_path: Path) -> None:
    breach = tmp_path / "breach.csv"
    row = patient_row(ssn="")
    with breach.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    letters = tmp_path / "letters.csv"
    letters.write_text("left over\n", encoding="utf-8")
    letters.chmod(0o644)
    result = runner.invoke(args=["import-patients", str(breach), "--workers", "1", "--letters", str(letters)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(letters.stat().st_mode) == 0o600
    assert letters.read_text(encoding="utf-8").splitlines()[0] == "record_id,reference"


def test_expired_verifications_are_swept_as_new_ones_start(app: Any) -> None:
    assert import_patients(app, [patient_row()]) == []
    with app.app_context():
        patient = db.session.scalar(sa.select(Patient))
        past = utcnow() - timedelta(hours=1)
        row = {"patient_id": patient.id, "channel": "public", "created_at": past, "expires_at": past}
        db.session.execute(
            sa.insert(Verification), [{**row, "token_digest": secrets.token_bytes(32)} for _ in range(30)]
        )
        db.session.commit()
        start_verification(db.session, patient, "public", 900)
        start_verification(db.session, patient, "public", 900)
        expired = sa.select(sa.func.count()).select_from(Verification).where(Verification.expires_at <= utcnow())
        assert db.session.scalar(expired) == 0
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Verification)) == 2


def test_a_sweep_that_found_little_pauses_for_a_second_only(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a sweep leaves nothing expired, the next verifications skip it, but not for longer than
    ``SWEEP_PAUSE_SECONDS``: rows that expired meanwhile are swept by the first verification after."""
    assert import_patients(app, [patient_row()]) == []
    with app.app_context():
        patient = db.session.scalar(sa.select(Patient))
        start_verification(db.session, patient, "public", 900)  # nothing to sweep: the pause starts
        past = utcnow() - timedelta(hours=1)
        row = {"patient_id": patient.id, "channel": "public", "created_at": past, "expires_at": past}
        db.session.execute(
            sa.insert(Verification), [{**row, "token_digest": secrets.token_bytes(32)} for _ in range(5)]
        )
        db.session.commit()
        expired = sa.select(sa.func.count()).select_from(Verification).where(Verification.expires_at <= utcnow())
        start_verification(db.session, patient, "public", 900)
        assert db.session.scalar(expired) == 5  # paused
        later = identity.time.monotonic() + identity.SWEEP_PAUSE_SECONDS
        monkeypatch.setattr(identity.time, "monotonic", lambda: later)
        start_verification(db.session, patient, "public", 900)
        assert db.session.scalar(expired) == 0


@pytest.mark.redis
def test_what_a_failure_leaves_in_the_limit_store_is_bounded(tmp_path: Path) -> None:
    """Each failure with a new name and birth date adds the person's three counters and nothing
    more, each expiring with its window; SECURITY.md states their size (checked here) and the bound."""
    prefix = secrets.token_hex(4)
    app = make_app(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=REDIS_URL,
        RATELIMIT_KEY_PREFIX=prefix,
        VERIFY_LIMIT_PERSON="5 per 15 minutes",
        VERIFY_LIMIT_PERSON_SHARED="20 per day; 100 per year",
        VERIFY_LIMIT_CLIENT_PEOPLE="8 per day",  # a failure leaves no trace in the people budget
    )
    store = redis.Redis.from_url(REDIS_URL)
    client = app.test_client()
    counts = []
    alerts: set[bytes] = set()
    for n in range(6):
        assert lookup(client, **{**KNOWN, "last_name": f"Stranger{chr(65 + n)}"}, ssn_last4=WRONG).status_code == 200
        keys = store.keys(f"*{prefix}*")
        # Attack detection's counters are per time window, not per failure: a CI run crossed into a
        # new minute between two failures and met two more keys there. They are bounded apart.
        alerts |= {key for key in keys if b":alert:" in key}
        counts.append(len(keys) - sum(b":alert:" in key for key in keys))
    assert {after - before for before, after in itertools.pairwise(counts)} == {3}, counts
    # Three signals a failure counts (by client, the failure rate, the success share), each in at
    # most the two windows the loop can span.
    assert 3 <= len(alerts) <= 6, alerts
    person_counters = store.keys(f"*{prefix}*verify-person*")
    assert max(store.memory_usage(key) or 0 for key in person_counters) <= PERSON_COUNTER_BYTES
    assert all(0 < store.ttl(key) <= 366 * 24 * 3600 for key in store.keys(f"*{prefix}*")), "every counter expires"
    with app.app_context():
        db.engine.dispose()
