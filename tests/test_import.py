"""The breach-list and code-pool imports, mostly through the real ``portal`` command.

CSV files are written to tmp_path and imported into the real databases of the fixtures (SQLite
file and a private PostgreSQL schema). A crash is a real SIGKILL of a real ``portal import-patients``
process. Rejections must name the line and the reason, never the value, and never half-import a row.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import FAST_ARGON2, make_app, make_config, numbered, patient_row
from flask import Flask
from sqlalchemy import event, func, select

from portal import exposure, synthetic
from portal.app import create_app
from portal.extensions import db
from portal.identity import IdentityClaim, find_patient, format_reference, stretch
from portal.importer import CODE_COLUMNS, DEFAULT_PRODUCT, PATIENT_COLUMNS, PatientImporter
from portal.models import ActivationCode, HashScheme, LetterRecord, Patient
from portal.services import services

PORTAL_BIN = Path(sys.executable).with_name("portal")


# --- helpers -------------------------------------------------------------------------------------


def write_rows(
    path: Path,
    rows: list[dict[str, str]] | list[list[str]],
    header: tuple[str, ...] | list[str] = PATIENT_COLUMNS,
    encoding: str = "utf-8",
) -> Path:
    """A CSV file as a vendor would send it: a header, then one line per row (dicts or raw value lists)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[name] for name in header] if isinstance(row, dict) else row)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def people(count: int, seed: int = 11, start: int = 1) -> list[dict[str, str]]:
    return list(synthetic.synthetic_patients(count, seed=seed, start=start))


def run_cli(runner: Any, *args: str) -> Any:
    result = runner.invoke(args=list(args))
    # Never a traceback: a clean exit (0, 1 or 2) whatever the file holds.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def import_file(runner: Any, path: Path, *options: str) -> Any:
    return run_cli(runner, "import-patients", str(path), "--workers", "1", *options)


def patient_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(Patient.id))) or 0


def stored_keys(app: Flask) -> list[bytes]:
    with app.app_context():
        return list(db.session.scalars(select(Patient.record_key)))


def record_key(app: Flask, record_id: str) -> bytes:
    with app.app_context():
        return services().hasher.record_keys(record_id)[0]


def typed_claim(app: Flask, row: dict[str, str]) -> IdentityClaim:
    """What the person types: the last four of the SSN, or the reference on their letter."""
    values = {"last_name": row["last_name"], "date_of_birth": row["date_of_birth"], "zip_code": row["zip"]}
    if row["ssn"].strip():
        return IdentityClaim.from_input(**values, ssn_last4=row["ssn"].replace("-", "")[-4:])
    with app.app_context():
        reference = services().hasher.letter_reference(row["record_id"])
    return IdentityClaim.from_input(**values, reference=format_reference(reference))


def verify(app: Flask, rows: list[dict[str, str]]) -> list[Patient | None]:
    """Look each person up as the site would; detached results, or None."""
    claims = [typed_claim(app, row) for row in rows]
    with app.app_context():
        found = [find_patient(db.session, services().hasher, claim) for claim in claims]
        db.session.expunge_all()
    return found


def verified(app: Flask, row: dict[str, str]) -> Patient | None:
    return verify(app, [row])[0]


def all_verify(app: Flask, rows: list[dict[str, str]]) -> bool:
    return None not in verify(app, rows)


def rejections(output: str) -> dict[int, str]:
    """``line N: rejected: reason`` lines of the command's output, by line number."""
    found: dict[int, str] = {}
    for text in output.splitlines():
        if ": rejected: " in text and text.startswith("line "):
            number, reason = text.removeprefix("line ").split(": rejected: ", 1)
            assert int(number) not in found, f"line {number} reported twice"
            found[int(number)] = reason
    return found


def identifier_values(rows: list[dict[str, str]]) -> set[str]:
    """Every identifying value of these rows, in the forms a careless message could quote."""
    values: set[str] = set()
    for row in rows:
        for column in ("first_name", "last_name", "date_of_birth", "ssn", "street", "phone"):
            value = row.get(column, "").strip()
            if len(value) >= 4:
                values.add(value)
        digits = row.get("ssn", "").replace("-", "")
        if len(digits) >= 4:
            values.add(digits)
    return values


