"""Staff accounts of the call-center console: passwords, TOTP second factor, revocation (no HTTP here).

* Passwords: argon2-cffi's ``PasswordHasher`` (random salt; rehashed at login when its
  parameters rise). An unknown or disabled username is checked against a dummy hash, so a
  failed login does the same work whoever it names.
* TOTP (RFC 6238, 30-second steps, one step of clock drift either way): the secret is sealed
  under the code key (``portal/sealing.py``), bound to the username, and re-sealed by
  ``portal rotate-code-key``. The last accepted step is stored, so a code is accepted once
  only — a conditional UPDATE makes that hold between concurrent logins.
* ``session_version`` ends every session of a person when bumped (logout, disable, MFA reset,
  password change).
* A new password must not be guessable: zxcvbn scores it against its 30,000 most common
  breached passwords, English words, names and keyboard patterns (offline, shipped with the
  package), and it may not be the password it replaces (the initial one included).
* One supervisor alone cannot disable, re-enable or reset another supervisor from the console: a
  second supervisor approves (``StaffApproval``), or an operator uses the command line.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Update, select, update
from sqlalchemy.orm import Session
from zxcvbn import zxcvbn

from portal.models import Staff, StaffApproval, utcnow
from portal.sealing import RESEAL_BATCH, Sealer, reseal_stale

ROLES = ("agent", "supervisor")
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
PASSWORD_MIN = 12
PASSWORD_MAX = 128
# zxcvbn's "safely unguessable" (about 10^8 guesses or more) and above; its cost grows with the
# length, so it reads the first 72 characters (its own limit), which a strong password fills anyway.
PASSWORD_MIN_SCORE = 3
PASSWORD_SCORED_LENGTH = 72
# Words a guesser would try first against this portal's staff, beside the account's own name.
PORTAL_WORDS = ("portal", "console", "patient", "agent", "supervisor", "breach", "password")
STAFF_ACTIONS = ("disable", "enable", "reset-mfa")
APPROVAL_HOURS = 24  # a request no second supervisor approved within this lapses
TOTP_STEP = 30
TOTP_DRIFT_STEPS = 1
ISSUER = "Patient portal console"
TOTP_PURPOSE = "staff-totp"  # the code key's subkey that seals TOTP secrets

passwords = PasswordHasher()


class StaffError(ValueError):
    """A staff command or form was given an unusable value; the message says which."""


class WeakPassword(StaffError):
    """A new password that is too short, too long, too easy to guess or the one it replaces."""


class WrongPassword(StaffError):
    """The current password given for a change is not the account's."""


@cache
def _dummy_hash() -> str:
    """What an unknown username's password is checked against: the same work as a real account."""
    return passwords.hash(secrets.token_urlsafe(16))


def normalise_username(text: str) -> str:
    name = text.strip().lower()
    if not USERNAME.fullmatch(name):
        raise StaffError("a username is 1 to 64 lower-case letters, digits, dots, dashes or underscores")
    return name


def check_new_password(password: str, staff: Staff) -> None:
    """Refuse a password that is short, long, guessable (zxcvbn), or the account's current one."""
    if len(password) < PASSWORD_MIN:
        raise WeakPassword(f"Use at least {PASSWORD_MIN} characters. A few unrelated words are easy to remember.")
    if len(password) > PASSWORD_MAX:
        raise WeakPassword(f"Use at most {PASSWORD_MAX} characters.")
    if staff.password_hash and _password_matches(staff.password_hash, password):
        raise WeakPassword("That is the password you have now (or were given). Choose a new one.")
    scored = zxcvbn(password[:PASSWORD_SCORED_LENGTH], user_inputs=[staff.username, *PORTAL_WORDS])
    if scored["score"] < PASSWORD_MIN_SCORE:
        warning = scored["feedback"]["warning"].rstrip(".")
        raise WeakPassword(
            "That password is too easy to guess: it is common, on lists of breached passwords or follows a "
            f"pattern{f' ({warning})' if warning else ''}. A few unrelated words work well."
        )


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


def enable_staff(session: Session, staff: Staff) -> None:
    """Let a disabled account sign in again (with its password and authenticator as they were)."""
    staff.disabled = False
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
    check_new_password(password, staff)
    staff.password_hash = passwords.hash(password)
    staff.must_change_password = False
    session.commit()


def change_password(session: Session, staff: Staff, current: str, new: str) -> None:
    """The holder's own change: the current password first, then a new one that passes
    ``check_new_password``; every session of the account ends (a copied cookie with it)."""
    if not _password_matches(staff.password_hash, current):
        raise WrongPassword("Your current password is not right.")
    set_password(session, staff, new)
    end_sessions(session, staff)


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


def staff_names(session: Session, ids: set[int]) -> dict[int, Staff]:
    """The accounts with these ids, to show ``staff:7`` as a username and role."""
    if not ids:
        return {}
    return {staff.id: staff for staff in session.scalars(select(Staff).where(Staff.id.in_(ids)))}


def apply_action(session: Session, totp: Sealer, action: str, staff: Staff) -> Enrolment | None:
    """Disable, re-enable or reset ``staff``; a reset returns what its holder must be handed."""
    if action == "disable":
        disable_staff(session, staff)
    elif action == "enable":
        enable_staff(session, staff)
    elif action == "reset-mfa":
        return Enrolment(staff, *reset_mfa(session, totp, staff))
    else:
        raise StaffError(f"action must be one of {', '.join(STAFF_ACTIONS)}")
    return None


def needs_approval(staff: Staff) -> bool:
    """A supervisor's account changes only with a second supervisor's approval (or the command line)."""
    return staff.role == "supervisor"


def request_approval(session: Session, action: str, target: Staff, requester: Staff) -> StaffApproval:
    """The open request for ``action`` on ``target``, made now unless one is already waiting."""
    if action not in STAFF_ACTIONS:
        raise StaffError(f"action must be one of {', '.join(STAFF_ACTIONS)}")
    waiting = next((a for a in pending_approvals(session) if (a.action, a.target_id) == (action, target.id)), None)
    if waiting is not None:
        return waiting
    approval = StaffApproval(action=action, target_id=target.id, requested_by=requester.id)
    session.add(approval)
    session.commit()
    return approval


def pending_approvals(session: Session) -> list[StaffApproval]:
    """Requests no one approved yet and younger than ``APPROVAL_HOURS``, oldest first."""
    since = utcnow() - timedelta(hours=APPROVAL_HOURS)
    query = select(StaffApproval).where(StaffApproval.approved_at.is_(None), StaffApproval.requested_at > since)
    return list(session.scalars(query.order_by(StaffApproval.id)))


def approve(session: Session, approval_id: int, approver: Staff) -> StaffApproval:
    """Mark a waiting request approved by ``approver``, a supervisor other than its requester and
    its target; the caller then applies it. Conditional, so of two approvals only one wins."""
    approval = next((a for a in pending_approvals(session) if a.id == approval_id), None)
    if approval is None:
        raise StaffError("That request was already approved or has lapsed.")
    if approver.role != "supervisor" or approver.id in (approval.requested_by, approval.target_id):
        raise StaffError("A request must be approved by a second supervisor: not its requester or its target.")
    won = session.execute(
        update(StaffApproval)
        .where(StaffApproval.id == approval.id, StaffApproval.approved_at.is_(None))
        .values(approved_by=approver.id, approved_at=utcnow())
    ).rowcount
    session.commit()
    if not won:
        raise StaffError("That request was already approved or has lapsed.")
    session.refresh(approval)
    return approval


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
