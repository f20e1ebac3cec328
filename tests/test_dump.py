"""No plaintext identifier at rest, nor in the logs: dump everything and search it.

After a realistic import (synthetic people, codes, lookups, claims, a sign-out) the whole database
is dumped — SQLite: the raw database file, its write-ahead log and ``iterdump()``; PostgreSQL:
``pg_dump`` of the test schema — plus every cell of every table read back through SQL. Each
imported identifier is searched for in several spellings (as given, case-folded, accents
stripped, normalised as the portal normalises it; dates, SSNs, phones in their usual forms).

How matches are decided, so that the test can fail but never flickers:
* Structured text (SQL dumps, cells) is searched for every needle, however short ("Le", "Wu"),
  which must stand alone there: not glued to a letter or digit on either side (a hex digest or
  a random id cannot "contain" a name by chance; a stored value is delimited in any SQL dump).
* Raw bytes (database file, WAL, binary cells) have no delimiters — a record header byte next to
  a value may read as a letter — and hold kilobytes of random digests and ciphertext, where a
  3-letter name turns up by chance. There needles of at least RAW_MIN_LENGTH characters are
  searched for as plain substrings (a chance match is then below about 1e-5 per run). Short
  names are still covered by the structured dumps, which hold every stored value.
* Before the real search, a canary planted by the test (a made-up person, in a scratch table,
  as text and as bytes) must be found by the same searcher in every dump, and a known value of
  the real tables (a public id, a digest) must be found too: so the dumps are complete and the
  search works.
"""

from __future__ import annotations

import ast
import csv
import io
import logging
import re
import shutil
import sqlite3
import subprocess
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL, csrf_token, lookup
from flask import Flask

from portal import synthetic
from portal.extensions import db
from portal.identity import InvalidIdentifier, format_reference, normalise_last_name
from portal.importer import PATIENT_COLUMNS
from portal.models import ActivationCode, Patient
from portal.services import services

RAW_MIN_LENGTH = 7
PEOPLE = 200
CLAIMS = 8


# --- needles -------------------------------------------------------------------------------------


def strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def name_forms(name: str) -> set[str]:
    forms = {name, strip_accents(name)}
    try:
        forms.add(normalise_last_name(name))
    except InvalidIdentifier:
        pass
    return {f.casefold().strip() for f in forms if f.strip()}


def date_forms(iso: str) -> set[str]:
    year, month, day = iso.split("-")
    return {iso, f"{month}/{day}/{year}", f"{year}{month}{day}"}


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def person_needles(row: dict[str, str]) -> set[str]:
    needles = name_forms(row["last_name"]) | name_forms(row["first_name"]) | date_forms(row["date_of_birth"])
    if row["ssn"].strip():
        ssn = digits(row["ssn"])
        needles |= {ssn, f"{ssn[:3]}-{ssn[3:5]}-{ssn[5:]}"}
    if row["phone"].strip():
        needles |= {
            row["phone"].casefold(),
            digits(row["phone"]).removeprefix("1") if len(digits(row["phone"])) == 11 else digits(row["phone"]),
        }
    if row["street"].strip():
        needles |= {row["street"].casefold(), strip_accents(row["street"]).casefold()}
    return {n.casefold() for n in needles}


def code_needles(code: str) -> set[str]:
    return {code.casefold(), code.replace("-", "").casefold()}


# --- searching -----------------------------------------------------------------------------------


TOKEN = re.compile(r"[^\W_]+")


@dataclass
class Haystack:
    """One dump, case-folded; ``raw`` when it is bytes that hold random digests and ciphertext."""

    name: str
    text: str
    raw: bool
    tokens: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.text = self.text.casefold()
        self.tokens = set(TOKEN.findall(self.text))

    @classmethod
    def of_bytes(cls, name: str, data: bytes) -> Haystack:
        return cls(name, data.decode("utf-8", errors="replace"), raw=True)

    def searches(self, needle: str) -> bool:
        return not self.raw or len(needle) >= RAW_MIN_LENGTH

    def contains(self, needle: str) -> bool:
        """Raw bytes: ``needle`` anywhere. Text: with no letter or digit right before or after it."""
        if self.raw:
            # Stored bytes have no delimiters: a record header byte next to a value may read as a letter.
            return needle in self.text
        parts = TOKEN.findall(needle)
        if not parts or not set(parts) <= self.tokens:
            return False  # a whole occurrence would put each of its words among the tokens
        if len(parts) == 1 and parts[0] == needle:
            return True
        return re.search(r"(?<![^\W_])" + re.escape(needle) + r"(?![^\W_])", self.text) is not None


