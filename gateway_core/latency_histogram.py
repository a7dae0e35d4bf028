"""Latency percentiles estimated from the histogram rollups.

`usage_latency_hourly` and `usage_latency_daily` (migration 0021) count the
successful calls per UTC hour or day, organization, team, project, model
and provider in fixed log-spaced buckets of latency and of time to first
token. A count array is indexed by bucket position, from 1:

- position 1 is [0, 1) ms,
- position p from 2 to 141 is [1.1^(p-2), 1.1^(p-1)) ms, so each bucket is
  10% wider at its top than at its bottom,
- position 142 contains every value of at least 1.1^140 ms (about 621 s).

An estimated percentile follows DuckDB's `quantile_cont`: it interpolates
linearly between the two order statistics around rank q * (n - 1), and
each order statistic is placed inside its bucket by its rank among the
bucket's calls. Each placed value lies in the same bucket as the true
one, so the estimate is within 10% of the exact percentile for values of
1 ms or more, and within 1 ms below that. Percentiles that fall in the last
bucket are returned as its lower bound, 1.1^140 ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import duckdb

from gateway_core.rollups import rollup_source
from gateway_core.time_ranges import TimeRange

GROWTH = 1.1
# Array positions of the buckets; the SQL function usage_latency_position
# of migration 0021 maps milliseconds to the same positions.
POSITIONS = 142
# Relative error bound of an estimate of a value of at least 1 ms.
RELATIVE_ERROR = GROWTH - 1
HOURLY = "pg.public.usage_latency_hourly"
DAILY = "pg.public.usage_latency_daily"

# DuckDB expression of the bucket position of the milliseconds in `{0}`.
POSITION_SQL = (
    "CASE WHEN {0} IS NULL THEN NULL WHEN {0} < 1 THEN 1 "
    "ELSE least(142, floor(ln({0}) / ln(1.1))::INTEGER + 2) END"
)


def bucket_bounds(position: int) -> tuple[float, float]:
    """Return the lower and upper bound in milliseconds of a bucket position."""
    if position <= 1:
        return 0.0, 1.0
    lower = GROWTH ** (position - 2)
    if position >= POSITIONS:
        return lower, lower
    return lower, GROWTH ** (position - 1)


def _order_statistic(counts: Sequence[int], rank: int) -> float:
    """Estimate the value of the 0-based `rank`-th smallest call."""
    before = 0
    for index, count in enumerate(counts):
        if rank < before + count:
            lower, upper = bucket_bounds(index + 1)
            return lower + (upper - lower) * (rank - before + 0.5) / count
        before += count
    raise ValueError(f"rank {rank} is not below the histogram's total {before}")


def estimate_percentile(counts: Sequence[int], q: float) -> float | None:
    """Estimate the q-quantile (0 to 1) from counts per bucket position.

    `counts[i]` is the count of position i + 1. Returns None when the
    histogram is empty.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * (total - 1)
    below = math.floor(rank)
    value = _order_statistic(counts, below)
    if rank == below:
        return value
    above = _order_statistic(counts, below + 1)
    return value + (above - value) * (rank - below)


@dataclass(frozen=True)
class Histograms:
    """Counts per bucket position (index 0 is position 1) of successful calls."""

    latency: list[int]
    ttft: list[int]


def whole_hours(time_range: TimeRange) -> TimeRange | None:
    """Return the whole UTC hours inside the range, or None when it contains none."""
    start = time_range.start.astimezone(UTC)
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    last = time_range.end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return TimeRange(first, last) if first < last else None


def _histogram_select(source: str, groups: str) -> str:
    selects = [
        f"SELECT {groups}'{kind}' AS kind, generate_subscripts({column}, 1) AS position, "
        f"unnest({column}) AS n FROM ({source}) AS h"
        for kind, column in (("latency", "latency_counts"), ("ttft", "ttft_counts"))
    ]
    return "\nUNION ALL\n".join(selects)


def _events_select(
    equal: dict[str, Any], time_range: TimeRange, groups: str
) -> tuple[str, list[Any]]:
    """Return the bucket counts of the successful calls in the range, from usage_events."""
    conditions = ["e.created_at >= ?", "e.created_at < ?", "e.status_code < 400"]
    params: list[Any] = [time_range.start, time_range.end]
    for column, value in equal.items():
        if value is not None:
            conditions.append(f"e.{column} = ?")
            params.append(value)
    where = " AND ".join(conditions)
    selects = [
        f"SELECT {groups}'{kind}' AS kind, {POSITION_SQL.format('e.' + column)} AS position, "
        f"count(*) AS n FROM pg.public.usage_events AS e WHERE {where} AND e.{column} IS NOT NULL "
        f"GROUP BY ALL"
        for kind, column in (("latency", "latency_ms"), ("ttft", "ttft_ms"))
    ]
    return "\nUNION ALL\n".join(selects), params + params


def read_counts(
    con: duckdb.DuckDBPyConnection,
    equal: dict[str, Any],
    time_range: TimeRange,
    group_columns: Sequence[str] = (),
) -> dict[tuple[Any, ...], Histograms]:
    """Return latency and time-to-first-token counts per group of `group_columns`.

    The whole UTC hours of the range come from the histogram rollups. Calls
    in the partial hours at its edges come from usage_events and are counted
    in the same buckets. `equal` maps rollup dimensions to the value they
    must equal, skipping None values.
    """
    groups = "".join(f"{column}, " for column in group_columns)
    selects: list[str] = []
    params: list[Any] = []
    inner = whole_hours(time_range)
    edges = [time_range]
    if inner is not None:
        source, source_params = rollup_source(
            ("latency_counts", "ttft_counts", *group_columns),
            equal,
            inner,
            tables=(DAILY, HOURLY),
        )
        selects.append(_histogram_select(source, groups))
        params += source_params + source_params
        edges = [
            TimeRange(time_range.start, inner.start),
            TimeRange(inner.end, time_range.end),
        ]
    for edge in edges:
        if edge.start < edge.end:
            select, select_params = _events_select(equal, edge, groups)
            selects.append(select)
            params += select_params
    rows = con.execute(
        f"""
        SELECT * EXCLUDE (n), sum(n)::BIGINT AS n
        FROM ({" UNION ALL ".join(f"({select})" for select in selects)})
        GROUP BY ALL
        """,
        params,
    ).fetchall()
    histograms: dict[tuple[Any, ...], Histograms] = {}
    for *group, kind, position, count in rows:
        empty = Histograms([0] * POSITIONS, [0] * POSITIONS)
        histogram = histograms.setdefault(tuple(group), empty)
        target = histogram.latency if kind == "latency" else histogram.ttft
        target[position - 1] += count
    return histograms
