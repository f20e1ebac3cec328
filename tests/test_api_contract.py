"""The published contract holds: schemathesis fuzzes a live gunicorn from its own OpenAPI document,
with a real key, and fails on any 5xx, any answer the document does not describe, any request the
document calls invalid that is answered, and any it calls valid that is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import create_api_key, import_patients, make_app, make_config, numbered
from live import LiveServer

from portal.extensions import db
from portal.importer import import_codes
from portal.sandbox import SANDBOX_PEOPLE
from portal.services import services

EXAMPLES = os.environ.get("PORTAL_CONTRACT_EXAMPLES", "60")
TESTS = Path(__file__).resolve().parent
# Every check, positive data included: the schemas say exactly which requests are valid (the birth
# date's pattern names the real dates up to today). One refusal no schema can express: whether a
# claim_token is live. A claim of a drawn token is a 422, and only there is a 422 allowed.
CONFIG = """
[[operations]]
include-name = "POST /claims"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


def test_the_live_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    config = make_config(f"sqlite:///{tmp_path / 'portal.sqlite3'}")
    app = make_app(config["DATABASE_URL"], **config)
    # The document's examples are the sandbox's people: they exist here, so examples and links reach every success.
    assert import_patients(app, list(SANDBOX_PEOPLE)) == []
    with app.app_context():
        rows = [{"code": f"IDP-CONTRACT-{n:03d}", "enroll_by": "2030-01-01"} for n in range(5)]
        import_codes(db.session, services().cipher, numbered(rows), on_reject=lambda *_: None)
    key = create_api_key(app, rate="100000/minute")
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    hooks = {"SCHEMATHESIS_HOOKS": "contract_hooks", "PYTHONPATH": str(TESTS)}
    server = LiveServer(tmp_path / "gunicorn.log", config).wait_ready()
    try:
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
                "--header", f"Authorization: Bearer {key}", "--checks", "all",
                "--max-examples", EXAMPLES, "--seed", "13", "--workers", "2", "--max-time", os.environ.get("PORTAL_CONTRACT_SECONDS", "50"),
                "--request-timeout", "20", "--suppress-health-check", "all", "--no-color",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, **hooks},
        )  # fmt: skip
    finally:
        server.stop()
    report: Any = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
