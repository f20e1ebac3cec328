"""Vacuum the code pool after a fixed number of claims, whatever its size (PostgreSQL).

A claim takes the first free code in enrol-by order through the partial index of free codes
(``ix_activation_codes_available``). The claimed code's entry stays in that index, dead, until
VACUUM removes it, and every later claim walks past all of them first. Autovacuum's defaults wait
until a fifth of the table has changed (two million claims in a pool of ten million) and then
skip the indexes when the changed rows sit on under 2 % of its pages; a claim then walked past up
to millions of dead entries. Here the table is vacuumed, indexes included, after every
``CLAIMS_PER_VACUUM`` claims, at any pool size (``bench/scale_bench.py`` measures the effect).
SQLite rewrites its index in place: nothing to do there.

Revision ID: code_pool_vacuum
Revises: audit_lanes
"""

from collections.abc import Sequence

from alembic import op

revision: str = "code_pool_vacuum"
down_revision: str | Sequence[str] | None = "audit_lanes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMS_PER_VACUUM = 50_000
SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": str(CLAIMS_PER_VACUUM),
    "vacuum_index_cleanup": "on",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        values = ", ".join(f"{name} = {value}" for name, value in SETTINGS.items())
        op.execute(f"ALTER TABLE activation_codes SET ({values})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE activation_codes RESET ({', '.join(SETTINGS)})")
