"""Migrations: from nothing to head, equal to the models, down and up again, and the CLI entry point."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import import_patients, make_config, patient_row
from flask import Flask

from portal import schema
from portal.app import create_app
from portal.audit import FIELDS, LANES, genesis
from portal.claims import claim_code
from portal.events import Event, record
from portal.extensions import db
from portal.identity import start_verification
from portal.importer import import_codes
from portal.models import Base, Patient, UTCDateTime, utcnow
from portal.partner_keys import create_key
from portal.services import services
from portal.staff import create_staff, request_approval

APP_TABLES = set(Base.metadata.tables)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A bare engine on an empty database: no app, nothing created yet."""
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def scripts(engine: sa.Engine) -> ScriptDirectory:
    return ScriptDirectory.from_config(schema.alembic_config(engine))


def revision_of(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def assert_at_head(engine: sa.Engine) -> None:
    assert revision_of(engine) == scripts(engine).get_current_head()
    assert tables(engine) == APP_TABLES | {"alembic_version"}
    assert differences(engine) == []


def test_upgrade_from_empty_reaches_head_and_equals_the_models(engine: sa.Engine) -> None:
    assert tables(engine) == set()
    assert revision_of(engine) is None
    schema.upgrade(engine)
    assert_at_head(engine)

    # What autogenerate cannot see: the pool's indexes are partial, so any number of free
    # codes (NULL patient) may exist while a person can hold only one code.
    indexes = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("activation_codes")}
    one_code_each = indexes["uq_activation_codes_patient_id"]
    assert one_code_each["unique"] and one_code_each["column_names"] == ["patient_id"]
    where = one_code_each.get("dialect_options", {}).get(f"{engine.dialect.name}_where")
    assert where is not None and "not null" in str(where).lower()
    available = indexes["ix_activation_codes_available"]
    assert not available["unique"] and available["column_names"] == ["enroll_by", "id"]
    if engine.dialect.name == "postgresql":
        # Claimed codes stay in that index, dead, until VACUUM: the pool is vacuumed, indexes
        # included, after a fixed number of claims, not a fifth of the table (bench/scale_bench.py).
        with engine.connect() as connection:
            options = connection.scalar(
                sa.text("SELECT reloptions FROM pg_class WHERE oid = 'activation_codes'::regclass")
            )
        assert {"autovacuum_vacuum_scale_factor=0", "vacuum_index_cleanup=on"} <= set(options or ())


def test_each_revision_goes_down_and_up_again(engine: sa.Engine) -> None:
    revisions = list(reversed(list(scripts(engine).walk_revisions())))  # base first
    assert revisions, "no migrations found"
    for script in revisions:
        schema.upgrade(engine, script.revision)
        assert revision_of(engine) == script.revision
        schema.downgrade(engine, script.down_revision or "base")
        assert revision_of(engine) == script.down_revision
        schema.upgrade(engine, script.revision)
        assert revision_of(engine) == script.revision
    assert_at_head(engine)

    schema.downgrade(engine, "base")
    assert revision_of(engine) is None
    assert tables(engine) <= {"alembic_version"}
    schema.upgrade(engine)
    assert_at_head(engine)


def test_a_single_chain_written_before_lanes_still_verifies(database_url: str) -> None:
    """Rows chained before there were lanes (their position in ``id``, one head) become lane 1,
    every chain hash unchanged, and verify finds them intact."""
    app = create_app(make_config(database_url))
    legacy = sa.table(
        "audit_events",
        *(sa.column(name) for name in ("id", "actor", "action", "outcome", "channel", "prev_hash", "chain_hash")),
        sa.column("at", UTCDateTime()),
    )
    with app.app_context():
        schema.upgrade(db.engine, "stolen_records")
        prev = genesis(1)
        with db.engine.begin() as connection:
            for position in (1, 2, 3):
                row = dict.fromkeys(FIELDS) | {"position": position, "at": utcnow(), "actor": "cli:root"}
                row |= {"action": "import", "outcome": "success", "channel": "cli"}
                chain_hash = services().audit.link(prev, row)
                fields = {k: v for k, v in row.items() if v is not None and k != "position"}
                connection.execute(legacy.insert().values(id=position, prev_hash=prev, chain_hash=chain_hash, **fields))
                prev = chain_hash
            connection.execute(sa.text("UPDATE audit_chain_head SET position = 3, last_hash = :h"), {"h": prev})
        schema.upgrade(db.engine)
        db.engine.dispose()
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0 and f"intact: 3 rows; heads 1/3:{prev.hex()}\n" in result.output


def test_head_to_base_and_back_with_data_present(database_url: str) -> None:
    """Rows in every table (with their foreign keys) do not stop a downgrade; head comes back clean."""
    app = create_app(make_config(database_url))
    with app.app_context():
        engine = db.engine
        schema.upgrade(engine)
    assert import_patients(app, [patient_row(), patient_row(record_id="R-2", ssn="", zip="20002")]) == []
    with app.app_context():
        codes = [
            {"code": f"MIG-{i:04d}", "enroll_by": (date.today() + timedelta(days=30)).isoformat()} for i in range(3)
        ]
        report = import_codes(db.session, services().cipher, enumerate(codes, start=2), on_reject=pytest.fail)
        assert report.added == 3
        patient = db.session.scalars(sa.select(Patient)).first()
        assert patient is not None
        claim_code(db.session, services().cipher, patient)
        start_verification(db.session, patient, "public", 900)
        create_staff(db.session, services().totp, "mig", "agent")
        bosses = [create_staff(db.session, services().totp, f"boss{n}", "supervisor").staff for n in (1, 2)]
        request_approval(db.session, "disable", bosses[0], bosses[1])
        record(Event("verification", "success", "public", patient.public_id))
        key = create_key(db.session, "Partner", ["verify"], "10/minute")
        store = services().idempotency
        store.finish(db.session, store.begin(db.session, key.row.id, "retry", "api.verify", {}), 200, {})
        counts = {t: db.session.scalar(sa.select(sa.func.count()).select_from(sa.table(t))) for t in APP_TABLES}
        assert all(n > 0 for n in counts.values()), counts
        db.session.close()

        schema.downgrade(engine, "base")
        assert tables(engine) <= {"alembic_version"}
        schema.upgrade(engine)
        assert_at_head(engine)
        counts = {t: db.session.scalar(sa.select(sa.func.count()).select_from(sa.table(t))) for t in APP_TABLES}
        # Only the audit lanes' head rows, which the migrations create at position 0.
        assert counts == {t: LANES if t == "audit_chain_head" else 0 for t in APP_TABLES}
        engine.dispose()


def test_cli_db_upgrade_is_idempotent(database_url: str) -> None:
    app: Flask = create_app(make_config(database_url))
    runner = app.test_cli_runner()
    with app.app_context():
        engine = db.engine
    assert tables(engine) == set()

    first = runner.invoke(args=["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "database at head" in first.output
    assert_at_head(engine)

    # Data written between the runs survives the second run, which changes nothing.
    assert import_patients(app, [patient_row()]) == []
    second = runner.invoke(args=["db", "upgrade"])
    assert second.exit_code == 0, second.output
    assert_at_head(engine)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Patient)) == 1

    # (alembic prints `db current` to the process's stdout, past click: only its exit is checked.)
    assert runner.invoke(args=["db", "current"]).exit_code == 0
    engine.dispose()
