"""Who is this person: normalisation, keyed hashes, production settings, verification, rotation, tokens.

Everything runs against the real databases of the ``app``/``database_url`` fixtures (SQLite file and
a private PostgreSQL schema). Argon2 evaluations and SQL statements are *counted* (a wrapper around
``portal.identity.stretch`` and a cursor event on the engine) to show that a failed verification costs
the same work whoever is asked about; nothing is timed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from conftest import FAST_ARGON2, hkdf_sha256, import_patients, lookup, make_app, patient_row, write_programme
from flask import Flask
from sqlalchemy import event, func, select, text

import portal.identity as identity
from portal import hashing_slots
from portal.app import create_app
from portal.config import ARGON2_FLOORS, DEFAULTS, ConfigError, decode_key
from portal.extensions import db
from portal.hashing_slots import HashingBusy
from portal.identity import (
    CROCKFORD,
    REFERENCE_LENGTH,
    Argon2Params,
    IdentifierHasher,
    IdentityClaim,
    InvalidIdentifier,
    Keyring,
    end_verification,
    find_patient,
    format_reference,
    normalise_last_name,
    normalise_reference,
    normalise_ssn,
    normalise_ssn_last4,
    normalise_zip,
    parse_birth_date,
    start_verification,
    verified_patient,
)
from portal.models import HashScheme, Patient, Verification
from portal.services import services

CHEAP = Argon2Params(
    FAST_ARGON2["ARGON2_TIME_COST"], FAST_ARGON2["ARGON2_MEMORY_COST"], FAST_ARGON2["ARGON2_PARALLELISM"]
)


# --- helpers -------------------------------------------------------------------------------------


def make_hasher(key: bytes | None = None, params: Argon2Params = CHEAP) -> IdentifierHasher:
    return IdentifierHasher(Keyring(1, {1: key or secrets.token_bytes(32)}), params)


def unsaved_scheme(params: Argon2Params = CHEAP, salt: bytes = bytes(range(16))) -> HashScheme:
    return HashScheme(
        key_version=1,
        time_cost=params.time_cost,
        memory_cost=params.memory_cost,
        parallelism=params.parallelism,
        salt=salt,
    )


def claim_of(row: dict[str, str], **typed: str) -> IdentityClaim:
    """The claim a person with this breach-list row types at the lookup form (SSN last four)."""
    values = {
        "last_name": row["last_name"],
        "date_of_birth": row["date_of_birth"],
        "zip_code": row["zip"],
        "ssn_last4": row["ssn"][-4:],
    }
    values.update(typed)
    return IdentityClaim.from_input(**values)


def other_rows() -> list[dict[str, str]]:
    """Three more people: one with an SSN, one without (letter reference), one sharing a surname."""
    return [
        patient_row(record_id="R-2", last_name="O'Brien", first_name="Sean", date_of_birth="1955-12-01",
                    ssn="234567890", zip="02110-1234"),
        patient_row(record_id="R-3", last_name="Nguyễn", first_name="Thảo", date_of_birth="2001-01-31", ssn="",
                    zip="77002", exposed_fields="name;date_of_birth;address"),
        patient_row(record_id="R-4", last_name="García-López", first_name="Ana", date_of_birth="1990-06-15",
                    ssn="345-67-8901", zip="10002"),
    ]  # fmt: skip


class Work:
    """Counts Argon2id evaluations (by parameters) and SQL statements while a block runs."""

    def __init__(self) -> None:
        self.stretches: list[Argon2Params] = []
        self.statements: list[str] = []

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.stretches), len(self.statements)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``with work(app) as w: ...`` counts what the block costs (instrumentation, not a mock)."""
    real_stretch = identity.stretch
    active: list[Work] = []

    def counting_stretch(message: bytes, salt: bytes, params: Argon2Params) -> bytes:
        for w in active:
            w.stretches.append(params)
        return real_stretch(message, salt, params)

    monkeypatch.setattr(identity, "stretch", counting_stretch)

    @contextlib.contextmanager
    def measure(app: Flask) -> Iterator[Work]:
        w = Work()

        def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            w.statements.append(statement)

        engine = db.engine
        event.listen(engine, "before_cursor_execute", on_execute)
        active.append(w)
        try:
            yield w
        finally:
            active.remove(w)
            event.remove(engine, "before_cursor_execute", on_execute)

    yield measure


def lookup_work(app: Flask, measure: Any, claim: IdentityClaim) -> tuple[Patient | None, Work]:
    """One verification from a fresh session, as a new request would make it."""
    db.session.close()
    with measure(app) as w:
        found = find_patient(db.session, services().hasher, claim)
    return found, w


# --- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed, on_file",
    [
        ("GARCIA", "garcia"),
        ("McDONALD", "mcdonald"),
        ("García", "Garcia"),
        ("Nguyễn", "Nguyen"),
        ("Müller", "Muller"),
        ("Øvergaard", "Overgaard"),
        ("Sørensen", "SORENSEN"),
        ("Groß", "Gross"),
        ("  De La Cruz  ", "delacruz"),
        ("De  La\tCruz", "DeLaCruz"),
        ("O'Brien", "OBrien"),
        ("o’brien", "O'Brien"),
        ("O Brien", "obrien"),
        ("Smith-Jones", "Smith Jones"),
        ("Smith–Jones", "smithjones"),  # en dash
        ("García-López", "garcia lopez"),
        ("Đặng", "Dang"),
        ("Kaʻahumanu", "Ka'ahumanu"),  # ʻokina, a modifier letter to Unicode
        ("Demʼyanchuk", "Dem'yanchuk"),
        ("Sǿrensen", "Sorensen"),  # ø with an accent: decomposed, then folded
        ("Mǽrsk", "Maersk"),
        ("𝐆𝐀𝐑𝐂𝐈𝐀", "garcia"),  # compatibility forms decompose to capitals, then fold
    ],
)
def test_last_name_spellings_match(typed: str, on_file: str) -> None:
    assert normalise_last_name(typed) == normalise_last_name(on_file)


@pytest.mark.parametrize(
    "a, b",
    [("Smith", "Smyth"), ("Lee", "Li"), ("Müller", "Mueller"), ("Chen", "Chan")],
)
def test_different_last_names_stay_different(a: str, b: str) -> None:
    assert normalise_last_name(a) != normalise_last_name(b)


