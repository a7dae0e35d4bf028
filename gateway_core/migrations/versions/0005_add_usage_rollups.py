"""add hourly and daily usage rollups

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIMENSIONS = ("organization_id", "team_id", "project_id", "api_key_id", "model", "provider")
MEASURES = (
    "requests",
    "errors",
    "retried",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_count",
    "ttft_ms_sum",
    "ttft_count",
)

# Aggregates of usage_events rows in the order of MEASURES.
AGGREGATES = (
    "count(*)",
    "count(*) FILTER (WHERE e.status_code >= 400)",
    "count(*) FILTER (WHERE e.attempts > 1)",
    "sum(e.prompt_tokens)",
    "sum(e.completion_tokens)",
    "sum(e.cached_tokens)",
    "sum(e.cache_write_tokens)",
    "sum(e.reasoning_tokens)",
    "sum(e.cost_usd)",
    "sum(e.latency_ms)",
    "count(e.latency_ms)",
    "coalesce(sum(e.ttft_ms), 0)",
    "count(e.ttft_ms)",
)


def rollup_insert(table: str, unit: str, source: str) -> str:
    """Return an upsert that adds the rows of `source` to `table` in `unit` buckets.

    Buckets are truncated in UTC whatever the session time zone. Rows are
    upserted in key order, so concurrent recorder transactions lock rollup
    rows in the same order and cannot deadlock on them.
    """
    keys = ", ".join(("bucket_start", *DIMENSIONS))
    selected = ", ".join(
        (
            f"date_trunc('{unit}', e.created_at, 'UTC')",
            *(f"e.{name}" for name in DIMENSIONS),
            *AGGREGATES,
        )
    )
    positions = ", ".join(str(i) for i in range(1, len(DIMENSIONS) + 2))
    updates = ", ".join(f"{name} = r.{name} + EXCLUDED.{name}" for name in MEASURES)
    return (
        f"INSERT INTO {table} AS r ({keys}, {', '.join(MEASURES)}) "
        f"SELECT {selected} FROM {source} AS e "
        f"GROUP BY {positions} ORDER BY {positions} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    )


# A statement-level trigger sees the rows one INSERT (or COPY) added as the
# transition table new_usage_events. Rows that ON CONFLICT DO NOTHING skipped
# are not in it, so a replayed recorder batch is not counted twice, and the
# rollups change in the same transaction as usage_events. Updates and deletes
# of usage_events rows do not change the rollups.
ROLLUP_TRIGGER = f"""
CREATE FUNCTION usage_rollups_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {rollup_insert("usage_hourly", "hour", "new_usage_events")};
    {rollup_insert("usage_daily", "day", "new_usage_events")};
    RETURN NULL;
END $$;

CREATE TRIGGER usage_events_rollups AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS new_usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_add();
"""


def rollup_columns() -> list[sa.Column]:
    return [
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("organization_id", sa.BigInteger(), nullable=True),
        sa.Column("team_id", sa.BigInteger(), nullable=True),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=True),
        *(
            sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)
            for name in MEASURES
            if name != "cost_usd"
        ),
        sa.Column(
            "cost_usd", sa.Numeric(precision=20, scale=10), server_default="0", nullable=False
        ),
    ]


def upgrade() -> None:
    """Upgrade schema."""
    for table in ("usage_hourly", "usage_daily"):
        op.create_table(
            table,
            *rollup_columns(),
            sa.UniqueConstraint(
                "bucket_start",
                *DIMENSIONS,
                name=f"uq_{table}_bucket_dimensions",
                postgresql_nulls_not_distinct=True,
            ),
        )
        op.create_index(f"ix_{table}_team_bucket", table, ["team_id", "bucket_start"])
    op.create_index(
        "ix_usage_hourly_project_bucket", "usage_hourly", ["project_id", "bucket_start"]
    )
    # CREATE TRIGGER locks usage_events against inserts until this
    # transaction commits, so the backfill below sees every committed row and
    # no row is both backfilled and added by the trigger.
    op.execute(ROLLUP_TRIGGER)
    op.execute(rollup_insert("usage_hourly", "hour", "usage_events"))
    op.execute(rollup_insert("usage_daily", "day", "usage_events"))


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP TRIGGER IF EXISTS usage_events_rollups ON usage_events")
    op.execute("DROP FUNCTION IF EXISTS usage_rollups_add()")
    op.drop_index("ix_usage_hourly_project_bucket", table_name="usage_hourly")
    for table in ("usage_hourly", "usage_daily"):
        op.drop_index(f"ix_{table}_team_bucket", table_name=table)
        op.drop_table(table)
