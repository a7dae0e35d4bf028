"""Filtered lists of individual calls for the Usage explorer, and their CSV export.

The export reads `usage_events` through a server-side cursor and writes the
CSV in chunks, so only one chunk of rows is in Python memory at a time.
Filter values are bound parameters, and the LIKE pattern of the model search
escapes its wildcards.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import pandas as pd
from sqlalchemy import ColumnElement, Connection, Engine, Select, and_, func, or_, select

from gateway_core.csv_cells import spool_to_file, text_cell
from gateway_core.errors import InvalidRequestError
from gateway_core.schema import api_keys, projects, teams, usage_events
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


def _conditions(filters: ExplorerFilters) -> list[ColumnElement[bool]]:
    e = usage_events.c
    conditions: list[ColumnElement[bool]] = [
        e.created_at >= filters.start,
        e.created_at < filters.end,
    ]
    in_organization = (
        e.organization_id == filters.organization_id
        if filters.organization_id is not None
        else None
    )
    if filters.team_ids:
        team_match = e.team_id.in_(filters.team_ids)
        if in_organization is not None:
            team_match = and_(team_match, in_organization)
        conditions.append(
            or_(team_match, e.team_id.is_(None)) if filters.include_no_team else team_match
        )
    elif filters.include_no_team:
        conditions.append(e.team_id.is_(None))
    elif in_organization is not None:
        conditions.append(in_organization)
    if filters.project_ids:
        conditions.append(e.project_id.in_(filters.project_ids))
    if filters.key_ids:
        conditions.append(e.api_key_id.in_(filters.key_ids))
    if filters.models:
        conditions.append(e.model.in_(filters.models))
    if filters.model_search:
        pattern = f"%{_escape_like(filters.model_search)}%"
        conditions.append(e.model.ilike(pattern, escape="\\"))
    if filters.request_id:
        conditions.append(e.request_id == filters.request_id)
    if filters.status in _STATUS_RANGES:
        low, high = _STATUS_RANGES[filters.status]
        conditions.append(e.status_code.between(low, high))
    elif filters.status != "all":
        conditions.append(e.status_code == int(filters.status))
    return conditions


def _rows_query(filters: ExplorerFilters) -> Select:
    e = usage_events.c
    return (
        select(
            e.created_at.label("time_utc"),
            e.request_id,
            teams.c.name.label("team"),
            projects.c.name.label("project"),
            api_keys.c.name.label("key_name"),
            api_keys.c.prefix,
            api_keys.c.last4,
            e.endpoint,
            e.model,
            e.provider,
            e.status_code.label("status"),
            e.error_type,
            e.stream,
            e.attempts,
            e.prompt_tokens,
            e.completion_tokens,
            e.cached_tokens,
            e.cost_usd,
            e.latency_ms,
            e.ttft_ms,
        )
        .select_from(
            usage_events.outerjoin(teams, teams.c.id == e.team_id)
            .outerjoin(projects, projects.c.id == e.project_id)
            .outerjoin(api_keys, api_keys.c.id == e.api_key_id)
        )
        .where(*_conditions(filters))
    )


def _display_row(row: Any) -> list[Any]:
    """Turn one row of _rows_query into the values of CSV_COLUMNS, with names for ids."""
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


def count_rows(conn: Connection, filters: ExplorerFilters, cap: int) -> int:
    """Count matching calls, stopping at `cap` so a huge range stays cheap to count."""
    matching = select(usage_events.c.request_id).where(*_conditions(filters)).limit(cap)
    return conn.execute(select(func.count()).select_from(matching.subquery())).scalar_one()


def fetch_rows(
    conn: Connection, filters: ExplorerFilters, limit: int = DEFAULT_PAGE_ROWS
) -> pd.DataFrame:
    """Return the newest `limit` matching calls as a frame with CSV_COLUMNS."""
    query = _rows_query(filters).order_by(
        usage_events.c.created_at.desc(), usage_events.c.request_id
    )
    rows = [_display_row(row) for row in conn.execute(query.limit(limit))]
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def write_csv(
    conn: Connection,
    filters: ExplorerFilters,
    out: TextIO,
    *,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> int:
    """Write every matching call to `out` as CSV, oldest first; return the row count.

    Rows arrive from a server-side cursor `chunk_rows` at a time.
    """
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    query = _rows_query(filters).order_by(usage_events.c.created_at, usage_events.c.request_id)
    written = 0
    result = conn.execution_options(yield_per=chunk_rows).execute(query)
    for chunk in result.partitions():
        for row in chunk:
            writer.writerow(_csv_row(row))
        written += len(chunk)
    return written


def export_csv_file(
    engine: Engine, filters: ExplorerFilters, *, chunk_rows: int = EXPORT_CHUNK_ROWS
) -> BinaryIO:
    """Write the export to an unlinked temporary file and return it open for reading."""

    def write(out: TextIO) -> None:
        with engine.connect() as conn:
            written = write_csv(conn, filters, out, chunk_rows=chunk_rows)
        logger.info("exported %d usage rows to CSV", written)

    return spool_to_file(write)
