"""add latency histogram rollups

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04

usage_latency_hourly and usage_latency_daily count the successful calls
(status below 400) per UTC hour or day, organization, team, project, model
and provider in log-spaced latency and time-to-first-token buckets, so
percentiles of a month come from a few thousand rows instead of every call.
Keys are left out of the key because no page reports latency per key.

Bucket positions are 1-based array positions, and
gateway_core.latency_histogram has the same boundaries:
position 1 is [0, 1) ms, position p from 2 to 141 is
[1.1^(p-2), 1.1^(p-1)) ms, and position 142 contains every value of at least
1.1^140 ms (about 621 s). A count array ends at its highest non-empty
position.

The trigger function usage_rollups_add() of usage_events now also adds
each inserted statement's rows to the two histogram tables.

NOTE: the arrays are dense from position 1, so a row of calls around 1 s
stores about 75 zeros per array. With 1,000,000 generated calls
(bench/analytics_scale.py) usage_latency_hourly took 760 MB against
257 MB for usage_hourly. Storing the first non-empty position and integer
counts would make rows several times smaller.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIMENSIONS = ("organization_id", "team_id", "project_id", "model", "provider")
TABLES = (("usage_latency_hourly", "hour"), ("usage_latency_daily", "day"))

# floor(ln(ms) / ln(1.1)) + 2, clamped to positions 1 and 142.
POSITION_FUNCTION = """
CREATE FUNCTION usage_latency_position(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN ms IS NULL THEN NULL
        WHEN ms < 1 THEN 1
        ELSE least(142, floor(ln(ms) / ln(1.1))::integer + 2)
    END
$$;
"""

# Aggregate of (position, count) pairs into a count array that is as long
# as its highest position.
COUNTS_AGGREGATE = """
CREATE FUNCTION usage_latency_counts_add(state bigint[], bucket integer, n bigint)
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF bucket IS NULL THEN
        RETURN state;
    END IF;
    IF cardinality(state) < bucket THEN
        state := state || array_fill(0::bigint, ARRAY[bucket - cardinality(state)]);
    END IF;
    state[bucket] := state[bucket] + n;
    RETURN state;
END $$;

CREATE AGGREGATE usage_latency_counts(integer, bigint) (
    SFUNC = usage_latency_counts_add,
    STYPE = bigint[],
    INITCOND = '{}'
);
"""

# Element-wise sum of two count arrays of any lengths.
MERGE_FUNCTION = """
CREATE FUNCTION usage_latency_counts_merge(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i), '{}')
    FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i
$$;
"""


def histogram_insert(table: str, unit: str, source: str) -> str:
    """Return an upsert that adds the successful calls of `source` to `table`.

    Like the usage_hourly upsert of migration 0005, rows are upserted in key
    order, so concurrent recorder transactions cannot deadlock on them.
    """
    keys = ", ".join(("bucket_start", *DIMENSIONS))
    dimensions = ", ".join(f"e.{name}" for name in DIMENSIONS)
    updates = ", ".join(
        f"{name} = usage_latency_counts_merge(r.{name}, EXCLUDED.{name})"
        for name in ("latency_counts", "ttft_counts")
    )
    return f"""
        INSERT INTO {table} AS r ({keys}, latency_counts, ttft_counts)
        SELECT {keys},
            usage_latency_counts(bucket, n) FILTER (WHERE kind = 'latency'),
            usage_latency_counts(bucket, n) FILTER (WHERE kind = 'ttft')
        FROM (
            SELECT date_trunc('{unit}', e.created_at, 'UTC') AS bucket_start, {dimensions},
                v.kind, v.bucket, count(*) AS n
            FROM {source} AS e
            CROSS JOIN LATERAL (VALUES
                ('latency', usage_latency_position(e.latency_ms)),
                ('ttft', usage_latency_position(e.ttft_ms))
            ) AS v(kind, bucket)
            WHERE e.status_code < 400 AND v.bucket IS NOT NULL
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
        ) AS counted
        GROUP BY {keys}
        ORDER BY {keys}
        ON CONFLICT ({keys}) DO UPDATE SET {updates}
    """


def rollup_function(with_histograms: bool) -> str:
    """Return the CREATE OR REPLACE of usage_rollups_add().

    Its usage_hourly and usage_daily upserts are built by migration 0005's
    rollup_insert, loaded from that file because its name is no module name.
    """
    path = Path(__file__).with_name("0005_add_usage_rollups.py")
    spec = importlib.util.spec_from_file_location("migration_0005", path)
    assert spec is not None and spec.loader is not None
    migration_0005 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration_0005)
    statements = [
        migration_0005.rollup_insert("usage_hourly", "hour", "new_usage_events"),
        migration_0005.rollup_insert("usage_daily", "day", "new_usage_events"),
    ]
    if with_histograms:
        statements += [histogram_insert(t, unit, "new_usage_events") for t, unit in TABLES]
    body = ";\n".join(statements)
    return f"""
CREATE OR REPLACE FUNCTION usage_rollups_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body};
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    # Inserts into usage_events wait from here until this transaction
    # commits, so the backfill sees every committed row and each row is
    # counted either by the backfill or by the new trigger function, once.
    op.execute("LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE")
    op.execute(POSITION_FUNCTION)
    op.execute(COUNTS_AGGREGATE)
    op.execute(MERGE_FUNCTION)
    for table, _ in TABLES:
        op.create_table(
            table,
            sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
            sa.Column("organization_id", sa.BigInteger(), nullable=True),
            sa.Column("team_id", sa.BigInteger(), nullable=True),
            sa.Column("project_id", sa.BigInteger(), nullable=True),
            sa.Column("model", sa.String(length=200), nullable=True),
            sa.Column("provider", sa.String(length=64), nullable=True),
            sa.Column(
                "latency_counts",
                sa.dialects.postgresql.ARRAY(sa.BigInteger()),
                server_default="{}",
                nullable=False,
            ),
            sa.Column(
                "ttft_counts",
                sa.dialects.postgresql.ARRAY(sa.BigInteger()),
                server_default="{}",
                nullable=False,
            ),
            sa.UniqueConstraint(
                "bucket_start",
                *DIMENSIONS,
                name=f"uq_{table}_bucket_dimensions",
                postgresql_nulls_not_distinct=True,
            ),
        )
        op.create_index(f"ix_{table}_team_bucket", table, ["team_id", "bucket_start"])
    op.execute(rollup_function(with_histograms=True))
    for table, unit in TABLES:
        op.execute(histogram_insert(table, unit, "usage_events"))


def downgrade() -> None:
    op.execute("LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE")
    op.execute(rollup_function(with_histograms=False))
    for table, _ in TABLES:
        op.drop_index(f"ix_{table}_team_bucket", table_name=table)
        op.drop_table(table)
    op.execute("DROP FUNCTION usage_latency_counts_merge(bigint[], bigint[])")
    op.execute("DROP AGGREGATE usage_latency_counts(integer, bigint)")
    op.execute("DROP FUNCTION usage_latency_counts_add(bigint[], integer, bigint)")
    op.execute("DROP FUNCTION usage_latency_position(double precision)")
