"""Latency histogram rollups against real Postgres: trigger, backfill and estimates.

Estimated percentiles are compared with exact percentiles computed in
Python, the way DuckDB's quantile_cont computes them, from the same seeded
calls. The documented bound is 10% of the exact value.
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from sqlalchemy import Engine, insert, select, text

from gateway_core import analytics, latency_histogram, usage_stats
from gateway_core.config import PROJECT_ROOT
from gateway_core.latency_histogram import RELATIVE_ERROR, bucket_bounds, estimate_percentile
from gateway_core.schema import organizations, usage_events
from gateway_core.time_ranges import TimeRange
from gateway_core.usage_stats import UsageScope
from tests.test_reports import MODEL_A, MODEL_B, Seeded, seed_directory, usage_row

START = datetime(2026, 3, 2, tzinfo=UTC)
DAYS = 3
THREE_DAYS = TimeRange(START, START + timedelta(days=DAYS))


def exact_percentile(values: list[float], q: float) -> float | None:
    """Return the q-quantile with linear interpolation, as quantile_cont does."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


def assert_within_bound(estimate: float | None, exact: float | None, label: str) -> None:
    assert exact is not None, label
    assert estimate is not None, label
    assert abs(estimate - exact) <= RELATIVE_ERROR * exact + 1e-9, (label, estimate, exact)


@pytest.fixture
def con(database_url: str) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = analytics.connect(database_url)
    yield connection
    connection.close()


def generate_calls(seeded: Seeded, organization_id: int, count: int, seed: int) -> list[dict]:
    """Return calls over THREE_DAYS with log-normal latencies, errors and streamed calls."""
    rng = random.Random(seed)
    calls = []
    for index in range(count):
        team, key, project = rng.choice(
            [
                (seeded.lab, seeded.folding_key, seeded.folding),
                (seeded.lab, seeded.lab_key, None),
                (seeded.other, seeded.other_key, None),
            ]
        )
        latency = max(0, round(rng.lognormvariate(6.5, 0.9)))
        streamed = rng.random() < 0.6
        calls.append(
            usage_row(
                f"h{seed}-{index}",
                START + timedelta(seconds=rng.uniform(0, DAYS * 86400)),
                organization_id=organization_id,
                team_id=team,
                key_id=key,
                project_id=project,
                model=rng.choice([MODEL_A, MODEL_B]),
                status=500 if rng.random() < 0.1 else 200,
                latency=latency,
                ttft=max(0, round(latency * rng.uniform(0.05, 0.5))) if streamed else None,
            )
        )
    return calls


def insert_calls(engine: Engine, calls: list[dict], per_statement: int = 500) -> None:
    with engine.begin() as conn:
        for first in range(0, len(calls), per_statement):
            conn.execute(insert(usage_events), calls[first : first + per_statement])


@pytest.fixture
def seeded_calls(engine: Engine) -> tuple[Seeded, int, list[dict]]:
    seeded = seed_directory(engine)
    with engine.connect() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()
    calls = generate_calls(seeded, organization_id, 3000, seed=7)
    insert_calls(engine, calls)
    return seeded, organization_id, calls


def succeeded(calls: list[dict], column: str, time_range: TimeRange, **equal: object) -> list:
    return [
        call[column]
        for call in calls
        if call["status_code"] < 400
        and call[column] is not None
        and time_range.start <= call["created_at"] < time_range.end
        and all(call[name] == value for name, value in equal.items())
    ]


def histogram_totals(engine: Engine, table: str) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT coalesce(sum(c), 0) FROM "
                f"(SELECT unnest(latency_counts) AS c FROM {table}) AS l "
                "UNION ALL SELECT coalesce(sum(c), 0) FROM "
                f"(SELECT unnest(ttft_counts) AS c FROM {table}) AS t"
            )
        ).all()
    return int(row[0][0]), int(row[1][0])


def test_bucket_bounds_grow_by_ten_percent() -> None:
    assert bucket_bounds(1) == (0.0, 1.0)
    assert bucket_bounds(2) == (1.0, 1.1)
    lower, upper = bucket_bounds(100)
    assert upper == pytest.approx(lower * 1.1)
    last_lower, last_upper = bucket_bounds(latency_histogram.POSITIONS)
    assert last_lower == last_upper
    assert last_lower > 600_000


