"""Filtered lists of individual calls for the Usage explorer, and their CSV export.

The queries run in DuckDB over the Postgres database that
`gateway_core.analytics.connect` attaches. DuckDB pushes the time range and
the equality filters down to Postgres, which reads them through its
`created_at` index, and applies the rest itself. DuckDB cannot push down
ORDER BY and LIMIT, so the newest rows are read from a window at the end of
the range that widens until it contains enough rows.

The export reads a week at a time, oldest first, and writes each week's
rows in Arrow record batches of `chunk_rows`, so only one batch of rows is
in Python memory at a time. Filter values are bound `?` parameters, and the
ILIKE pattern of the model search escapes its wildcards.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TextIO

import duckdb
import pandas as pd
import pyarrow as pa

from gateway_core import access
from gateway_core.access import Actor
from gateway_core.csv_cells import spool_to_file, text_cell
from gateway_core.errors import InvalidRequestError, PermissionDeniedError
from gateway_core.rollups import split_by_table
from gateway_core.time_ranges import TimeRange
from gateway_core.usage_stats import NO_MODEL, NO_PROJECT, NO_TEAM, key_label

logger = logging.getLogger(__name__)

# Status filters: a class of HTTP status codes, or one code as a string.
STATUS_CLASSES = {
    "all": "All statuses",
    "success": "Success (2xx)",
    "client_error": "Client errors (4xx)",
    "server_error": "Server errors (5xx)",
}
_STATUS_RANGES = {"success": (200, 299), "client_error": (400, 499), "server_error": (500, 599)}
DEFAULT_PAGE_ROWS = 500
EXPORT_CHUNK_ROWS = 5_000
# The export reads the range in slices of this length. DuckDB sorts each slice
# in its own memory, so a slice of a week of calls must fit there.
EXPORT_SLICE = timedelta(days=7)
# fetch_rows first reads this much of the end of the range, then a window
# WINDOW_GROWTH times longer, until the window contains enough rows.
FIRST_WINDOW = timedelta(hours=1)
WINDOW_GROWTH = 4
# Maximum length of usage_events.request_id, a VARCHAR(64).
MAX_REQUEST_ID_LENGTH = 64
MAX_MODEL_SEARCH_LENGTH = 200

CSV_COLUMNS = (
    "time_utc",
    "request_id",
    "team",
    "project",
    "key",
    "endpoint",
    "model",
    "provider",
    "status",
    "error_type",
    "stream",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
)


@dataclass(frozen=True)
class ExplorerFilters:
    """Filters of the Usage explorer. An empty tuple means no filter on that column."""

    start: datetime
    end: datetime
    organization_id: int | None = None
    team_ids: tuple[int, ...] = ()
    # Also list calls that no key authenticated, which have no team.
    include_no_team: bool = False
    project_ids: tuple[int, ...] = ()
    key_ids: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    # A key of STATUS_CLASSES or one status code such as "429".
    status: str = "all"
    request_id: str = ""
    # Case-insensitive substring of the model id.
    model_search: str = ""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            if getattr(self, name).tzinfo is None:
                raise InvalidRequestError(f"{name} must be a timezone-aware datetime")
        check_status(self.status)
        if len(self.request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidRequestError(
                f"request id is longer than {MAX_REQUEST_ID_LENGTH} characters, so no call has it",
                param="request_id",
            )
        if len(self.model_search) > MAX_MODEL_SEARCH_LENGTH:
            raise InvalidRequestError(
                f"model search is longer than {MAX_MODEL_SEARCH_LENGTH} characters",
                param="model",
            )


def require_filters(actor: Actor, filters: ExplorerFilters) -> None:
    """Raise PermissionDeniedError unless the actor may read the filters' organization.

    Filters without an organization cover every organization, and calls
    without a valid key (`include_no_team`) belong to none, so only
    installation staff may use either.
    """
    access.require_organization(actor, filters.organization_id, "usage.read")
    if filters.include_no_team and not actor.is_staff:
        raise PermissionDeniedError(
            f"user {actor.username!r} may not read calls without a valid key: they belong "
            "to no organization, so only installation staff may read them.",
            code="organization_not_member",
        )


def check_status(status: str) -> str:
    """Return `status` if it is a status class or a 3-digit HTTP status code, else raise."""
    if status in STATUS_CLASSES:
        return status
    if len(status) == 3 and status.isascii() and status.isdigit() and 100 <= int(status) <= 599:
        return status
    raise InvalidRequestError(
        f"status must be one of {', '.join(STATUS_CLASSES)} or an HTTP status code "
        f"from 100 to 599; got {status!r}",
        param="status",
    )


def parse_ids(value: str | Iterable[str], param: str) -> tuple[int, ...]:
    """Parse ids from a query parameter: "3", "3,7" or a list of such strings.

    Raises InvalidRequestError for anything but positive decimal integers,
    so a crafted URL is rejected instead of reaching a query.
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    ids = []
    for part in parts:
        text = part.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) == 0:
            raise InvalidRequestError(
                f"{param} must be a comma-separated list of numeric ids; got {part!r}",
                param=param,
            )
        ids.append(int(text))
    return tuple(ids)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _placeholders(values: tuple[Any, ...]) -> str:
    return ", ".join("?" for _ in values)