def assert_no_identifiers(output: str, rows: list[dict[str, str]]) -> None:
    folded = re.sub(r"\S*\.csv\b", "<file>", output).casefold()  # the temporary path is the test's own text
    for value in identifier_values(rows):
        assert value.casefold() not in folded, "an identifier was printed"


# --- valid files, re-runs ------------------------------------------------------------------------


def test_valid_rows_import_and_a_rerun_changes_nothing(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(25)
    path = write_rows(tmp_path / "list.csv", rows)
    first = import_file(runner, path)
    assert first.exit_code == 0, first.output
    assert "25 rows read, 25 added, 0 updated, 0 already up to date, 0 rejected" in first.stdout
    assert patient_count(app) == 25
    assert sorted(stored_keys(app)) == sorted(record_key(app, r["record_id"]) for r in rows)
    assert all_verify(app, rows)
    assert_no_identifiers(first.output, rows)

    second = import_file(runner, path)
    assert second.exit_code == 0, second.output
    assert "25 rows read, 0 added, 0 updated, 25 already up to date, 0 rejected" in second.stdout
    assert patient_count(app) == 25
    assert len(set(stored_keys(app))) == 25
    with app.app_context():
        assert db.session.scalar(select(func.count(HashScheme.id))) == 1


def test_changed_exposed_fields_are_updated(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(6)
    assert import_file(runner, write_rows(tmp_path / "v1.csv", rows)).exit_code == 0
    before = verified(app, rows[2])
    changed = [dict(r) for r in rows]
    changed[2]["exposed_fields"] = "name;clinical_data;health_insurance"
    changed[4]["exposed_fields"] = (
        changed[4]["exposed_fields"] + ";email" if "email" not in changed[4]["exposed_fields"] else "name"
    )
    result = import_file(runner, write_rows(tmp_path / "v2.csv", changed))
    assert result.exit_code == 0, result.output
    assert "6 rows read, 0 added, 2 updated, 4 already up to date, 0 rejected" in result.stdout
    after = verified(app, rows[2])
    assert after is not None and before is not None
    assert after.id == before.id and after.lookup_digest == before.lookup_digest
    assert after.exposed_fields == exposure.parse_exposed_fields("name;health_insurance;clinical_data")
    assert verified(app, rows[4]).exposed_fields == exposure.parse_exposed_fields(changed[4]["exposed_fields"])
    assert patient_count(app) == 6


def test_rehash_applies_a_corrected_identity(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(6)
    assert import_file(runner, write_rows(tmp_path / "v1.csv", rows)).exit_code == 0
    corrected = [dict(r) for r in rows]
    corrected[1]["last_name"] = corrected[1]["last_name"] + "-Smith"  # the vendor fixed a misspelling
    plain = import_file(runner, write_rows(tmp_path / "v2.csv", corrected))
    assert "0 updated, 6 already up to date" in plain.stdout
    assert verified(app, corrected[1]) is None, "a plain re-run does not hash stored records again"
    result = import_file(runner, write_rows(tmp_path / "v2.csv", corrected), "--rehash")
    assert result.exit_code == 0, result.output
    assert "6 rows read, 0 added, 6 updated, 0 already up to date, 0 rejected" in result.stdout
    assert verified(app, corrected[1]) is not None and verified(app, rows[1]) is None
    assert all_verify(app, corrected[:1] + corrected[2:])
    assert patient_count(app) == 6


def test_a_file_with_a_byte_order_mark_imports(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(3)
    path = write_rows(tmp_path / "bom.csv", rows, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    result = import_file(runner, path)
    assert result.exit_code == 0, result.output
    assert patient_count(app) == 3 and all_verify(app, rows)


def test_a_header_only_file_imports_nothing_cleanly(app: Flask, runner: Any, tmp_path: Path) -> None:
    result = import_file(runner, write_rows(tmp_path / "empty.csv", []))
    assert result.exit_code == 0, result.output
    assert "0 rows read, 0 added" in result.stdout
    assert patient_count(app) == 0


# --- invalid rows --------------------------------------------------------------------------------


def raw(**overrides: str) -> list[str]:
    row = patient_row(**{"record_id": "R-BAD", **overrides})
    return [row[name] for name in PATIENT_COLUMNS]


INVALID_ROWS = {
    # kind: (the bad line's values, what the reason says, the value it must not repeat)
    "too_many_columns": ([*raw(), "extra"], "wrong number of columns", None),
    "too_few_columns": (raw()[:-2], "wrong number of columns", None),
    "empty_record_id": (raw(record_id=""), "record_id is empty", None),
    "bad_record_id": (raw(record_id="R 1;DROP"), "record_id must be", "R 1;DROP"),
    "missing_last_name": (raw(last_name="  "), "last_name is empty", None),
    "punctuation_last_name": (raw(last_name="'-'"), "last name has no letters", None),
    "bad_dob": (raw(date_of_birth="1980-02-30"), "date of birth is not a real date", "1980-02-30"),
    "us_dob": (raw(date_of_birth="04/23/1980"), "date of birth must be written YYYY-MM-DD", "04/23/1980"),
    "future_dob": (raw(date_of_birth=(date.today() + timedelta(days=1)).isoformat()), "out of range", None),
    "bad_ssn": (raw(ssn="123-45-678"), "SSN must be 9 digits", "12345678"),
    "zero_group_ssn": (raw(ssn="987-00-6543"), "all-zero group", "987-00-6543"),
    "bad_zip": (raw(zip="1000"), "ZIP code must be 5 digits", None),
    "letters_zip": (raw(zip="ABCDE"), "ZIP code must be 5 digits", "ABCDE"),
    "bad_state": (raw(state="XX"), "state is not a two-letter", None),
    "bad_phone": (raw(phone="555-0123"), "phone is not a 10-digit US number", "555-0123"),
    "bad_phone_digits": (raw(phone="(112) 555-0123"), "phone is not a 10-digit US number", "1125550123"),
    "unknown_exposed_field": (raw(exposed_fields="name;passport"), "unknown exposed field", None),
    "empty_exposed_fields": (raw(exposed_fields=""), "exposed_fields is empty", None),
    "only_separators_exposed_fields": (raw(exposed_fields=" ; ;"), "exposed_fields is empty", None),
    "overlong_street": (raw(street="1 " + "Long " * 60 + "St"), "street is longer than 200 characters", "Long Long"),
}


def test_each_kind_of_invalid_row_is_rejected_alone(app: Flask, runner: Any, tmp_path: Path) -> None:
    """Every kind of bad row, each between two good ones: each named by line and reason, none stored."""
    good = people(len(INVALID_ROWS) + 1, seed=3)
    rows: list[Any] = [good[0]]
    expected: dict[int, str] = {}  # line -> kind
    for n, (kind, (bad, _, _)) in enumerate(INVALID_ROWS.items(), start=1):
        if bad[0] == "R-BAD":
            bad = [f"R-BAD-{n}", *bad[1:]]
        rows.append(bad)
        expected[len(rows) + 1] = kind  # the header is line 1
        rows.append(good[n])
    result = import_file(runner, write_rows(tmp_path / "list.csv", rows))
    assert result.exit_code == 1, result.output
    reasons = rejections(result.stderr)
    assert sorted(reasons) == sorted(expected)
    for line, kind in expected.items():
        _, reason, secret = INVALID_ROWS[kind]
        assert reason in reasons[line], (kind, reasons[line])
        if secret:
            assert secret not in result.output, kind
    total = len(rows)
    assert f"{total} rows read, {len(good)} added, 0 updated, 0 already up to date, {len(expected)} rejected" in (
        result.stdout
    )
    assert patient_count(app) == len(good)
    assert sorted(stored_keys(app)) == sorted(record_key(app, r["record_id"]) for r in good)
    assert all_verify(app, good)
    assert verified(app, patient_row()) is None, "no bad row was half-imported"
    assert_no_identifiers(result.output, [*good, patient_row()])


def test_duplicate_record_id_keeps_the_first_row(app: Flask, runner: Any, tmp_path: Path) -> None:
    first = patient_row(record_id="R-7")
    second = patient_row(
        record_id="R-7", last_name="Okafor", first_name="Ngozi", date_of_birth="1977-07-17", ssn="456-78-9012"
    )
    filler = people(1, seed=5)[0]
    result = import_file(runner, write_rows(tmp_path / "dup.csv", [first, filler, second]))
    assert result.exit_code == 1, result.output
    assert rejections(result.stderr) == {4: "record_id repeats an earlier row of this file"}
    assert patient_count(app) == 2
    found = verified(app, first)
    assert found is not None and found.record_key == record_key(app, "R-7")
    assert verified(app, second) is None, "the rejected row must not be half-imported"
    assert_no_identifiers(result.output, [first, second, filler])


def test_duplicate_identity_under_another_record_id_is_rejected(app: Flask, runner: Any, tmp_path: Path) -> None:
    first = patient_row(record_id="R-1")
    # The same person (same last name, birth date, ZIP and SSN) spelled differently, under another id.
    twin = patient_row(
        record_id="R-2",
        first_name="M.",
        last_name="GARCIA lopez",
        zip="10001-4321",
        ssn="123456789",
        exposed_fields="name",
    )
    filler = people(1, seed=5)[0]
    result = import_file(runner, write_rows(tmp_path / "twin.csv", [first, filler, twin]))
    assert result.exit_code == 1, result.output
    reasons = rejections(result.stderr)
    assert list(reasons) == [4] and "identity duplicates another record" in reasons[4]
    assert patient_count(app) == 2
    assert record_key(app, "R-2") not in stored_keys(app)
    assert verified(app, first).exposed_fields == exposure.parse_exposed_fields(first["exposed_fields"])
    # The same identity arriving in a later run is rejected too, and the first record is untouched.
    again = import_file(runner, write_rows(tmp_path / "twin2.csv", [twin]))
    assert again.exit_code == 1
    assert "identity duplicates another record" in rejections(again.stderr)[2]
    assert patient_count(app) == 2
    assert_no_identifiers(result.output + again.output, [first, twin])


def test_rejections_across_batches_keep_their_line_numbers(app: Flask, runner: Any, tmp_path: Path) -> None:
    """410 rows (three batches of 200) with bad rows at the start, around a batch boundary and at the end."""
    rows: list[Any] = people(410, seed=21)
    bad_lines = {2: raw(ssn="000-11-2222"), 202: raw(record_id="x y"), 203: raw(zip="123"), 411: raw()[:5]}
    for line, values in bad_lines.items():
        rows[line - 2] = values
    good = [r for r in rows if isinstance(r, dict)]
    result = import_file(runner, write_rows(tmp_path / "big.csv", rows))
    assert result.exit_code == 1
    assert set(rejections(result.stderr)) == set(bad_lines)
    assert f"410 rows read, {len(good)} added, 0 updated, 0 already up to date, 4 rejected" in result.stdout
    assert patient_count(app) == len(good)
    assert sorted(stored_keys(app)) == sorted(record_key(app, r["record_id"]) for r in good)


# --- unusable files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        [c for c in PATIENT_COLUMNS if c != "phone"],
        [*PATIENT_COLUMNS, "email"],
        ["record_id", "name", "dob"],
    ],
    ids=["missing_column", "unexpected_column", "wrong_columns"],
)
def test_a_bad_header_stops_before_any_row(app: Flask, runner: Any, tmp_path: Path, header: list[str]) -> None:
    rows = people(3)
    values = [[r.get(c, "x@example.com") for c in header] for r in rows]
    result = import_file(runner, write_rows(tmp_path / "header.csv", values, header=header))
    assert result.exit_code == 2, result.output
    assert "header must be" in result.stderr and "nothing more was imported" in result.stderr
    if "email" in header:
        assert f"unexpected column(s) at position {len(header)}" in result.stderr
    if "phone" not in header:
        assert re.search(r"missing: [^;]*\bphone\b", result.stderr)
    assert patient_count(app) == 0


def test_a_file_without_header_does_not_print_the_first_person(app: Flask, runner: Any, tmp_path: Path) -> None:
    """A vendor file missing its header line: the first data row becomes 'the header' and must not be echoed."""
    rows = people(3, seed=8)
    rows[0]["ssn"] = "234-56-7890"
    path = tmp_path / "noheader.csv"
    write_rows(path, rows)
    path.write_text(path.read_text(encoding="utf-8").split("\n", 1)[1], encoding="utf-8")
    result = import_file(runner, path)
    assert result.exit_code == 2, result.output
    assert "header must be" in result.stderr
    assert patient_count(app) == 0
    assert_no_identifiers(result.output, rows)
    assert rows[0]["record_id"] not in result.output


def test_a_non_utf8_file_is_refused_cleanly(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = [patient_row(last_name="Muñoz", first_name="José")]
    path = write_rows(tmp_path / "latin1.csv", rows, encoding="latin-1")
    result = import_file(runner, path)
    assert result.exit_code == 2, result.output
    assert "UnicodeDecodeError" in result.stderr and "nothing more was imported" in result.stderr
    assert patient_count(app) == 0
    assert_no_identifiers(result.output, rows)


def test_a_bad_byte_deep_in_the_file_stops_cleanly(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(120, seed=4)
    path = write_rows(tmp_path / "late.csv", rows)
    path.write_bytes(path.read_bytes() + "Zoë,Brontë\n".encode("latin-1"))
    result = import_file(runner, path)
    assert result.exit_code == 2, result.output
    assert "unreadable" in result.stderr and "nothing more was imported" in result.stderr
    assert_no_identifiers(result.output, rows)


def test_a_missing_file_is_a_clear_error(app: Flask, runner: Any, tmp_path: Path) -> None:
    result = import_file(runner, tmp_path / "absent.csv")
    assert result.exit_code == 2
    assert "absent.csv: cannot open" in result.output
    assert patient_count(app) == 0


# --- dry run -------------------------------------------------------------------------------------


def test_dry_run_validates_and_writes_nothing(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows: list[Any] = people(5)
    rows.insert(2, raw(ssn="12-34"))
    result = import_file(runner, write_rows(tmp_path / "dry.csv", rows), "--dry-run")
    assert result.exit_code == 1, result.output
    assert list(rejections(result.stderr)) == [4]
    assert patient_count(app) == 0
    with app.app_context():
        assert db.session.scalar(select(func.count(HashScheme.id))) == 0, "a dry run must not create a hash scheme"
    assert "6 rows read, 5 valid, 1 rejected (dry run: nothing written)" in result.stdout
    clean = import_file(runner, write_rows(tmp_path / "clean.csv", people(5)), "--dry-run")
    assert clean.exit_code == 0 and patient_count(app) == 0


def test_dry_run_under_new_parameters_leaves_lookups_alone(
    database_url: str, runner: Any, app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rehearsal with stronger Argon2 settings must not add a scheme that every lookup then pays for."""
    rows = people(4)
    path = write_rows(tmp_path / "list.csv", rows)
    assert import_file(runner, path).exit_code == 0
    keys = {name: app.config[name] for name in ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY")}
    stronger = make_app(database_url, **keys, ARGON2_TIME_COST=2)
    result = import_file(stronger.test_cli_runner(), path, "--dry-run")
    assert result.exit_code == 0, result.output
    with stronger.app_context():
        schemes = db.session.execute(select(HashScheme.time_cost, HashScheme.active)).all()
        assert [tuple(s) for s in schemes] == [(1, True)]
    calls: list[int] = []

    def counting(message: bytes, salt: bytes, params: Any) -> bytes:
        calls.append(params.time_cost)
        return stretch(message, salt, params)

    monkeypatch.setattr("portal.identity.stretch", counting)
    assert verified(app, rows[0]) is not None
    assert calls == [1]
    with stronger.app_context():
        db.engine.dispose()


# --- letters, workers, shards --------------------------------------------------------------------


def test_letters_list_references_for_people_without_ssn(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(60, seed=2)
    rows[0]["ssn"] = ""
    rows[1]["ssn"] = "   "
    without = [r for r in rows if not r["ssn"].strip()]
    assert 2 <= len(without) < len(rows)
    letters = tmp_path / "letters.csv"
    result = import_file(
        runner, write_rows(tmp_path / "list.csv", rows), "--letters", str(letters), "--letters-for", "no-ssn"
    )
    assert result.exit_code == 0, result.output
    assert f"{len(without)} letter references written" in result.stdout
    with letters.open(newline="", encoding="utf-8") as stream:
        written = list(csv.DictReader(stream))
    assert [w["record_id"] for w in written] == [r["record_id"] for r in without]
    assert set(written[0]) == {"record_id", "reference"}
    for entry, row in zip(written, without, strict=True):
        claim = IdentityClaim.from_input(
            row["last_name"], row["date_of_birth"], row["zip"], reference=entry["reference"]
        )
        with app.app_context():
            found = find_patient(db.session, services().hasher, claim)
            assert found is not None and found.record_key == services().hasher.record_keys(row["record_id"])[0]
            typed = IdentityClaim.from_input(
                row["last_name"],
                row["date_of_birth"],
                row["zip"],
                reference=entry["reference"].replace("-", " ").lower(),
            )
            assert find_patient(db.session, services().hasher, typed) is not None
            with_ssn = IdentityClaim.from_input(row["last_name"], row["date_of_birth"], row["zip"], ssn_last4="1234")
            assert find_patient(db.session, services().hasher, with_ssn) is None
    # A re-run prints the same references: letters already mailed stay valid.
    again = tmp_path / "letters2.csv"
    assert (
        import_file(
            runner, write_rows(tmp_path / "list.csv", rows), "--letters", str(again), "--letters-for", "no-ssn"
        ).exit_code
        == 0
    )
    assert again.read_text(encoding="utf-8") == letters.read_text(encoding="utf-8")


def test_two_workers_give_the_same_result_as_one(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(300, seed=31)
    path = write_rows(tmp_path / "list.csv", rows)
    parallel = run_cli(runner, "import-patients", str(path), "--workers", "2")
    assert parallel.exit_code == 0, parallel.output
    with app.app_context():
        by_two = dict(db.session.execute(select(Patient.record_key, Patient.lookup_digest)).all())
        db.session.execute(sa.delete(LetterRecord))
        db.session.execute(sa.delete(Patient))
        db.session.commit()
    assert patient_count(app) == 0
    serial = import_file(runner, path)
    assert serial.exit_code == 0, serial.output
    with app.app_context():
        by_one = dict(db.session.execute(select(Patient.record_key, Patient.lookup_digest)).all())
    assert len(by_two) == 300
    assert by_one == by_two
    assert all_verify(app, rows[::15])


def test_shards_together_import_the_whole_file_once(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = people(120, seed=41)
    path = write_rows(tmp_path / "list.csv", rows)
    first = import_file(runner, path, "--shard", "0/2")
    assert first.exit_code == 0, first.output
    in_first = patient_count(app)
    assert 0 < in_first < 120
    assert f"{in_first} added" in first.stdout and f"{120 - in_first} left to other shards" in first.stdout
    keys_first = set(stored_keys(app))
    second = import_file(runner, path, "--shard", "1/2")
    assert second.exit_code == 0, second.output
    assert f"{120 - in_first} added, 0 updated, 0 already up to date" in second.stdout
    keys_all = stored_keys(app)
    assert len(keys_all) == len(set(keys_all)) == 120
    assert set(keys_all) == {record_key(app, r["record_id"]) for r in rows}
    assert keys_first < set(keys_all)
    assert all_verify(app, rows[::10])


def test_shards_between_them_report_each_bad_row_once(app: Flask, runner: Any, tmp_path: Path) -> None:
    """A shard parses only its own rows (the split is made on the raw record_id): a bad row is
    reported by the one shard it falls to, and no shard spends time validating the others' rows."""
    rows: list[Any] = people(40, seed=43)
    bad = {line: raw(record_id=f"R-B{line}", zip="123") for line in range(3, 41, 3)}
    for line, values in bad.items():
        rows[line - 2] = values
    path = write_rows(tmp_path / "list.csv", rows)
    reported: list[int] = []
    for shard in ("0/2", "1/2"):
        result = import_file(runner, path, "--shard", shard)
        reported += rejections(result.stderr)
    assert sorted(reported) == sorted(bad)
    assert patient_count(app) == 40 - len(bad)


def test_a_bad_shard_is_refused(app: Flask, runner: Any, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "list.csv", people(2))
    for shard in ("2/2", "1/0", "a/b", "1", "-1/2"):
        result = import_file(runner, path, "--shard", shard)
        assert result.exit_code == 2 and "--shard" in result.output, shard
    assert patient_count(app) == 0


# --- a concurrent importer -----------------------------------------------------------------------


def test_identity_stored_concurrently_is_counted_once(app: Flask) -> None:
    """Another importer stores one of this batch's identities between our check and our insert.

    The batch falls back to row-by-row writes: the report must count each row once and report
    the clash once, and every other row must still be stored.
    """
    rows = people(5, seed=51)
    victim = rows[2]
    claim = IdentityClaim.from_input(
        victim["last_name"], victim["date_of_birth"], victim["zip"], ssn_last4=victim["ssn"].replace("-", "")[-4:]
    )
    rejected: list[tuple[int, str]] = []
    with app.app_context():
        session = db.session
        hasher = services().hasher
        fired: list[bool] = []

        def other_importer(flushing: Any, *_: Any) -> None:
            if fired or not any(isinstance(obj, Patient) for obj in flushing.new):
                return
            fired.append(True)
            with db.engine.begin() as other:
                scheme = other.execute(select(HashScheme).where(HashScheme.active)).one()
                digest = hasher.lookup_digest(claim, scheme)
                other.execute(
                    sa.insert(Patient).values(
                        record_key=b"\x01" * 32, scheme_id=scheme.id, lookup_digest=digest, exposed_fields=1
                    )
                )

        event.listen(session, "before_flush", other_importer)
        try:
            report = PatientImporter(session, hasher, on_reject=lambda line, why: rejected.append((line, why))).run(
                numbered(rows)
            )
        finally:
            event.remove(session, "before_flush", other_importer)
    assert fired
    assert [line for line, _ in rejected] == [4]
    assert "identity duplicates another record" in rejected[0][1]
    assert (report.added, report.rejected, report.updated) == (4, 1, 0)
    assert patient_count(app) == 5
    assert record_key(app, victim["record_id"]) not in stored_keys(app)


# --- a crash part-way ----------------------------------------------------------------------------


def subprocess_env(config: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        {
            f"PORTAL_{name}": str(config[name])
            for name in ("ENV", "DATABASE_URL", "SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY", *FAST_ARGON2)
        }
    )
    return env


def test_a_killed_import_resumes_without_duplicates(database_url: str, tmp_path: Path) -> None:
    total = 1000
    rows = people(total, seed=61)
    path = write_rows(tmp_path / "list.csv", rows)
    # The same keys and parameters as the command below, to verify afterwards; the command migrates.
    app = create_app(make_config(database_url))
    env = subprocess_env(app.config)
    upgrade = subprocess.run(
        [str(PORTAL_BIN), "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert upgrade.returncode == 0, upgrade.stderr
    command = [str(PORTAL_BIN), "import-patients", str(path), "--workers", "1"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            seen = patient_count(app)
            if 0 < seen < total:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the import finished before it could be interrupted"
    assert 0 < patient_count(app) < total
    resumed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert f"{total:,} rows read" in resumed.stdout and "0 rejected" in resumed.stdout
    keys = stored_keys(app)
    assert len(keys) == len(set(keys)) == total
    assert set(keys) == {record_key(app, r["record_id"]) for r in rows}
    # Every person verifies: the stored digests are exactly those of the file's people, one each
    # (what find_patient compares against), and a sample is also looked up end to end.
    with app.app_context():
        hasher = services().hasher
        (scheme,) = db.session.scalars(select(HashScheme).where(HashScheme.active)).all()
        expected = {hasher.lookup_digest(typed_claim(app, row), scheme) for row in rows}
        assert set(db.session.scalars(select(Patient.lookup_digest))) == expected
    assert all_verify(app, rows[::25])
    with app.app_context():
        db.engine.dispose()


# --- activation codes ----------------------------------------------------------------------------


def codes(count: int, seed: int = 1) -> list[dict[str, str]]:
    return list(synthetic.synthetic_codes(count, seed=seed))


def pool(app: Flask) -> list[tuple[str, str, date]]:
    with app.app_context():
        cipher = services().cipher
        rows = db.session.scalars(select(ActivationCode).order_by(ActivationCode.id)).all()
        for row in rows:
            assert row.patient_id is None
        return [(cipher.open(r), r.product, r.enroll_by) for r in rows]


def test_codes_import_sealed_and_reruns_change_nothing(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = codes(30)
    path = write_rows(tmp_path / "codes.csv", rows, header=synthetic.CODE_HEADER)
    result = run_cli(runner, "import-codes", str(path))
    assert result.exit_code == 0, result.output
    assert "30 rows read, 30 added" in result.stdout and "pool: 30 codes, 0 claimed, 30 available" in result.stdout
    assert sorted(pool(app)) == sorted((r["code"], r["product"], date.fromisoformat(r["enroll_by"])) for r in rows)
    with app.app_context():
        for ciphertext, digest in db.session.execute(select(ActivationCode.ciphertext, ActivationCode.code_digest)):
            for row in rows:
                assert row["code"].encode() not in ciphertext and row["code"].encode() not in digest
    assert_no_identifiers(result.output, [{"ssn": r["code"]} for r in rows])
    again = run_cli(runner, "import-codes", str(path))
    assert again.exit_code == 0
    assert "30 rows read, 0 added, 0 updated, 30 already up to date, 0 rejected" in again.stdout
    assert len(pool(app)) == 30


def test_codes_without_product_column_get_the_default(app: Flask, runner: Any, tmp_path: Path) -> None:
    rows = codes(3)
    result = run_cli(runner, "import-codes", str(write_rows(tmp_path / "codes.csv", rows, header=CODE_COLUMNS)))
    assert result.exit_code == 0, result.output
    assert {product for _, product, _ in pool(app)} == {DEFAULT_PRODUCT}


def test_bad_code_rows_are_rejected_with_line_numbers(app: Flask, runner: Any, tmp_path: Path) -> None:
    good = codes(4, seed=9)
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    lines: list[Any] = [
        good[0],                                                       # 2
        {**good[1]},                                                   # 3
        {**good[0], "product": "Another product"},                     # 4 duplicate code
        {"code": "AB", "enroll_by": "2030-01-01", "product": ""},      # 5 too short
        {"code": "BAD CODE!", "enroll_by": "2030-01-01", "product": ""},  # 6 bad characters
        {**good[2], "enroll_by": "2030-13-01"},                        # 7 bad date
        {**good[2], "enroll_by": "06/30/2030"},                        # 8 bad date format
        {**good[2], "enroll_by": yesterday},                           # 9 past
        {**good[2], "product": "P" * 81},                              # 10 product too long
        [good[2]["code"], "2030-01-01"],                               # 11 product cell missing: default
        [good[3]["code"], "2030-01-01", "x", "extra"],                 # 12 too many columns
        {**good[3], "enroll_by": ""},                                  # 13 empty date
    ]  # fmt: skip
    path = write_rows(tmp_path / "codes.csv", lines, header=synthetic.CODE_HEADER)
    result = run_cli(runner, "import-codes", str(path))
    assert result.exit_code == 1, result.output
    reasons = rejections(result.stderr)
    assert set(reasons) == {4, 5, 6, 7, 8, 9, 10, 12, 13}
    assert reasons[4] == "code repeats an earlier row of this file"
    assert "4 to 64 letters" in reasons[5] and "4 to 64 letters" in reasons[6]
    assert "YYYY-MM-DD" in reasons[7] and "YYYY-MM-DD" in reasons[8]
    assert reasons[9] == "enroll_by is in the past"
    assert "product is longer than 80" in reasons[10]
    assert reasons[12] == "wrong number of columns"
    assert "YYYY-MM-DD" in reasons[13]
    for row in good:
        assert row["code"] not in result.output, "a code must never be printed"
    assert "BAD CODE!" not in result.output
    stored = pool(app)
    assert sorted(code for code, _, _ in stored) == sorted([good[0]["code"], good[1]["code"], good[2]["code"]])
    assert dict((c, p) for c, p, _ in stored)[good[2]["code"]] == DEFAULT_PRODUCT
    assert "3 added" in result.stdout and "9 rejected" in result.stdout


def test_codes_bad_header_and_dry_run(app: Flask, runner: Any, tmp_path: Path) -> None:
    bad = run_cli(runner, "import-codes", str(write_rows(tmp_path / "bad.csv", [["X"]], header=["voucher"])))
    assert bad.exit_code == 2 and "header must be code,enroll_by" in bad.stderr
    dry = run_cli(
        runner, "import-codes", str(write_rows(tmp_path / "c.csv", codes(5), header=synthetic.CODE_HEADER)), "--dry-run"
    )
    assert dry.exit_code == 0, dry.output
    assert "5 added" in dry.stdout
    assert pool(app) == []