def test_estimate_percentile_in_bucket() -> None:
    counts = [0] * latency_histogram.POSITIONS
    # Four calls in the bucket [1.1^50, 1.1^51) ms at position 52.
    counts[51] = 4
    lower, upper = bucket_bounds(52)

    estimate = estimate_percentile(counts, 0.5)

    assert estimate is not None
    assert lower < estimate < upper
    assert estimate_percentile([0] * 10, 0.5) is None


def test_estimates_within_bound_of_exact(
    con: duckdb.DuckDBPyConnection, seeded_calls: tuple[Seeded, int, list[dict]]
) -> None:
    seeded, organization_id, calls = seeded_calls
    scopes = [
        (UsageScope(organization_id), {}),
        (UsageScope(organization_id, team_id=seeded.lab), {"team_id": seeded.lab}),
        (
            UsageScope(organization_id, team_id=seeded.lab, project_id=seeded.folding),
            {"team_id": seeded.lab, "project_id": seeded.folding},
        ),
    ]
    # Whole days, whole hours inside a day, and a range with partial-hour edges.
    ranges = [
        THREE_DAYS,
        TimeRange(START + timedelta(hours=5), START + timedelta(hours=41)),
        TimeRange(START + timedelta(hours=3, minutes=30), START + timedelta(hours=50, minutes=7)),
    ]
    for scope, equal in scopes:
        for time_range in ranges:
            result = usage_stats.latency_percentiles(con, scope, time_range)
            assert result.estimated, (scope, time_range)
            latencies = succeeded(calls, "latency_ms", time_range, **equal)
            ttfts = succeeded(calls, "ttft_ms", time_range, **equal)
            label = f"{scope} {time_range}"
            assert_within_bound(result.latency_p50, exact_percentile(latencies, 0.5), label)
            assert_within_bound(result.latency_p95, exact_percentile(latencies, 0.95), label)
            assert_within_bound(result.ttft_p50, exact_percentile(ttfts, 0.5), label)
            assert_within_bound(result.ttft_p95, exact_percentile(ttfts, 0.95), label)


def test_short_partial_hour_range_exact(
    con: duckdb.DuckDBPyConnection, seeded_calls: tuple[Seeded, int, list[dict]]
) -> None:
    _, organization_id, calls = seeded_calls
    time_range = TimeRange(START + timedelta(minutes=10), START + timedelta(hours=3, minutes=50))

    result = usage_stats.latency_percentiles(con, UsageScope(organization_id), time_range)

    latencies = succeeded(calls, "latency_ms", time_range)
    assert not result.estimated
    assert result.latency_p50 == pytest.approx(exact_percentile(latencies, 0.5))
    assert result.latency_p95 == pytest.approx(exact_percentile(latencies, 0.95))


def test_model_stats_estimates_per_model(
    con: duckdb.DuckDBPyConnection, seeded_calls: tuple[Seeded, int, list[dict]]
) -> None:
    _, organization_id, calls = seeded_calls

    stats = usage_stats.model_stats(con, UsageScope(organization_id), THREE_DAYS)

    assert sorted(stats["model"]) == sorted([MODEL_A, MODEL_B])
    for row in stats.itertuples():
        latencies = succeeded(calls, "latency_ms", THREE_DAYS, model=row.model)
        ttfts = succeeded(calls, "ttft_ms", THREE_DAYS, model=row.model)
        assert_within_bound(row.latency_p50, exact_percentile(latencies, 0.5), row.model)
        assert_within_bound(row.latency_p95, exact_percentile(latencies, 0.95), row.model)
        assert_within_bound(row.latency_p99, exact_percentile(latencies, 0.99), row.model)
        assert_within_bound(row.ttft_p50, exact_percentile(ttfts, 0.5), row.model)


def test_trigger_counts_each_successful_call_once(
    engine: Engine, seeded_calls: tuple[Seeded, int, list[dict]]
) -> None:
    seeded, organization_id, calls = seeded_calls
    more = generate_calls(seeded, organization_id, 400, seed=8)
    insert_calls(engine, more, per_statement=37)
    everything = calls + more
    latencies = succeeded(everything, "latency_ms", THREE_DAYS)
    ttfts = succeeded(everything, "ttft_ms", THREE_DAYS)

    for table in ("usage_latency_hourly", "usage_latency_daily"):
        assert histogram_totals(engine, table) == (len(latencies), len(ttfts)), table


