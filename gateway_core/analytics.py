"""Usage analytics: DuckDB queries over the Postgres tables.

DuckDB reads Postgres through its postgres_scanner extension, attached
READ_ONLY. The extension is loaded from the file shipped in the
duckdb-extension-postgres-scanner wheel, so nothing is downloaded at run time.
DuckDB checks the file's signature, because unsigned extensions stay disallowed.

Filter values are bound as `?` parameters. DuckDB 1.5.5 still pushes the time
and team filters down into the query it sends to Postgres, as EXPLAIN ANALYZE
shows on the usage_events scan. Costs stay exact: NUMERIC
columns arrive as DECIMAL and become `decimal.Decimal` objects in the frames.

The connection turns off postgres_scanner's parallel ctid scan. With it on,
a table of more than `pg_pages_per_task` pages is read as ctid ranges that
together cover every page, so Postgres scans the whole table even when the
pushed-down filters match one day. With it off, each table scan is a single
`COPY (SELECT ... WHERE <filters>)`, and Postgres uses its indexes on
`created_at` and `bucket_start`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import duckdb
import duckdb_extension_postgres_scanner
import pandas as pd
import pyarrow as pa

from gateway_core.config import libpq_url

logger = logging.getLogger(__name__)

# Shown in pg_stat_activity for DuckDB's Postgres connections.
APPLICATION_NAME = "gatewayz-analytics"
BUCKETS = ("hour", "day")
DEFAULT_ROW_LIMIT = 500

# Bucket expressions for usage_over_time. Truncation happens in UTC, because
# connect() sets the DuckDB session time zone to UTC.
_BUCKET_SQL = {
    "hour": "date_trunc('hour', e.created_at)",
    "day": "date_trunc('day', e.created_at)",
}

_USAGE_ROWS_SQL = """
SELECT
    e.created_at AS time,
    e.request_id,
    e.team_id,
    t.name AS team,
    k.prefix || '…' || k.last4 AS key,
    e.model,
    e.provider,
    e.status_code AS status,
    e.prompt_tokens,
    e.completion_tokens,
    e.cost_usd,
    e.latency_ms,
    e.ttft_ms
FROM pg.public.usage_events AS e
LEFT JOIN pg.public.teams AS t ON t.id = e.team_id
LEFT JOIN pg.public.api_keys AS k ON k.id = e.api_key_id
WHERE {where}
ORDER BY e.created_at DESC, e.request_id
LIMIT ?
"""

# usage_over_time from a rollup whose buckets are the requested ones.
_ROLLUP_OVER_TIME_SQL = """
SELECT
    e.bucket_start AS bucket,
    e.team_id,
    t.name AS team,
    sum(e.requests)::BIGINT AS requests,
    sum(e.cost_usd) AS cost_usd
FROM {table} AS e
LEFT JOIN pg.public.teams AS t ON t.id = e.team_id
WHERE {where}
GROUP BY ALL
ORDER BY bucket, e.team_id NULLS LAST
"""
_ROLLUP_TABLES = {"hour": "pg.public.usage_hourly", "day": "pg.public.usage_daily"}
# usage_rows first reads this much of the end of the range, then a window
# WINDOW_GROWTH times longer, until the window contains `limit` rows.
FIRST_WINDOW = timedelta(hours=1)
WINDOW_GROWTH = 4

_USAGE_OVER_TIME_SQL = """
SELECT
    {bucket} AS bucket,
    e.team_id,
    t.name AS team,
    count(*) AS requests,
    sum(e.cost_usd) AS cost_usd