def leaks(haystacks: Iterable[Haystack], needles: Iterable[str]) -> list[tuple[str, str]]:
    """(dump, needle) for every needle found (the data is synthetic, so the report may name it)."""
    needles = sorted(set(needles))
    return [(h.name, n) for h in haystacks for n in needles if h.searches(n) and h.contains(n)]


def test_searcher_rules() -> None:
    text = Haystack("t", "X'0A1B2C3D' Lee,O'Brien\x1fgarcialopez 1980-04-23 smithson", raw=False)
    assert text.contains("lee") and text.contains("o'brien") and text.contains("garcialopez")
    assert text.contains("1980-04-23") and not text.contains("19800423")
    assert not text.contains("smith"), "a longer word does not contain the name"
    assert not text.contains("0a1b"), "nor does a hex run"
    raw = Haystack.of_bytes("r", b"\x9f\xffLee\x00tGarcialopez9\x01")
    assert raw.contains("lee") and not raw.searches("lee")
    assert raw.searches("garcialopez") and raw.contains("garcialopez"), "even with a letter and digit around it"
    assert name_forms("García-López") == {"garcía-lópez", "garcia-lopez", "garcialopez"}
    assert date_forms("1980-04-23") == {"1980-04-23", "04/23/1980", "19800423"}


# --- the canary ----------------------------------------------------------------------------------

CANARY = {
    "record_id": "CANARY-1",
    "first_name": "Xiomara",
    "last_name": "Ńgwénya-Quist",
    "date_of_birth": "1961-02-03",
    "ssn": "899-12-3456",
    "street": "77 Zanzibar Quay",
    "phone": "(415) 555-0199",
}
CANARY_SHORT_NAME = "Qi"
CANARY_CODE = "IDP-ZZZZ-9999-QQQQ"
# As text, the way a careless column would hold it; as bytes, the normalised canonical form.
CANARY_TEXT = (
    f"{CANARY['last_name'].upper()}, {CANARY['first_name']} born {CANARY['date_of_birth']} "
    f"SSN {CANARY['ssn']} tel {CANARY['phone']} at {CANARY['street']}; alias {CANARY_SHORT_NAME}; {CANARY_CODE}"
)
CANARY_BYTES = "\x1f".join(["ngwenyaquist", "19610203", "899123456", "02/03/1961", "4155550199"]).encode()


def plant_canary(app: Flask) -> None:
    with app.app_context(), db.engine.begin() as connection:
        blob = "BYTEA" if connection.dialect.name == "postgresql" else "BLOB"
        connection.execute(sa.text(f"CREATE TABLE zz_canary (id INTEGER PRIMARY KEY, note TEXT, data {blob})"))
        connection.execute(
            sa.text("INSERT INTO zz_canary VALUES (1, :note, :data)"), {"note": CANARY_TEXT, "data": CANARY_BYTES}
        )


# What each form of the canary holds, as the searcher should find it.
CANARY_TEXT_NEEDLES = {
    "ńgwénya-quist",
    "xiomara",
    "1961-02-03",
    "899-12-3456",
    "(415) 555-0199",
    "77 zanzibar quay",
    "qi",
    "idp-zzzz-9999-qqqq",
}
CANARY_BYTE_NEEDLES = {"ngwenyaquist", "19610203", "899123456", "02/03/1961", "4155550199"}


def canary_all_forms() -> set[str]:
    return (
        person_needles({**CANARY, "zip": "", "state": ""}) | name_forms(CANARY_SHORT_NAME) | code_needles(CANARY_CODE)
    )


# --- the dumps -----------------------------------------------------------------------------------


def cell_dumps(app: Flask) -> list[Haystack]:
    """Every cell of every table through SQL: text cells as one text, each binary cell as raw bytes."""
    texts: list[str] = []
    blobs: list[bytes] = []
    with app.app_context(), db.engine.connect() as connection:
        for table in sa.inspect(connection).get_table_names():
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        blobs.append(bytes(value))
                        texts.append(bytes(value).hex())
                    else:
                        texts.append(str(value))
    return [Haystack("cells", "\n".join(texts), raw=False), Haystack.of_bytes("binary cells", b"\x00".join(blobs))]


def sqlite_path(app: Flask) -> Path:
    return Path(str(sa.make_url(app.config["DATABASE_URL"]).database))


def sqlite_dumps(app: Flask) -> list[Haystack]:
    path = sqlite_path(app)
    dumps = [Haystack.of_bytes("database file", path.read_bytes())]
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        dumps.append(Haystack.of_bytes("write-ahead log", wal.read_bytes()))
    connection = sqlite3.connect(path)
    try:
        text = "\n".join(connection.iterdump())
    finally:
        connection.close()
    dumps.append(Haystack("iterdump", text, raw=False))
    dumps.append(Haystack("iterdump unquoted", text.replace("''", "'"), raw=False))
    return dumps


