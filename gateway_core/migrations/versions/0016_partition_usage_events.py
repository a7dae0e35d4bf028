"""partition usage_events by month

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04

usage_events becomes a table partitioned by range of created_at, one
partition per UTC month plus a DEFAULT partition, so an old month can be
detached and archived without deleting rows one by one. A unique key on a
partitioned table must contain the partition key, so the exactly-once key
on request_id alone moves to the small table usage_request_ids: the
recorder inserts a call's request id there and its usage row in one
statement, and a replayed row whose id is already there is skipped.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Months after the current one that get a partition at migrate time.
MONTHS_AHEAD = 3

INDEXES = (
    ("ix_usage_events_created_at", "created_at", ""),
    ("ix_usage_events_team_created", "team_id, created_at", ""),
    ("ix_usage_events_key_created", "api_key_id, created_at", ""),
    ("ix_usage_events_session", "session_id", "WHERE session_id IS NOT NULL"),
)

ROLLUP_TRIGGER = """
CREATE TRIGGER usage_events_rollups AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS new_usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_add()
"""

# Creates the partition of one UTC month unless a table of that name exists
# (attached, or detached by `usage detach`). Rows of that month already in
# the DEFAULT partition are moved into the new table before it is attached,
# because ATTACH fails while the DEFAULT partition holds rows of its range.
# The move inserts into the partition directly, so the rollup trigger on
# usage_events does not count those rows a second time.
CREATE_PARTITION_FUNCTION = """
CREATE FUNCTION usage_events_create_partition(month_start date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month_start)::date;
    partition_name text := 'usage_events_' || to_char(first_day, '"y"YYYY"m"MM');
    lower_bound text := to_char(first_day, 'YYYY-MM-DD') || ' 00:00:00+00';
    upper_bound text := to_char(first_day + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('usage_events_partitions'));
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        partition_name
    );
    EXECUTE format(
        'WITH moved AS (DELETE FROM usage_events_default '
        'WHERE created_at >= %L AND created_at < %L RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved',
        lower_bound, upper_bound, partition_name
    );
    EXECUTE format(
        'ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        partition_name, lower_bound, upper_bound
    );
    RETURN true;
END $$;
"""

# Creates the partitions of the current UTC month and the months_ahead
# months after it; returns how many were new.
ENSURE_PARTITIONS_FUNCTION = """
CREATE FUNCTION usage_events_ensure_partitions(months_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    created integer := 0;
BEGIN
    FOR offset_months IN 0..months_ahead LOOP
        IF usage_events_create_partition(
            (this_month + make_interval(months => offset_months))::date
        ) THEN
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;
"""


def create_indexes() -> None:
    for name, columns, where in INDEXES:
        op.execute(f"CREATE INDEX {name} ON usage_events ({columns}) {where}")


def upgrade() -> None:
    """Upgrade schema."""
    # Writers wait until the swap commits; readers of the old table too.
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    op.execute("ALTER TABLE usage_events RENAME TO usage_events_unpartitioned")
    op.execute(
        "CREATE TABLE usage_events "
        "(LIKE usage_events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (created_at)"
    )
    op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
    op.execute(CREATE_PARTITION_FUNCTION)
    op.execute(ENSURE_PARTITIONS_FUNCTION)
    op.execute(
        "SELECT usage_events_create_partition(month) FROM ("
        "SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month "
        "FROM usage_events_unpartitioned ORDER BY 1) AS months"
    )
    op.execute(f"SELECT usage_events_ensure_partitions({MONTHS_AHEAD})")
    # The new table has no rollup trigger yet, so moving the rows does not
    # add them to usage_hourly and usage_daily a second time.
    op.execute("INSERT INTO usage_events SELECT * FROM usage_events_unpartitioned")
    op.create_table(
        "usage_request_ids",
        sa.Column("request_id", sa.String(length=64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO usage_request_ids (request_id, created_at) "
        "SELECT request_id, created_at FROM usage_events_unpartitioned"
    )
    op.execute("DROP TABLE usage_events_unpartitioned")
    op.execute(
        "ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey "
        "PRIMARY KEY (request_id, created_at)"
    )
    create_indexes()
    op.execute(ROLLUP_TRIGGER)


def downgrade() -> None:
    """Downgrade schema.

    Rows of detached partitions stay in their own tables and are not
    copied back.
    """
    op.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
    op.execute("ALTER TABLE usage_events RENAME TO usage_events_partitioned")
    op.execute(
        "CREATE TABLE usage_events "
        "(LIKE usage_events_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    op.execute("INSERT INTO usage_events SELECT * FROM usage_events_partitioned")
    op.execute("DROP TABLE usage_events_partitioned")
    op.execute("DROP FUNCTION usage_events_ensure_partitions(integer)")
    op.execute("DROP FUNCTION usage_events_create_partition(date)")
    op.execute("ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (request_id)")
    create_indexes()
    op.execute(ROLLUP_TRIGGER)
    op.drop_table("usage_request_ids")
