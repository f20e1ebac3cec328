"""The published contract holds: schemathesis fuzzes a live gunicorn from its own OpenAPI document,
with a real key, and fails on any 5xx or any answer the document does not describe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import create_api_key, import_patients, make_app, make_config, numbered, patient_row
from live import LiveServer

from portal.api import openapi
from portal.extensions import db
from portal.importer import import_codes
from portal.services import services

# Every check but positive_data_acceptance: a document cannot say which dates are real or which
# ZIP codes exist, so schema-valid bodies are rightly refused with 422 (the document lists it).
EXCLUDED_CHECKS = "positive_data_acceptance"
EXAMPLES = os.environ.get("PORTAL_CONTRACT_EXAMPLES", "60")


def test_the_live_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    config = make_config(f"sqlite:///{tmp_path / 'portal.sqlite3'}")
    app = make_app(config["DATABASE_URL"], **config)
    # The document's example person exists here, so its examples and links reach every success answer.
    person = openapi.EXAMPLE_PERSON
    row = patient_row(last_name=person["last_name"], date_of_birth=person["date_of_birth"], zip=person["zip_code"])
    assert import_patients(app, [{**row, "ssn": f"123-45-{person['ssn_last4']}"}]) == []
    with app.app_context():
        rows = [{"code": f"IDP-CONTRACT-{n:03d}", "enroll_by": "2030-01-01"} for n in range(5)]
        import_codes(db.session, services().cipher, numbered(rows), on_reject=lambda *_: None)
    key = create_api_key(app, rate="100000/minute")
    server = LiveServer(tmp_path / "gunicorn.log", config).wait_ready()
    try:
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
                "--header", f"Authorization: Bearer {key}",
                "--exclude-checks", EXCLUDED_CHECKS,
                "--max-examples", EXAMPLES, "--seed", "13", "--workers", "2", "--max-time", os.environ.get("PORTAL_CONTRACT_SECONDS", "50"),
                "--request-timeout", "20", "--suppress-health-check", "all", "--no-color",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.stop()
    report: Any = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
