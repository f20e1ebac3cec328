"""The activation-code pool (portal.claims) against the real databases.

One code per person, one person per code, the same code on every return, nothing burnt by a
crash or a retry, and codes that are useless to whoever copies the table.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import random
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import hkdf_sha256
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import portal.claims
from portal.claims import (
    CodeCipher,
    NotHeld,
    PoolBusy,
    PoolEmpty,
    PoolStatus,
    Reissue,
    claim_code,
    code_of,
    pool_status,
    reissue_code,
)
from portal.extensions import db
from portal.identity import Keyring, current_scheme
from portal.models import ActivationCode, Patient, utcnow
from portal.services import services

CODES = ActivationCode.__table__
TODAY = date.today()
SOON = TODAY + timedelta(days=90)


# --- helpers -------------------------------------------------------------------------------------


def add_patients(session: Session, count: int) -> list[int]:
    """Patients as the importer leaves them (digests and flags only), without paying for Argon2."""
    scheme = current_scheme(session, services().hasher)
    patients = [
        Patient(
            record_key=secrets.token_bytes(32),
            scheme_id=scheme.id,
            lookup_digest=secrets.token_bytes(32),
            exposed_fields=1,
        )
        for _ in range(count)
    ]
    session.add_all(patients)
    session.commit()
    return [p.id for p in patients]


def add_codes(
    session: Session, codes: dict[str, date], product: str = "Identity protection, 24 months"
) -> dict[str, int]:
    """Seal codes into the pool (enroll_by may lie in the past, which the importer would refuse)."""
    cipher = services().cipher
    rows = {}
    for code, enroll_by in codes.items():
        row = cipher.seal(code)
        row.enroll_by, row.product = enroll_by, product
        session.add(row)
        rows[code] = row
    session.commit()
    return {code: row.id for code, row in rows.items()}


def new_codes(count: int, prefix: str = "TST") -> list[str]:
    return [f"{prefix}-{i:04d}-{secrets.token_hex(4).upper()}" for i in range(count)]


def snapshot(session: Session) -> list[tuple[Any, ...]]:
    """Every column of every pool row, in a stable order."""
    session.rollback()  # a fresh view of what is committed
    return [tuple(row) for row in session.execute(sa.select(CODES).order_by(CODES.c.id))]


def claim(app: Flask, patient_id: int, today: date | None = None) -> str:
    with app.app_context():
        return claim_code(db.session, services().cipher, db.session.get_one(Patient, patient_id), today).code


def holders(session: Session) -> dict[int, int]:
    """patient_id -> code row id, from the database."""
    session.rollback()
    rows = session.execute(sa.select(CODES.c.patient_id, CODES.c.id).where(CODES.c.patient_id.is_not(None))).all()
    return {patient_id: code_id for patient_id, code_id in rows}


def counted(session: Session, today: date) -> PoolStatus:
    """The pool's counts the slow way, row by row: what the kept counts must always equal."""
    session.rollback()
    count = sa.select(sa.func.count()).select_from(CODES)
    return PoolStatus(
        session.scalar(count) or 0,
        session.scalar(count.where(CODES.c.patient_id.is_not(None))) or 0,
        session.scalar(count.where(CODES.c.patient_id.is_(None), CODES.c.enroll_by >= today)) or 0,
    )


