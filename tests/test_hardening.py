"""Production cookie and host settings, as a deployment gets them from PORTAL_* variables."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from conftest import write_programme
from flask import Flask

from portal import create_app, schema
from portal.extensions import db


@pytest.fixture
def production_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    programme = write_programme(tmp_path)
    environment = {
        "PORTAL_ENV": "production",
        "PORTAL_DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        "PORTAL_SECRET_KEY": secrets.token_urlsafe(32),
        "PORTAL_IDENTIFIER_KEY": secrets.token_urlsafe(32),
        "PORTAL_CODE_KEY": secrets.token_urlsafe(32),
        "PORTAL_AUDIT_KEY": secrets.token_urlsafe(32),
        "PORTAL_PROGRAMME_FILE": str(programme),
        "PORTAL_TRUSTED_HOSTS": '["notice.example.org"]',
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = create_app()
    with app.app_context():
        schema.upgrade(db.engine)
    return app


def test_session_cookie_is_host_only_secure_httponly_lax(production_app: Flask) -> None:
    client = production_app.test_client()
    response = client.get("/lookup", base_url="https://notice.example.org")
    cookie = response.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith("__Host-portal=")
    assert {"secure", "httponly", "path"} <= attributes and "domain" not in attributes
    assert "SameSite=Lax" in cookie and "Path=/" in cookie
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert "Example Health Records" in client.get("/", base_url="https://notice.example.org").get_data(as_text=True)


def test_unknown_host_names_are_refused(production_app: Flask) -> None:
    client = production_app.test_client()
    assert client.get("/", base_url="https://notice.example.org").status_code == 200
    refused = client.get("/", base_url="https://phishing.example.net")
    assert refused.status_code == 400
    assert "Traceback" not in refused.get_data(as_text=True)
