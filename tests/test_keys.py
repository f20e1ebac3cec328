"""Key versions: the code key rotates without losing or changing a code; a wrong key opens nothing."""

from __future__ import annotations

import secrets

import pytest
from conftest import import_patients, make_app, numbered, patient_row
from cryptography.exceptions import InvalidTag
from sqlalchemy import func, select

from portal import services, synthetic
from portal.claims import claim_code, code_of, rotate_code_key
from portal.extensions import db
from portal.importer import import_codes
from portal.models import ActivationCode, Patient


def test_code_key_rotation_keeps_every_code(database_url: str) -> None:
    old_key, new_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    shared = {"IDENTIFIER_KEY": secrets.token_urlsafe(32), "SECRET_KEY": secrets.token_urlsafe(32)}
    codes = list(synthetic.synthetic_codes(20, seed=5))
    first = make_app(database_url, CODE_KEY=old_key, **shared)
    assert import_patients(first, [patient_row()]) == []
    with first.app_context():
        import_codes(db.session, services().cipher, numbered(codes), on_reject=pytest.fail)
        patient = db.session.scalars(select(Patient)).one()
        given = claim_code(db.session, services().cipher, patient).code

    rotating = make_app(database_url, CODE_KEY=new_key, CODE_KEY_VERSION=2, CODE_KEY_PREVIOUS=old_key, **shared)
    result = rotating.test_cli_runner().invoke(args=["rotate-code-key"])
    assert result.exit_code == 0 and "20 codes re-encrypted under key version 2" in result.output
    assert rotating.test_cli_runner().invoke(args=["rotate-code-key"]).output.startswith("0 codes")

    rotated = make_app(database_url, CODE_KEY=new_key, CODE_KEY_VERSION=2, **shared)  # the old key is gone
    with rotated.app_context():
        cipher = services().cipher
        rows = db.session.scalars(select(ActivationCode)).all()
        assert {row.key_version for row in rows} == {2}
        assert sorted(cipher.open(row) for row in rows) == sorted(c["code"] for c in codes)
        assert code_of(db.session, cipher, db.session.scalars(select(Patient)).one()).code == given
        # Re-importing the same file after rotation still recognises every code.
        report = import_codes(db.session, cipher, numbered(codes), on_reject=pytest.fail)
        assert (report.added, report.unchanged) == (0, 20)
        assert db.session.scalar(select(func.count(ActivationCode.id))) == 20


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
    old_key, new_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    shared = {"IDENTIFIER_KEY": secrets.token_urlsafe(32), "SECRET_KEY": secrets.token_urlsafe(32)}
    codes = list(synthetic.synthetic_codes(20, seed=6))
    with make_app(database_url, CODE_KEY=old_key, **shared).app_context():
        import_codes(db.session, services().cipher, numbered(codes), on_reject=pytest.fail)
    rotating = make_app(database_url, CODE_KEY=new_key, CODE_KEY_VERSION=2, CODE_KEY_PREVIOUS=old_key, **shared)
    with rotating.app_context():
        cipher = services().cipher
        assert rotate_code_key(db.session, cipher, batch_size=7) == 20
        rows = db.session.scalars(select(ActivationCode)).all()
        assert {row.key_version for row in rows} == {2}
        assert sorted(cipher.open(row) for row in rows) == sorted(c["code"] for c in codes)
        assert rotate_code_key(db.session, cipher, batch_size=7) == 0