def postgres_dumps(app: Flask) -> list[Haystack]:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        return []  # the cell dump still covers every table
    with app.app_context(), db.engine.connect() as connection:
        schema = connection.scalar(sa.text("SELECT current_schema()"))
    url = sa.make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run(
        [pg_dump, "--schema", schema, "--no-owner", url], capture_output=True, timeout=120, check=True
    )
    text = done.stdout.decode("utf-8")
    assert "COPY" in text and "patients" in text
    return [Haystack("pg_dump", text, raw=False)]


def dump_everything(app: Flask) -> list[Haystack]:
    with app.app_context():
        dialect = db.engine.dialect.name
    dumps = sqlite_dumps(app) if dialect == "sqlite" else postgres_dumps(app)
    return dumps + cell_dumps(app)


# --- a realistic life of the portal --------------------------------------------------------------


def write_csv(path: Path, header: Iterable[str], rows: Iterable[dict[str, str] | list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(header)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[c] for c in header] if isinstance(row, dict) else row)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def typed(app: Flask, row: dict[str, str]) -> dict[str, str]:
    """The lookup form as this person fills it in."""
    fields = {"last_name": row["last_name"], "date_of_birth": row["date_of_birth"], "zip_code": row["zip"]}
    if row["ssn"].strip():
        return {**fields, "ssn_last4": digits(row["ssn"])[-4:]}
    with app.app_context():
        reference = services().hasher.letter_reference(row["record_id"])
    return {**fields, "reference": format_reference(reference)}


def live_the_portal(
    app: Flask, tmp_path: Path, people: list[dict[str, str]], codes: list[dict[str, str]], claims: int
) -> list[str]:
    """Import (one bad row too), add codes, fail a lookup, verify, claim, view, sign out. Returns the codes shown."""
    runner = app.test_cli_runner()
    bad = dict(people[0], record_id="BAD-1", ssn="000-00-0000")
    patients_csv = write_csv(tmp_path / "patients.csv", PATIENT_COLUMNS, [*people, bad])
    result = runner.invoke(
        args=["import-patients", str(patients_csv), "--workers", "1", "--letters", str(tmp_path / "letters.csv")]
    )
    assert result.exit_code == 1 and "1 rejected" in result.output, result.output
    codes_csv = write_csv(tmp_path / "codes.csv", synthetic.CODE_HEADER, codes)
    result = runner.invoke(args=["import-codes", str(codes_csv)])
    assert result.exit_code == 0, result.output
    cli_output = result.output

    client = app.test_client()
    wrong = {**typed(app, people[1]), "ssn_last4": "0000", "reference": ""}
    assert "ssn_last4" in typed(app, people[1])
    failed = lookup(client, **wrong)
    assert failed.status_code == 200 and "/exposure" not in failed.headers.get("Location", "")

    shown = []
    claimers = [p for p in people if p["ssn"].strip()][: claims - 1] + [p for p in people if not p["ssn"].strip()][:1]
    for person in claimers:
        client = app.test_client()
        response = lookup(client, **typed(app, person))
        assert response.status_code == 303, response.get_data(as_text=True)
        assert client.get("/exposure").status_code == 200
        response = client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")})
        assert response.status_code == 303 and response.headers["Location"] == "/code"
        page = client.get("/code").get_data(as_text=True)
        shown += [c["code"] for c in codes if c["code"] in page]
        if person is claimers[0]:
            client.post("/sign-out", data={"csrf_token": csrf_token(client, "/code")})
    assert len(shown) == len(claimers) == len(set(shown))
    assert CANARY_CODE not in cli_output
    return shown


# --- the tests -----------------------------------------------------------------------------------