def _dimension_conditions(filters: ExplorerFilters, alias: str) -> tuple[list[str], list[Any]]:
    """Return conditions on the columns that usage_events and the rollups share, and values."""
    conditions: list[str] = []
    params: list[Any] = []
    in_organization = f"{alias}.organization_id = ?"
    if filters.team_ids:
        team_match = f"{alias}.team_id IN ({_placeholders(filters.team_ids)})"
        params += filters.team_ids
        if filters.organization_id is not None:
            team_match = f"({team_match} AND {in_organization})"
            params.append(filters.organization_id)
        if filters.include_no_team:
            team_match = f"({team_match} OR {alias}.team_id IS NULL)"
        conditions.append(team_match)
    elif filters.include_no_team:
        conditions.append(f"{alias}.team_id IS NULL")
    elif filters.organization_id is not None:
        conditions.append(in_organization)
        params.append(filters.organization_id)
    for column, values in (
        ("project_id", filters.project_ids),
        ("api_key_id", filters.key_ids),
        ("model", filters.models),
    ):
        if values:
            conditions.append(f"{alias}.{column} IN ({_placeholders(values)})")
            params += values
    if filters.model_search:
        conditions.append(f"{alias}.model ILIKE ? ESCAPE '\\'")
        params.append(f"%{_escape_like(filters.model_search)}%")
    return conditions, params


def _conditions(filters: ExplorerFilters, start: datetime, end: datetime) -> tuple[str, list[Any]]:
    """Return the WHERE clause on usage_events `e` for calls in [start, end), and its values."""
    conditions, params = _dimension_conditions(filters, "e")
    conditions[:0] = ["e.created_at >= ?", "e.created_at < ?"]
    params[:0] = [start, end]
    if filters.request_id:
        conditions.append("e.request_id = ?")
        params.append(filters.request_id)
    if filters.status in _STATUS_RANGES:
        conditions.append("e.status_code BETWEEN ? AND ?")
        params += _STATUS_RANGES[filters.status]
    elif filters.status != "all":
        conditions.append("e.status_code = ?")
        params.append(int(filters.status))
    return " AND ".join(conditions), params


_ROWS_SQL = """
SELECT
    e.created_at AS time_utc,
    e.request_id,
    t.name AS team,
    p.name AS project,
    k.name AS key_name,
    k.prefix,
    k.last4,
    e.endpoint,
    e.model,
    e.provider,
    e.status_code AS status,
    e.error_type,
    e.stream,
    e.attempts,
    e.prompt_tokens,
    e.completion_tokens,
    e.cached_tokens,
    e.cost_usd,
    e.latency_ms,
    e.ttft_ms
FROM pg.public.usage_events AS e
LEFT JOIN pg.public.teams AS t ON t.id = e.team_id
LEFT JOIN pg.public.projects AS p ON p.id = e.project_id
LEFT JOIN pg.public.api_keys AS k ON k.id = e.api_key_id
WHERE {where}
"""


def _display_row(row: Any) -> list[Any]:
    """Turn one row of _ROWS_SQL into the values of CSV_COLUMNS, with names for ids."""
    time_utc, request_id, team, project, key_name, prefix, last4, endpoint, model, *rest = row
    return [
        time_utc,
        request_id,
        team or NO_TEAM,
        project or NO_PROJECT,
        key_label(key_name, prefix, last4),
        endpoint,
        model or NO_MODEL,
        *rest,
    ]


# Positions in CSV_COLUMNS of values that people type in: names and model ids.
_USER_TEXT_POSITIONS = tuple(
    CSV_COLUMNS.index(name) for name in ("team", "project", "key", "model")
)
_COST_POSITION = CSV_COLUMNS.index("cost_usd")


def _csv_row(row: Any) -> list[Any]:
    """Return the CSV cells of one row: UTC ISO time, fixed-point cost, names safe as text."""
    values = _display_row(row)
    values[0] = values[0].astimezone(UTC).isoformat()
    for position in _USER_TEXT_POSITIONS:
        values[position] = text_cell(values[position])
    values[_COST_POSITION] = format(values[_COST_POSITION], "f")
    return values


