"""Research reports, the monthly chargeback and the rollups they read, on seeded calls.

Expected figures are summed by hand from the rows that `seed_calls` inserts.
America/New_York is UTC-5 until 2026-03-08 02:00 local and UTC-4 after, so
local midnights fall at 05:00 UTC on March 8 and at 04:00 UTC from March 9.
"""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, insert, select, text, update

from gateway_core import analytics, reports
from gateway_core.directory import create_project, create_team
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.keys import create_key
from gateway_core.schema import organizations, usage_events
from gateway_core.time_ranges import day_range, days_start_on_utc_hours, period_range
from proxy.recorder import COLUMNS as RECORDER_COLUMNS
from proxy.recorder import UsageRecorder
from tests.conftest import TEST_SECRET

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GENERATED_AT = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
MODEL_A = "openai/gpt-4o-mini"
MODEL_B = "anthropic/claude-sonnet-4"
ROLLUP_MEASURES = (
    "requests",
    "errors",
    "retried",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_count",
    "ttft_ms_sum",
    "ttft_count",
)


@dataclass(frozen=True)
class Seeded:
    lab: int
    other: int
    folding: int
    vision: int
    folding_key: int
    vision_key: int
    lab_key: int
    other_key: int


def utc(text_value: str) -> datetime:
    return datetime.fromisoformat(text_value).replace(tzinfo=UTC)


def usage_row(
    request_id: str,
    created_at: datetime,
    *,
    organization_id: int | None,
    team_id: int | None,
    key_id: int | None,
    project_id: int | None,
    model: str | None = MODEL_A,
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
    cost: str = "0",
    status: int = 200,
    latency: int = 100,
    ttft: int | None = None,
    attempts: int = 1,
) -> dict:
    return {
        "request_id": request_id,
        "created_at": created_at,
        "organization_id": organization_id,
        "team_id": team_id,
        "api_key_id": key_id,
        "project_id": project_id,
        "endpoint": "chat.completions",
        "model": model,
        "provider": model.split("/")[0] if model else None,
        "status_code": status,
        "error_type": None if status < 400 else "upstream_error",
        "stream": ttft is not None,
        "partial": False,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": Decimal(cost),
        "latency_ms": latency,
        "ttft_ms": ttft,
        "attempts": attempts,
    }


def seed_directory(engine: Engine, timezone: str = "America/New_York") -> Seeded:
    secret = TEST_SECRET.encode()
    with engine.begin() as conn:
        lab = create_team(conn, "Lab").id
        other = create_team(conn, "Other").id
        conn.execute(update(organizations).values(timezone=timezone))
        folding = create_project(
            conn,
            lab,
            "folding",
            principal_investigator="Dr. Ada Lovelace",
            cost_centre="GR-2026-001",
        ).id
        vision = create_project(
            conn, lab, "vision", principal_investigator="Dr. Ben Okri", cost_centre="CC-42"
        ).id
        folding_key = create_key(conn, secret, team_id=lab, name="fold", project_id=folding).id
        vision_key = create_key(conn, secret, team_id=lab, name="see", project_id=vision).id
        lab_key = create_key(conn, secret, team_id=lab, name="shared").id
        other_key = create_key(conn, secret, team_id=other, name="other").id
    return Seeded(lab, other, folding, vision, folding_key, vision_key, lab_key, other_key)


