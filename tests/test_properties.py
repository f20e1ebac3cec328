"""Properties, checked on generated input (hypothesis).

* Normalisation: every spelling a person may type of the same identifier gives one key; nothing
  but ``InvalidIdentifier`` ever escapes, and its message never repeats what was typed.
* No oracle: a known person with one wrong field gets exactly the answer an unknown person gets.
* No plaintext at rest: nothing imported about a person can be found in the database file.
* The code pool, as a state machine on a real database: a code goes to exactly one person, the
  same one every time, and neither a retry nor a crash between UPDATE and COMMIT changes that.

Example counts are sized for the whole module to take ~15 s on two cores; raise them for a deeper
run with ``PORTAL_HYPOTHESIS_SCALE=10``.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import sys
import unicodedata
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import import_patients, lookup, make_app, patient_row, postgres_schema_url
from flask import Flask
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import delete, event, func, select, text
from sqlalchemy.orm import Session

from portal.claims import PoolBusy, PoolEmpty, claim_code, code_of, pool_status
from portal.extensions import db
from portal.identity import (
    CROCKFORD,
    REFERENCE_LENGTH,
    IdentityClaim,
    InvalidIdentifier,
    normalise_last_name,
    normalise_reference,
    normalise_ssn,
    normalise_ssn_last4,
    normalise_zip,
    parse_birth_date,
)
from portal.importer import SeenKeys
from portal.models import ActivationCode, HashScheme, Patient, Verification
from portal.services import services

SCALE = max(1, int(os.environ.get("PORTAL_HYPOTHESIS_SCALE", "1")))


def budget(examples: int, **extra: Any) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        **extra,
    )


# --- Normalisation -------------------------------------------------------------------------------

LATIN_LETTERS = string.ascii_letters + "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿāăąćčďđēėęěğīįıķĺľłńňōőœŕřśşšťūůűųźżž"
SPACES = [" ", "  ", "\t", "\u00a0", "\u3000"]
HYPHENS = ["-", "\u2010", "\u2011", "\u2013", "\u2014"]
APOSTROPHES = ["'", "\u2019", "\u2018", "`", "\u00b4"]  # as typed, or as smart-quoted by a phone
# Not U+0345 (iota subscript): Unicode case folding makes it the letter iota, on purpose.
COMBINING_ACCENTS = [chr(c) for c in range(0x0300, 0x0370) if c != 0x0345]
FIELDS = ("last_name", "date_of_birth", "zip_code", "ssn_last4", "reference")
MARKER = "\u2603"  # a character no message of ours contains: finding it in one means input was echoed


@st.composite
def name_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A name made of letters, and another way of typing the very same name."""
    letters = draw(st.lists(st.sampled_from(LATIN_LETTERS), min_size=1, max_size=16))
    typed = []
    for letter in letters:
        typed.append(draw(st.sampled_from([letter, letter.upper(), letter.lower()])))
        typed.extend(draw(st.lists(st.sampled_from(COMBINING_ACCENTS), max_size=2)))
        if draw(st.integers(0, 3)) == 0:
            typed.append(draw(st.sampled_from(SPACES + HYPHENS + APOSTROPHES)))
    spelled = "".join(typed)
    # A browser usually sends NFC (precomposed letters); a vendor file may hold either.
    form = draw(st.sampled_from([None, "NFC", "NFD"]))
    return "".join(letters), unicodedata.normalize(form, spelled) if form else spelled


@example("\u01fe")  # Ǿ: NFKD makes it ø + acute, and ø is only folded before NFKD
@example("\u01fd")  # ǽ -> æ
@example("\U0001d400")  # MATHEMATICAL BOLD CAPITAL A: NFKD makes an uppercase A after case folding
@given(st.text(max_size=120))
@budget(300)
def test_last_name_normalisation_is_idempotent(text: str) -> None:
    try:
        key = normalise_last_name(text)
    except InvalidIdentifier:
        return
    assert normalise_last_name(key) == key


@example(("sorensen", "S\u01ferensen"))  # Sǿrensen, as NFC writes ø + combining acute
@example(("maersk", "M\u01fdrsk"))  # Mǽrsk
@given(name_spellings())
@budget(300)
def test_every_spelling_of_a_name_gives_one_key(spelling: tuple[str, str]) -> None:
    name, typed = spelling
    assert normalise_last_name(typed) == normalise_last_name(name)