def test_no_identifier_in_a_dump_of_the_database(app: Flask, tmp_path: Path) -> None:
    people = list(synthetic.synthetic_patients(PEOPLE, seed=5))
    codes = list(synthetic.synthetic_codes(PEOPLE, seed=5))
    shown = live_the_portal(app, tmp_path, people, codes, CLAIMS)
    plant_canary(app)

    imported = set().union(*(person_needles(p) for p in people), *(code_needles(c["code"]) for c in codes))
    canary = CANARY_TEXT_NEEDLES | CANARY_BYTE_NEEDLES
    assert canary <= canary_all_forms()
    assert not imported & canary_all_forms(), "the canary must be nobody's real value"
    assert "le" in imported and "wu" in imported, "short names are among the needles"

    dumps = dump_everything(app)
    with app.app_context():
        patient = db.session.scalars(sa.select(Patient).limit(1)).one()
        public_id, digest = patient.public_id, patient.lookup_digest
        sealed = db.session.scalars(sa.select(ActivationCode.ciphertext).limit(1)).one()
        assert db.session.scalar(sa.select(sa.func.count(Patient.id))) == PEOPLE
        assert (
            db.session.scalar(sa.select(sa.func.count(ActivationCode.id)).where(ActivationCode.patient_id.is_not(None)))
            == CLAIMS
        )

    # The dumps are complete and the search works: the canary and known stored values are found.
    text_dumps = [d for d in dumps if not d.raw]
    raw_dumps = [d for d in dumps if d.raw]
    assert "cells" in {d.name for d in text_dumps}
    has_tool_dump = bool({"iterdump", "pg_dump"} & {d.name for d in text_dumps})
    assert has_tool_dump or shutil.which("pg_dump") is None
    for dump in text_dumps:
        assert dump.contains(public_id), dump.name
        missing = [n for n in CANARY_TEXT_NEEDLES if not dump.contains(n)]
        assert not missing, (dump.name, missing)
        assert not dump.contains("19610203"), "the canary's bytes are not readable as text"
    raw_storage = [d for d in raw_dumps if d.name != "binary cells"]
    binary_cells = next(d for d in raw_dumps if d.name == "binary cells")
    assert all(binary_cells.contains(n) for n in CANARY_BYTE_NEEDLES)
    if raw_storage:  # SQLite: the file and the WAL together hold everything, canary included
        storage = Haystack("file+wal", "\n".join(d.text for d in raw_storage), raw=True)
        assert public_id.casefold() in storage.text
        long_canary = {n for n in canary if len(n) >= RAW_MIN_LENGTH}
        assert {n for n in long_canary if storage.contains(n)} == long_canary
        path = sqlite_path(app)
        files = path.read_bytes() + (wal.read_bytes() if (wal := path.with_name(path.name + "-wal")).exists() else b"")
        assert digest in files and sealed in files
    elif has_tool_dump:  # PostgreSQL: pg_dump writes bytea as hex
        pg = next(d for d in text_dumps if d.name == "pg_dump")
        assert "\\\\x" + digest.hex() in pg.text

    # And not one imported identifier, nor any code in clear, anywhere.
    found = leaks(dumps, imported)
    assert not found, f"identifiers at rest: {found[:20]}"
    assert set().union(*(code_needles(code) for code in shown)) <= imported, "the codes handed out were searched for"


# --- logs ----------------------------------------------------------------------------------------


BYTES_LITERAL = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")


def log_haystacks(records: list[logging.LogRecord]) -> list[Haystack]:
    """Each record's message and traceback; ``b'...'`` reprs of digests are searched as raw bytes."""
    texts, blobs = [], []
    for record in records:
        message = record.getMessage() + "\n" + (record.exc_text or "") + "\n" + str(record.stack_info or "")
        for literal in BYTES_LITERAL.findall(message):
            try:
                blobs.append(ast.literal_eval(literal))
            except (SyntaxError, ValueError):
                blobs.append(literal.encode())
        texts.append(BYTES_LITERAL.sub(" ", message))
    return [
        Haystack("log messages", "\n".join(texts), raw=False),
        Haystack.of_bytes("logged bytes", b"\x00".join(blobs)),
    ]


def test_no_identifier_in_the_logs(database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from conftest import make_app

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    app = make_app(database_url)  # after the levels are set, so the engine logs every statement
    people = list(synthetic.synthetic_patients(20, seed=6))
    codes = list(synthetic.synthetic_codes(5, seed=6))
    live_the_portal(app, tmp_path, people, codes, claims=2)
    with app.app_context():
        db.engine.dispose()
    records = list(caplog.records)
    assert any(r.name.startswith("sqlalchemy.engine") and "patients" in r.getMessage() for r in records), (
        "the statements were not captured, so this test would prove nothing"
    )
    haystacks = log_haystacks(records)
    planted = Haystack(
        "planted", haystacks[0].text + f"\nparameters: ('{CANARY['last_name']}', '{CANARY['ssn']}')", raw=False
    )
    assert planted.contains(CANARY["last_name"].casefold()) and planted.contains(CANARY["ssn"])
    needles = set().union(*(person_needles(p) for p in people), *(code_needles(c["code"]) for c in codes))
    found = leaks(haystacks, needles)
    assert not found, f"identifiers in the logs: {found[:20]}"
