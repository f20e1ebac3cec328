"""Staff approvals: a supervisor's disable, re-enable or reset of another supervisor waits for a second one.

Revision ID: staff_approvals
Revises: code_pool_vacuum
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "staff_approvals"
down_revision: str | Sequence[str] | None = "code_pool_vacuum"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "staff_approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("approved_by", sa.Integer(), nullable=True),
        sa.Column("approved_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["target_id"], ["staff.id"], name=op.f("fk_staff_approvals_target_id_staff")),
        sa.ForeignKeyConstraint(["requested_by"], ["staff.id"], name=op.f("fk_staff_approvals_requested_by_staff")),
        sa.ForeignKeyConstraint(["approved_by"], ["staff.id"], name=op.f("fk_staff_approvals_approved_by_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_approvals")),
    )
    op.create_index(op.f("ix_staff_approvals_target_id"), "staff_approvals", ["target_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_staff_approvals_target_id"), table_name="staff_approvals")
    op.drop_table("staff_approvals")