@pytest.mark.parametrize(
    ("typed", "on_file"),
    [
        ("Ka\u02bbahumanu", "Ka'ahumanu"),  # ʻokina, as Hawaiian keyboards type it
        ("Dem\u02bcyanchuk", "Dem'yanchuk"),  # the apostrophe of the Ukrainian layout
    ],
)
def test_modifier_letter_apostrophes_fold_like_ascii_ones(typed: str, on_file: str) -> None:
    assert normalise_last_name(typed) == normalise_last_name(on_file)


def test_no_letter_or_digit_is_a_combining_mark_in_all_of_unicode() -> None:
    """Why ``normalise_last_name`` keeps ``isalnum()`` alone: every code point this Python's Unicode
    database knows, checked one by one. Accents are removed because NFKD makes them combining marks
    and no combining mark is a letter or digit, so a ``combining()`` test beside it removed nothing."""
    every_character = (chr(point) for point in range(sys.maxunicode + 1))
    marks = [ch for ch in every_character if unicodedata.combining(ch)]
    assert len(marks) > 900, "the check would be vacuous without combining marks to look at"
    assert [f"U+{ord(ch):04X}" for ch in marks if ch.isalnum()] == []
    # Each accent of the normalisation examples is one of them, and is dropped.
    assert {"\u0301", "\u0308", "\u0303", "\u0323"} <= set(marks)
    assert normalise_last_name("Nguy\u1ec5n M\u00fcller") == "nguyenmuller"


@st.composite
def zip_spellings(draw: st.DrawFn) -> tuple[str, str]:
    zip5 = draw(st.from_regex(r"[0-9]{5}", fullmatch=True))
    plus4 = draw(st.from_regex(r"[0-9]{4}", fullmatch=True))
    pad = st.sampled_from(["", " ", "  ", "\t"])
    joined = draw(st.sampled_from(["", "-", " - ", " ", "\u2010"[:0] + "-"]))
    typed = draw(st.sampled_from([zip5, f"{zip5}{joined}{plus4}"]))
    return zip5, draw(pad) + typed + draw(pad)


@given(zip_spellings())
@budget(150)
def test_zip_and_zip_plus_four_are_one_zip(spelling: tuple[str, str]) -> None:
    zip5, typed = spelling
    assert normalise_zip(typed) == normalise_zip(zip5) == zip5


@st.composite
def reference_spellings(draw: st.DrawFn) -> tuple[str, str]:
    code = draw(st.text(alphabet=CROCKFORD, min_size=REFERENCE_LENGTH, max_size=REFERENCE_LENGTH))
    typed = []
    for ch in code:
        if ch == "1":
            ch = draw(st.sampled_from("1IiLl"))
        elif ch == "0":
            ch = draw(st.sampled_from("0Oo"))
        typed.append(draw(st.sampled_from([ch, ch.lower()])))
        if draw(st.integers(0, 4)) == 0:
            typed.append(draw(st.sampled_from([" ", "-", " - ", "\t"])))
    return code, "".join(typed)


@given(reference_spellings())
@budget(150)
def test_a_letter_reference_is_forgiving_about_how_it_is_typed(spelling: tuple[str, str]) -> None:
    code, typed = spelling
    assert normalise_reference(typed) == normalise_reference(code) == code


@given(
    name=name_spellings(),
    born=st.dates(min_value=date(1900, 1, 1), max_value=date(2020, 12, 31)),
    zip_code=zip_spellings(),
    last4=st.from_regex(r"[0-9]{4}", fullmatch=True),
    spaced=st.booleans(),
)
@budget(150)
def test_equivalent_input_makes_one_canonical_claim(
    name: tuple[str, str], born: date, zip_code: tuple[str, str], last4: str, spaced: bool
) -> None:
    canonical = IdentityClaim.from_input(name[0], born.isoformat(), zip_code[0], ssn_last4=last4).canonical()
    typed_last4 = f" {last4[:2]} {last4[2:]} " if spaced else last4
    typed = IdentityClaim.from_input(name[1], f" {born.isoformat()} ", zip_code[1], ssn_last4=typed_last4)
    assert typed.canonical() == canonical


