"""Audit lanes: the trail becomes 64 chains written side by side, and hourly counts one row per lane.

``audit_events.id`` becomes ``position`` (its values, and so every chain hash written so far, are
unchanged) beside a new ``lane``: every existing row is lane 1, the single chain it was. Lanes 2 to
64 get their head rows, each at position 0 with its own genesis value (``portal.audit.genesis``).
``hourly_counts`` gains ``lane`` in its key, so no counter row is shared by concurrent events.

Revision ID: audit_lanes
Revises: stolen_records
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision: str = "audit_lanes"
down_revision: str | Sequence[str] | None = "stolen_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LANES = 64
POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
HEAD = sa.table(
    "audit_chain_head",
    sa.column("id", sa.Integer()),
    sa.column("position", sa.BigInteger()),
    sa.column("last_hash", sa.LargeBinary()),
)


def _replace_primary_key(batch: BatchOperations, name: str, columns: list[str]) -> None:
    """SQLite's copy of the table takes the new key in place of the old; PostgreSQL drops the old first."""
    if op.get_context().dialect.name != "sqlite":
        batch.drop_constraint(name, type_="primary")
    batch.create_primary_key(name, columns)


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("lane", sa.SmallInteger(), nullable=False, server_default="1", primary_key=True))
        batch.alter_column("id", new_column_name="position", existing_type=POSITION, existing_nullable=False)
        _replace_primary_key(batch, "pk_audit_events", ["lane", "position"])
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("lane", server_default=None, existing_type=sa.SmallInteger(), existing_nullable=False)
    op.bulk_insert(
        HEAD, [{"id": lane, "position": 0, "last_hash": (lane - 1).to_bytes(32, "big")} for lane in range(2, LANES + 1)]
    )
    with op.batch_alter_table("hourly_counts") as batch:
        batch.add_column(sa.Column("lane", sa.SmallInteger(), nullable=False, server_default="1", primary_key=True))
        _replace_primary_key(batch, "pk_hourly_counts", ["hour", "action", "outcome", "channel", "lane"])
    with op.batch_alter_table("hourly_counts") as batch:
        batch.alter_column("lane", server_default=None, existing_type=sa.SmallInteger(), existing_nullable=False)


def downgrade() -> None:
    """Back to one chain: only while lanes 2 to 64 are still empty (their rows cannot become lane 1's)."""
    connection = op.get_bind()
    used = connection.scalar(sa.text("SELECT count(*) FROM audit_events WHERE lane <> 1"))
    if used:
        raise RuntimeError(f"{used} audit rows are in lanes 2-64: the single-chain schema cannot hold them")
    # Hourly counts of the other lanes are added into lane 1's before the column goes.
    connection.execute(
        sa.text(
            "UPDATE hourly_counts SET count = (SELECT sum(o.count) FROM hourly_counts o"
            " WHERE o.hour = hourly_counts.hour AND o.action = hourly_counts.action"
            " AND o.outcome = hourly_counts.outcome AND o.channel = hourly_counts.channel)"
            " WHERE lane = (SELECT min(o.lane) FROM hourly_counts o WHERE o.hour = hourly_counts.hour"
            " AND o.action = hourly_counts.action AND o.outcome = hourly_counts.outcome"
            " AND o.channel = hourly_counts.channel)"
        )
    )
    connection.execute(
        sa.text(
            "DELETE FROM hourly_counts WHERE lane > (SELECT min(o.lane) FROM hourly_counts o"
            " WHERE o.hour = hourly_counts.hour AND o.action = hourly_counts.action"
            " AND o.outcome = hourly_counts.outcome AND o.channel = hourly_counts.channel)"
        )
    )
    with op.batch_alter_table("hourly_counts") as batch:
        _replace_primary_key(batch, "pk_hourly_counts", ["hour", "action", "outcome", "channel"])
        batch.drop_column("lane")
    op.execute(HEAD.delete().where(HEAD.c.id > 1))
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("position", new_column_name="id", existing_type=POSITION, existing_nullable=False)
        _replace_primary_key(batch, "pk_audit_events", ["id"])
        batch.drop_column("lane")
