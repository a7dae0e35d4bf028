"""DuckDB SQL that reads the usage rollups of the attached Postgres database.

`usage_daily` and `usage_hourly` (migration 0005) sum `usage_events` per
UTC day and per UTC hour and per organization, team, project, key, model
and provider. A day row equals the sum of the 24 hour rows it covers, so
a range can take its whole UTC days from `usage_daily` and only the hours
at its edges from `usage_hourly`.

The SQL built here contains only column and table names from this module's
callers. Every value is a `?` placeholder, returned with the list of values
to bind in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway_core.time_ranges import TimeRange

DAILY = "pg.public.usage_daily"
HOURLY = "pg.public.usage_hourly"
# Dimensions of both rollups that a caller may filter on with equality.
DIMENSIONS = ("organization_id", "team_id", "project_id", "api_key_id", "model", "provider")


def utc_midnight_on_or_after(at: datetime) -> datetime:
    midnight = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == at else midnight + timedelta(days=1)


def split_by_table(time_range: TimeRange) -> list[tuple[str, datetime, datetime]]:
    """Split the range into (rollup table, start, end) parts.

    Whole UTC days come from the daily rollup, and the hours before the first
    and after the last whole day from the hourly rollup. Like a query of the
    hourly rollup alone, the parts count every hour bucket that starts in
    [start, end).
    """
    first_day = utc_midnight_on_or_after(time_range.start)
    last_day = time_range.end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if first_day >= last_day:
        return [(HOURLY, time_range.start, time_range.end)]
    parts = []
    if time_range.start < first_day:
        parts.append((HOURLY, time_range.start, first_day))
    parts.append((DAILY, first_day, last_day))
    if last_day < time_range.end:
        parts.append((HOURLY, last_day, time_range.end))
    return parts


def rollup_source(
    columns: Sequence[str],
    equal: dict[str, Any],
    time_range: TimeRange,
    *,
    hourly_only: bool = False,
    tables: tuple[str, str] = (DAILY, HOURLY),
) -> tuple[str, list[Any]]:
    """Return a UNION ALL of rollup rows in the range, and the values to bind.

    `equal` maps dimension columns to the value they must equal. None values
    are skipped, so an unset team filter matches every team. Set
    `hourly_only` when the caller groups by local hours, which day rows
    would hide. `tables` names the daily and the hourly table to read,
    which may be another pair with the same bucket_start and dimensions.
    """
    unknown = set(equal) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"not a rollup dimension: {', '.join(sorted(unknown))}")
    parts = [(HOURLY, time_range.start, time_range.end)]
    if not hourly_only:
        parts = split_by_table(time_range)
    table_names = {DAILY: tables[0], HOURLY: tables[1]}
    selects = []
    params: list[Any] = []
    for part_table, start, end in parts:
        table = table_names[part_table]
        conditions = ["bucket_start >= ?", "bucket_start < ?"]
        params += [start, end]
        for column, value in equal.items():
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        selects.append(f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(conditions)}")
    return "\nUNION ALL\n".join(selects), params
