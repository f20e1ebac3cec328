"""Staff accounts of the call-center console: passwords, TOTP second factor, revocation (no HTTP here).

* Passwords: argon2-cffi's ``PasswordHasher`` (random salt; rehashed at login when its
  parameters rise). An unknown or disabled username is checked against a dummy hash, so a
  failed login does the same work whoever it names.
* TOTP (RFC 6238, 30-second steps, one step of clock drift either way): the secret is sealed
  under the code key (``portal/sealing.py``), bound to the username, and re-sealed by
  ``portal rotate-code-key``. The last accepted step is stored, so a code is accepted once
  only — a conditional UPDATE makes that hold between concurrent logins.
* ``session_version`` ends every session of a person when bumped (logout, disable, MFA reset).
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass
from functools import cache

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Update, select, update
from sqlalchemy.orm import Session

from portal.models import Staff
from portal.sealing import RESEAL_BATCH, Sealer, reseal_stale

ROLES = ("agent", "supervisor")
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
PASSWORD_MIN = 12
PASSWORD_MAX = 128
TOTP_STEP = 30
TOTP_DRIFT_STEPS = 1
ISSUER = "Patient portal console"
TOTP_PURPOSE = "staff-totp"  # the code key's subkey that seals TOTP secrets

passwords = PasswordHasher()


class StaffError(ValueError):
    """A staff command or form was given an unusable value; the message says which."""


@cache
def _dummy_hash() -> str:
    """What an unknown username's password is checked against: the same work as a real account."""
    return passwords.hash(secrets.token_urlsafe(16))


def normalise_username(text: str) -> str:
    name = text.strip().lower()
    if not USERNAME.fullmatch(name):
        raise StaffError("a username is 1 to 64 lower-case letters, digits, dots, dashes or underscores")
    return name


def check_new_password(password: str) -> None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise StaffError(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters long")


@dataclass(frozen=True)
class Enrolment:
    """What a new account's holder is given once: the initial password and the TOTP URI."""

    staff: Staff
    password: str
    otpauth_uri: str


def _new_totp(totp: Sealer, staff: Staff) -> str:
    secret = pyotp.random_base32()
    staff.totp_secret, staff.totp_key_version = totp.seal(secret, staff.username.encode())
    staff.last_totp_step = 0
    return pyotp.TOTP(secret).provisioning_uri(name=staff.username, issuer_name=ISSUER)


def _totp_secret(totp: Sealer, staff: Staff) -> str:
    return totp.open(staff.totp_secret, staff.totp_key_version, staff.username.encode())


def create_staff(session: Session, totp: Sealer, username: str, role: str) -> Enrolment:
    name = normalise_username(username)
    if role not in ROLES:
        raise StaffError(f"role must be one of {', '.join(ROLES)}")
    if session.scalar(select(Staff.id).where(Staff.username == name)) is not None:
        raise StaffError("that username is taken")
    password = secrets.token_urlsafe(12)
    staff = Staff(username=name, role=role, password_hash=passwords.hash(password), must_change_password=True)
    uri = _new_totp(totp, staff)
    session.add(staff)
    session.commit()
    return Enrolment(staff, password, uri)


def find_staff(session: Session, username: str) -> Staff:
    staff = session.scalar(select(Staff).where(Staff.username == normalise_username(username)))
    if staff is None:
        raise StaffError("no such staff member")
    return staff


def end_sessions(session: Session, staff: Staff) -> None:
    """Every signed session cookie of this person stops working at its next request."""
    session.execute(update(Staff).where(Staff.id == staff.id).values(session_version=Staff.session_version + 1))
    session.commit()
    session.refresh(staff)


def disable_staff(session: Session, staff: Staff) -> None:
    staff.disabled = True
    end_sessions(session, staff)


def reset_mfa(session: Session, totp: Sealer, staff: Staff) -> tuple[str, str]:
    """A new TOTP secret (the old authenticator stops working) and a new password to change at login.

    Returns the password and the otpauth URI; every session of the account ends."""
    password = secrets.token_urlsafe(12)
    staff.password_hash = passwords.hash(password)
    staff.must_change_password = True
    uri = _new_totp(totp, staff)
    end_sessions(session, staff)
    return password, uri


def set_password(session: Session, staff: Staff, password: str) -> None:
    check_new_password(password)
    staff.password_hash = passwords.hash(password)
    staff.must_change_password = False
    session.commit()


def _password_matches(stored: str, password: str) -> bool:
    try:
        return passwords.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step ``code`` is valid for (within the drift), compared in constant time."""
    if not (code.isascii() and code.isdigit()):  # compare_digest takes ASCII text only
        return None
    totp = pyotp.TOTP(secret)
    current = int(now) // TOTP_STEP
    matched = None
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP), code):
            matched = step
    return matched


def authenticate(
    session: Session, totp: Sealer, username: str, password: str, code: str, now: float | None = None
) -> Staff | None:
    """The staff member when all three factors hold; None for every kind of failure alike."""
    try:
        name = normalise_username(username)
    except StaffError:
        name = None
    staff = session.scalar(select(Staff).where(Staff.username == name)) if name else None
    usable = staff is not None and not staff.disabled
    stored = staff.password_hash if usable and staff else _dummy_hash()
    password_ok = _password_matches(stored, password)
    if not (usable and password_ok and staff):
        return None
    step = _totp_step(_totp_secret(totp, staff), code, time.time() if now is None else now)
    if step is None:
        return None
    # Conditional: of two logins with the same code, or a replay within its window, one wins.
    accepted = session.execute(
        update(Staff).where(Staff.id == staff.id, Staff.last_totp_step < step).values(last_totp_step=step)
    ).rowcount
    if not accepted:
        session.rollback()
        return None
    if passwords.check_needs_rehash(staff.password_hash):
        staff.password_hash = passwords.hash(password)
    session.commit()
    session.refresh(staff)
    return staff


def list_staff(session: Session) -> list[Staff]:
    return list(session.scalars(select(Staff).order_by(Staff.username)))


def reseal_totp_secrets(session: Session, totp: Sealer, batch_size: int = RESEAL_BATCH) -> int:
    """Re-seal every TOTP secret still under an older code-key version with the current one; return how many."""

    def reseal(staff: Staff) -> Update:
        sealed, version = totp.seal(_totp_secret(totp, staff), staff.username.encode())
        return (
            update(Staff)
            .where(Staff.id == staff.id, Staff.totp_secret == staff.totp_secret)
            .values(totp_secret=sealed, totp_key_version=version)
        )

    stale = select(Staff).where(Staff.totp_key_version != totp.keyring.current_version).order_by(Staff.id)
    return reseal_stale(session, stale, reseal, batch_size)
