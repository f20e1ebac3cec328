"""Answers to a thief who holds the stolen records: the letter's reference for every person, tokens
bound to where they were made, and codes that can be revoked and replaced.

Revision ID: stolen_records
Revises: hourly_counts
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "stolen_records"
down_revision: str | Sequence[str] | None = "hourly_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMED = "patient_id IS NOT NULL"
HELD = "patient_id IS NOT NULL AND revoked_at IS NULL"
REVOKED = "revoked_at IS NOT NULL"


def _holder_index(where: str) -> None:
    op.create_index(
        "uq_activation_codes_patient_id",
        "activation_codes",
        ["patient_id"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    op.add_column("patients", sa.Column("reference_digest", sa.LargeBinary(length=32), nullable=True))
    op.create_index(op.f("ix_patients_reference_digest"), "patients", ["reference_digest"], unique=True)
    op.add_column("verifications", sa.Column("api_key_id", sa.Integer(), nullable=True))
    op.add_column("verifications", sa.Column("with_letter", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("activation_codes", sa.Column("revoked_at", sa.DateTime(), nullable=True))
    # A person holds at most one *live* code; a revoked one stays theirs beside it.
    op.drop_index("uq_activation_codes_patient_id", table_name="activation_codes")
    _holder_index(HELD)
    op.create_index(
        "ix_activation_codes_revoked_at",
        "activation_codes",
        ["revoked_at"],
        sqlite_where=sa.text(REVOKED),
        postgresql_where=sa.text(REVOKED),
    )


def downgrade() -> None:
    # The older schema allows one code per person, revoked or not: refuse rather than lose the
    # provider's record of a revoked code.
    codes = sa.table("activation_codes", sa.column("revoked_at"))
    revoked = op.get_bind().scalar(sa.select(sa.func.count()).select_from(codes).where(codes.c.revoked_at.is_not(None)))
    if revoked:
        raise RuntimeError(f"{revoked} revoked codes would break the older schema's one-code-per-person index")
    op.drop_index("ix_activation_codes_revoked_at", table_name="activation_codes")
    op.drop_index("uq_activation_codes_patient_id", table_name="activation_codes")
    _holder_index(CLAIMED)
    # Plain DROP COLUMN (SQLite 3.35+): a batch copy would drop tables other tables refer to.
    op.drop_column("activation_codes", "revoked_at")
    op.drop_column("verifications", "with_letter")
    op.drop_column("verifications", "api_key_id")
    op.drop_index(op.f("ix_patients_reference_digest"), table_name="patients")
    op.drop_column("patients", "reference_digest")