NORMALISERS = {
    "last_name": normalise_last_name,
    "zip": normalise_zip,
    "ssn": normalise_ssn,
    "ssn_last4": normalise_ssn_last4,
    "reference": normalise_reference,
    "date_of_birth": parse_birth_date,
}
digits_and_dashes = st.from_regex(r"[0-9][0-9 \-]{2,30}", fullmatch=True)
date_shaped = st.from_regex(r"\s?[0-9]{4}-[0-9]{2}-[0-9]{2}\s?", fullmatch=True)


@given(
    which=st.sampled_from(sorted(NORMALISERS)),
    text=st.one_of(
        st.tuples(st.text(max_size=60), st.text(max_size=60)).map(lambda p: p[0] + MARKER + p[1]),
        st.text(min_size=101, max_size=300).map(lambda t: MARKER + t),
        digits_and_dashes,
        date_shaped,
    ),
)
@budget(300)
def test_an_invalid_identifier_is_never_repeated_back(which: str, text: str) -> None:
    try:
        NORMALISERS[which](text)
    except InvalidIdentifier as error:
        said = " ".join([str(error), repr(error.args)])
        assert MARKER not in said and "\\u2603" not in said
        if MARKER not in text and len(text.strip()) >= 3:
            # Our messages hold at most two digits in a row: three of the input's would be an echo.
            assert text.strip() not in said
            assert not any(run in said for run in re.findall(r"[0-9]{3,}", text))


@given(keys=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 40), max_size=300), merge_at=st.integers(1, 8))
@budget(200)
def test_seen_keys_answer_like_a_set_across_merges(keys: list[int], merge_at: int) -> None:
    """The importer's compact record-key memory (portal.importer.SeenKeys) is exactly a set."""
    seen, reference = SeenKeys(), set()
    seen.MERGE_AT = merge_at  # small, so most examples cross several merges
    for key in keys:
        assert seen.add(key) == (key not in reference)
        reference.add(key)


@given(st.lists(st.one_of(st.text(), date_shaped, digits_and_dashes), min_size=5, max_size=5))
@budget(300)
def test_arbitrary_text_raises_nothing_but_invalid_identifier(values: list[str]) -> None:
    for normalise in NORMALISERS.values():
        for value in values:
            try:
                normalise(value)
            except InvalidIdentifier:
                pass
    try:
        IdentityClaim.from_input(*values)
    except InvalidIdentifier as error:
        # The form pins the message on this field: it must be one the form has.
        assert error.field in FIELDS


# --- No oracle, no plaintext ---------------------------------------------------------------------

KNOWN = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001", "ssn_last4": "6789"}
VALUE_ATTR = re.compile(r'value="[^"]*"')
# Values that differ per request whoever asks: the echoed input's length, a bucket's retry time.
PER_BUCKET_HEADERS = ("Content-Length", "Retry-After", "Set-Cookie", "X-Request-ID")


@pytest.fixture(scope="module")
def known_person_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('oracle') / 'portal.sqlite3'}", PROPAGATE_EXCEPTIONS=False)
    assert import_patients(app, [patient_row()]) == []
    yield app
    with app.app_context():
        db.engine.dispose()


def comparable(response: Any) -> tuple[int, str, list[tuple[str, str]]]:
    body = VALUE_ATTR.sub('value=""', response.get_data(as_text=True))
    headers = sorted((k, "" if k in PER_BUCKET_HEADERS else v) for k, v in response.headers.items())
    return response.status_code, body, headers


wrong_values = {
    "last_name": st.text(alphabet=string.ascii_letters, min_size=2, max_size=20),
    "date_of_birth": st.dates(min_value=date(1900, 1, 1), max_value=date(2020, 12, 31)).map(date.isoformat),
    "zip_code": st.from_regex(r"[0-9]{5}", fullmatch=True),
    "ssn_last4": st.from_regex(r"[0-9]{4}", fullmatch=True),
}


@given(data=st.data())
@budget(40)
def test_one_wrong_field_answers_exactly_like_an_unknown_person(known_person_app: Flask, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(wrong_values)), label="field")
    value = data.draw(wrong_values[field], label="value")
    near_miss = {**KNOWN, field: value}
    assume(IdentityClaim.from_input(**near_miss).canonical() != IdentityClaim.from_input(**KNOWN).canonical())
    stranger = {
        "last_name": data.draw(wrong_values["last_name"], label="stranger"),
        "date_of_birth": data.draw(wrong_values["date_of_birth"]),
        "zip_code": data.draw(wrong_values["zip_code"]),
        "ssn_last4": data.draw(wrong_values["ssn_last4"]),
    }
    assume(normalise_last_name(stranger["last_name"]) != normalise_last_name(KNOWN["last_name"]))
    almost = lookup(known_person_app.test_client(), **near_miss)
    unknown = lookup(known_person_app.test_client(), **stranger)
    assert almost.status_code == 200
    assert comparable(almost) == comparable(unknown)