def seed_calls(engine: Engine, timezone: str = "America/New_York") -> Seeded:
    """Seed teams Lab (projects folding and vision) and Other, and calls around 2026-03-10."""
    seeded = seed_directory(engine, timezone)
    with engine.connect() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()

    def call(request_id: str, at: str, key: str, **values) -> dict:
        team, key_id, project = {
            "folding": (seeded.lab, seeded.folding_key, seeded.folding),
            "vision": (seeded.lab, seeded.vision_key, seeded.vision),
            "lab": (seeded.lab, seeded.lab_key, None),
            "other": (seeded.other, seeded.other_key, None),
        }[key]
        return usage_row(
            request_id,
            utc(at),
            organization_id=organization_id,
            team_id=team,
            key_id=key_id,
            project_id=project,
            **values,
        )

    rows = [
        # 23:59:59 on March 7 in New York: before the report range.
        call("early", "2026-03-08T04:59:59", "folding", prompt=1, cost="50"),
        # Midnight of March 8 in New York (still UTC-5).
        call("f0", "2026-03-08T05:00:00", "folding", prompt=10, completion=1, cost="0.01"),
        # 23:59:59 on March 9 in New York, already March 10 in UTC.
        call(
            "f1",
            "2026-03-10T03:59:59",
            "folding",
            prompt=100,
            cached=20,
            completion=50,
            cost="0.0000012345",
        ),
        # Midnight of March 10 in New York.
        call(
            "f2", "2026-03-10T04:00:00", "folding", prompt=200, completion=10, cost="0.1000000001"
        ),
        call(
            "f3",
            "2026-03-10T15:30:00",
            "folding",
            model=MODEL_B,
            prompt=1000,
            cached=500,
            completion=300,
            cost="2.5",
            status=502,
            attempts=3,
        ),
        call("v1", "2026-03-10T04:30:00", "vision", prompt=40, completion=4, cost="0.3333333333"),
        # 23:00 on March 10 in New York, March 11 in UTC; no project, no model.
        call("t1", "2026-03-11T03:00:00", "lab", model=None, cost="1.0000000007", status=401),
        # Midnight of March 11 in New York: the exclusive end of the range.
        call("after", "2026-03-11T04:00:00", "folding", prompt=5, cost="70"),
        call("o1", "2026-03-10T12:00:00", "other", prompt=9, cost="9"),
    ]
    with engine.begin() as conn:
        conn.execute(insert(usage_events), rows)
    return seeded


