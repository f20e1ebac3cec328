"""Key versions: the code key rotates without losing or changing a code or a staff login; a wrong key opens nothing."""

from __future__ import annotations

import itertools
import secrets

import pyotp
import pytest
from agent_helpers import Account, login, make_staff, signed_in
from conftest import import_patients, make_app, numbered, patient_row
from cryptography.exceptions import InvalidTag
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_agent import FAILED

from portal import synthetic
from portal.claims import claim_code, code_of, reseal_codes
from portal.cli import rotate_code_key
from portal.extensions import db
from portal.importer import import_codes
from portal.models import ActivationCode, Patient, Staff
from portal.sealing import Sealer
from portal.services import services
from portal.staff import reset_mfa


def code_key_apps(database_url: str) -> tuple[Flask, Flask, Flask]:
    """One portal before, during and after a code-key rotation; the last no longer holds the old key."""
    old_key, new_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    shared = {name: secrets.token_urlsafe(32) for name in ("IDENTIFIER_KEY", "SECRET_KEY", "AUDIT_KEY")}
    return (
        make_app(database_url, CODE_KEY=old_key, **shared),
        make_app(database_url, CODE_KEY=new_key, CODE_KEY_VERSION=2, CODE_KEY_PREVIOUS=old_key, **shared),
        make_app(database_url, CODE_KEY=new_key, CODE_KEY_VERSION=2, **shared),
    )


def rotated(codes: int, totp_secrets: int) -> str:
    """What ``portal rotate-code-key`` says it did."""
    return f"{codes} codes and {totp_secrets} staff TOTP secrets re-encrypted under key version 2"


def opened_codes(app: Flask) -> list[str]:
    with app.app_context():
        return sorted(services().cipher.open(row) for row in db.session.scalars(select(ActivationCode)))


def key_versions(app: Flask) -> list[int]:
    """The key version of every value sealed under the code key."""
    with app.app_context():
        codes = db.session.scalars(select(ActivationCode.key_version)).all()
        return [*codes, *db.session.scalars(select(Staff.totp_key_version))]


