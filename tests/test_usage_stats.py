"""DuckDB queries of the analytics pages against real Postgres: rollups, explorer and export.

Totals are compared with sums of the seeded calls computed by hand. The
range of March 8 to 10 in New York starts and ends inside UTC days, so it
reads whole days from usage_daily and the edge hours from usage_hourly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import duckdb
import pytest
from sqlalchemy import Engine

from gateway_core import analytics, explorer, usage_stats
from gateway_core.errors import InvalidRequestError
from gateway_core.explorer import ExplorerFilters
from gateway_core.rollups import DAILY, HOURLY, rollup_source, split_by_table
from gateway_core.time_ranges import TimeRange, day_range
from gateway_core.usage_stats import UsageScope
from tests.test_reports import MODEL_A, MODEL_B, seed_calls

ZONE = "America/New_York"
# Local March 8 to 10: 2026-03-08T05:00Z to 2026-03-11T04:00Z (DST starts on March 8).
MARCH_8_TO_10 = day_range(date(2026, 3, 8), date(2026, 3, 11), ZONE)
# Every seeded call, "early" and "after" included.
ALL_CALLS = TimeRange(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 12, tzinfo=UTC))
OLDEST_FIRST = ["early", "f0", "f1", "f2", "v1", "o1", "f3", "t1", "after"]


@pytest.fixture
def con(database_url: str) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = analytics.connect(database_url)
    yield connection
    connection.close()


def organization_id(con: duckdb.DuckDBPyConnection) -> int:
    return usage_stats.list_organizations(con)[0].id


def test_split_by_table_parts() -> None:
    parts = split_by_table(MARCH_8_TO_10)

    assert parts == [
        (HOURLY, MARCH_8_TO_10.start, datetime(2026, 3, 9, tzinfo=UTC)),
        (DAILY, datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)),
        (HOURLY, datetime(2026, 3, 11, tzinfo=UTC), MARCH_8_TO_10.end),
    ]


def test_split_by_table_short_and_whole_days() -> None:
    within_day = TimeRange(datetime(2026, 3, 9, 5, tzinfo=UTC), datetime(2026, 3, 9, 9, tzinfo=UTC))
    whole_days = TimeRange(datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC))

    assert split_by_table(within_day) == [(HOURLY, within_day.start, within_day.end)]
    assert split_by_table(whole_days) == [(DAILY, whole_days.start, whole_days.end)]


def test_rollup_source_rejects_unknown_column() -> None:
    with pytest.raises(ValueError, match="not a rollup dimension: status_code"):
        rollup_source(("requests",), {"status_code": 200}, MARCH_8_TO_10)


def test_connection_reads_without_ctid_ranges(con) -> None:
    query = "SELECT current_setting('pg_use_ctid_scan'), current_setting('TimeZone')"
    with con.cursor() as cursor:
        on_cursor = cursor.execute(query).fetchone()

    assert con.execute(query).fetchone() == (False, "UTC")
    # The pages query on cursors, which are separate connections.
    assert on_cursor == (False, "UTC")


def test_totals_from_daily_and_hourly(engine: Engine, con) -> None:
    seeded = seed_calls(engine)
    organization = organization_id(con)

    everyone = usage_stats.usage_totals(con, UsageScope(organization), MARCH_8_TO_10)
    lab = usage_stats.usage_totals(con, UsageScope(organization, seeded.lab), MARCH_8_TO_10)

    # f0, f1, f2, f3, v1, t1 and o1; "early" and "after" are outside.
    assert everyone.requests == 7
    assert everyone.errors == 2
    assert everyone.retried == 1
    assert everyone.prompt_tokens == 10 + 100 + 200 + 1000 + 40 + 9
    assert everyone.completion_tokens == 1 + 50 + 10 + 300 + 4
    assert everyone.cost_usd == Decimal("12.9433345686")
    assert lab.requests == 6
    # 0.01 + 0.0000012345 + 0.1000000001 + 2.5 + 0.3333333333 + 1.0000000007
    assert lab.cost_usd == Decimal("3.9433345686")


def test_empty_range_totals_zero(engine: Engine, con) -> None:
    seed_calls(engine)
    empty = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))

    totals = usage_stats.usage_totals(con, UsageScope(organization_id(con)), empty)

    assert totals.requests == 0
    assert totals.cost_usd == Decimal(0)
    assert isinstance(totals.cost_usd, Decimal)


def test_spend_by_team_and_key(engine: Engine, con) -> None:
    seeded = seed_calls(engine)
    organization = organization_id(con)

    by_team = usage_stats.spend_by(con, UsageScope(organization), MARCH_8_TO_10, "team")
    by_key = usage_stats.spend_by(con, UsageScope(organization, seeded.lab), MARCH_8_TO_10, "key")

    assert by_team["name"].tolist() == ["Other", "Lab"]
    assert by_team["cost_usd"].tolist() == [Decimal("9"), Decimal("3.9433345686")]
    assert [name.split(" (")[0] for name in by_key["name"]] == ["fold", "shared", "see"]
    assert by_key["requests"].tolist() == [4, 1, 1]
    assert sum(by_key["cost_usd"], Decimal(0)) == Decimal("3.9433345686")


def test_spend_over_time_local_days(engine: Engine, con) -> None:
    seeded = seed_calls(engine)
    scope = UsageScope(organization_id(con), seeded.lab)

    frame = usage_stats.spend_over_time(con, scope, MARCH_8_TO_10, "day", ZONE)

    rows = [
        (bucket.date(), model, int(requests), cost)
        for bucket, model, requests, cost in frame.itertuples(index=False)
    ]
    assert rows == [
        (date(2026, 3, 8), MODEL_A, 1, Decimal("0.01")),
        # f1 is 03:59:59 UTC on March 10, still March 9 in New York.
        (date(2026, 3, 9), MODEL_A, 1, Decimal("0.0000012345")),
        (date(2026, 3, 10), "(no model)", 1, Decimal("1.0000000007")),
        (date(2026, 3, 10), MODEL_B, 1, Decimal("2.5")),
        (date(2026, 3, 10), MODEL_A, 2, Decimal("0.4333333334")),
    ]


def test_hostile_dimension_rejected(engine: Engine, con) -> None:
    seed_calls(engine)
    scope = UsageScope(organization_id(con))

    with pytest.raises(InvalidRequestError, match="dimension must be one of"):
        usage_stats.spend_by(con, scope, MARCH_8_TO_10, "team; DROP TABLE teams")
    with pytest.raises(InvalidRequestError, match="unit must be one of"):
        usage_stats.spend_over_time(con, scope, MARCH_8_TO_10, "day' --", ZONE)


# Usage explorer


def filters(con: duckdb.DuckDBPyConnection, **values) -> ExplorerFilters:
    values.setdefault("organization_id", organization_id(con))
    return ExplorerFilters(ALL_CALLS.start, ALL_CALLS.end, **values)


def test_fetch_rows_widens_window(engine: Engine, con) -> None:
    seed_calls(engine)

    newest_two = explorer.fetch_rows(con, filters(con), limit=2)
    every_row = explorer.fetch_rows(con, filters(con), limit=50)

    # The range ends 20 hours after the newest call, beyond the first windows.
    assert newest_two["request_id"].tolist() == ["after", "t1"]
    assert every_row["request_id"].tolist() == OLDEST_FIRST[::-1]


def test_count_rows_rollups_match_raw(engine: Engine, con) -> None:
    seeded = seed_calls(engine)
    off_hour = ExplorerFilters(
        ALL_CALLS.start + timedelta(minutes=1),
        ALL_CALLS.end,
        organization_id=organization_id(con),
    )

    assert explorer.count_rows(con, filters(con), 100) == 9
    assert explorer.count_rows(con, off_hour, 100) == 9
    assert explorer.count_rows(con, filters(con), 5) == 5
    assert explorer.count_rows(con, filters(con, team_ids=(seeded.other,)), 100) == 1
    assert explorer.count_rows(con, filters(con, status="server_error"), 100) == 1
    assert explorer.count_rows(con, filters(con, model_search="CLAUDE"), 100) == 1


@pytest.mark.parametrize(
    "values",
    [
        {"model_search": "' OR '1'='1"},
        {"model_search": "%"},
        {"model_search": "_"},
        {"models": ("x'); DROP TABLE usage_events; --",)},
        {"request_id": "' OR 1=1 --"},
        {"team_ids": (999_999,)},
    ],
)
def test_hostile_explorer_filters_match_nothing(engine: Engine, con, values) -> None:
    seed_calls(engine)
    hostile = filters(con, **values)
    out = io.StringIO()

    assert explorer.count_rows(con, hostile, 100) == 0
    assert explorer.fetch_rows(con, hostile).empty
    assert explorer.write_csv(con, hostile, out) == 0
    assert out.getvalue() == ",".join(explorer.CSV_COLUMNS) + "\r\n"
    assert explorer.count_rows(con, filters(con), 100) == 9


def test_export_slices_and_batches(engine: Engine, con) -> None:
    seed_calls(engine)
    # Starts 7 days before f2, so the second slice starts at f2's time exactly.
    sliced = ExplorerFilters(
        datetime(2026, 3, 3, 4, tzinfo=UTC),
        ALL_CALLS.end,
        organization_id=organization_id(con),
    )
    out = io.StringIO()

    written = explorer.write_csv(con, sliced, out, chunk_rows=2)

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert written == 9
    assert [row["request_id"] for row in rows] == OLDEST_FIRST
    assert list(rows[0]) == list(explorer.CSV_COLUMNS)
    assert rows[3]["time_utc"] == "2026-03-10T04:00:00+00:00"
    assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal("132.9433345686")
    assert rows[7]["cost_usd"] == "1.0000000007"
    assert rows[7]["model"] == "(no model)"