@pytest.fixture
def con(database_url: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB with the test database attached, as the report queries read it."""
    connection = analytics.connect(database_url)
    yield connection
    connection.close()


def report_csv(
    con: duckdb.DuckDBPyConnection, scope: reports.ReportScope, first: date, end: date
) -> str:
    out = io.StringIO()
    reports.write_report_csv(con, scope, first, end, out, generated_at=GENERATED_AT)
    return out.getvalue()


def split_report(content: str) -> tuple[dict[str, str], list[str], list[list[str]]]:
    """Return the header block as a dict, the column names and the table rows."""
    lines = list(csv.reader(io.StringIO(content)))
    blank = lines.index([])
    header = {label: value for label, value in lines[:blank]}
    return header, lines[blank + 1], lines[blank + 2 :]


# Research report


def test_team_report_days_in_new_york(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seeded = seed_calls(engine)
    with engine.connect() as conn:
        scope = reports.scope_for_team(conn, seeded.lab)
        rows = list(reports.report_rows(con, scope, date(2026, 3, 8), date(2026, 3, 11)))

    assert [(r.day.isoformat(), r.project, r.model) for r in rows] == [
        ("2026-03-08", "folding", MODEL_A),
        ("2026-03-09", "folding", MODEL_A),
        ("2026-03-10", "folding", MODEL_B),
        ("2026-03-10", "folding", MODEL_A),
        ("2026-03-10", "vision", MODEL_A),
        ("2026-03-10", "(no project)", "(rejected before a model was chosen)"),
    ]
    assert [r.requests for r in rows] == [1, 1, 1, 1, 1, 1]
    assert [r.input_tokens for r in rows] == [10, 100, 1000, 200, 40, 0]
    assert [r.cached_input_tokens for r in rows] == [0, 20, 500, 0, 0, 0]
    assert [r.output_tokens for r in rows] == [1, 50, 300, 10, 4, 0]
    assert [r.cost_usd for r in rows] == [
        Decimal("0.01"),
        Decimal("0.0000012345"),
        Decimal("2.5"),
        Decimal("0.1000000001"),
        Decimal("0.3333333333"),
        Decimal("1.0000000007"),
    ]


def test_report_csv_layout(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seeded = seed_calls(engine)
    with engine.connect() as conn:
        scope = reports.find_scope(conn, team="Lab", project="folding")

    header, columns, rows = split_report(
        report_csv(con, scope, date(2026, 3, 8), date(2026, 3, 11))
    )

    assert scope.project is not None
    assert scope.project.id == seeded.folding
    assert header == {
        "Report": "Research usage report",
        "Organization": "Default",
        "Team": "Lab",
        "Project": "folding",
        "Principal investigator": "Dr. Ada Lovelace",
        "Grant or cost centre": "GR-2026-001",
        "Period start": "2026-03-08",
        "Period end (exclusive)": "2026-03-11",
        "Time zone": "America/New_York",
        "Currency": "USD",
        "Generated at": "2026-04-01T06:00:00+00:00",
        "Price source": "gateway catalog and admin overrides at time of call",
        "Token counts": reports.research.TOKEN_NOTE,
    }
    assert columns == [
        "date",
        "project",
        "model",
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost_usd",
    ]
    assert rows == [
        ["2026-03-08", "folding", MODEL_A, "1", "10", "0", "1", "0.0100000000"],
        ["2026-03-09", "folding", MODEL_A, "1", "100", "20", "50", "0.0000012345"],
        ["2026-03-10", "folding", MODEL_B, "1", "1000", "500", "300", "2.5000000000"],
        ["2026-03-10", "folding", MODEL_A, "1", "200", "0", "10", "0.1000000001"],
        # 0.01 + 0.0000012345 + 2.5 + 0.1000000001
        ["TOTAL", "", "", "4", "1310", "520", "361", "2.6100012346"],
    ]


def test_team_report_totals_row(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seed_calls(engine)
    with engine.connect() as conn:
        scope = reports.find_scope(conn, team="Lab")

    header, _, rows = split_report(report_csv(con, scope, date(2026, 3, 8), date(2026, 3, 11)))

    assert header["Project"] == "all projects of team Lab"
    assert header["Principal investigator"] == "folding: Dr. Ada Lovelace; vision: Dr. Ben Okri"
    assert header["Grant or cost centre"] == "folding: GR-2026-001; vision: CC-42"
    # 0.01 + 0.0000012345 + 2.5 + 0.1000000001 + 0.3333333333 + 1.0000000007
    assert rows[-1] == ["TOTAL", "", "", "6", "1350", "520", "365", "3.9433345686"]
    assert len(rows) == 7
    # The rejected call t1 has its own row and counts in the totals.
    rejected = ["2026-03-10", "(no project)", "(rejected before a model was chosen)"]
    assert rows[-2] == [*rejected, "1", "0", "0", "0", "1.0000000007"]


def test_report_in_utc_moves_boundary_calls(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seeded = seed_calls(engine, timezone="UTC")
    with engine.connect() as conn:
        scope = reports.scope_for_team(conn, seeded.lab)
        rows = list(reports.report_rows(con, scope, date(2026, 3, 10), date(2026, 3, 11)))

    # In UTC, f1 falls on March 10 and t1 on March 11.
    assert [(r.project, r.model, r.cost_usd) for r in rows] == [
        ("folding", MODEL_B, Decimal("2.5")),
        ("folding", MODEL_A, Decimal("0.1000012346")),
        ("vision", MODEL_A, Decimal("0.3333333333")),
    ]
    assert [r.requests for r in rows] == [1, 2, 1]


def test_half_hour_zone_reads_raw_calls(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    # Asia/Kolkata is UTC+05:30, so its midnight splits the 18:00 UTC hour.
    seeded = seed_directory(engine, timezone="Asia/Kolkata")
    with engine.begin() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()
        conn.execute(
            insert(usage_events),
            [
                usage_row(
                    request_id,
                    utc(at),
                    organization_id=organization_id,
                    team_id=seeded.lab,
                    key_id=seeded.lab_key,
                    project_id=None,
                    prompt=prompt,
                    cost=cost,
                )
                for request_id, at, prompt, cost in [
                    ("k1", "2026-03-09T18:29:59", 3, "0.25"),
                    ("k2", "2026-03-09T18:30:00", 5, "0.5"),
                    ("k3", "2026-03-10T18:29:00", 7, "0.125"),
                    ("k4", "2026-03-10T18:30:00", 11, "8"),
                ]
            ],
        )
        scope = reports.scope_for_team(conn, seeded.lab)
    # DuckDB reads through its own Postgres connection, so after the commit.
    rows = list(reports.report_rows(con, scope, date(2026, 3, 9), date(2026, 3, 11)))

    assert [(r.day.isoformat(), r.requests, r.input_tokens, r.cost_usd) for r in rows] == [
        ("2026-03-09", 1, 3, Decimal("0.25")),
        ("2026-03-10", 2, 12, Decimal("0.625")),
    ]


def test_report_summary_per_model(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seed_calls(engine)
    with engine.connect() as conn:
        scope = reports.find_scope(conn, team="Lab", project="folding")
        summary = reports.report_summary(con, scope, date(2026, 3, 8), date(2026, 3, 11))

    assert summary["model"].tolist() == [MODEL_B, MODEL_A]
    assert summary["requests"].tolist() == [1, 3]
    assert summary["cost_usd"].tolist() == [Decimal("2.5"), Decimal("0.1100012346")]


def test_summary_totals_match_usage_rows(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seeded = seed_calls(engine)
    first, end = date(2026, 3, 8), date(2026, 3, 11)
    with engine.connect() as conn:
        scope = reports.scope_for_team(conn, seeded.lab)
        time_range = day_range(first, end, scope.timezone)
        requests, cost = conn.execute(
            select(text("count(*)"), text("sum(cost_usd)"))
            .select_from(usage_events)
            .where(
                usage_events.c.team_id == seeded.lab,
                usage_events.c.created_at >= time_range.start,
                usage_events.c.created_at < time_range.end,
            )
        ).one()
    summary = reports.report_summary(con, scope, first, end)

    by_model = summary.set_index(["project", "model"])
    rejected = by_model.loc[("(no project)", "(rejected before a model was chosen)")]
    assert rejected["requests"] == 1
    assert rejected["cost_usd"] == Decimal("1.0000000007")
    assert "(no model)" not in summary["model"].tolist()
    assert summary["requests"].sum() == requests == 6
    assert sum(summary["cost_usd"], Decimal(0)) == cost == Decimal("3.9433345686")


def test_empty_report_has_zero_totals(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    seeded = seed_calls(engine)
    with engine.connect() as conn:
        scope = reports.scope_for_team(conn, seeded.lab, seeded.vision)

    _, _, rows = split_report(report_csv(con, scope, date(2025, 1, 1), date(2025, 2, 1)))

    assert rows == [["TOTAL", "", "", "0", "0", "0", "0", "0.0000000000"]]


def test_formula_names_written_as_text(engine: Engine, con: duckdb.DuckDBPyConnection) -> None:
    with engine.begin() as conn:
        team = create_team(conn, '=HYPERLINK("http://x")').id
        create_project(conn, team, "@SUM(A1)", principal_investigator="-2+3", cost_centre="+1")
        scope = reports.find_scope(conn, team='=HYPERLINK("http://x")', project="@SUM(A1)")

    header, _, _ = split_report(report_csv(con, scope, date(2026, 3, 1), date(2026, 3, 2)))

    assert header["Team"] == '\'=HYPERLINK("http://x")'
    assert header["Project"] == "'@SUM(A1)"
    assert header["Principal investigator"] == "'-2+3"
    assert header["Grant or cost centre"] == "'+1"


def test_unknown_team_or_project_rejected(engine: Engine) -> None:
    seed_directory(engine)
    with engine.connect() as conn:
        with pytest.raises(NotFoundError, match="no team named 'Nope'"):
            reports.find_scope(conn, team="Nope")
        with pytest.raises(NotFoundError, match="no project named \"x' OR '1'='1\""):
            reports.find_scope(conn, team="Lab", project="x' OR '1'='1")


# Command line


def run_cli(server_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core.reports", *args],
        cwd=PROJECT_ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_research_writes_file(engine: Engine, server_env, tmp_path: Path) -> None:
    seed_calls(engine)
    out = tmp_path / "nested" / "folding.csv"

    result = run_cli(
        server_env,
        "research",
        "--team",
        "Lab",
        "--project",
        "folding",
        "--start",
        "2026-03-08",
        "--end",
        "2026-03-11",
        "--out",
        str(out),
    )

    assert result.returncode == 0, result.stderr
    assert "wrote 4 rows, 4 requests, $2.6100012346" in result.stderr
    header, _, rows = split_report(out.read_text())
    assert header["Principal investigator"] == "Dr. Ada Lovelace"
    assert rows[-1] == ["TOTAL", "", "", "4", "1310", "520", "361", "2.6100012346"]
    assert [path.name for path in out.parent.iterdir()] == ["folding.csv"]


def test_cli_research_to_stdout(engine: Engine, server_env) -> None:
    seed_calls(engine)

    result = run_cli(
        server_env, "research", "--team", "Lab", "--start", "2026-03-10", "--end", "2026-03-11"
    )

    assert result.returncode == 0, result.stderr
    header, _, rows = split_report(result.stdout)
    assert header["Team"] == "Lab"
    # f2, f3, v1 and t1 fall on March 10 in New York.
    assert rows[-1] == ["TOTAL", "", "", "4", "1240", "500", "314", "3.9333333341"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--team", "Lab", "--start", "2026-03-11", "--end", "2026-03-10"], "must be after"),
        (["--team", "Lab", "--start", "2026-13-01", "--end", "2026-03-10"], "invalid date"),
        (["--team", "Nope", "--start", "2026-03-01", "--end", "2026-03-10"], "no team named"),
        (
            ["--team", "Lab", "--project", "'; DROP TABLE projects; --", "--start", "2026-03-01",
             "--end", "2026-03-02"],
            "has no project named",
        ),
    ],
)  # fmt: skip
def test_cli_research_rejects_bad_input(engine: Engine, server_env, args, message) -> None:
    seed_directory(engine)

    result = run_cli(server_env, "research", *args)

    assert result.returncode != 0
    assert message in result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM projects")).scalar_one() == 2


def test_cli_chargeback_file_per_team(engine: Engine, server_env, tmp_path: Path) -> None:
    seeded = seed_calls(engine)

    result = run_cli(server_env, "chargeback", "--month", "2026-03", "--out-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == [
        f"chargeback-2026-03-team{seeded.lab}-Lab.csv",
        f"chargeback-2026-03-team{seeded.other}-Other.csv",
    ]
    lab_header, _, lab_rows = split_report((tmp_path / files[0]).read_text())
    assert lab_header["Report"] == "Monthly chargeback"
    assert lab_header["Period start"] == "2026-03-01"
    assert lab_header["Period end (exclusive)"] == "2026-04-01"
    # Every Lab call in March in New York: early, f0, f1, f2, f3, v1, t1 and after.
    assert lab_rows[-1] == ["TOTAL", "", "", "8", "1356", "520", "365", "123.9433345686"]
    _, _, other_rows = split_report((tmp_path / files[1]).read_text())
    assert other_rows == [
        ["2026-03-10", "(no project)", MODEL_A, "1", "9", "0", "0", "9.0000000000"],
        ["TOTAL", "", "", "1", "9", "0", "0", "9.0000000000"],
    ]


def test_cli_chargeback_rejects_bad_month(server_env, tmp_path: Path) -> None:
    result = run_cli(server_env, "chargeback", "--month", "2026-13", "--out-dir", str(tmp_path))

    assert result.returncode == 2
    assert "month must look like 2026-03" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_month_helpers() -> None:
    assert reports.month_bounds("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    assert reports.previous_month(date(2026, 1, 15)) == "2025-12"
    assert reports.previous_month(date(2026, 3, 1)) == "2026-02"
    assert reports.chargeback_file_name("2026-03", 7, "../../etc/passwd") == (
        "chargeback-2026-03-team7-etc-passwd.csv"
    )


# Rollups


def recorder_row(row: dict) -> dict:
    """Complete a usage row with the recorder's other columns, as the proxy fills them."""
    defaults = {"key_tags": [], "key_metadata": Jsonb({})}
    return {**{column: defaults.get(column) for column in RECORDER_COLUMNS}, **row}


def record(database_url: str, batches: list[list[dict]]) -> None:
    """Write each batch through the proxy's UsageRecorder, as the proxy does."""

    async def run() -> None:
        pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
        await pool.open(wait=True, timeout=10)
        try:
            for batch in batches:
                recorder = UsageRecorder(pool, batch_size=len(batch))
                recorder.start()
                for row in batch:
                    recorder.record(recorder_row(row))
                await recorder.close()
                assert recorder.pending == 0
        finally:
            await pool.close()

    asyncio.run(run())


def rollups_match_raw(engine: Engine, table: str, unit: str) -> tuple[list, list]:
    measures = ", ".join(f"sum({name})" for name in ROLLUP_MEASURES)
    dimensions = "organization_id, team_id, project_id, api_key_id, model, provider"
    raw = f"""
        SELECT date_trunc('{unit}', created_at, 'UTC') AS bucket, {dimensions},
            count(*), count(*) FILTER (WHERE status_code >= 400),
            count(*) FILTER (WHERE attempts > 1), sum(prompt_tokens), sum(completion_tokens),
            sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(cost_usd),
            sum(latency_ms), count(latency_ms), coalesce(sum(ttft_ms), 0), count(ttft_ms)
        FROM usage_events GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
    """
    rolled = f"""
        SELECT bucket_start, {dimensions}, {measures}
        FROM {table} GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
    """
    with engine.connect() as conn:
        return conn.execute(text(raw)).all(), conn.execute(text(rolled)).all()


def mixed_row(seeded: Seeded, organization_id: int, i: int) -> dict:
    """Return call number i: every fifth has no key, and keys alternate between projects."""
    start = utc("2026-03-10T22:10:00")
    team_id = key_id = project_id = None
    if i % 5:
        team_id = seeded.lab
        key_id = seeded.lab_key
        if i % 2:
            key_id, project_id = seeded.folding_key, seeded.folding
    return usage_row(
        f"r{i}",
        start + timedelta(minutes=17 * i),
        organization_id=organization_id if team_id else None,
        team_id=team_id,
        key_id=key_id,
        project_id=project_id,
        model=[MODEL_A, MODEL_B, None][i % 3],
        prompt=10 * i,
        cached=i,
        completion=3 * i,
        cost=f"0.{i:010d}",
        status=[200, 200, 429, 502][i % 4],
        latency=50 + i,
        ttft=i if i % 3 == 0 else None,
        attempts=1 + i % 2,
    )


@pytest.fixture
def recorded_rows(engine: Engine) -> tuple[Seeded, list[dict]]:
    """Forty calls every 17 minutes from 2026-03-10 22:10 UTC, mixing every dimension."""
    seeded = seed_directory(engine)
    with engine.connect() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()
    return seeded, [mixed_row(seeded, organization_id, i) for i in range(40)]


def test_rollups_match_raw_rows(engine: Engine, database_url: str, recorded_rows) -> None:
    _, rows = recorded_rows

    record(database_url, [rows[:25], rows[25:]])

    for table, unit in (("usage_hourly", "hour"), ("usage_daily", "day")):
        raw, rolled = rollups_match_raw(engine, table, unit)
        assert len(raw) > 5
        assert rolled == raw, table


def test_replayed_batch_not_counted_twice(engine: Engine, database_url: str, recorded_rows) -> None:
    _, rows = recorded_rows

    # The second batch repeats ten rows of the first, as a retry after a
    # lost connection does, and adds five new ones.
    record(database_url, [rows[:25], rows[15:30]])

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one() == 30
        assert conn.execute(text("SELECT sum(requests) FROM usage_hourly")).scalar_one() == 30
        assert conn.execute(text("SELECT sum(requests) FROM usage_daily")).scalar_one() == 30
        expected_cost = sum((row["cost_usd"] for row in rows[:30]), Decimal(0))
        assert conn.execute(text("SELECT sum(cost_usd) FROM usage_daily")).scalar_one() == (
            expected_cost
        )
    for table, unit in (("usage_hourly", "hour"), ("usage_daily", "day")):
        raw, rolled = rollups_match_raw(engine, table, unit)
        assert rolled == raw, table


def test_rollup_groups_null_dimensions(engine: Engine, database_url: str, recorded_rows) -> None:
    _, rows = recorded_rows
    anonymous = [row for row in rows if row["team_id"] is None and row["model"] is None]
    assert len(anonymous) >= 2

    # One batch per row, so rows of the same day meet in ON CONFLICT.
    record(database_url, [[row] for row in anonymous])

    with engine.connect() as conn:
        daily = conn.execute(
            text("SELECT bucket_start, requests FROM usage_daily ORDER BY bucket_start")
        ).all()
    days = {row["created_at"].date() for row in anonymous}
    assert len(daily) == len(days)
    assert sum(requests for _, requests in daily) == len(anonymous)


def test_concurrent_batches_roll_up_exactly(
    engine: Engine, database_url: str, recorded_rows, caplog
) -> None:
    seeded, _ = recorded_rows
    with engine.connect() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()
    at = utc("2026-03-10T12:00:00")

    def batch(prefix: str, reverse: bool) -> list[dict]:
        rows = [
            usage_row(
                f"{prefix}{i}",
                at + timedelta(minutes=i % 90),
                organization_id=organization_id,
                team_id=seeded.lab,
                key_id=seeded.lab_key,
                project_id=None,
                model=[MODEL_A, MODEL_B][i % 2],
                cost="0.0000000001",
            )
            for i in range(200)
        ]
        return rows[::-1] if reverse else rows

    async def run() -> None:
        pool = AsyncConnectionPool(database_url, min_size=4, max_size=4, open=False)
        await pool.open(wait=True, timeout=10)
        try:
            recorders = [UsageRecorder(pool, batch_size=50) for _ in range(4)]
            for number, recorder in enumerate(recorders):
                recorder.start()
                for row in batch(f"c{number}-", reverse=number % 2 == 1):
                    recorder.record(recorder_row(row))
            await asyncio.gather(*(recorder.close() for recorder in recorders))
            assert [recorder.pending for recorder in recorders] == [0, 0, 0, 0]
        finally:
            await pool.close()

    asyncio.run(run())

    # The recorder retries a failed batch, so a deadlock would show only in its log.
    assert not [r.getMessage() for r in caplog.records if r.name == "gatewayz.recorder"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(requests) FROM usage_hourly")).scalar_one() == 800
        assert conn.execute(text("SELECT sum(cost_usd) FROM usage_daily")).scalar_one() == (
            Decimal("0.0000000800")
        )
    raw, rolled = rollups_match_raw(engine, "usage_hourly", "hour")
    assert rolled == raw


# Time ranges


def test_day_range_across_dst_start() -> None:
    time_range = day_range(date(2026, 3, 8), date(2026, 3, 9), "America/New_York")

    # March 8 2026 has 23 hours in New York: clocks skip from 02:00 to 03:00.
    assert time_range.start == utc("2026-03-08T05:00:00")
    assert time_range.end == utc("2026-03-09T04:00:00")
    assert time_range.length == timedelta(hours=23)


def test_half_hour_zone_not_hour_aligned() -> None:
    assert days_start_on_utc_hours(date(2026, 3, 1), date(2026, 4, 1), "America/New_York")
    assert not days_start_on_utc_hours(date(2026, 3, 1), date(2026, 3, 2), "Asia/Kolkata")


def test_period_this_month_and_previous() -> None:
    now = utc("2026-03-10T15:20:00")

    current, previous = period_range("this_month", now, "America/New_York")

    assert current.start == utc("2026-03-01T05:00:00")
    assert current.end == utc("2026-03-10T16:00:00")
    assert previous.start == utc("2026-02-01T05:00:00")
    assert previous.end == previous.start + current.length


def test_period_previous_month_cut_at_its_end() -> None:
    # March 31 is longer into its month than February has days.
    now = utc("2026-03-31T20:00:00")

    current, previous = period_range("this_month", now, "UTC")

    assert current.length > timedelta(days=28)
    assert previous.start == utc("2026-02-01T00:00:00")
    assert previous.end == utc("2026-03-01T00:00:00")


def test_period_today_and_last_days() -> None:
    now = utc("2026-03-10T03:30:00")

    today, yesterday = period_range("today", now, "America/New_York")
    week, week_before = period_range("last_7_days", now, "UTC")

    # 03:30 UTC is still March 9 in New York.
    assert today.start == utc("2026-03-09T04:00:00")
    assert today.end == utc("2026-03-10T04:00:00")
    assert yesterday.start == utc("2026-03-08T05:00:00")
    assert yesterday.length == today.length
    assert week.end == week_before.start + timedelta(days=14)
    assert week.length == timedelta(days=7)


def test_unknown_period_or_zone_rejected() -> None:
    now = utc("2026-03-10T03:30:00")
    with pytest.raises(InvalidRequestError, match="period must be one of"):
        period_range("'; DROP TABLE usage_events; --", now, "UTC")
    with pytest.raises(InvalidRequestError, match="unknown time zone"):
        period_range("today", now, "Mars/Olympus_Mons")
    with pytest.raises(InvalidRequestError, match="must be after start date"):
        day_range(date(2026, 3, 2), date(2026, 3, 2), "UTC")
