"""Analytics queries through DuckDB against seeded rows in the test database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, select, text

from gateway_core import analytics
from gateway_core.directory import create_team
from gateway_core.keys import create_key
from gateway_core.schema import teams, usage_events
from tests.conftest import TEST_SECRET

DAY = datetime(2026, 3, 10, tzinfo=UTC)

HOSTILE_TEAM_FILTERS = [
    "1' OR '1'='1",
    "1; DROP TABLE teams; --",
    "0 UNION SELECT * FROM pg.public.users",
    "'); DELETE FROM usage_events; --",
    '1" OR "1"="1',
    "1 OR 1=1",
    "",
]


def insert_event(
    conn,
    request_id: str,
    created_at: datetime,
    *,
    team_id: int | None,
    api_key_id: int | None = None,
    cost: str = "0",
    status_code: int = 200,
    ttft_ms: int | None = None,
) -> None:
    conn.execute(
        insert(usage_events).values(
            request_id=request_id,
            created_at=created_at,
            team_id=team_id,
            api_key_id=api_key_id,
            endpoint="chat.completions",
            model="openai/gpt-4o-mini",
            provider="openai",
            status_code=status_code,
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=Decimal(cost),
            latency_ms=120,
            ttft_ms=ttft_ms,
        )
    )


@pytest.fixture
def seeded(engine: Engine) -> dict[str, int]:
    """Two teams with one key each and seven calls on 2026-03-10 and 11 (UTC)."""
    with engine.begin() as conn:
        alpha = create_team(conn, "Alpha").id
        beta = create_team(conn, "Beta").id
        alpha_key = create_key(conn, TEST_SECRET.encode(), team_id=alpha, name="ci").id
        beta_key = create_key(conn, TEST_SECRET.encode(), team_id=beta, name="web", mode="test").id
        hour = timedelta(hours=1)
        insert_event(
            conn,
            "a1",
            DAY + 10 * hour,
            team_id=alpha,
            api_key_id=alpha_key,
            cost="0.0000012345",
            ttft_ms=40,
        )
        insert_event(
            conn,
            "a2",
            DAY + 10 * hour + timedelta(minutes=59),
            team_id=alpha,
            api_key_id=alpha_key,
            cost="0.1000000001",
        )
        insert_event(
            conn,
            "a3",
            DAY + 11 * hour,
            team_id=alpha,
            api_key_id=alpha_key,
            cost="2.5",
            status_code=502,
        )
        insert_event(
            conn,
            "b1",
            DAY + 10 * hour + timedelta(minutes=30),
            team_id=beta,
            api_key_id=beta_key,
            cost="0.3333333333",
        )
        insert_event(
            conn,
            "b2",
            DAY + timedelta(days=1, hours=3),
            team_id=beta,
            api_key_id=beta_key,
            cost="1.0000000007",
        )
        # A call that no key authenticated: no team, no key.
        insert_event(conn, "anon", DAY + 10 * hour + timedelta(minutes=5), team_id=None)
        # Outside every range used below.
        insert_event(
            conn, "old", DAY - timedelta(days=3), team_id=alpha, api_key_id=alpha_key, cost="99"
        )
    return {"alpha": alpha, "beta": beta}


@pytest.fixture
def con(database_url: str) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = analytics.connect(database_url)
    yield connection
    connection.close()


def totals(frame: pd.DataFrame) -> dict[tuple[datetime, str | None], tuple[int, Decimal]]:
    result = {}
    for row in frame.itertuples(index=False):
        team = None if pd.isna(row.team) else row.team
        result[(row.bucket.to_pydatetime(), team)] = (int(row.requests), row.cost_usd)
    return result


def test_usage_over_time_hourly_totals(con, seeded) -> None:
    frame = analytics.usage_over_time(con, start=DAY, end=DAY + timedelta(days=2), bucket="hour")

    hour = timedelta(hours=1)
    assert totals(frame) == {
        (DAY + 10 * hour, "Alpha"): (2, Decimal("0.1000012346")),
        (DAY + 10 * hour, "Beta"): (1, Decimal("0.3333333333")),
        (DAY + 10 * hour, None): (1, Decimal("0")),
        (DAY + 11 * hour, "Alpha"): (1, Decimal("2.5")),
        (DAY + timedelta(days=1, hours=3), "Beta"): (1, Decimal("1.0000000007")),
    }
    assert list(frame.columns) == ["bucket", "team_id", "team", "requests", "cost_usd"]


def test_usage_over_time_daily_totals(con, seeded) -> None:
    frame = analytics.usage_over_time(con, start=DAY, end=DAY + timedelta(days=2), bucket="day")

    assert totals(frame) == {
        (DAY, "Alpha"): (3, Decimal("2.6000012346")),
        (DAY, "Beta"): (1, Decimal("0.3333333333")),
        (DAY, None): (1, Decimal("0")),
        (DAY + timedelta(days=1), "Beta"): (1, Decimal("1.0000000007")),
    }


def test_usage_over_time_cost_is_decimal(con, seeded) -> None:
    frame = analytics.usage_over_time(con, start=DAY, end=DAY + timedelta(days=2), bucket="day")

    assert all(isinstance(value, Decimal) for value in frame["cost_usd"])
    assert sum(frame["cost_usd"], Decimal(0)) == Decimal("3.9333345686")


def test_usage_over_time_team_filter(con, seeded) -> None:
    frame = analytics.usage_over_time(
        con, start=DAY, end=DAY + timedelta(days=2), bucket="day", team_id=seeded["beta"]
    )

    assert totals(frame) == {
        (DAY, "Beta"): (1, Decimal("0.3333333333")),
        (DAY + timedelta(days=1), "Beta"): (1, Decimal("1.0000000007")),
    }


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_usage_over_time_rollup_matches_calls(con, seeded, bucket: str) -> None:
    # Whole-bucket bounds read the rollup. One microsecond earlier, with no
    # call in it, the same sums come from usage_events.
    from_rollup = analytics.usage_over_time(
        con, start=DAY, end=DAY + timedelta(days=2), bucket=bucket
    )
    from_calls = analytics.usage_over_time(
        con, start=DAY - timedelta(microseconds=1), end=DAY + timedelta(days=2), bucket=bucket
    )

    assert totals(from_rollup) == totals(from_calls)
    assert len(from_rollup) == len(from_calls)


def test_usage_over_time_end_is_exclusive(con, seeded) -> None:
    eleven = DAY + timedelta(hours=11)
    frame = analytics.usage_over_time(con, start=DAY, end=eleven, bucket="day")
    assert frame["requests"].sum() == 4

    frame = analytics.usage_over_time(con, start=eleven, end=eleven + timedelta(hours=1))
    assert frame["requests"].tolist() == [1]


def test_usage_rows_columns_and_order(con, seeded) -> None:
    frame = analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=2))

    assert list(frame.columns) == [
        "time",
        "request_id",
        "team_id",
        "team",
        "key",
        "model",
        "provider",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
    ]
    assert frame["request_id"].tolist() == ["b2", "a3", "a2", "b1", "anon", "a1"]
    first = frame.iloc[-1]
    assert first["time"] == pd.Timestamp(DAY + timedelta(hours=10))
    assert first["team"] == "Alpha"
    assert first["cost_usd"] == Decimal("0.0000012345")
    assert isinstance(first["cost_usd"], Decimal)
    assert first["ttft_ms"] == 40
    assert first["status"] == 200


def test_usage_rows_key_display(con, seeded, engine: Engine) -> None:
    frame = analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=2))
    by_request = frame.set_index("request_id")

    alpha_key = by_request.loc["a1", "key"]
    beta_key = by_request.loc["b1", "key"]
    assert alpha_key.startswith("gw_live_")
    assert beta_key.startswith("gw_test_")
    assert "…" in alpha_key
    assert len(alpha_key) == len("gw_live_") + 4 + 1 + 4
    assert pd.isna(by_request.loc["anon", "key"])
    assert pd.isna(by_request.loc["anon", "team"])
    assert pd.isna(by_request.loc["a2", "ttft_ms"])


def test_usage_rows_limit(con, seeded) -> None:
    frame = analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=2), limit=2)

    assert frame["request_id"].tolist() == ["b2", "a3"]


@pytest.mark.parametrize("limit", [0, -1, True, "10; DROP TABLE teams"])
def test_usage_rows_rejects_invalid_limit(con, seeded, limit) -> None:
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=1), limit=limit)


def test_usage_rows_team_filter(con, seeded) -> None:
    by_int = analytics.usage_rows(
        con, start=DAY, end=DAY + timedelta(days=2), team_id=seeded["alpha"]
    )
    by_string = analytics.usage_rows(
        con, start=DAY, end=DAY + timedelta(days=2), team_id=str(seeded["alpha"])
    )

    assert by_int["request_id"].tolist() == ["a3", "a2", "a1"]
    assert by_string["request_id"].tolist() == ["a3", "a2", "a1"]


@pytest.mark.parametrize("team_filter", HOSTILE_TEAM_FILTERS)
def test_hostile_team_filter_returns_empty(con, seeded, engine: Engine, team_filter) -> None:
    window = {"start": DAY - timedelta(days=30), "end": DAY + timedelta(days=30)}

    rows = analytics.usage_rows(con, team_id=team_filter, **window)
    over_time = analytics.usage_over_time(con, team_id=team_filter, bucket="day", **window)

    assert rows.empty
    assert over_time.empty
    assert list(rows.columns)[:3] == ["time", "request_id", "team_id"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(teams)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(usage_events)).scalar_one() == 7


def test_naive_datetime_rejected(con, seeded) -> None:
    with pytest.raises(ValueError, match="start must be a timezone-aware datetime"):
        analytics.usage_rows(con, start=datetime(2026, 3, 10), end=DAY)
    with pytest.raises(ValueError, match="end must be a timezone-aware datetime"):
        analytics.usage_over_time(con, start=DAY, end=datetime(2026, 3, 11))


def test_unknown_bucket_rejected(con, seeded) -> None:
    with pytest.raises(ValueError, match="bucket must be one of hour, day"):
        analytics.usage_over_time(con, start=DAY, end=DAY + timedelta(days=1), bucket="minute")


def test_new_rows_visible_on_open_connection(con, engine: Engine) -> None:
    window = {"start": DAY, "end": DAY + timedelta(days=1)}
    assert analytics.usage_rows(con, **window).empty

    with engine.begin() as conn:
        insert_event(conn, "late", DAY + timedelta(hours=1), team_id=None, cost="0.5")

    assert analytics.usage_rows(con, **window)["request_id"].tolist() == ["late"]


def test_connection_is_read_only(con, seeded, engine: Engine) -> None:
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM pg.public.usage_events")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")

    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(usage_events)).scalar_one() == 7


def test_cursor_shares_attached_database(con, seeded) -> None:
    cursor = con.cursor()

    frame = analytics.usage_rows(cursor, start=DAY, end=DAY + timedelta(days=1))

    assert len(frame) == 5


def test_connect_through_unix_socket(database_url: str, seeded) -> None:
    socket_dir = Path(os.environ.get("TEST_POSTGRES_SOCKET_DIR", "/var/run/postgresql"))
    if not (socket_dir / ".s.PGSQL.5432").exists():
        pytest.skip(f"no Postgres socket in {socket_dir}; set TEST_POSTGRES_SOCKET_DIR")
    parts = urlsplit(database_url)
    socket_url = f"postgresql://{parts.username}:@{parts.path}?host={socket_dir}"

    con = analytics.connect(socket_url)
    try:
        frame = analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=1))
    finally:
        con.close()

    assert len(frame) == 5


def test_missing_extension_file_message(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(
        analytics.duckdb_extension_postgres_scanner, "__file__", str(tmp_path / "__init__.py")
    )

    with pytest.raises(FileNotFoundError, match="install duckdb-extension-postgres-scanner=="):
        analytics.postgres_scanner_path()


def test_connect_error_hides_password() -> None:
    url = "postgresql://postgres:s3cret%27pw@127.0.0.1:1/nowhere"

    with pytest.raises(duckdb.Error) as caught:
        analytics.connect(url)

    message = str(caught.value)
    assert "Unable to connect to Postgres" in message
    assert "postgres:***@127.0.0.1:1/nowhere" in message
    assert "s3cret" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_redact_password_without_password() -> None:
    message = 'Unable to connect to Postgres at "postgresql://postgres@127.0.0.1/x"'

    assert analytics.redact_password(message, "postgresql://postgres@127.0.0.1/x") == message


def analytics_backends(engine: Engine, application_name: str) -> list[int]:
    with engine.connect() as conn:
        return (
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = :name"
                ),
                {"name": application_name},
            )
            .scalars()
            .all()
        )


def test_connection_sets_application_name(con, seeded, engine: Engine) -> None:
    analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=1))

    assert len(analytics_backends(engine, "gatewayz-analytics")) >= 1


def test_application_name_from_url_kept(database_url: str, seeded, engine: Engine) -> None:
    con = analytics.connect(f"{database_url}?application_name=custom-report")
    try:
        analytics.usage_rows(con, start=DAY, end=DAY + timedelta(days=1))
        assert len(analytics_backends(engine, "custom-report")) >= 1
    finally:
        con.close()


def test_reconnects_after_backend_terminated(con, seeded, engine: Engine) -> None:
    window = {"start": DAY, "end": DAY + timedelta(days=1)}
    assert len(analytics.usage_rows(con, **window)) == 5
    pids = analytics_backends(engine, "gatewayz-analytics")
    assert pids

    with engine.connect() as conn:
        for pid in pids:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    assert len(analytics.usage_rows(con, **window)) == 5