def test_a_rotation_without_the_old_key_says_which_key_to_put_back(database_url: str) -> None:
    before, _rotating, after = code_key_apps(database_url)
    with before.app_context():
        import_codes(
            db.session, services().cipher, numbered(list(synthetic.synthetic_codes(3, seed=6))), on_reject=pytest.fail
        )
    result = after.test_cli_runner().invoke(args=["rotate-code-key"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "code-key version 1, which is not configured" in result.output
    assert "PORTAL_CODE_KEY_PREVIOUS" in result.output
    assert key_versions(after) == [1, 1, 1]  # nothing changed


def test_code_key_rotation_keeps_every_code_and_every_staff_login(database_url: str) -> None:
    before, rotating, after = code_key_apps(database_url)
    codes = list(synthetic.synthetic_codes(20, seed=5))
    assert import_patients(before, [patient_row()]) == []
    with before.app_context():
        import_codes(db.session, services().cipher, numbered(codes), on_reject=pytest.fail)
        patient = db.session.scalars(select(Patient)).one()
        given = claim_code(db.session, services().cipher, patient).code
    staff = [make_staff(before, "alice"), make_staff(before, "bob", "supervisor")]

    result = rotating.test_cli_runner().invoke(args=["rotate-code-key"])
    assert result.exit_code == 0 and rotated(20, 2) in result.output
    assert rotated(0, 0) in rotating.test_cli_runner().invoke(args=["rotate-code-key"]).output

    # The old key is gone: every staff member still signs in with password and TOTP code ...
    for account in staff:
        signed_in(after, account)
    # ... every code still opens, and each person keeps theirs.
    assert set(key_versions(after)) == {2}
    assert opened_codes(after) == sorted(c["code"] for c in codes)
    with after.app_context():
        cipher = services().cipher
        assert code_of(db.session, cipher, db.session.scalars(select(Patient)).one()).code == given
        # Re-importing the same file after rotation still recognises every code.
        report = import_codes(db.session, cipher, numbered(codes), on_reject=pytest.fail)
        assert (report.added, report.unchanged) == (0, 20)
        assert db.session.scalar(select(func.count(ActivationCode.id))) == 20


@pytest.mark.parametrize(
    ("crash_at_seal", "left"), [(5, (16, 3)), (23, (0, 1))], ids=["among-codes", "among-totp-secrets"]
)
def test_a_rotation_that_dies_half_way_is_finished_by_a_rerun(
    database_url: str, monkeypatch: pytest.MonkeyPatch, crash_at_seal: int, left: tuple[int, int]
) -> None:
    """Batches of two: the run dies at a chosen seal, after some batches have committed."""
    before, rotating, after = code_key_apps(database_url)
    codes = list(synthetic.synthetic_codes(20, seed=8))
    with before.app_context():
        import_codes(db.session, services().cipher, numbered(codes), on_reject=pytest.fail)
    staff = [make_staff(before, name) for name in ("alice", "bob", "carol")]

    seals, real_seal = itertools.count(1), Sealer.seal

    def dying_seal(sealer: Sealer, text: str, context: bytes) -> tuple[bytes, int]:
        if next(seals) == crash_at_seal:
            raise RuntimeError("the process dies here")
        return real_seal(sealer, text, context)

    with monkeypatch.context() as patch, rotating.app_context(), pytest.raises(RuntimeError, match="dies here"):
        patch.setattr(Sealer, "seal", dying_seal)
        rotate_code_key(db.session, batch_size=2)
    assert set(key_versions(rotating)) == {1, 2}  # half done: each value under one version or the other
    assert opened_codes(rotating) == sorted(c["code"] for c in codes)

    rerun = rotating.test_cli_runner().invoke(args=["rotate-code-key"])
    assert rerun.exit_code == 0 and rotated(*left) in rerun.output

    assert set(key_versions(after)) == {2}
    assert opened_codes(after) == sorted(c["code"] for c in codes)
    for account in staff:
        signed_in(after, account)


def test_an_mfa_reset_during_the_rotation_is_not_undone(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor resets an account between the rotation's read of its secret and its write."""
    before, rotating, after = code_key_apps(database_url)
    account = make_staff(before)
    reset: list[tuple[str, str]] = []
    real_open = Sealer.open

    def reset_meanwhile(sealer: Sealer, sealed: bytes, version: int, context: bytes) -> str:
        text = real_open(sealer, sealed, version, context)
        if not reset:
            with Session(db.engine) as other:
                reset.append(reset_mfa(other, services().totp, other.get_one(Staff, account.id)))
        return text

    monkeypatch.setattr(Sealer, "open", reset_meanwhile)
    result = rotating.test_cli_runner().invoke(args=["rotate-code-key"])
    monkeypatch.undo()
    assert result.exit_code == 0 and rotated(0, 0) in result.output

    password, uri = reset[0]
    secret = pyotp.parse_uri(uri).secret
    assert FAILED in login(after.test_client(), account).get_data(as_text=True)  # the old authenticator
    signed_in(after, Account(account.username, password, secret, account.id))


def test_a_different_code_key_opens_nothing(database_url: str) -> None:
    shared = {"IDENTIFIER_KEY": secrets.token_urlsafe(32), "SECRET_KEY": secrets.token_urlsafe(32)}
    first = make_app(database_url, **shared)
    with first.app_context():
        import_codes(db.session, services().cipher, numbered(list(synthetic.synthetic_codes(1))), on_reject=pytest.fail)
    stranger = make_app(database_url, **shared)  # same version number, another CODE_KEY
    with stranger.app_context():
        row = db.session.scalars(select(ActivationCode)).one()
        with pytest.raises(InvalidTag):
            services().cipher.open(row)


def test_rotation_in_batches_counts_and_reseals_every_code(database_url: str) -> None:
    """Each batch commits on its own (resumable); the count reported is the whole pool's."""
    before, rotating, _ = code_key_apps(database_url)
    codes = list(synthetic.synthetic_codes(20, seed=6))
    with before.app_context():
        import_codes(db.session, services().cipher, numbered(codes), on_reject=pytest.fail)
    with rotating.app_context():
        cipher = services().cipher
        assert reseal_codes(db.session, cipher, batch_size=7) == 20
        rows = db.session.scalars(select(ActivationCode)).all()
        assert {row.key_version for row in rows} == {2}
        assert sorted(cipher.open(row) for row in rows) == sorted(c["code"] for c in codes)
        assert reseal_codes(db.session, cipher, batch_size=7) == 0