def _arrow_rows(data: pa.Table | pa.RecordBatch) -> list[tuple[Any, ...]]:
    """Return the rows as tuples. DECIMAL becomes Decimal and TIMESTAMPTZ an aware datetime.

    DuckDB's own fetchall() needs pytz for TIMESTAMPTZ, and pyarrow does not.
    """
    return list(zip(*data.to_pydict().values(), strict=True))


def _whole_hour(at: datetime) -> bool:
    return at.minute == 0 and at.second == 0 and at.microsecond == 0


def _counts_from_rollups(filters: ExplorerFilters) -> bool:
    """Return whether the rollups hold the exact count of the filters' matches.

    They do when every filter is on a rollup dimension and the range starts
    and ends on whole UTC hours.
    """
    return (
        filters.status == "all"
        and not filters.request_id
        and _whole_hour(filters.start.astimezone(UTC))
        and _whole_hour(filters.end.astimezone(UTC))
    )


def count_rows(con: duckdb.DuckDBPyConnection, filters: ExplorerFilters, cap: int) -> int:
    """Count matching calls, stopping at `cap` so a huge range stays cheap to count."""
    if _counts_from_rollups(filters):
        conditions, params = _dimension_conditions(filters, "h")
        selects = []
        values: list[Any] = []
        for table, start, end in split_by_table(TimeRange(filters.start, filters.end)):
            where = " AND ".join(["h.bucket_start >= ?", "h.bucket_start < ?", *conditions])
            selects.append(f"SELECT h.requests FROM {table} AS h WHERE {where}")
            values += [start, end, *params]
        row = con.execute(
            f"SELECT coalesce(sum(requests), 0)::BIGINT FROM ({' UNION ALL '.join(selects)})",
            values,
        ).fetchone()
    else:
        where, values = _conditions(filters, filters.start, filters.end)
        row = con.execute(
            "SELECT count(*) FROM "
            f"(SELECT 1 FROM pg.public.usage_events AS e WHERE {where} LIMIT ?)",
            [*values, cap],
        ).fetchone()
    assert row is not None
    return min(int(row[0]), cap)


def fetch_rows(
    con: duckdb.DuckDBPyConnection, filters: ExplorerFilters, limit: int = DEFAULT_PAGE_ROWS
) -> pd.DataFrame:
    """Return the newest `limit` matching calls as a frame with CSV_COLUMNS."""
    window = FIRST_WINDOW
    while True:
        whole_range = window >= filters.end - filters.start
        start = filters.start if whole_range else filters.end - window
        where, params = _conditions(filters, start, filters.end)
        sql = _ROWS_SQL.format(where=where) + "ORDER BY e.created_at DESC, e.request_id LIMIT ?"
        rows = _arrow_rows(con.execute(sql, [*params, limit]).to_arrow_table())
        # Every call before `start` is older than these rows, so once the
        # window contains `limit` rows they are the newest of the whole range.
        if len(rows) >= limit or start == filters.start:
            break
        window *= WINDOW_GROWTH
    return pd.DataFrame([_display_row(row) for row in rows], columns=list(CSV_COLUMNS))


def _export_slices(filters: ExplorerFilters) -> Iterator[tuple[datetime, datetime]]:
    start = filters.start
    while start < filters.end:
        end = min(start + EXPORT_SLICE, filters.end)
        yield start, end
        start = end


def write_csv(
    con: duckdb.DuckDBPyConnection,
    filters: ExplorerFilters,
    out: TextIO,
    *,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> int:
    """Write every matching call to `out` as CSV, oldest first; return the row count."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    written = 0
    for start, end in _export_slices(filters):
        where, params = _conditions(filters, start, end)
        sql = _ROWS_SQL.format(where=where) + "ORDER BY e.created_at, e.request_id"
        reader = con.execute(sql, params).fetch_record_batch(chunk_rows)
        for batch in reader:
            for row in _arrow_rows(batch):
                writer.writerow(_csv_row(row))
            written += batch.num_rows
    return written


def export_csv_file(
    con: duckdb.DuckDBPyConnection,
    filters: ExplorerFilters,
    *,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> BinaryIO:
    """Write the export to an unlinked temporary file and return it open for reading.

    The export runs on its own cursor of `con`, so it may run in another thread.
    """

    def write(out: TextIO) -> None:
        with con.cursor() as cursor:
            written = write_csv(cursor, filters, out, chunk_rows=chunk_rows)
        logger.info("exported %d usage rows to CSV", written)

    return spool_to_file(write)
