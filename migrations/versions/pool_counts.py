"""The pool's counts, kept by the database: codes and claimed codes per enrol-by date.

The pool gauge (every ``/metrics`` scrape, the dashboard, ``portal pool-status``) counted the whole
pool three times: 0.8 s at 1,000,000 codes, 7.5-20 s at 10,000,000 (``bench/scale_bench.py``).
Triggers on ``activation_codes`` now keep ``pool_counts`` exact on every insert, update, delete
and (PostgreSQL) truncate, whoever writes, and the gauge adds up a few rows. PostgreSQL counts
once a statement (transition tables: one UPSERT for a batch of imported codes), SQLite once a row.
Each date has ``SLOTS`` rows (the code's id modulo ``SLOTS``): concurrent claims take codes of
neighbouring ids, so each raises a row of its own instead of all queueing on one.

Revision ID: pool_counts
Revises: idempotent_requests
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pool_counts"
down_revision: str | Sequence[str] | None = "idempotent_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOTS = 64
# Counted from the codes as they are (the backfill) or as a statement left or found them.
_CHANGES = (
    "SELECT enroll_by, id % {slots} AS slot, {sign} AS codes,"
    " {sign} * (CASE WHEN patient_id IS NULL THEN 0 ELSE 1 END) AS claimed FROM {rows}"
)
_ADD = (
    "INSERT INTO pool_counts (enroll_by, slot, codes, claimed)"
    " SELECT enroll_by, slot, sum(codes), sum(claimed) FROM ({changes}) AS changes"
    " GROUP BY enroll_by, slot HAVING sum(codes) <> 0 OR sum(claimed) <> 0 ORDER BY enroll_by, slot"
    " ON CONFLICT (enroll_by, slot) DO UPDATE"
    " SET codes = pool_counts.codes + excluded.codes, claimed = pool_counts.claimed + excluded.claimed"
)


def _changes(*sides: tuple[str, str]) -> str:
    return " UNION ALL ".join(_CHANGES.format(slots=SLOTS, sign=sign, rows=rows) for rows, sign in sides)


POSTGRESQL = f"""
CREATE FUNCTION pool_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM pool_counts;
    ELSIF TG_OP = 'INSERT' THEN
        {_ADD.format(changes=_changes(("new_rows", "1")))};
    ELSIF TG_OP = 'DELETE' THEN
        {_ADD.format(changes=_changes(("old_rows", "-1")))};
    ELSE
        {_ADD.format(changes=_changes(("new_rows", "1"), ("old_rows", "-1")))};
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER pool_counts_insert AFTER INSERT ON activation_codes
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pool_counts_apply();
CREATE TRIGGER pool_counts_update AFTER UPDATE ON activation_codes
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pool_counts_apply();
CREATE TRIGGER pool_counts_delete AFTER DELETE ON activation_codes
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pool_counts_apply();
CREATE TRIGGER pool_counts_truncate AFTER TRUNCATE ON activation_codes
    FOR EACH STATEMENT EXECUTE FUNCTION pool_counts_apply();
"""  # noqa: S608 - built from this file's constants only

# SQLite has row triggers only; its UPSERT needs a WHERE after a SELECT (its parser's rule).
_SQLITE_ROW = (
    "INSERT INTO pool_counts (enroll_by, slot, codes, claimed)"
    " SELECT {row}.enroll_by, {row}.id % {slots}, {sign}, {sign} * ({row}.patient_id IS NOT NULL) WHERE true"
    " ON CONFLICT (enroll_by, slot) DO UPDATE"
    " SET codes = codes + excluded.codes, claimed = claimed + excluded.claimed;"
)


def _sqlite_row(row: str, sign: str) -> str:
    return _SQLITE_ROW.format(row=row, sign=sign, slots=SLOTS)


SQLITE = [
    f"CREATE TRIGGER pool_counts_insert AFTER INSERT ON activation_codes BEGIN {_sqlite_row('NEW', '1')} END",
    f"CREATE TRIGGER pool_counts_delete AFTER DELETE ON activation_codes BEGIN {_sqlite_row('OLD', '-1')} END",
    "CREATE TRIGGER pool_counts_update AFTER UPDATE OF enroll_by, patient_id ON activation_codes"
    f" BEGIN {_sqlite_row('OLD', '-1')} {_sqlite_row('NEW', '1')} END",
]
TRIGGERS = ("pool_counts_insert", "pool_counts_update", "pool_counts_delete", "pool_counts_truncate")


def upgrade() -> None:
    op.create_table(
        "pool_counts",
        sa.Column("enroll_by", sa.Date(), nullable=False),
        sa.Column("slot", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("codes", sa.BigInteger(), nullable=False),
        sa.Column("claimed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("enroll_by", "slot", name=op.f("pk_pool_counts")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE activation_codes IN SHARE MODE")  # no write between the count and the triggers
        op.execute(POSTGRESQL)
    else:
        for trigger in SQLITE:
            op.execute(trigger)
    op.execute(_ADD.format(changes=_changes(("activation_codes", "1"))))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger in TRIGGERS:
            op.execute(f"DROP TRIGGER {trigger} ON activation_codes")
        op.execute("DROP FUNCTION pool_counts_apply()")
    else:
        for trigger in TRIGGERS[:3]:
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_table("pool_counts")