def test_the_pool_counts_follow_every_write_whoever_makes_it(app: Flask) -> None:
    """Kept by the database: claims, a reissue, and plain SQL inserting, claiming, moving and deleting
    codes, in batches and alone, all show in ``pool_status`` exactly as counting the rows would."""
    today = date.today()
    with app.app_context():
        people = add_patients(db.session, 6)
        ids = add_codes(db.session, {code: SOON for code in new_codes(70)})
        add_codes(db.session, {code: today - timedelta(days=1) for code in new_codes(3, "OLD")})
    for person in people[:3]:
        claim(app, person)
    with app.app_context():
        held = code_of(db.session, services().cipher, db.session.get_one(Patient, people[0]))
        assert held is not None
        reissue_code(db.session, services().cipher, db.session.get_one(Patient, people[0]), held.row_id)
        first, *rest = sorted(ids.values())
        with db.engine.begin() as connection:
            for statement, params in [
                ("UPDATE activation_codes SET patient_id = :p WHERE id = :id", {"p": people[4], "id": rest[-1]}),
                (
                    "UPDATE activation_codes SET enroll_by = :d WHERE id IN (:a, :b)",
                    {"d": today, "a": rest[0], "b": rest[1]},
                ),
                ("UPDATE activation_codes SET product = 'renamed'", {}),
                ("DELETE FROM activation_codes WHERE id > :id AND patient_id IS NULL", {"id": rest[40]}),
                ("DELETE FROM activation_codes WHERE id = :id", {"id": first}),
            ]:
                connection.execute(sa.text(statement), params)
        expected = counted(db.session, today)
        assert expected.claimed == 4 and 0 < expected.available < expected.total  # 3 + reissue + 1 - 1 deleted
        assert pool_status(db.session, today) == expected
        assert pool_status(db.session, SOON + timedelta(days=1)) == counted(db.session, SOON + timedelta(days=1))


# --- one person, one code; encrypted at rest -----------------------------------------------------


def test_claim_returns_a_code_and_the_same_one_every_time(app: Flask) -> None:
    with app.app_context():
        alice, bob = add_patients(db.session, 2)
        issued = new_codes(3)
        add_codes(db.session, {code: SOON for code in issued})

    first = claim(app, alice)
    assert first in issued
    assert [claim(app, alice) for _ in range(3)] == [first] * 3

    with app.app_context():
        row = db.session.scalar(sa.select(ActivationCode).where(ActivationCode.patient_id == alice))
        assert row is not None
        claimed_at = row.claimed_at
        held = code_of(db.session, services().cipher, db.session.get_one(Patient, alice))
        assert held is not None and held.code == first and held.enroll_by == SOON
        assert held.product == "Identity protection, 24 months"
        assert held.claimed_at == claimed_at
        assert pool_status(db.session).claimed == 1

    second = claim(app, bob)
    assert second in issued and second != first
    with app.app_context():
        held_by = holders(db.session)
        assert set(held_by) == {alice, bob} and len(set(held_by.values())) == 2
        assert pool_status(db.session) == PoolStatus(total=3, claimed=2, available=1)
        # A repeat is a read: the claim time of the first claim did not move.
        assert db.session.scalar(sa.select(CODES.c.claimed_at).where(CODES.c.patient_id == alice)) == claimed_at


def test_codes_are_sealed_at_rest_and_only_the_code_key_opens_them(app: Flask) -> None:
    with app.app_context():
        (patient,) = add_patients(db.session, 1)
        code, other = new_codes(2)
        add_codes(db.session, {code: SOON, other: SOON + timedelta(days=1)})
    assert claim(app, patient) == code

    with app.app_context():
        cipher = services().cipher
        rows = {r.id: r for r in db.session.scalars(sa.select(ActivationCode))}
        row = next(r for r in rows.values() if r.patient_id == patient)
        for stored in rows.values():
            for column in (stored.ciphertext, stored.code_digest, stored.product.encode()):
                for plain in (code, other):
                    assert plain.encode("ascii") not in column
                    assert plain.lower().encode("ascii") not in column
        assert row.code_digest != code.encode("ascii") and len(row.code_digest) == 32
        assert row.code_digest == cipher.digest(code)
        assert cipher.open(row) == code

        # The app's key, rebuilt from configuration alone, opens it ...
        assert CodeCipher(Keyring.from_config(app.config, "CODE_KEY")).open(row) == code
        # ... another key does not, and neither does the identifier key.
        stranger = CodeCipher(Keyring(1, {1: secrets.token_bytes(32)}))
        with pytest.raises(InvalidTag):
            stranger.open(row)
        with pytest.raises(InvalidTag):
            CodeCipher(Keyring.from_config(app.config, "IDENTIFIER_KEY")).open(row)
        # The ciphertext is bound to its row: moved onto another row's digest, it does not open.
        swapped = next(r for r in rows.values() if r.id != row.id)
        with pytest.raises(InvalidTag):
            cipher.open(ActivationCode(code_digest=swapped.code_digest, ciphertext=row.ciphertext, key_version=1))