@pytest.mark.parametrize("typed", ["10001", "10001-2345", "100012345", "10001 2345", " 10001 "])
def test_zip_and_zip_plus_four_give_five_digits(typed: str) -> None:
    assert normalise_zip(typed) == "10001"


@pytest.mark.parametrize("typed", ["6789", "67 89", " 6789 ", "67-89"])
def test_ssn_last4_forgives_spaces(typed: str) -> None:
    assert normalise_ssn_last4(typed) == "6789"


@pytest.mark.parametrize("typed", ["123-45-6789", "123456789", "123 45 6789", " 123-45-6789 "])
def test_full_ssn_forms(typed: str) -> None:
    assert normalise_ssn(typed) == "123456789"


def test_blank_ssn_means_none_on_file() -> None:
    assert normalise_ssn("") is None
    assert normalise_ssn("  ") is None


REFERENCE = "0123456789ABCDEFGHJKMNPQ"  # 24 Crockford characters, with the 0 and 1 that look-alikes stand for


@pytest.mark.parametrize(
    "typed",
    [
        REFERENCE,
        REFERENCE.lower(),
        format_reference(REFERENCE),
        format_reference(REFERENCE).lower(),
        " ".join(format_reference(REFERENCE).split("-")),
        "  " + REFERENCE[:12] + " - " + REFERENCE[12:] + " ",
        "O" + "I" + REFERENCE[2:],
        "o" + "L" + REFERENCE[2:],
        "O" + "l" + REFERENCE[2:],
        "0" + "i" + REFERENCE[2:],
    ],
)
def test_reference_forgives_case_separators_and_look_alikes(typed: str) -> None:
    assert normalise_reference(typed) == REFERENCE


def test_birth_date_bounds_are_inclusive() -> None:
    today = date(2026, 11, 28)
    assert parse_birth_date("1900-01-01", today) == date(1900, 1, 1)
    assert parse_birth_date(today.isoformat(), today) == today
    assert parse_birth_date(" 1980-04-23 ") == date(1980, 4, 23)


