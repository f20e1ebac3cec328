"""Initial schema: hash schemes, patients (hashes and flags only), the sealed code pool, verifications.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 12:50:51.344728

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table(
        "hash_schemes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("time_cost", sa.Integer(), nullable=False),
        sa.Column("memory_cost", sa.Integer(), nullable=False),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("salt", sa.LargeBinary(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hash_schemes")),
        sa.UniqueConstraint(
            "key_version", "time_cost", "memory_cost", "parallelism", name=op.f("uq_hash_schemes_key_version")
        ),
    )
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("record_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("scheme_id", sa.Integer(), nullable=False),
        sa.Column("lookup_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("exposed_fields", sa.Integer(), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["scheme_id"], ["hash_schemes.id"], name=op.f("fk_patients_scheme_id_hash_schemes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint("lookup_digest", name=op.f("uq_patients_lookup_digest")),
        sa.UniqueConstraint("public_id", name=op.f("uq_patients_public_id")),
        sa.UniqueConstraint("record_key", name=op.f("uq_patients_record_key")),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patients_scheme_id"), ["scheme_id"], unique=False)

    op.create_table(
        "activation_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("product", sa.String(length=80), nullable=False),
        sa.Column("enroll_by", sa.Date(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_activation_codes_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activation_codes")),
        sa.UniqueConstraint("code_digest", name=op.f("uq_activation_codes_code_digest")),
    )
    with op.batch_alter_table("activation_codes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_activation_codes_available",
            ["enroll_by", "id"],
            unique=False,
            sqlite_where=sa.text("patient_id IS NULL"),
            postgresql_where=sa.text("patient_id IS NULL"),
        )
        batch_op.create_index(
            "uq_activation_codes_patient_id",
            ["patient_id"],
            unique=True,
            sqlite_where=sa.text("patient_id IS NOT NULL"),
            postgresql_where=sa.text("patient_id IS NOT NULL"),
        )

    op.create_table(
        "verifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_verifications_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifications")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_verifications_token_digest")),
    )
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verifications_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_verifications_patient_id"), ["patient_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verifications_patient_id"))
        batch_op.drop_index(batch_op.f("ix_verifications_expires_at"))

    op.drop_table("verifications")
    with op.batch_alter_table("activation_codes", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_activation_codes_patient_id",
            sqlite_where=sa.text("patient_id IS NOT NULL"),
            postgresql_where=sa.text("patient_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_activation_codes_available",
            sqlite_where=sa.text("patient_id IS NULL"),
            postgresql_where=sa.text("patient_id IS NULL"),
        )

    op.drop_table("activation_codes")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_scheme_id"))

    op.drop_table("patients")
    op.drop_table("hash_schemes")