# --- which code: never an expired one, earliest deadline first ---------------------------------------


def test_expired_codes_are_never_handed_out_and_the_earliest_deadline_goes_first(app: Flask) -> None:
    today = date(2027, 3, 1)
    yesterday, later, latest = today - timedelta(days=1), today + timedelta(days=30), today + timedelta(days=60)
    expired, due_today, due_later, due_latest, long_expired = new_codes(5)
    with app.app_context():
        patients = add_patients(db.session, 5)
        # Inserted out of order, so that id order and deadline order disagree.
        add_codes(
            db.session,
            {
                due_latest: latest,
                expired: yesterday,
                due_later: later,
                long_expired: date(2020, 1, 1),
                due_today: today,
            },
        )

    got = [claim(app, p, today) for p in patients[:3]]
    assert got == [due_today, due_later, due_latest]

    with app.app_context():
        before = snapshot(db.session)
        assert pool_status(db.session, today).available == 0
        assert pool_status(db.session, today).total == 5
    for p in patients[3:]:
        with pytest.raises(PoolEmpty):
            claim(app, p, today)
    with app.app_context():
        assert snapshot(db.session) == before
        free = db.session.scalars(sa.select(CODES.c.enroll_by).where(CODES.c.patient_id.is_(None))).all()
        assert sorted(free) == [date(2020, 1, 1), yesterday]
    # A person who already holds a code still gets it after the pool has run dry.
    assert claim(app, patients[0], today) == due_today


EMPTY_POOLS = ["no rows", "all claimed", "all expired"]


def empty_pool(session: Session, pool: str, claimant: int) -> None:
    """Leave no usable free code in one of the ``EMPTY_POOLS`` ways (``claimant`` takes the last one)."""
    if pool == "all claimed":
        add_codes(session, {c: SOON for c in new_codes(1)})
        claim_code(session, services().cipher, session.get_one(Patient, claimant))
    elif pool == "all expired":
        add_codes(session, {c: TODAY - timedelta(days=1) for c in new_codes(3)})


@pytest.mark.parametrize("pool", EMPTY_POOLS)
def test_empty_pool_raises_and_changes_nothing(app: Flask, pool: str) -> None:
    with app.app_context():
        first, patient = add_patients(db.session, 2)
        empty_pool(db.session, pool, first)
        before = snapshot(db.session)
        with pytest.raises(PoolEmpty):
            claim_code(db.session, services().cipher, db.session.get_one(Patient, patient))
        assert snapshot(db.session) == before
        assert code_of(db.session, services().cipher, db.session.get_one(Patient, patient)) is None


# --- concurrency ---------------------------------------------------------------------------------

N_PATIENTS = 40
POOL_SIZE = 30
THREADS = 16
EMPTY = "<pool empty>"


