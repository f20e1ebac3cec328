"""`portal import-patients`: progress (percent, time left) on stderr when asked, a JSON summary for machines."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask

from portal import synthetic


def write_patients(path: Path, count: int, bad: bool = False) -> Path:
    rows = list(synthetic.synthetic_patients(count, seed=3))
    if bad:
        rows.append({**rows[0], "record_id": "SYN-BAD", "zip": "1"})
    synthetic.write_csv(str(path), synthetic.PATIENT_HEADER, iter(rows))
    return path


def test_progress_and_json_summary(app: Flask, tmp_path: Path) -> None:
    path = write_patients(tmp_path / "patients.csv", 60, bad=True)
    result = app.test_cli_runner().invoke(args=["import-patients", str(path), "--workers", "1", "--progress", "--json"])
    assert result.exit_code == 1, result.output  # one row rejected
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["read"], summary["added"], summary["rejected"]) == (61, 60, 1)
    assert summary["seconds"] >= 0
    # Percent of the file's rows, the count, and the time spent < time left.
    assert "100%" in result.stderr and "61.0/61.0" in result.stderr and "[00:00<00:00" in result.stderr
    assert "line 62: rejected: ZIP code must be 5 digits" in result.stderr
    assert "rows read" not in result.stdout  # the sentence gives way to the JSON


def test_no_progress_off_a_terminal_and_a_sentence_by_default(app: Flask, tmp_path: Path) -> None:
    path = write_patients(tmp_path / "patients.csv", 5)
    result = app.test_cli_runner().invoke(args=["import-patients", str(path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "%" not in result.stderr
    assert "5 rows read, 5 added" in result.stdout


def test_an_unusable_file_ends_with_a_json_error(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("name,date\nx,y\n", encoding="utf-8")
    result = app.test_cli_runner().invoke(args=["import-patients", str(path), "--json"])
    assert result.exit_code == 2
    assert "error" in json.loads(result.stdout)
