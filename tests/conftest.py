"""Fixtures: a real database per test (SQLite file, or a fresh PostgreSQL schema), the app, clients.

PostgreSQL, Redis and browser tests run when PORTAL_TEST_POSTGRES_URL / PORTAL_TEST_REDIS_URL /
PORTAL_TEST_BROWSER are set (`.ci/run` sets all three). Without them those tests are deselected — reported in the header, never
counted as passed — and a configured but unreachable server fails the run instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from launch import private_schema

from portal import schema, synthetic
from portal.app import create_app
from portal.extensions import db
from portal.importer import PatientImporter
from portal.services import services

pytest_plugins = ("browser",)  # the live server, Chromium and page-audit fixtures (tests/browser.py)

POSTGRES_URL = os.environ.get("PORTAL_TEST_POSTGRES_URL", "")
REDIS_URL = os.environ.get("PORTAL_TEST_REDIS_URL", "")
# End-to-end tests through nginx (tests/test_stack.py); `.ci/run` installs nginx and sets it.
NGINX = bool(os.environ.get("PORTAL_TEST_NGINX"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") is not None
BROWSER = os.environ.get("PORTAL_TEST_BROWSER", "")

# Cheap Argon2id for speed; test_identity checks the production defaults separately.
FAST_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}
# Generous failure limits so that tests of other behaviour are not throttled; test_throttle sets real ones.
LOOSE_LIMITS = {
    name: "10000 per minute"
    for name in (
        "VERIFY_LIMIT_PERSON",
        "VERIFY_LIMIT_PERSON_SHARED",
        "VERIFY_LIMIT_CLIENT",
        "VERIFY_LIMIT_CLIENT_PEOPLE",
        "VERIFY_LIMIT_CLIENT_ATTEMPTS",
        "VERIFY_LIMIT_GLOBAL",
        "API_VERIFY_LIMIT_PERSON",
        "API_VERIFY_LIMIT_KEY",
        "API_VERIFY_LIMIT_CLIENT",
        "API_VERIFY_LIMIT_KEY_PEOPLE",
    )
}

# Every connection of a test database gives up on a row lock after 5 s and on a statement after 60 s:
# a locking defect (a claim that waits on a lock instead of skipping it) fails the test with an
# error instead of hanging the run. No test waits on a lock on purpose; SQLite's busy timeout
# (portal.config.engine_options) bounds the same wait there. pytest-timeout (setup.cfg) is the
# last resort for anything else that hangs.
LOCK_TIMEOUTS = "-clock_timeout=5s -cstatement_timeout=60s"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"PostgreSQL tests: {'on ' + _redacted(POSTGRES_URL) if POSTGRES_URL else 'NOT RUN (set PORTAL_TEST_POSTGRES_URL)'}",
        f"Redis tests: {'on ' + REDIS_URL if REDIS_URL else 'NOT RUN (set PORTAL_TEST_REDIS_URL)'}",
        f"nginx end-to-end tests: {'on' if NGINX else 'NOT RUN (set PORTAL_TEST_NGINX)'}",
        f"systemd unit check: {'on' if SYSTEMD_ANALYZE else 'NOT RUN (no systemd-analyze)'}",
        f"Browser tests: {'with ' + BROWSER if BROWSER else 'NOT RUN (set PORTAL_TEST_BROWSER to a Chromium)'}",
    ]


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the tests whose server is not configured, and say how many."""
    wanted = {
        "postgres": bool(POSTGRES_URL),
        "redis": bool(REDIS_URL),
        "nginx": NGINX,
        "systemd": SYSTEMD_ANALYZE,
        "browser": bool(BROWSER),
    }
    keep, drop = [], []
    for item in items:
        (keep if all(wanted[m] for m in wanted if item.get_closest_marker(m)) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'portal.sqlite3'}"
        return
    yield from postgres_schema_url()


