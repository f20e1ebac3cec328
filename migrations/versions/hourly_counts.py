"""Hourly counts of events per action, outcome and channel (no identifiers; kept past the purge).

Revision ID: hourly_counts
Revises: console
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "hourly_counts"
down_revision: str | Sequence[str] | None = "console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hourly_counts",
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=48), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "action", "outcome", "channel", name=op.f("pk_hourly_counts")),
    )


def downgrade() -> None:
    op.drop_table("hourly_counts")
