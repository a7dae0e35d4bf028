"""Monthly partitions of usage_events: exactly-once writes, creation and detach."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway_core.usage_partitions import MONTHS_AHEAD, partition_name
from tests.test_reports import record, usage_row, utc


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def call(request_id: str, created_at: str, cost: str = "0.5") -> dict:
    return usage_row(
        request_id,
        utc(created_at),
        organization_id=None,
        team_id=None,
        key_id=None,
        project_id=None,
        cost=cost,
    )


def rows_of(engine: Engine, request_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            (row[0], row[1])
            for row in conn.execute(
                text(
                    "SELECT request_id, tableoid::regclass::text FROM usage_events "
                    "WHERE request_id = :id"
                ),
                {"id": request_id},
            )
        ]


def daily_requests(engine: Engine, day: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT coalesce(sum(requests), 0) FROM usage_daily WHERE bucket_start = :day"),
            {"day": utc(day)},
        ).scalar_one()


def create_partition(engine: Engine, month: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("SELECT usage_events_create_partition(:month)"), {"month": month})


def table_exists(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:name)"), {"name": name}).scalar() is not None


def test_usage_events_partitioned_by_month(engine: Engine) -> None:
    with engine.connect() as conn:
        strategy = conn.execute(
            text(
                "SELECT partstrat FROM pg_partitioned_table "
                "WHERE partrelid = 'usage_events'::regclass"
            )
        ).scalar_one()
        names = set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'usage_events'::regclass"
                )
            ).scalars()
        )
    assert strategy == "r"
    assert "usage_events_default" in names
    today = datetime.now(UTC).date()
    for offset in range(MONTHS_AHEAD + 1):
        year, month = divmod(today.year * 12 + today.month - 1 + offset, 12)
        assert partition_name(date(year, month + 1, 1)) in names


def test_retried_row_written_once(database_url: str, engine: Engine) -> None:
    first = call("req_part_retry", "2024-05-10T08:00:00")
    record(database_url, [[first], [dict(first)]])
    assert rows_of(engine, "req_part_retry") == [("req_part_retry", "usage_events_default")]
    assert daily_requests(engine, "2024-05-10T00:00:00") == 1


def test_replay_in_other_month_skipped(database_url: str, engine: Engine) -> None:
    # The same request id with another created_at would land in another
    # partition, where the composite primary key of usage_events alone
    # would not catch it.
    create_partition(engine, "2024-06-01")
    record(database_url, [[call("req_part_month", "2024-06-30T23:59:59")]])
    record(database_url, [[call("req_part_month", "2024-07-01T00:00:01")]])
    assert rows_of(engine, "req_part_month") == [("req_part_month", "usage_events_y2024m06")]
    assert daily_requests(engine, "2024-07-01T00:00:00") == 0


def test_duplicate_in_one_batch_written_once(database_url: str, engine: Engine) -> None:
    row = call("req_part_batch", "2024-05-11T08:00:00")
    record(database_url, [[row, dict(row), call("req_part_batch_2", "2024-05-11T09:00:00")]])
    assert len(rows_of(engine, "req_part_batch")) == 1
    assert len(rows_of(engine, "req_part_batch_2")) == 1
    assert daily_requests(engine, "2024-05-11T00:00:00") == 2


def test_new_partition_takes_default_rows(database_url: str, engine: Engine) -> None:
    record(database_url, [[call("req_part_late", "2031-07-04T12:00:00")]])
    assert rows_of(engine, "req_part_late") == [("req_part_late", "usage_events_default")]
    create_partition(engine, "2031-07-15")
    assert rows_of(engine, "req_part_late") == [("req_part_late", "usage_events_y2031m07")]
    # Moving rows between partitions does not count them in the rollups again.
    assert daily_requests(engine, "2031-07-04T00:00:00") == 1
    create_partition(engine, "2031-07-01")
    assert rows_of(engine, "req_part_late") == [("req_part_late", "usage_events_y2031m07")]


def test_detach_archives_and_drops(
    server_env: dict[str, str], database_url: str, engine: Engine, tmp_path: Path
) -> None:
    create_partition(engine, "2024-02-01")
    rows = [call(f"req_part_feb_{i}", f"2024-02-{10 + i}T10:00:00") for i in range(3)]
    record(database_url, [rows])

    archive = tmp_path / "usage-2024-02.csv"
    detached = cli(server_env, "usage", "detach", "2024-02", "--out", str(archive), "--drop")
    assert detached.returncode == 0, detached.stderr
    assert "detached usage_events_y2024m02 with 3 rows" in detached.stdout

    with archive.open(newline="") as handle:
        archived = list(csv.DictReader(handle))
    assert [row["request_id"] for row in archived] == [f"req_part_feb_{i}" for i in range(3)]
    assert archived[0]["cost_usd"] == "0.5000000000"
    assert not table_exists(engine, "usage_events_y2024m02")
    assert rows_of(engine, "req_part_feb_0") == []
    # The rollups keep the archived month.
    assert daily_requests(engine, "2024-02-10T00:00:00") == 1

    with engine.connect() as conn:
        entries = conn.execute(
            text(
                "SELECT action, actor, object_id, after FROM audit_log "
                "WHERE action LIKE 'usage.%' ORDER BY id"
            )
        ).all()
    assert [entry.action for entry in entries] == ["usage.detach", "usage.drop"]
    assert all(entry.actor.startswith("cli:") for entry in entries)
    assert {entry.object_id for entry in entries} == {"usage_events_y2024m02"}
    assert entries[0].after == {"month": "2024-02", "rows": 3}
    assert entries[1].after == {"month": "2024-02", "rows": 3, "archive": str(archive)}

    # A late replay of an archived row is still recognised and skipped.
    record(database_url, [[rows[0]]])
    assert rows_of(engine, "req_part_feb_0") == []


def test_detach_then_archive_later(
    server_env: dict[str, str], database_url: str, engine: Engine, tmp_path: Path
) -> None:
    create_partition(engine, "2024-03-01")
    record(database_url, [[call("req_part_mar", "2024-03-05T10:00:00")]])
    detached = cli(server_env, "usage", "detach", "2024-03")
    assert detached.returncode == 0, detached.stderr
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT request_id FROM usage_events_y2024m03")).scalars()
        assert list(kept) == ["req_part_mar"]
    assert rows_of(engine, "req_part_mar") == []
    listed = cli(server_env, "usage", "list")
    assert listed.returncode == 0, listed.stderr
    assert "usage_events_default" in listed.stdout
    assert "usage_events_y2024m03" not in listed.stdout

    # A second run archives and drops the table the first run detached.
    archive = tmp_path / "usage-2024-03.csv"
    again = cli(server_env, "usage", "detach", "2024-03", "--out", str(archive), "--drop")
    assert again.returncode == 0, again.stderr
    assert "usage_events_y2024m03 was detached already; it has 1 rows" in again.stdout
    assert archive.read_text().count("req_part_mar") == 1
    assert not table_exists(engine, "usage_events_y2024m03")
    with engine.connect() as conn:
        actions = conn.execute(text("SELECT action FROM audit_log ORDER BY id")).scalars()
        assert list(actions) == ["usage.detach", "usage.drop"]


def test_existing_archive_file_rejected(
    server_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    create_partition(engine, "2024-04-01")
    archive = tmp_path / "taken.csv"
    archive.write_text("keep me")
    result = cli(server_env, "usage", "detach", "2024-04", "--out", str(archive))
    assert result.returncode == 1
    assert f"archive file {archive} exists" in result.stderr
    assert archive.read_text() == "keep me"
    # Nothing was detached, so the month is still part of usage_events.
    listed = cli(server_env, "usage", "list")
    assert "usage_events_y2024m04" in listed.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("2024-13",), "invalid month '2024-13'"),
        (("2024-05", "--drop"), "--drop needs --out"),
        (("2019-01",), "no partition usage_events_y2019m01"),
        ((f"{datetime.now(UTC):%Y-%m}",), "only past months can be detached"),
    ],
)
def test_detach_rejects(
    server_env: dict[str, str], engine: Engine, arguments: tuple[str, ...], message: str
) -> None:
    result = cli(server_env, "usage", "detach", *arguments)
    assert result.returncode != 0
    assert message in result.stderr
    with engine.connect() as conn:
        entries = conn.execute(
            text("SELECT count(*) FROM audit_log WHERE action LIKE 'usage.%'")
        ).scalar_one()
    assert entries == 0


def test_ensure_command_audited(server_env: dict[str, str], engine: Engine) -> None:
    result = cli(server_env, "usage", "ensure", "--months-ahead", "2")
    assert result.returncode == 0, result.stderr
    assert "created 0 new partitions" in result.stdout
    with engine.connect() as conn:
        after = conn.execute(
            text("SELECT after FROM audit_log WHERE action = 'usage.ensure'")
        ).scalar_one()
    assert after == {"months_ahead": 2, "created": 0}