@st.composite
def breach_rows(draw: st.DrawFn) -> list[dict[str, str]]:
    """Patients whose every identifier is distinctive enough that finding it in a file is no accident."""
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        word = st.text(alphabet=LATIN_LETTERS, min_size=8, max_size=16)
        ssn = draw(st.from_regex(r"[1-5][0-9]{2}-[1-9][0-9]-[1-9][0-9]{3}", fullmatch=True))
        rows.append(
            patient_row(
                record_id=f"P-{secrets.token_hex(6)}",
                first_name=draw(word),
                last_name=draw(word),
                date_of_birth=draw(st.dates(date(1920, 1, 1), date(2015, 12, 31))).isoformat(),
                ssn=ssn,
                street=f"{draw(st.integers(100, 9999))} {draw(word)} Street",
                city=draw(word),
                phone=draw(st.from_regex(r"[2-9][0-9]{2}[2-9][0-9]{6}", fullmatch=True)),
            )
        )
    return rows


def identifiers(row: dict[str, str]) -> list[str]:
    return [
        row["first_name"], row["last_name"], normalise_last_name(row["last_name"]), row["street"], row["city"],
        row["ssn"], row["ssn"].replace("-", ""), row["phone"], row["date_of_birth"],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def import_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, Path, bytes]]:
    """The app, its database file, and that file before any import (the schema's own words)."""
    path = tmp_path_factory.mktemp("at-rest") / "portal.sqlite3"
    app = make_app(f"sqlite:///{path}")
    yield app, path, b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    with app.app_context():
        db.engine.dispose()


@example(rows=[patient_row(record_id="P-schema", city="patients")])  # once a false alarm
@given(rows=breach_rows())
@budget(20)
def test_nothing_imported_about_a_person_is_stored_in_clear(
    import_app: tuple[Flask, Path, bytes], rows: list[dict[str, str]]
) -> None:
    app, path, empty = import_app
    rejected = import_patients(app, rows)
    # Hypothesis replays simple people across examples: a repeat is refused as a duplicate, never stored twice.
    assert all("duplicates" in why for _, why in rejected), rejected
    stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # the file, its WAL and SHM
    with app.app_context():
        # Table and index names are in the file too: a drawn word inside one ("verifica") is no leak.
        schema = " ".join(db.session.scalars(text("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")))
    for row in rows:
        for value in identifiers(row):
            if value.lower() in schema.lower():
                continue
            for encoding in ("utf-8", "utf-16-le"):
                if value.encode(encoding) in empty:  # a name such as "patients" is in the schema itself
                    continue
                assert value.encode(encoding) not in stored, f"{value!r} found in the database file"


# --- The code pool as a state machine ------------------------------------------------------------

TODAY = date(2030, 1, 15)


class CrashBeforeCommit(Exception):
    """The process died after the claim's UPDATE and before its COMMIT."""


