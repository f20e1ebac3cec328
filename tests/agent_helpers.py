"""Helpers for the console tests: staff accounts, TOTP codes and signed-in clients."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pyotp
from conftest import csrf_token
from flask import Flask
from flask.testing import FlaskClient

from portal.extensions import db
from portal.models import Staff
from portal.services import services
from portal.staff import create_staff, set_password

NEW_PASSWORD = "correct horse battery staple"


@dataclass
class Account:
    username: str
    password: str
    secret: str
    id: int

    def code(self, steps_ahead: int = 0) -> str:
        """A TOTP code; each login needs a later step than the last (codes are single-use)."""
        return pyotp.TOTP(self.secret).at(time.time() + 30 * steps_ahead)


def make_staff(app: Flask, username: str = "alice", role: str = "agent", ready: bool = True) -> Account:
    """An account; ``ready`` sets a chosen password so no first-login change is pending."""
    with app.app_context():
        enrolment = create_staff(db.session, services().totp, username, role)
        secret = re.search(r"secret=([A-Z2-7]+)", enrolment.otpauth_uri)
        assert secret
        password = enrolment.password
        if ready:
            set_password(db.session, db.session.get(Staff, enrolment.staff.id), NEW_PASSWORD)
            password = NEW_PASSWORD
        return Account(enrolment.staff.username, password, secret.group(1), enrolment.staff.id)


def login(client: FlaskClient, account: Account, steps_ahead: int = 0, **override: str):  # type: ignore[no-untyped-def]
    data = {"username": account.username, "password": account.password, "code": account.code(steps_ahead)}
    data.update(override)
    data["csrf_token"] = csrf_token(client, "/agent/login")
    return client.post("/agent/login", data=data)


def signed_in(app: Flask, account: Account, steps_ahead: int = 0) -> FlaskClient:
    client = app.test_client()
    response = login(client, account, steps_ahead)
    assert response.status_code == 303 and response.headers["Location"] == "/agent/", response.get_data(True)
    return client


def post_form(client: FlaskClient, path: str, page: str, **data: str):  # type: ignore[no-untyped-def]
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page)})