def test_backfill_matches_trigger(
    engine: Engine, seeded_calls: tuple[Seeded, int, list[dict]]
) -> None:
    path = PROJECT_ROOT / "gateway_core/migrations/versions/0021_add_latency_histograms.py"
    spec = importlib.util.spec_from_file_location("migration_0021", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    compare = "SELECT count(*) FROM (SELECT * FROM {0} EXCEPT ALL SELECT * FROM {1}) AS missing"

    for table, unit in migration.TABLES:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TEMP TABLE backfill (LIKE {table} INCLUDING ALL)"))
            conn.execute(text(migration.histogram_insert("backfill", unit, "usage_events")))
            rows = conn.execute(text("SELECT count(*) FROM backfill")).scalar_one()
            only_backfill = conn.execute(text(compare.format("backfill", table))).scalar_one()
            only_trigger = conn.execute(text(compare.format(table, "backfill"))).scalar_one()
            conn.execute(text("DROP TABLE backfill"))
        assert rows > 0, table
        assert only_backfill == 0, table
        assert only_trigger == 0, table


def test_trigger_after_partition_created(
    engine: Engine, con: duckdb.DuckDBPyConnection, seeded_calls: tuple[Seeded, int, list[dict]]
) -> None:
    seeded, organization_id, _ = seeded_calls
    # No partition exists for this month yet, so the first calls go to the
    # DEFAULT partition and move when the month's partition is created.
    month = datetime(2031, 5, 1, tzinfo=UTC)
    first = [
        usage_row(
            f"late-{i}",
            month + timedelta(hours=i),
            organization_id=organization_id,
            team_id=seeded.other,
            key_id=seeded.other_key,
            project_id=None,
            latency=1000 + i,
        )
        for i in range(5)
    ]
    insert_calls(engine, first)
    with engine.begin() as conn:
        conn.execute(text("SELECT usage_events_create_partition(:month)"), {"month": month.date()})
    second = [
        usage_row(
            f"late-{i}",
            month + timedelta(hours=i),
            organization_id=organization_id,
            team_id=seeded.other,
            key_id=seeded.other_key,
            project_id=None,
            latency=5000,
        )
        for i in range(5, 8)
    ]
    insert_calls(engine, second)
    with engine.connect() as conn:
        partition = conn.execute(
            text("SELECT tableoid::regclass::text FROM usage_events WHERE request_id = 'late-7'")
        ).scalar_one()
    may = TimeRange(month, month + timedelta(days=1))

    result = usage_stats.latency_percentiles(con, UsageScope(organization_id), may)

    assert partition == "usage_events_y2031m05"
    latencies = [call["latency_ms"] for call in first + second]
    assert_within_bound(result.latency_p50, exact_percentile(latencies, 0.5), "p50")
    counts = latency_histogram.read_counts(con, {"organization_id": organization_id}, may)
    assert sum(counts[()].latency) == 8


@pytest.mark.parametrize(
    "hostile",
    ["1 OR 1=1", "1; DROP TABLE usage_latency_hourly; --", "' OR ''='", "%", "-1"],
)
def test_hostile_filter_values(
    engine: Engine,
    con: duckdb.DuckDBPyConnection,
    seeded_calls: tuple[Seeded, int, list[dict]],
    hostile: str,
) -> None:
    _, organization_id, _ = seeded_calls
    equal = {"organization_id": organization_id, "model": hostile}

    counts = latency_histogram.read_counts(con, equal, THREE_DAYS)

    assert counts == {}
    scope = UsageScope(hostile)  # type: ignore[arg-type]
    try:
        result = usage_stats.latency_percentiles(con, scope, THREE_DAYS)
    except duckdb.ConversionException:
        result = None
    if result is not None:
        assert result.latency_p50 is None
        assert result.ttft_p50 is None
    assert histogram_totals(engine, "usage_latency_hourly")[0] > 0