class CodePool(RuleBasedStateMachine):
    """Claims against a real database, checked against a plain model of who should hold what."""

    patients = Bundle("patients")

    def __init__(self, app: Flask) -> None:
        super().__init__()
        self.context = app.app_context()
        self.context.push()
        self.session = db.session
        self.cipher = services().cipher
        for model in (Verification, ActivationCode, Patient, HashScheme):
            self.session.execute(delete(model))
        scheme = HashScheme(key_version=1, time_cost=1, memory_cost=1024, parallelism=1, salt=bytes(16))
        self.session.add(scheme)
        self.session.commit()
        self.scheme_id = scheme.id
        self.today = TODAY
        self.enroll_by: dict[str, date] = {}  # every code in the pool
        self.holds: dict[int, str] = {}  # patient id -> the code they were given, first time and forever

    def teardown(self) -> None:
        self.session.rollback()
        self.context.pop()

    def free_codes(self) -> set[str]:
        given = set(self.holds.values())
        return {code for code, last_day in self.enroll_by.items() if code not in given and last_day >= self.today}

    @rule(target=patients)
    def add_patient(self) -> int:
        patient = Patient(
            record_key=secrets.token_bytes(32), scheme_id=self.scheme_id,
            lookup_digest=secrets.token_bytes(32), exposed_fields=1,
        )  # fmt: skip
        self.session.add(patient)
        self.session.commit()
        return patient.id

    @rule(days=st.integers(-2, 4))
    def add_code(self, days: int) -> None:
        code = f"IDP-{len(self.enroll_by):04d}-{secrets.token_hex(3).upper()}"
        row = self.cipher.seal(code)
        row.enroll_by = self.today + timedelta(days=days)  # days < 0: a code that has expired
        row.product = "Identity protection, 24 months"
        self.session.add(row)
        self.session.commit()
        self.enroll_by[code] = row.enroll_by

    @rule(days=st.integers(1, 3))
    def time_passes(self, days: int) -> None:
        self.today += timedelta(days=days)

    def _claim(self, session: Session, patient_id: int) -> None:
        patient = session.get_one(Patient, patient_id)
        free = self.free_codes()
        try:
            got = claim_code(session, self.cipher, patient, today=self.today)
        except PoolEmpty:
            assert patient_id not in self.holds, "a person who holds a code was told the pool is empty"
            assert not free, f"PoolEmpty with {len(free)} usable codes left"
            return
        except PoolBusy:
            raise AssertionError("PoolBusy with no concurrent claim") from None
        if patient_id in self.holds:
            assert got.code == self.holds[patient_id], "a person's code changed"
        else:
            assert got.code in free, "the code given was taken, expired or unknown"
            self.holds[patient_id] = got.code
        assert got.enroll_by == self.enroll_by[got.code]

    @rule(patient=patients)
    def claim(self, patient: int) -> None:
        self._claim(self.session, patient)

    @rule(patient=patients)
    def retry_in_a_new_session(self, patient: int) -> None:
        """The answer to a claim was lost (crash after COMMIT, timeout): the person tries again."""
        with Session(db.engine) as fresh:
            self._claim(fresh, patient)

    @rule(patient=patients)
    def crash_between_update_and_commit(self, patient: int) -> None:
        with Session(db.engine) as doomed:

            def die(_session: Session) -> None:
                raise CrashBeforeCommit()

            event.listen(doomed, "before_commit", die)
            try:
                claim_code(doomed, self.cipher, doomed.get_one(Patient, patient), today=self.today)
            except (CrashBeforeCommit, PoolEmpty):
                pass
            doomed.rollback()
        # Nothing of the dead claim may remain: the invariants below compare the database to the model.

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        session = self.session
        session.expire_all()
        twice = session.execute(
            select(ActivationCode.patient_id, func.count())
            .where(ActivationCode.patient_id.is_not(None))
            .group_by(ActivationCode.patient_id)
            .having(func.count() > 1)
        ).all()
        assert twice == [], "a person holds two codes"
        held = {row.patient_id: self.cipher.open(row) for row in session.scalars(
            select(ActivationCode).where(ActivationCode.patient_id.is_not(None)))}  # fmt: skip
        assert len(set(held.values())) == len(held), "a code is held by two people"
        assert held == self.holds, "the database and the model disagree on who holds what"
        for patient_id, code in self.holds.items():
            seen = code_of(session, self.cipher, session.get_one(Patient, patient_id))
            assert seen is not None and seen.code == code
        status = pool_status(session, today=self.today)
        assert status.claimed == len(self.holds) <= status.total == len(self.enroll_by)
        assert status.available == len(self.free_codes())
        session.rollback()


POOL_SETTINGS = dict(stateful_step_count=25)


def test_code_pool_state_machine_on_sqlite(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}")
    try:
        run_state_machine_as_test(lambda: CodePool(app), settings=budget(40, **POOL_SETTINGS))
    finally:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from postgres_schema_url()


@pytest.mark.postgres
def test_code_pool_state_machine_on_postgres(postgres_url: str) -> None:
    app = make_app(postgres_url)
    try:
        run_state_machine_as_test(lambda: CodePool(app), settings=budget(15, **POOL_SETTINGS))
    finally:
        with app.app_context():
            db.engine.dispose()