def test_concurrent_claims_never_share_or_double_a_code(app: Flask) -> None:
    """16 threads, each with its own session, race for 30 codes among 40 people.

    The first wave is lined up on a barrier with six threads claiming for one person and five
    for another, so that the same-person race really happens; then every thread works through
    a shared queue in which every person appears twice, in random order.
    """
    rng = random.Random(20261128)
    with app.app_context():
        engine = db.engine
        cipher = services().cipher
        patients = add_patients(db.session, N_PATIENTS)
        add_codes(db.session, {c: SOON + timedelta(days=rng.randrange(5)) for c in new_codes(POOL_SIZE)})

    hot_a, hot_b, *others = patients
    first_wave = [hot_a] * 6 + [hot_b] * 5 + rng.sample(others, THREADS - 11)
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for patient in rng.sample(patients * 2, len(patients) * 2):
        work.put(patient)

    barrier = threading.Barrier(THREADS)
    lock = threading.Lock()
    outcomes: list[tuple[int, str]] = []
    failures: list[str] = []

    def attempt(session: Session, patient_id: int) -> None:
        try:
            outcome = claim_code(session, cipher, session.get_one(Patient, patient_id)).code
        except PoolEmpty:
            outcome = EMPTY
        except Exception as error:  # anything else (a lock error, PoolBusy) is a failure of the test
            session.rollback()
            with lock:
                failures.append(f"patient {patient_id}: {error.__class__.__name__}: {error}")
            return
        with lock:
            outcomes.append((patient_id, outcome))

    def worker(index: int) -> None:
        with Session(engine) as session:
            barrier.wait(timeout=60)
            attempt(session, first_wave[index])
            # The queue starts once the whole first wave is answered: on a loaded machine a late
            # thread of the first wave could otherwise find the pool already emptied by the queue.
            session.close()  # its connection goes back to the pool for the threads still claiming
            barrier.wait(timeout=60)
            while True:
                try:
                    patient_id = work.get_nowait()
                except queue.Empty:
                    return
                attempt(session, patient_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claim hung"
    assert failures == []

    by_patient: dict[int, set[str]] = {}
    for patient_id, outcome in outcomes:
        by_patient.setdefault(patient_id, set()).add(outcome)
    assert len(outcomes) == 2 * N_PATIENTS + THREADS
    assert set(by_patient) == set(patients)
    # Each person saw one answer every time: their code, or (only ever) an empty pool.
    assert all(len(seen) == 1 for seen in by_patient.values()), by_patient
    served = {p: next(iter(seen)) for p, seen in by_patient.items() if EMPTY not in seen}
    refused = {p for p, seen in by_patient.items() if EMPTY in seen}
    assert len(served) == min(N_PATIENTS, POOL_SIZE)
    assert len(refused) == N_PATIENTS - min(N_PATIENTS, POOL_SIZE)
    assert len(set(served.values())) == len(served), "one code went to two people"
    assert {hot_a, hot_b} <= set(served), "the first, contended claims must have been served"

    with app.app_context():
        held = holders(db.session)
        assert set(held) == set(served)
        assert len(set(held.values())) == len(held)
        per_patient = db.session.execute(
            sa.select(CODES.c.patient_id, sa.func.count())
            .where(CODES.c.patient_id.is_not(None))
            .group_by(CODES.c.patient_id)
        ).all()
        assert all(n == 1 for _, n in per_patient)
        assert pool_status(db.session) == PoolStatus(POOL_SIZE, POOL_SIZE, 0)
        assert db.session.scalar(sa.select(sa.func.count()).where(CODES.c.claimed_at.is_(None))) == 0
    # Everyone served gets the very same code back, from a fresh session.
    assert {p: claim(app, p) for p in served} == served
    for p in refused:
        with pytest.raises(PoolEmpty):
            claim(app, p)


def test_every_sealed_code_has_a_nonce_of_its_own() -> None:
    """AES-GCM must never use a nonce twice under one key: two codes sealed with one nonce share a
    keystream, so the XOR of their ciphertexts is the XOR of the codes, and GCM tags can be forged."""
    cipher = CodeCipher(Keyring(1, {1: secrets.token_bytes(32)}))
    code = "IDP-7K3M-Q9TX-2B4H"
    first, again = cipher.seal(code), cipher.seal(code)
    assert first.ciphertext != again.ciphertext, "one code sealed twice gave one ciphertext"
    assert cipher.open(first) == cipher.open(again) == code

    codes = new_codes(2000)
    sealed = [cipher.seal(c).ciphertext for c in codes]
    assert len({ciphertext[:12] for ciphertext in sealed}) == len(codes), "a nonce was used twice"
    # Whatever the layout: no two ciphertexts of equal-length codes XOR to the XOR of the codes.
    xor = lambda a, b: bytes(x ^ y for x, y in zip(a, b, strict=False))  # noqa: E731
    plain_xor = xor(codes[0].encode(), codes[1].encode())
    assert plain_xor not in xor(sealed[0], sealed[1])


def test_codes_are_sealed_and_indexed_under_their_own_subkeys() -> None:
    """AES-GCM and the duplicate-finding HMAC use separate HKDF subkeys of the code key, with fixed
    labels: a changed label would leave every stored code unopenable and every digest unmatched."""
    master = secrets.token_bytes(32)
    cipher = CodeCipher(Keyring(1, {1: master}))
    sealing, indexing = hkdf_sha256(master, b"portal/code-encryption"), hkdf_sha256(master, b"portal/code-index")
    assert sealing != indexing
    code = "IDP-7K3M-Q9TX-2B4H"
    digest = hmac.new(indexing, code.encode(), hashlib.sha256).digest()
    assert cipher.digest(code) == digest
    nonce = secrets.token_bytes(12)
    sealed_elsewhere = nonce + AESGCM(sealing).encrypt(nonce, code.encode(), digest)
    assert cipher.open(ActivationCode(code_digest=digest, ciphertext=sealed_elsewhere, key_version=1)) == code


@pytest.mark.parametrize("typed", ["ABC", "-ABCD", "A" * 65, "ABCD EFGH", "IDP_7K3M"])
def test_a_malformed_code_is_refused_with_its_rule(typed: str) -> None:
    with pytest.raises(ValueError) as caught:
        portal.claims.normalise_code(typed)
    assert str(caught.value) == "code must be 4 to 64 letters, digits or dashes"
    assert portal.claims.normalise_code("  IDP-7K3M-Q9TX-2B4H ") == "IDP-7K3M-Q9TX-2B4H"


@pytest.mark.postgres
def test_a_claim_waits_out_codes_locked_by_other_claims(pg_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """All free codes locked by unfinished claims: back off and retry, never call the pool empty."""
    with pg_app.app_context():
        patient, later = add_patients(db.session, 2)
        first, second = new_codes(2)
        ids = add_codes(db.session, {first: SOON, second: SOON + timedelta(days=1)})
        before = snapshot(db.session)
        engine = db.engine

    with engine.connect() as other_claims:
        # Without SKIP LOCKED the claim below would wait on this test's own lock: the test
        # database's lock timeout (tests/conftest.py) turns that into a failure after 5 s.
        assert other_claims.scalar(sa.text("SHOW lock_timeout")) == "5s"
        locked = other_claims.execute(sa.select(CODES.c.id).where(CODES.c.patient_id.is_(None)).with_for_update())
        assert sorted(locked.scalars()) == sorted(ids.values())

        pauses: list[float] = []
        monkeypatch.setattr(portal.claims, "time", SimpleNamespace(sleep=pauses.append))
        # Locked for good: every attempt backs off, then PoolBusy, and nothing changed.
        with pytest.raises(PoolBusy):
            claim(pg_app, patient)
        assert len(pauses) == portal.claims.CLAIM_ATTEMPTS - 1
        assert all(0 < pause <= portal.claims.RETRY_PAUSE_MAX * 1.5 for pause in pauses)

        # The other claims give up while this one is backing off: it then takes the first code.
        pauses.clear()

        def other_claims_end(seconds: float) -> None:
            pauses.append(seconds)
            other_claims.rollback()

        monkeypatch.setattr(portal.claims, "time", SimpleNamespace(sleep=other_claims_end))
        with pg_app.app_context():
            assert snapshot(db.session) == before
        assert claim(pg_app, patient) == first
        assert len(pauses) == 1
    assert claim(pg_app, later) == second


# --- crashes and retries ---------------------------------------------------------------------------


def test_a_claim_rolled_back_before_commit_leaves_the_code_free(app: Flask) -> None:
    with app.app_context():
        patient, other = add_patients(db.session, 2)
        first, second = new_codes(2)
        ids = add_codes(db.session, {first: SOON, second: SOON + timedelta(days=1)})
        before = snapshot(db.session)

        # The claim's UPDATE ran, then the transaction was lost before COMMIT.
        taken = db.session.execute(
            sa.update(CODES)
            .where(CODES.c.id == ids[first], CODES.c.patient_id.is_(None))
            .values(patient_id=patient, claimed_at=utcnow())
            .returning(CODES.c.id)
        ).scalar_one()
        assert taken == ids[first]
        db.session.rollback()
        assert snapshot(db.session) == before

        # The same through claim_code itself: the commit fails (a dropped connection, say).
        session = db.session
        real_commit = session.commit

        def lost_commit() -> None:
            raise sa.exc.OperationalError("COMMIT", None, ConnectionError("connection lost"))

        session.commit = lost_commit  # type: ignore[method-assign]
        try:
            with pytest.raises(sa.exc.OperationalError):
                claim_code(session, services().cipher, session.get_one(Patient, patient))
        finally:
            session.commit = real_commit  # type: ignore[method-assign]
        session.rollback()
        assert snapshot(session) == before

    # The retry takes the same, still-free first code, and a repeat does not move it.
    assert claim(app, patient) == first
    assert claim(app, patient) == first
    assert claim(app, other) == second
    with app.app_context():
        assert holders(db.session) == {patient: ids[first], other: ids[second]}


CRASHING_CLAIM = textwrap.dedent(
    """
    import os, signal, sys
    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    from portal.claims import CodeCipher, claim_code
    from portal.identity import Keyring
    from portal.models import ActivationCode, Patient

    url, patient_id = sys.argv[1], int(sys.argv[2])
    session = Session(sa.create_engine(url))

    def commit():
        # The UPDATE has run inside the open transaction; die the hard way before COMMIT.
        taken = session.scalar(sa.select(ActivationCode.id).where(ActivationCode.patient_id == patient_id))
        print(f"taken {taken}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    session.commit = commit
    claim_code(session, CodeCipher(Keyring(1, {1: os.urandom(32)})), session.get_one(Patient, patient_id))
    print("not reached", flush=True)
    """
)


def test_a_process_killed_mid_claim_leaves_the_code_free(app: Flask) -> None:
    with app.app_context():
        patient, other = add_patients(db.session, 2)
        first, second = new_codes(2)
        ids = add_codes(db.session, {first: SOON, second: SOON + timedelta(days=1)})
        url = db.engine.url.render_as_string(hide_password=False)
        before = snapshot(db.session)

    done = subprocess.run(
        [sys.executable, "-c", CRASHING_CLAIM, url, str(patient)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["taken", str(ids[first])]

    with app.app_context():
        # Wait for the server to have ended the dead transaction (a no-op on SQLite).
        db.session.execute(sa.select(CODES.c.id).where(CODES.c.id == ids[first]).with_for_update())
        assert snapshot(db.session) == before
    assert claim(app, patient) == first
    assert claim(app, other) == second
    assert claim(app, patient) == first


# --- the database itself refuses a second code for one person -----------------------------------------


def test_the_database_refuses_a_second_code_for_one_person(app: Flask) -> None:
    with app.app_context():
        patient, other = add_patients(db.session, 2)
        code = new_codes(1)[0]
        add_codes(db.session, {code: SOON})
        claim_code(db.session, services().cipher, db.session.get_one(Patient, patient))
        cipher = services().cipher

        def raw_row(text: str, patient_id: int | None) -> dict[str, Any]:
            sealed = cipher.seal(text)
            return dict(
                code_digest=sealed.code_digest,
                ciphertext=sealed.ciphertext,
                key_version=sealed.key_version,
                product="raw",
                enroll_by=SOON,
                patient_id=patient_id,
                claimed_at=utcnow() if patient_id else None,
                imported_at=utcnow(),
            )

        with db.engine.connect() as connection:
            # Straight SQL, past claim_code: a second row for the same person is refused.
            with pytest.raises(IntegrityError):
                connection.execute(sa.insert(CODES).values(**raw_row("RAW-0001", patient)))
            connection.rollback()
            # So is moving a free code onto a person who holds one.
            free_id = connection.execute(sa.insert(CODES).values(**raw_row("RAW-0002", None))).inserted_primary_key[0]
            connection.commit()
            with pytest.raises(IntegrityError):
                connection.execute(
                    sa.update(CODES).where(CODES.c.id == free_id).values(patient_id=patient, claimed_at=utcnow())
                )
            connection.rollback()
            # And the same code twice in the pool.
            with pytest.raises(IntegrityError):
                connection.execute(sa.insert(CODES).values(**raw_row(code, None)))
            connection.rollback()
            # Many free rows (NULL patient) are of course fine; a row for another person is too.
            connection.execute(sa.insert(CODES).values(**raw_row("RAW-0003", None)))
            connection.execute(sa.insert(CODES).values(**raw_row("RAW-0004", other)))
            connection.commit()

        held = holders(db.session)
        assert set(held) == {patient, other}
        assert (
            db.session.scalar(sa.select(sa.func.count()).select_from(CODES).where(CODES.c.patient_id == patient)) == 1
        )


# --- someone else used the code: revoke and reissue --------------------------------------------------


def reissue(app: Flask, patient_id: int, reported: int, today: date | None = None) -> Reissue:
    with app.app_context():
        return reissue_code(db.session, services().cipher, db.session.get_one(Patient, patient_id), reported, today)


def held_row(app: Flask, patient_id: int) -> int:
    """The row id of the live code ``patient_id`` holds (as the console's form carries it)."""
    with app.app_context():
        held = code_of(db.session, services().cipher, db.session.get_one(Patient, patient_id))
        assert held is not None
        return held.row_id


def test_a_reissue_revokes_the_reported_code_for_good_and_gives_a_fresh_one(app: Flask) -> None:
    with app.app_context():
        patient, other = add_patients(db.session, 2)
        issued = new_codes(4)
        ids = add_codes(db.session, {code: SOON + timedelta(days=n) for n, code in enumerate(issued)})
    first = claim(app, patient)
    assert first == issued[0]

    done = reissue(app, patient, ids[first])
    assert done.replaced and done.code.code == issued[1] and done.code.row_id == ids[issued[1]]
    with app.app_context():
        old = db.session.get_one(ActivationCode, ids[first])
        assert old.revoked_at is not None and old.patient_id == patient  # still theirs, for the provider
        held = code_of(db.session, services().cipher, db.session.get_one(Patient, patient))
        assert held is not None and held.code == issued[1]
        # Revoked is not free: the pool has the two untouched codes left, and both reissued ones are handed out.
        assert pool_status(db.session) == PoolStatus(total=4, claimed=2, available=2)
    # Every later look, claim or repeated report gives the replacement; nothing else moves.
    with app.app_context():
        before = snapshot(db.session)
    assert claim(app, patient) == issued[1]
    again = reissue(app, patient, ids[first])
    assert not again.replaced and again.code.code == issued[1]
    with app.app_context():
        assert snapshot(db.session) == before
    # The revoked code never goes back to the pool: the next people get the untouched ones.
    assert claim(app, other) == issued[2]
    # A second report (the new code was taken too) revokes that one and hands out the last.
    assert reissue(app, patient, ids[issued[1]]).code.code == issued[3]
    with app.app_context():
        revoked = db.session.scalars(
            sa.select(CODES.c.id).where(CODES.c.patient_id == patient, CODES.c.revoked_at.is_not(None))
        ).all()
        assert sorted(revoked) == sorted([ids[first], ids[issued[1]]])


@pytest.mark.parametrize("pool", EMPTY_POOLS)
def test_a_reissue_with_an_empty_pool_changes_nothing(app: Flask, pool: str) -> None:
    with app.app_context():
        patient, other = add_patients(db.session, 2)
        (mine,) = new_codes(1)
        ids = add_codes(db.session, {mine: SOON})
    claim(app, patient)
    with app.app_context():
        empty_pool(db.session, pool, other)
        before = snapshot(db.session)
    with pytest.raises(PoolEmpty):
        reissue(app, patient, ids[mine])
    with app.app_context():
        assert snapshot(db.session) == before  # the reported code is not revoked: the person keeps a code
    assert claim(app, patient) == mine


def test_a_reissue_names_a_row_the_person_holds_or_changes_nothing(app: Flask) -> None:
    with app.app_context():
        patient, other, empty_handed = add_patients(db.session, 3)
        codes = new_codes(4)
        ids = add_codes(db.session, {code: SOON for code in codes})
    mine, theirs = claim(app, patient), claim(app, other)
    with app.app_context():
        before = snapshot(db.session)
    for stranger in (ids[theirs], ids[codes[3]], 10**9):  # someone else's code, a free one, none at all
        answer = reissue(app, patient, stranger)
        assert answer == Reissue(answer.code, replaced=False) and answer.code.code == mine
        with pytest.raises(NotHeld):
            reissue(app, empty_handed, stranger)
    with app.app_context():
        assert snapshot(db.session) == before


def test_concurrent_reports_of_one_code_end_with_exactly_one_new_code(app: Flask) -> None:
    """A double submit, six times over: six threads report the same code of one person at once.

    Exactly one revokes it and takes a new code; the others find it already replaced and get that
    new code back. Other people's claims run beside them and are not disturbed.
    """
    threads = 6  # with the three other claims, within the test engine's ten connections
    with app.app_context():
        engine = db.engine
        cipher = services().cipher
        patient, *others = add_patients(db.session, 4)
        codes = new_codes(10)
        ids = add_codes(db.session, {code: SOON for code in codes})
    first = claim(app, patient)
    barrier = threading.Barrier(threads + len(others))
    lock = threading.Lock()
    answers: list[Reissue] = []
    claimed: list[str] = []
    failures: list[str] = []

    def run(patient_id: int, act: Callable[[Session, Patient], Any], into: list[Any]) -> None:
        with Session(engine) as session:
            try:
                person = session.get_one(Patient, patient_id)
                barrier.wait(timeout=60)
                outcome = act(session, person)
            except Exception as error:  # a lock error, PoolBusy, a broken barrier: a failure of the test
                with lock:
                    failures.append(f"{error.__class__.__name__}: {error}")
                return
            with lock:
                into.append(outcome)

    def report(session: Session, person: Patient) -> Reissue:
        return reissue_code(session, cipher, person, ids[first])

    def other_claim(session: Session, person: Patient) -> str:
        return claim_code(session, cipher, person).code

    workers = [threading.Thread(target=run, args=(patient, report, answers)) for _ in range(threads)]
    workers += [threading.Thread(target=run, args=(p, other_claim, claimed)) for p in others]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a reissue hung"
    assert failures == []

    assert sum(a.replaced for a in answers) == 1 and len(answers) == threads
    replacement = {a.code.code for a in answers}
    assert len(replacement) == 1 and first not in replacement
    assert len(claimed) == len(others) and len(set(claimed) | replacement | {first}) == len(others) + 2
    with app.app_context():
        mine = db.session.execute(
            sa.select(CODES.c.id, CODES.c.revoked_at.is_not(None)).where(CODES.c.patient_id == patient)
        ).all()
        assert sorted(mine) == sorted([(ids[first], True), (ids[next(iter(replacement))], False)])
        assert pool_status(db.session) == PoolStatus(total=10, claimed=2 + len(others), available=8 - len(others))