def postgres_schema_url() -> Iterator[str]:
    """A private schema on the test PostgreSQL, dropped afterwards, so tests never see each other."""
    with private_schema(POSTGRES_URL, f"t_{secrets.token_hex(6)}", LOCK_TIMEOUTS) as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema, for a test about PostgreSQL alone (mark it ``postgres``)."""
    yield from postgres_schema_url()


PROGRAMME_TOML = """
[programme]
organisation = "Example Health Records, Inc."
incident_summary = "A copy of a registration database was taken."
incident_discovered = 2026-09-16
notice_date = 2026-11-23
call_center_phone = "1-800-555-0100"
call_center_hours = "Monday to Friday 9 to 5"
provider_name = "Example Protection"
enrolment_url = "https://enroll.example.com/"
enrol_by = 2027-06-30
"""


def write_programme(folder: Path) -> Path:
    """A programme file, as production requires one."""
    path = folder / "programme.toml"
    path.write_text(PROGRAMME_TOML, encoding="utf-8")
    return path


def production_variables(folder: Path, **settings: str) -> dict[str, str]:
    """The PORTAL_* variables of a complete production deployment on SQLite, as a server gets them
    from its environment file; ``settings`` (names without the prefix) add or replace some."""
    variables = {
        "ENV": "production",
        "DATABASE_URL": f"sqlite:///{folder / 'portal.sqlite3'}",
        "SECRET_KEY": secrets.token_urlsafe(32),
        "IDENTIFIER_KEY": secrets.token_urlsafe(32),
        "CODE_KEY": secrets.token_urlsafe(32),
        "AUDIT_KEY": secrets.token_urlsafe(32),
        "PROGRAMME_FILE": str(write_programme(folder)),
        "TRUSTED_HOSTS": '["notice.example.org"]',
        **settings,
    }
    return {f"PORTAL_{name}": value for name, value in variables.items()}


def make_config(database_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "ENV": "testing",
        "TESTING": True,
        "DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "IDENTIFIER_KEY": secrets.token_urlsafe(32),
        "CODE_KEY": secrets.token_urlsafe(32),
        "AUDIT_KEY": secrets.token_urlsafe(32),
        "AGENT_VIEW": True,  # off by default; the console's tests need it
        **FAST_ARGON2,
        **LOOSE_LIMITS,
        **overrides,
    }


def make_app(database_url: str, **overrides: Any) -> Flask:
    app = create_app(make_config(database_url, **overrides))
    with app.app_context():
        schema.upgrade(db.engine)
    return app


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    app = make_app(database_url)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def pg_app() -> Iterator[Flask]:
    """An app on a fresh PostgreSQL schema, for what only PostgreSQL has: row locks that writers skip."""
    urls = postgres_schema_url()
    app = make_app(next(urls))
    yield app
    with app.app_context():
        db.engine.dispose()
    urls.close()  # drops the schema


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


def numbered(rows: list[dict[str, str]]) -> list[tuple[int, dict[str, str]]]:
    """Rows as a CSV reader yields them: the header is line 1."""
    return list(enumerate(rows, start=2))


def import_patients(app: Flask, rows: list[dict[str, str]], workers: int = 1) -> list[tuple[int, str]]:
    """Import rows in-process; return the rejections."""
    rejected: list[tuple[int, str]] = []
    with app.app_context():
        PatientImporter(
            db.session, services().hasher, workers=workers, on_reject=lambda line, why: rejected.append((line, why))
        ).run(numbered(rows))
    return rejected


def patient_row(**overrides: str) -> dict[str, str]:
    """One valid breach-list row (synthetic), with chosen columns replaced."""
    row = next(synthetic.synthetic_patients(1, seed=99))
    row.update(
        record_id="R-1",
        first_name="Maria",
        last_name="García-López",
        date_of_birth="1980-04-23",
        ssn="123-45-6789",
        zip="10001",
        exposed_fields="name;date_of_birth;ssn",
    )
    row.update(overrides)
    return row


def csrf_token(client: FlaskClient, path: str = "/lookup") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert match, "page has no CSRF token"
    return match.group(1)


def lookup(client: FlaskClient, **fields: str) -> Any:
    """Submit the public lookup form with a valid CSRF token."""
    data = {"last_name": "", "date_of_birth": "", "zip_code": "", "ssn_last4": "", "reference": ""}
    data.update(fields)
    data["csrf_token"] = csrf_token(client)
    return client.post("/lookup", data=data)


def create_api_key(app: Flask, *scopes: str, rate: str = "1000/minute", expires: str | None = None) -> str:
    """A partner key made through the CLI, as an operator makes one; returns the key."""
    args = ["create-api-key", "--partner", "Test partner", "--rate", rate]
    args += [part for scope in scopes or ("verify", "claim") for part in ("--scope", scope)]
    args += ["--expires", expires] if expires else []
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[1]


def hkdf_sha256(master: bytes, info: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256 with no salt and one 32-byte block, written out so that tests of the
    subkeys do not trust the code under test."""
    prk = hmac.new(bytes(32), master, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