TOMORROW = (date.today() + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    "normalise, value, field",
    [
        (normalise_last_name, "", "last_name"),
        (normalise_last_name, "   ", "last_name"),
        (normalise_last_name, "'-'", "last_name"),
        (normalise_last_name, "--- ’’ ...", "last_name"),
        (normalise_last_name, "Abcdefghij" * 10 + "K", "last_name"),
        (parse_birth_date, "2023-02-30", "date_of_birth"),
        (parse_birth_date, "1899-12-31", "date_of_birth"),
        (parse_birth_date, TOMORROW, "date_of_birth"),
        (parse_birth_date, "04/23/1980", "date_of_birth"),
        (parse_birth_date, "19800423", "date_of_birth"),
        (parse_birth_date, "", "date_of_birth"),
        (normalise_zip, "1234", "zip_code"),
        (normalise_zip, "123456", "zip_code"),
        (normalise_zip, "1234567", "zip_code"),
        (normalise_zip, "ABCDE", "zip_code"),
        (normalise_zip, "1000l", "zip_code"),
        (normalise_ssn, "000-12-3456", "ssn"),
        (normalise_ssn, "123-00-4567", "ssn"),
        (normalise_ssn, "123-45-0000", "ssn"),
        (normalise_ssn, "12345678", "ssn"),
        (normalise_ssn, "12345678X", "ssn"),
        (normalise_ssn_last4, "123", "ssn_last4"),
        (normalise_ssn_last4, "12345", "ssn_last4"),
        (normalise_ssn_last4, "12a4", "ssn_last4"),
        (normalise_reference, REFERENCE[:-1], "reference"),
        (normalise_reference, REFERENCE + "Z", "reference"),
        (normalise_reference, "U" + REFERENCE[1:], "reference"),
    ],
)
def test_invalid_identifiers_are_rejected_without_echo(normalise: Any, value: str, field: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalise(value)
    assert caught.value.field == field
    message = str(caught.value)
    assert " " in message and message != str(None), "the person needs to be told what is wrong"
    if value.strip():
        assert value.strip() not in message
        assert value.strip().casefold() not in message.casefold()


# The reasons an import prints for a rejected row ("line N: rejected: reason") and the lookup's
# domain errors: fixed wording an operator can search for, naming the rule and never the value.
REASONS = [
    (normalise_last_name, "x" * 101, "last name is longer than 100 characters"),
    (normalise_last_name, "'-'", "last name has no letters"),
    (normalise_zip, "1234", "ZIP code must be 5 digits (or ZIP+4)"),
    (normalise_ssn, "12345678", "SSN must be 9 digits"),
    (normalise_ssn, "000-12-3456", "SSN has an all-zero group and cannot have been issued"),
    (normalise_ssn_last4, "123", "last four SSN digits must be 4 digits"),
    (normalise_reference, "ABC", "reference code must be 24 letters and digits from your letter"),
    (parse_birth_date, "04/23/1980", "date of birth must be written YYYY-MM-DD"),
    (parse_birth_date, "2023-02-30", "date of birth is not a real date"),
    (parse_birth_date, "1899-12-31", "date of birth is out of range"),
    (
        lambda _: IdentityClaim("x", date(1980, 1, 1), "10001"),
        "",
        "give either the last four SSN digits or the letter reference",
    ),
]


@pytest.mark.parametrize("normalise, value, reason", REASONS, ids=[r for _, _, r in REASONS])
def test_each_refusal_gives_its_reason(normalise: Any, value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalise(value)
    assert str(caught.value) == reason


def test_a_last_name_of_exactly_the_maximum_length_is_accepted() -> None:
    assert normalise_last_name("Ab" * 50) == "ab" * 50


@pytest.mark.parametrize("ssn_last4, reference", [("", ""), ("6789", REFERENCE), ("  ", " ")])
def test_claim_needs_exactly_one_second_factor(ssn_last4: str, reference: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        IdentityClaim.from_input("Garcia", "1980-04-23", "10001", ssn_last4=ssn_last4, reference=reference)
    assert caught.value.field == "ssn_last4"


def test_claim_names_the_first_bad_field() -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        IdentityClaim.from_input("Garcia", "1980-02-30", "10001", ssn_last4="6789")
    assert caught.value.field == "date_of_birth"


# --- hash design ---------------------------------------------------------------------------------


BASE_CLAIM = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}


def test_the_canonical_message_is_fixed() -> None:
    """Every stored lookup digest was made from this exact byte string: changing its layout (version
    tag, separator, field order or prefixes) would orphan every imported record until a re-import."""
    by_ssn = IdentityClaim.from_input("O'Brien", "1955-12-24", "80202-1234", ssn_last4="4321")
    assert by_ssn.canonical() == b"v1\x1fobrien\x1f1955-12-24\x1f80202\x1fssn:4321"
    by_reference = IdentityClaim.from_input("O'Brien", "1955-12-24", "80202", reference=REFERENCE.lower())
    assert by_reference.canonical() == f"v1\x1fobrien\x1f1955-12-24\x1f80202\x1fref:{REFERENCE}".encode()


def test_a_servers_hashing_slots_bound_its_hashes_and_a_dead_workers_slots_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gunicorn master shares the slots before forking; each worker counts what it holds under
    its own index, so the master frees exactly what a worker that died was holding."""
    monkeypatch.setattr(hashing_slots, "_server_slots", None)  # this test's alone, dropped after it
    slots = hashing_slots.share_hashing_slots(2)
    assert hashing_slots.server_hashing_slots() is slots and slots.count == 2
    hasher = IdentifierHasher(Keyring(1, {1: secrets.token_bytes(32)}), CHEAP, concurrency=8, wait_seconds=0.01)
    claim = IdentityClaim.from_input(**BASE_CLAIM)
    slots.bind(3)  # the worker at index 3
    assert slots.acquire(timeout=0.01) and slots.acquire(timeout=0.01)
    assert not slots.acquire(timeout=0.01), "two slots, two hashes at once"
    with pytest.raises(HashingBusy):  # the hasher takes its turn in the server's slots, not its own 8
        hasher.lookup_digests(claim, [unsaved_scheme()])
    slots.release()
    slots.bind(5)  # another worker takes the slot freed
    assert slots.acquire(timeout=0.01) and not slots.acquire(timeout=0.01)
    slots.reclaim(3)  # worker 3 died holding one: it comes back, worker 5's stays taken
    assert slots.acquire(timeout=0.01) and not slots.acquire(timeout=0.01)
    slots.release()
    slots.release()  # worker 5 gave back both it held
    slots.reclaim(3)  # neither worker holds any now: their exits free nothing more
    slots.reclaim(5)
    assert slots.acquire(timeout=0.01) and slots.acquire(timeout=0.01) and not slots.acquire(timeout=0.01)
    for _ in range(2):
        slots.release()
    assert len(hasher.lookup_digests(claim, [unsaved_scheme()])) == 1


def test_a_lookup_waits_for_a_hashing_slot_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every slot taken for longer than the wait, a lookup gives up with HashingBusy (a 503)."""
    hasher = IdentifierHasher(Keyring(1, {1: secrets.token_bytes(32)}), CHEAP, concurrency=1, wait_seconds=0.05)
    hashing, finish = threading.Event(), threading.Event()
    real_stretch = identity.stretch

    def slow_stretch(*args: Any) -> bytes:
        hashing.set()
        finish.wait()
        return real_stretch(*args)

    monkeypatch.setattr(identity, "stretch", slow_stretch)
    claim = IdentityClaim.from_input(**BASE_CLAIM)
    first = threading.Thread(target=hasher.lookup_digests, args=(claim, [unsaved_scheme()]))
    first.start()
    assert hashing.wait(30)
    # A safety net for a lookup that waits for ever: the slot frees after 10 s and the test fails.
    threading.Timer(10, finish.set).start()
    try:
        with pytest.raises(HashingBusy):
            hasher.lookup_digests(claim, [unsaved_scheme()])
    finally:
        finish.set()
        first.join()


def test_lookup_digest_depends_on_the_key() -> None:
    claim = IdentityClaim.from_input(**BASE_CLAIM)
    scheme = unsaved_scheme()
    key = secrets.token_bytes(32)
    assert make_hasher(key).lookup_digest(claim, scheme) == make_hasher(key).lookup_digest(claim, scheme)
    assert make_hasher(key).lookup_digest(claim, scheme) != make_hasher().lookup_digest(claim, scheme)


def test_lookup_digest_depends_on_salt_and_parameters() -> None:
    claim = IdentityClaim.from_input(**BASE_CLAIM)
    hasher = make_hasher()
    digest = hasher.lookup_digest(claim, unsaved_scheme())
    assert len(digest) == identity.DIGEST_SIZE
    assert digest != hasher.lookup_digest(claim, unsaved_scheme(salt=bytes(16)))
    assert digest != hasher.lookup_digest(claim, unsaved_scheme(Argon2Params(2, 1024, 1)))


def test_lookup_digest_equal_for_equivalent_spellings() -> None:
    hasher, scheme = make_hasher(), unsaved_scheme()
    spellings = [
        BASE_CLAIM,
        {**BASE_CLAIM, "last_name": "garcia lopez", "zip_code": "10001-9999"},
        {**BASE_CLAIM, "last_name": "GARCIA–LOPEZ", "zip_code": "100019999", "ssn_last4": "67 89"},
    ]
    digests = {hasher.lookup_digest(IdentityClaim.from_input(**s), scheme) for s in spellings}
    assert len(digests) == 1


@pytest.mark.parametrize(
    "changed",
    [
        {"last_name": "Garcia-Lopes"},
        {"date_of_birth": "1980-04-24"},
        {"zip_code": "10002"},
        {"ssn_last4": "6788"},
        {"ssn_last4": "", "reference": REFERENCE},
    ],
    ids=["last_name", "date_of_birth", "zip", "ssn_last4", "reference_instead"],
)
def test_lookup_digest_differs_when_one_field_differs(changed: dict[str, str]) -> None:
    hasher, scheme = make_hasher(), unsaved_scheme()
    original = hasher.lookup_digest(IdentityClaim.from_input(**BASE_CLAIM), scheme)
    assert hasher.lookup_digest(IdentityClaim.from_input(**{**BASE_CLAIM, **changed}), scheme) != original


def test_person_bucket_ignores_zip_and_ssn_but_not_name_birth_or_key() -> None:
    hasher = make_hasher()
    claims = [
        IdentityClaim.from_input(**BASE_CLAIM),
        IdentityClaim.from_input(**{**BASE_CLAIM, "zip_code": "99501", "ssn_last4": "0001"}),
        IdentityClaim.from_input(
            **{**BASE_CLAIM, "last_name": "garcia lopez", "ssn_last4": "", "reference": REFERENCE}
        ),
    ]
    buckets = {hasher.person_bucket(c.last_name, c.date_of_birth) for c in claims}
    assert len(buckets) == 1
    bucket = buckets.pop()
    assert bucket != hasher.person_bucket("garcialopes", date(1980, 4, 23))
    assert bucket != hasher.person_bucket("garcialopez", date(1980, 4, 24))
    assert bucket != make_hasher().person_bucket("garcialopez", date(1980, 4, 23))
    assert re.fullmatch(r"[0-9a-f]{64}", bucket), "a keyed digest, not the name or date"


def test_letter_reference_is_deterministic_per_record_and_key() -> None:
    key = secrets.token_bytes(32)
    reference = make_hasher(key).letter_reference("R-1")
    assert len(reference) == REFERENCE_LENGTH == 24
    assert set(reference) <= set(CROCKFORD)
    assert reference == make_hasher(key).letter_reference("R-1")
    assert reference == make_hasher(key, Argon2Params(2, 19456, 1)).letter_reference("R-1")
    assert reference != make_hasher(key).letter_reference("R-2")
    assert reference != make_hasher().letter_reference("R-1")
    assert normalise_reference(format_reference(reference).lower()) == reference
    # 100 references: all well formed and distinct.
    many = {make_hasher(key).letter_reference(f"R-{n}") for n in range(100)}
    assert len(many) == 100
    assert all(len(r) == 24 and set(r) <= set(CROCKFORD) for r in many)


def test_each_use_of_the_identifier_key_has_its_own_subkey() -> None:
    """HKDF with the purpose as info: the lookup, record, letter and person keys are unrelated, so
    a person-bucket key (computed from what anyone types) says nothing about a lookup digest."""
    master = secrets.token_bytes(32)
    hasher = make_hasher(master)
    subkey = {
        purpose: hkdf_sha256(master, f"portal/{purpose}".encode())
        for purpose in ("lookup", "record", "letter", "person")
    }
    assert len(set(subkey.values())) == 4
    assert Keyring(1, {1: master}).subkey("lookup") == subkey["lookup"]
    mac = lambda purpose, message: hmac.new(subkey[purpose], message, hashlib.sha256).digest()  # noqa: E731
    claim = IdentityClaim.from_input(**BASE_CLAIM)
    assert hasher.lookup_message(claim, 1) == mac("lookup", claim.canonical())
    assert hasher.record_keys("R-1") == [mac("record", b"R-1")]
    assert hasher.person_bucket("garcialopez", date(1980, 4, 23)) == mac("person", b"garcialopez\x1f1980-04-23").hex()
    expected_reference = base64.b32encode(mac("letter", b"R-1")[:15]).decode().translate(identity._TO_CROCKFORD)
    assert hasher.letter_reference("R-1") == expected_reference


def test_record_keys_list_the_current_version_first() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    rotating = IdentifierHasher(Keyring(2, {2: new, 1: old}), CHEAP)
    keys = rotating.record_keys("R-1")
    assert keys == [make_hasher(new).record_keys("R-1")[0], make_hasher(old).record_keys("R-1")[0]]
    assert len(set(keys)) == 2


# --- production settings -------------------------------------------------------------------------


@pytest.fixture
def production(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A complete, valid production configuration (explicit, so no instance file or variable decides)."""
    for name in (
        "SECRET_KEY",
        "IDENTIFIER_KEY",
        "CODE_KEY",
        "AUDIT_KEY",
        "ARGON2_TIME_COST",
        "ARGON2_MEMORY_COST",
        "ARGON2_PARALLELISM",
        "PROGRAMME_FILE",
        "ENV",
        "DATABASE_URL",
        "SINGLE_PROCESS",
        "WORKERS",
    ):
        monkeypatch.delenv(f"PORTAL_{name}", raising=False)
    programme = write_programme(tmp_path)
    return {
        "ENV": "production",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        "SECRET_KEY": secrets.token_urlsafe(32),
        "IDENTIFIER_KEY": secrets.token_urlsafe(32),
        "IDENTIFIER_KEY_PREVIOUS": None,
        "CODE_KEY": secrets.token_urlsafe(32),
        "CODE_KEY_PREVIOUS": None,
        "AUDIT_KEY": secrets.token_urlsafe(32),
        "ARGON2_TIME_COST": DEFAULTS["ARGON2_TIME_COST"],
        "ARGON2_MEMORY_COST": DEFAULTS["ARGON2_MEMORY_COST"],
        "ARGON2_PARALLELISM": DEFAULTS["ARGON2_PARALLELISM"],
        "PROGRAMME_FILE": str(programme),
        "SINGLE_PROCESS": True,  # one process: per-process limits are allowed (see test_deploy.py)
        "TRUSTED_HOSTS": ["notice.example.org"],
    }


def test_default_argon2_parameters_are_owasps_floor() -> None:
    assert (DEFAULTS["ARGON2_TIME_COST"], DEFAULTS["ARGON2_MEMORY_COST"], DEFAULTS["ARGON2_PARALLELISM"]) == (
        2,
        19456,
        1,
    )
    assert DEFAULTS["ENV"] == "production"
    assert ARGON2_FLOORS[2] == 19456


def test_production_starts_with_everything_given(production: dict[str, Any]) -> None:
    app = create_app(production)
    with app.app_context():
        assert services().hasher.params == Argon2Params(2, 19456, 1)
        assert services().programme.organisation == "Example Health Records, Inc."
        assert app.config["SESSION_COOKIE_SECURE"] is True
        assert app.config["SESSION_COOKIE_NAME"].startswith("__Host-")
        db.engine.dispose()


@pytest.mark.parametrize("name", ["SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY"])
@pytest.mark.parametrize("missing", [None, ""], ids=["none", "empty"])
def test_production_refuses_a_missing_secret(production: dict[str, Any], name: str, missing: Any) -> None:
    with pytest.raises(ConfigError, match=f"PORTAL_{name}"):
        create_app({**production, name: missing})


@pytest.mark.parametrize(
    "first, second",
    [
        ("SECRET_KEY", "IDENTIFIER_KEY"),
        ("SECRET_KEY", "CODE_KEY"),
        ("IDENTIFIER_KEY", "CODE_KEY"),
        ("CODE_KEY", "AUDIT_KEY"),
        ("IDENTIFIER_KEY", "AUDIT_KEY"),
    ],
)
def test_production_refuses_equal_secrets(production: dict[str, Any], first: str, second: str) -> None:
    with pytest.raises(ConfigError, match=f"PORTAL_{first}.*PORTAL_{second}|PORTAL_{second}.*PORTAL_{first}"):
        create_app({**production, second: production[first]})


@pytest.mark.parametrize(
    "name", ["IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY", "IDENTIFIER_KEY_PREVIOUS", "CODE_KEY_PREVIOUS"]
)
@pytest.mark.parametrize(
    "bad",
    [secrets.token_urlsafe(31), "short", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "é" * 50],
    ids=["31-bytes", "short", "punctuation", "non-ascii"],
)
def test_production_refuses_a_weak_or_malformed_key(production: dict[str, Any], name: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"PORTAL_{name}\\b"):
        create_app({**production, name: bad})


def test_production_refuses_a_short_session_secret(production: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="PORTAL_SECRET_KEY"):
        create_app({**production, "SECRET_KEY": "x" * 31})
    app = create_app({**production, "SECRET_KEY": "x" * 32})  # the documented minimum is enough
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    "time_cost, memory_cost", [(2, 19455), (1, 19456), (1, 47103), (3, 12287), (0, 65536), (2, 1024)]
)
def test_production_refuses_argon2_below_the_floor(
    production: dict[str, Any], time_cost: int, memory_cost: int
) -> None:
    with pytest.raises(ConfigError, match="PORTAL_ARGON2_"):
        create_app({**production, "ARGON2_TIME_COST": time_cost, "ARGON2_MEMORY_COST": memory_cost})


@pytest.mark.parametrize("time_cost, memory_cost", [(1, 47104), (3, 12288), (5, 7168), (8, 7168)])
def test_production_accepts_other_points_of_the_floor(
    production: dict[str, Any], time_cost: int, memory_cost: int
) -> None:
    app = create_app({**production, "ARGON2_TIME_COST": time_cost, "ARGON2_MEMORY_COST": memory_cost})
    with app.app_context():
        assert services().hasher.params == Argon2Params(time_cost, memory_cost, 1)
        db.engine.dispose()


def test_production_refuses_without_a_programme_file(production: dict[str, Any], tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="PORTAL_PROGRAMME_FILE"):
        create_app({**production, "PROGRAMME_FILE": None})
    with pytest.raises(ConfigError, match="PORTAL_PROGRAMME_FILE"):
        create_app({**production, "PROGRAMME_FILE": str(tmp_path / "absent.toml")})
    incomplete = tmp_path / "incomplete.toml"
    incomplete.write_text('[programme]\norganisation = "Example"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="PORTAL_PROGRAMME_FILE"):
        create_app({**production, "PROGRAMME_FILE": str(incomplete)})


# Only "development" and "testing" relax the checks: a staging host, a typo or a different case of
# "production", or an empty PORTAL_ENV still runs with production's guard.
NOT_RELAXED = ["staging", "prod", "Production", "PRODUCTION", "", " production", "test", "dev"]
WEAK = {"SECRET_KEY": "x" * 31, "ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "PROGRAMME_FILE": None}


@pytest.mark.parametrize("env", NOT_RELAXED)
@pytest.mark.parametrize("weak", sorted(WEAK))
def test_any_environment_but_development_and_testing_refuses_weak_settings(
    production: dict[str, Any], env: str, weak: str
) -> None:
    setting = {"ARGON2_TIME_COST": "ARGON2_MEMORY_COST"}.get(weak, weak)  # t=1 needs m=47104: refused
    with pytest.raises(ConfigError, match=f"PORTAL_{weak}|PORTAL_{setting}"):
        create_app({**production, "ENV": env, weak: WEAK[weak]})


@pytest.mark.parametrize("env", NOT_RELAXED)
def test_any_environment_but_development_and_testing_keeps_host_only_secure_cookies(
    production: dict[str, Any], env: str
) -> None:
    app = create_app({**production, "ENV": env})
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_NAME"] == "__Host-portal"
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("env", ["development", "testing"])
def test_development_and_testing_are_the_relaxed_environments(production: dict[str, Any], env: str) -> None:
    """The contrast that shows the tests above refuse for the environment, not for another reason."""
    app = create_app({**production, **WEAK, "ENV": env})
    assert app.config["SESSION_COOKIE_SECURE"] is False
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("hosts", [None, []], ids=["unset", "empty"])
def test_production_refuses_without_trusted_hosts(production: dict[str, Any], hosts: Any) -> None:
    """Otherwise a foreign Host header is believed, and redirects follow it off-site."""
    with pytest.raises(ConfigError, match="PORTAL_TRUSTED_HOSTS"):
        create_app({**production, "TRUSTED_HOSTS": hosts})


SECRETS = ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY")


def test_production_reads_its_secrets_from_the_environment(
    production: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal also holds when the secrets come from PORTAL_* variables, as they do in production."""
    overrides = {k: v for k, v in production.items() if k not in SECRETS}
    for name in SECRETS:
        monkeypatch.setenv(f"PORTAL_{name}", production[name])
    app = create_app(overrides)
    with app.app_context():
        assert services().hasher.keyring.keys[1] == decode_key(production["IDENTIFIER_KEY"], "key")
        db.engine.dispose()
    monkeypatch.setenv("PORTAL_CODE_KEY", production["IDENTIFIER_KEY"])
    with pytest.raises(ConfigError, match="must all differ"):
        create_app(overrides)


# --- verification --------------------------------------------------------------------------------


@pytest.fixture
def people(app: Flask) -> list[dict[str, str]]:
    rows = [patient_row(), *other_rows()]
    assert import_patients(app, rows) == []
    return rows


def test_find_patient_success_and_single_wrong_fields(app: Flask, people: list[dict[str, str]]) -> None:
    maria = people[0]
    with app.app_context():
        hasher = services().hasher
        found = find_patient(db.session, hasher, claim_of(maria))
        assert found is not None
        assert found.record_key == hasher.record_keys("R-1")[0]
        # The same person however she spells it.
        again = find_patient(db.session, hasher, claim_of(maria, last_name="GARCIA lopez", zip_code="10001-0000"))
        assert again is not None and again.id == found.id
        for wrong in (
            {"last_name": "Garcia-Lopes"},
            {"last_name": "Garcia"},
            {"date_of_birth": "1980-04-24"},
            {"date_of_birth": "1980-04-22"},
            {"zip_code": "10002"},
            {"ssn_last4": "6788"},
            {"ssn_last4": "7890"},  # another person's last four (O'Brien)
            {"ssn_last4": "", "reference": REFERENCE},
        ):
            assert find_patient(db.session, hasher, claim_of(maria, **wrong)) is None, wrong
        unknown = IdentityClaim.from_input("Zzyzx", "1971-07-07", "99501", ssn_last4="4321")
        assert find_patient(db.session, hasher, unknown) is None


def test_two_people_sharing_a_surname_are_told_apart(app: Flask, people: list[dict[str, str]]) -> None:
    with app.app_context():
        hasher = services().hasher
        maria, ana = (find_patient(db.session, hasher, claim_of(p)) for p in (people[0], people[3]))
        assert maria is not None and ana is not None and maria.id != ana.id
        # Ana's birth date with Maria's ZIP and last four matches nobody.
        mixed = claim_of(people[0], date_of_birth=people[3]["date_of_birth"])
        assert find_patient(db.session, hasher, mixed) is None


def test_record_without_ssn_verifies_by_reference_only(app: Flask, people: list[dict[str, str]]) -> None:
    thao = people[2]
    with app.app_context():
        hasher = services().hasher
        reference = hasher.letter_reference(thao["record_id"])
        by_reference = {"last_name": "nguyen", "date_of_birth": thao["date_of_birth"], "zip_code": thao["zip"]}
        found = find_patient(
            db.session, hasher, IdentityClaim.from_input(**by_reference, reference=format_reference(reference).lower())
        )
        assert found is not None and found.record_key == hasher.record_keys(thao["record_id"])[0]
        # A wrong reference (another record's) matches nobody.
        other = hasher.letter_reference("R-1")
        assert find_patient(db.session, hasher, IdentityClaim.from_input(**by_reference, reference=other)) is None
        # No SSN last four can stand in for the reference. The digest is Argon2id of the keyed message,
        # so it suffices that none of the 10,000 possible messages equals the record's (fast, exact);
        # a few are also tried end to end.
        version = hasher.keyring.current_version
        on_file = hasher.lookup_message(IdentityClaim.from_input(**by_reference, reference=reference), version)
        for n in range(10_000):
            claim = IdentityClaim.from_input(**by_reference, ssn_last4=f"{n:04d}")
            assert hasher.lookup_message(claim, version) != on_file
        for last4 in ("0000", "6789", "1234"):
            claim = IdentityClaim.from_input(**by_reference, ssn_last4=last4)
            assert find_patient(db.session, hasher, claim) is None


def test_failed_verifications_cost_the_same_work(app: Flask, people: list[dict[str, str]], work: Any) -> None:
    maria = people[0]
    with app.app_context():
        lookup_work(app, work, claim_of(maria))  # warm up: first connection, compiled statements
        found, success = lookup_work(app, work, claim_of(maria))
        assert found is not None
        shapes = {"success": success.shape}
        for name, claim in {
            "wrong_last_name": claim_of(maria, last_name="Garcia-Lopes"),
            "wrong_dob": claim_of(maria, date_of_birth="1980-04-24"),
            "wrong_zip": claim_of(maria, zip_code="10003"),
            "wrong_ssn": claim_of(maria, ssn_last4="0000"),
            "wrong_reference": claim_of(people[2], ssn_last4="", reference=REFERENCE),
            "unknown_person": IdentityClaim.from_input("Zzyzx", "1971-07-07", "99501", ssn_last4="4321"),
        }.items():
            found, w = lookup_work(app, work, claim)
            assert found is None, name
            shapes[name] = w.shape
            assert w.stretches == [CHEAP], name
        assert len(set(shapes.values())) == 1, shapes
        stretches, statements = shapes["success"]
        assert stretches == 1
        assert statements >= 1


def test_empty_database_still_costs_one_stretch(app: Flask, work: Any) -> None:
    with app.app_context():
        assert db.session.scalar(select(func.count(HashScheme.id))) == 0
        claim = IdentityClaim.from_input("Garcia", "1980-04-23", "10001", ssn_last4="6789")
        lookup_work(app, work, claim)
        found, empty = lookup_work(app, work, claim)
        assert found is None
        assert empty.stretches == [CHEAP]
    # Once people are imported, a failed lookup does the same work as on the empty portal.
    assert import_patients(app, [patient_row()]) == []
    with app.app_context():
        lookup_work(app, work, claim)
        found, loaded = lookup_work(app, work, claim_of(patient_row(), ssn_last4="0000"))
        assert found is None
        assert loaded.shape == empty.shape


def test_failed_lookup_pages_look_the_same(app: Flask, client: Any, people: list[dict[str, str]]) -> None:
    """At the HTTP level too: the same status and the same page for a wrong field and an unknown person."""
    maria = people[0]
    typed = {"date_of_birth": maria["date_of_birth"], "zip_code": "10001", "ssn_last4": "0000"}
    pages = []
    for last_name in ("Garcia-Lopez", "Zzyzxwvut"):  # a known person with a wrong SSN; nobody at all
        response = lookup(client, last_name=last_name, **typed)
        body = response.get_data(as_text=True)
        body = body.replace(last_name, "<LAST NAME>")
        body = re.sub(r'name="csrf_token"[^>]*value="[^"]+"', "csrf", body)
        pages.append((response.status_code, sorted(response.headers.keys()), body))
    assert pages[0] == pages[1]
    assert pages[0][0] == 200


# --- rotation ------------------------------------------------------------------------------------


def synthetic_people(count: int) -> list[dict[str, str]]:
    from portal import synthetic

    return list(synthetic.synthetic_patients(count, seed=7))


def typed_claim(hasher: IdentifierHasher, row: dict[str, str]) -> IdentityClaim:
    """What this person types: last four of the SSN, or the reference on the letter ``hasher`` printed."""
    if row["ssn"]:
        return claim_of(row)
    return claim_of(row, ssn_last4="", reference=format_reference(hasher.letter_reference(row["record_id"])))


def scheme_states(app: Flask) -> list[tuple[int, int, int, int, bool]]:
    with app.app_context():
        rows = db.session.execute(
            select(
                HashScheme.key_version,
                HashScheme.time_cost,
                HashScheme.memory_cost,
                HashScheme.parallelism,
                HashScheme.active,
            ).order_by(HashScheme.id)
        ).all()
        return [tuple(r) for r in rows]


def test_a_scheme_is_one_key_version_with_one_set_of_argon2_parameters(app: Flask) -> None:
    """Raising any one Argon2 parameter starts a new scheme; the same parameters find theirs again,
    and a retired scheme comes back into use (and into every lookup) when it is current again."""
    keyring = Keyring(1, {1: secrets.token_bytes(32)})
    points = [Argon2Params(1, 1024, 1), Argon2Params(2, 1024, 1), Argon2Params(1, 2048, 1), Argon2Params(1, 1024, 2)]
    with app.app_context():
        ids = [identity.current_scheme(db.session, IdentifierHasher(keyring, params)).id for params in points]
        db.session.commit()
        assert len(set(ids)) == len(points)
        again = identity.current_scheme(db.session, IdentifierHasher(keyring, points[2]))
        assert again.id == ids[2]
        db.session.execute(HashScheme.__table__.update().values(active=False))
        db.session.commit()
        revived = identity.current_scheme(db.session, IdentifierHasher(keyring, points[1]))
        db.session.commit()
        assert revived.id == ids[1]
    assert [(row[1:4], row[4]) for row in scheme_states(app)] == [
        ((p.time_cost, p.memory_cost, p.parallelism), p == points[1]) for p in points
    ]


def test_two_importers_creating_one_scheme_at_once_share_it(app: Flask) -> None:
    """The unique constraint decides: the importer that loses the race uses the winner's scheme."""
    hasher = IdentifierHasher(Keyring(1, {1: secrets.token_bytes(32)}), CHEAP)
    with app.app_context():
        engine = db.engine

        def the_other_importer_wins(session: Any, _context: Any, _instances: Any) -> None:
            with engine.begin() as other:
                other.execute(
                    HashScheme.__table__.insert().values(
                        key_version=1, time_cost=1, memory_cost=1024, parallelism=1, salt=bytes(16), active=True
                    )
                )

        event.listen(db.session, "before_flush", the_other_importer_wins, once=True)
        scheme = identity.current_scheme(db.session, hasher)
        assert (scheme.salt, scheme.active) == (bytes(16), True)
        db.session.commit()
    assert scheme_states(app) == [(1, 1, 1024, 1, True)]


def test_only_schemes_no_record_uses_are_retired(app: Flask) -> None:
    keyring = Keyring(1, {1: secrets.token_bytes(32)})
    assert import_patients(app, [patient_row()]) == []
    with app.app_context():
        in_use = db.session.scalars(select(Patient.scheme_id)).one()
        unused = identity.current_scheme(db.session, IdentifierHasher(keyring, Argon2Params(2, 1024, 1))).id
        kept = identity.current_scheme(db.session, IdentifierHasher(keyring, Argon2Params(3, 1024, 1))).id
        db.session.commit()
        identity.retire_unused_schemes(db.session, keep_id=kept)
        db.session.commit()
        active = dict(db.session.execute(select(HashScheme.id, HashScheme.active)).all())
    assert active == {in_use: True, unused: False, kept: True}


def patient_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(Patient.id))) or 0


def run_import(app: Flask, rows: list[dict[str, str]]) -> Any:
    from conftest import numbered

    from portal.importer import PatientImporter

    rejected: list[tuple[int, str]] = []
    with app.app_context():
        report = PatientImporter(
            db.session, services().hasher, on_reject=lambda line, why: rejected.append((line, why))
        ).run(numbered(rows))
    assert rejected == []
    return report


def test_argon2_parameter_rotation_rehashes_everyone(database_url: str, work: Any) -> None:
    rows = synthetic_people(30)
    old = make_app(database_url)
    keys = {name: old.config[name] for name in ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY")}
    first = run_import(old, rows)
    assert (first.added, first.updated) == (30, 0)
    stronger = {"ARGON2_TIME_COST": 2, "ARGON2_MEMORY_COST": 2048, "ARGON2_PARALLELISM": 1}
    new = make_app(database_url, **keys, **stronger)
    params_b = Argon2Params(2, 2048, 1)
    second = run_import(new, rows)
    assert (second.added, second.updated, second.unchanged, second.rejected) == (0, 30, 0, 0)
    assert scheme_states(new) == [(1, 1, 1024, 1, False), (1, 2, 2048, 1, True)]
    assert patient_count(new) == 30
    with new.app_context():
        hasher = services().hasher
        scheme_b = db.session.scalar(select(HashScheme).where(HashScheme.active))
        assert db.session.scalar(select(func.count(Patient.id)).where(Patient.scheme_id != scheme_b.id)) == 0
        for row in rows:
            found, w = lookup_work(new, work, typed_claim(hasher, row))
            assert found is not None, row["record_id"]
            assert w.stretches == [params_b]
        _, miss = lookup_work(new, work, IdentityClaim.from_input("Zzyzx", "1971-07-07", "99501", ssn_last4="4321"))
        assert miss.stretches == [params_b]
    # A third run under B has nothing left to do.
    third = run_import(new, rows)
    assert (third.added, third.updated, third.unchanged) == (0, 0, 30)
    for app in (old, new):
        with app.app_context():
            db.engine.dispose()


def test_identifier_key_rotation(database_url: str, work: Any) -> None:
    rows = synthetic_people(40)
    no_ssn = [r for r in rows if not r["ssn"]]
    rows.append(patient_row(record_id="R-NOSSN", ssn="", last_name="Ørsted", date_of_birth="1966-06-06"))
    no_ssn.append(rows[-1])
    old = make_app(database_url)
    old_key = old.config["IDENTIFIER_KEY"]
    run_import(old, rows)
    with old.app_context():
        old_hasher = services().hasher
        old_record_keys = {old_hasher.record_keys(r["record_id"])[0] for r in rows}
    new_key = secrets.token_urlsafe(32)
    rotating = make_app(database_url, IDENTIFIER_KEY=new_key, IDENTIFIER_KEY_VERSION=2, IDENTIFIER_KEY_PREVIOUS=old_key)
    unknown = IdentityClaim.from_input("Zzyzx", "1971-07-07", "99501", ssn_last4="4321")

    def verify_all(
        app: Flask, letters_from: IdentifierHasher | Callable[[dict], IdentifierHasher], expected_stretches: int
    ) -> None:
        """Everyone verifies (letters from the given hasher, or per row), with the same work as an unknown person."""
        with app.app_context():
            shapes = set()
            for row in rows:
                hasher = letters_from(row) if callable(letters_from) else letters_from
                found, w = lookup_work(app, work, typed_claim(hasher, row))
                assert found is not None, row["record_id"]
                shapes.add(w.shape)
            found, w = lookup_work(app, work, unknown)
            assert found is None
            shapes.add(w.shape)
            assert shapes == {(expected_stretches, next(iter(shapes))[1])}, shapes

    # Before the re-import: the old key (held as previous) still verifies everyone, with the old letters.
    # Only the v1 scheme exists, so that is one stretch, for everyone alike.
    assert [s[0] for s in scheme_states(rotating)] == [1]
    with rotating.app_context():
        rotating_hasher = services().hasher
        lookup_work(rotating, work, unknown)
    verify_all(rotating, old_hasher, expected_stretches=1)

    # Half way through the re-import both schemes are active: two stretches per lookup, for everyone.
    half = len(rows) // 2
    partial = run_import(rotating, rows[:half])
    assert (partial.added, partial.updated) == (0, half)
    assert [(s[0], s[4]) for s in scheme_states(rotating)] == [(1, True), (2, True)]
    verify_all(rotating, lambda row: rotating_hasher if row in rows[:half] else old_hasher, expected_stretches=2)

    # After it: one stretch, the new key only, no duplicate records, and new letters for people without SSN.
    rest = run_import(rotating, rows)
    assert (rest.added, rest.updated, rest.unchanged) == (0, len(rows) - half, half)
    assert [(s[0], s[4]) for s in scheme_states(rotating)] == [(1, False), (2, True)]
    assert patient_count(rotating) == len(rows)
    with rotating.app_context():
        stored = set(db.session.scalars(select(Patient.record_key)))
        assert stored == {rotating_hasher.record_keys(r["record_id"])[0] for r in rows}
        assert not stored & old_record_keys
    verify_all(rotating, rotating_hasher, expected_stretches=1)
    with rotating.app_context():
        for row in no_ssn:
            assert old_hasher.letter_reference(row["record_id"]) != rotating_hasher.letter_reference(row["record_id"])
            stale = typed_claim(old_hasher, row)
            assert find_patient(db.session, rotating_hasher, stale) is None

    # The old key is no longer needed at all.
    retired = make_app(database_url, IDENTIFIER_KEY=new_key, IDENTIFIER_KEY_VERSION=2)
    verify_all(retired, rotating_hasher, expected_stretches=1)
    for app in (old, rotating, retired):
        with app.app_context():
            db.engine.dispose()


# --- verification tokens -------------------------------------------------------------------------


def test_verification_token_round_trip(app: Flask, people: list[dict[str, str]]) -> None:
    with app.app_context():
        patient = find_patient(db.session, services().hasher, claim_of(people[0]))
        assert patient is not None
        patient_id = patient.id
        token = start_verification(db.session, patient, "public", 900)
        assert len(token) >= 43
        db.session.close()
        assert verified_patient(db.session, token, "public").id == patient_id
        other = start_verification(db.session, db.session.get(Patient, patient_id), "public", 900)
        assert other != token
        assert verified_patient(db.session, other, "public").id == patient_id

        end_verification(db.session, token)
        db.session.close()
        assert verified_patient(db.session, token, "public") is None
        assert verified_patient(db.session, other, "public").id == patient_id, "signing out ends only that session"


def test_expired_unknown_and_overlong_tokens_are_refused(app: Flask, people: list[dict[str, str]]) -> None:
    with app.app_context():
        patient = find_patient(db.session, services().hasher, claim_of(people[0]))
        token = start_verification(db.session, patient, "public", 900)
        assert verified_patient(db.session, token, "public") is not None
        db.session.execute(Verification.__table__.update().values(expires_at=identity.utcnow() - timedelta(seconds=1)))
        db.session.commit()
        assert verified_patient(db.session, token, "public") is None
        assert verified_patient(db.session, start_verification(db.session, patient, "public", -1), "public") is None

        live = start_verification(db.session, patient, "public", 900)
        for bad in (
            None,
            "",
            secrets.token_urlsafe(32),
            live[:-1],
            live + "A",
            live + "x" * 100,
            "x" * 101,
            "ä" * 43,
            live.upper() if live.upper() != live else live.lower(),
        ):
            assert verified_patient(db.session, bad, "public") is None, bad
        end_verification(db.session, None)
        end_verification(db.session, "x" * 500)
        assert verified_patient(db.session, live, "public") is not None


def test_a_verification_ends_at_its_expiry_instant(
    app: Flask, people: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid strictly before ``expires_at``; at that instant it is over (the clock held still)."""
    now = identity.utcnow()
    monkeypatch.setattr(identity, "utcnow", lambda: now)
    with app.app_context():
        patient = find_patient(db.session, services().hasher, claim_of(people[0]))
        ending_now = start_verification(db.session, patient, "public", 0)
        one_second_left = start_verification(db.session, patient, "public", 1)
        assert verified_patient(db.session, ending_now, "public") is None
        assert verified_patient(db.session, one_second_left, "public") is not None


def test_only_the_token_digest_is_stored(app: Flask, people: list[dict[str, str]]) -> None:
    with app.app_context():
        patient = find_patient(db.session, services().hasher, claim_of(people[0]))
        token = start_verification(db.session, patient, "public", 900)
        rows = db.session.execute(text("SELECT * FROM verifications")).all()
        assert len(rows) == 1
        (row,) = rows
        assert hashlib.sha256(token.encode()).digest() in [bytes(v) for v in row if isinstance(v, (bytes, memoryview))]
        for value in row:
            raw = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
            assert token.encode() not in raw
            assert token.encode().hex() not in raw.decode("latin-1").lower()