FROM pg.public.usage_events AS e
LEFT JOIN pg.public.teams AS t ON t.id = e.team_id
WHERE {where}
GROUP BY ALL
ORDER BY bucket, e.team_id NULLS LAST
"""


def postgres_scanner_path() -> Path:
    """Return the postgres_scanner extension file that matches the installed DuckDB."""
    package_dir = Path(duckdb_extension_postgres_scanner.__file__).parent
    path = (
        package_dir / "extensions" / f"v{duckdb.__version__}" / "postgres_scanner.duckdb_extension"
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"postgres_scanner extension not found at {path}: install "
            f"duckdb-extension-postgres-scanner=={duckdb.__version__} to match duckdb"
        )
    return path


def redact_password(message: str, database_url: str) -> str:
    """Return the message with the URL's password replaced by ***.

    DuckDB's postgres_scanner puts the whole connection URL, password
    included, into its connection errors.
    """
    password = urlsplit(libpq_url(database_url)).password
    if not password:
        return message
    for form in (password, unquote(password)):
        message = message.replace(form, "***")
    return message


def _with_application_name(url: str) -> str:
    """Return the URL with application_name added, unless it already sets one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "application_name" for name, _ in query):
        return url
    query.append(("application_name", APPLICATION_NAME))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def _sql_string_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect(database_url: str) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB with the Postgres database attached READ_ONLY.

    libpq parses the URL, so both host URLs and Unix-socket URLs such as
    `postgresql://postgres:@/gatewayz?host=/tmp/x` work. After the ATTACH the
    connection is locked down: file access, further ATTACHes and SET are
    rejected. The connection is not thread-safe, so give each thread its own
    `con.cursor()`, which shares the attached database.
    """
    con = duckdb.connect(
        ":memory:",
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
    )
    try:
        con.load_extension(str(postgres_scanner_path()))
        # GLOBAL, because a plain SET applies to this connection only, and
        # the pages run their queries on cursors, which are new connections.
        con.execute("SET GLOBAL TimeZone = 'UTC'")
        con.execute("SET GLOBAL pg_use_ctid_scan = false")
        con.execute("SET GLOBAL pg_experimental_filter_pushdown = true")
        # Queries longer than 2 s would otherwise draw a progress bar on stdout.
        con.execute("SET enable_progress_bar = false")
        # ATTACH takes no bound parameters, so the URL goes in as a quoted
        # literal. It comes from the operator's DATABASE_URL, not from users.
        try:
            url = _with_application_name(libpq_url(database_url))
            con.execute(f"ATTACH {_sql_string_literal(url)} AS pg (TYPE postgres, READ_ONLY)")
        except duckdb.Error as error:
            # Raised without its cause, which contains the unredacted message.
            raise type(error)(redact_password(str(error), database_url)) from None
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    logger.info("DuckDB attached Postgres read-only for analytics")
    return con


def check_range(start: datetime, end: datetime) -> None:
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None:
            raise ValueError(
                f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}: "
                "pass tzinfo=datetime.UTC instead"
            )


def _filters(
    start: datetime,
    end: datetime,
    team_id: int | str | None,
    organization_ids: frozenset[int] | None = None,
    time_column: str = "created_at",
) -> tuple[str, list[Any]]:
    """Return the WHERE clause, with `?` placeholders, and the values to bind to them."""
    check_range(start, end)
    conditions = [f"e.{time_column} >= ?", f"e.{time_column} < ?"]
    params: list[Any] = [start, end]
    if organization_ids is not None:
        # An empty set matches no row. The ids are bound, never formatted into the SQL.
        placeholders = ", ".join("?" for _ in organization_ids) or "NULL"
        conditions.append(f"e.organization_id IN ({placeholders})")
        params.extend(sorted(organization_ids))
    if team_id is not None:
        # A value that does not cast to BIGINT becomes NULL and matches no row,
        # so a malformed filter returns an empty result instead of an error.
        conditions.append("e.team_id = TRY_CAST(? AS BIGINT)")
        params.append(team_id)
    return " AND ".join(conditions), params


def to_frame(result: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return the query result as a frame with Decimal costs and nullable integer columns."""
    # The Arrow path keeps DECIMAL as Decimal objects, whereas DuckDB's own
    # .df() would turn them into float64.
    table = result.to_arrow_table()
    nullable_ints = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
    return table.to_pandas(types_mapper=nullable_ints.get)


def usage_rows(
    con: duckdb.DuckDBPyConnection,
    *,
    start: datetime,
    end: datetime,
    team_id: int | str | None = None,
    organization_ids: frozenset[int] | None = None,
    limit: int = DEFAULT_ROW_LIMIT,
) -> pd.DataFrame:
    """Return the most recent calls in [start, end), newest first, at most `limit` rows.

    Columns: time, request_id, team_id, team, key (prefix…last4), model,
    provider, status, prompt_tokens, completion_tokens, cost_usd (Decimal),
    latency_ms, ttft_ms. Team and key are null for calls that no key
    authenticated. `team_id` may be an int or a decimal string such as a query
    parameter; any other value matches no rows. `organization_ids`, when not
    None, keeps only the calls of those organizations, as for an organization user.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    check_range(start, end)
    window = FIRST_WINDOW
    while True:
        window_start = start if window >= end - start else end - window
        where, params = _filters(window_start, end, team_id, organization_ids)
        frame = to_frame(con.execute(_USAGE_ROWS_SQL.format(where=where), [*params, limit]))
        # DuckDB cannot push ORDER BY ... LIMIT down to Postgres, so a small
        # window at the end of the range is read first. Once it contains
        # `limit` rows, they are the newest of the whole range.
        if len(frame) >= limit or window_start <= start:
            return frame
        window *= WINDOW_GROWTH


def usage_over_time(
    con: duckdb.DuckDBPyConnection,
    *,
    start: datetime,
    end: datetime,
    bucket: str = "hour",
    team_id: int | str | None = None,
    organization_ids: frozenset[int] | None = None,
) -> pd.DataFrame:
    """Return requests and cost per UTC time bucket per team for calls in [start, end).

    Columns: bucket (start of the hour or day), team_id, team, requests,
    cost_usd (Decimal). Every call counts as a request, whatever its status.
    Buckets without calls are absent, not zero rows. When start and end
    begin buckets, the sums come from usage_hourly or usage_daily, and
    otherwise from the calls themselves. `organization_ids` filters as in usage_rows.
    """
    if bucket not in _BUCKET_SQL:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
    if _starts_bucket(start, bucket) and _starts_bucket(end, bucket):
        where, params = _filters(start, end, team_id, organization_ids, time_column="bucket_start")
        sql = _ROLLUP_OVER_TIME_SQL.format(table=_ROLLUP_TABLES[bucket], where=where)
        return to_frame(con.execute(sql, params))
    where, params = _filters(start, end, team_id, organization_ids)
    sql = _USAGE_OVER_TIME_SQL.format(bucket=_BUCKET_SQL[bucket], where=where)
    return to_frame(con.execute(sql, params))


def _starts_bucket(at: datetime, bucket: str) -> bool:
    """Return whether `at` is the start of a UTC hour or day, as rollup buckets are."""
    at = at.astimezone(UTC)
    if at.minute or at.second or at.microsecond:
        return False
    return bucket == "hour" or at.hour == 0
