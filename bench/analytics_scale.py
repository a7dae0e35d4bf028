"""Time the analytics pages and a one-year report export on N usage rows.

Creates a fresh database on the local Postgres server (127.0.0.1:5432 by
default) and migrates it. Adds one organization (America/New_York) with 10
teams, 30 projects and 100 keys. Inserts N calls spread over the last 365
days with generate_series, one million rows per INSERT, so the rollup trigger
fills usage_hourly, usage_daily and the latency histograms as it does for
the proxy's recorder.

Then, per page, it times the data functions of the page's first view with
default filters, on a new DuckDB connection and again on the same one, and
renders the page with AppTest in the signed-in app after clearing
Streamlit's caches. It exports one-year research reports of the busiest
team and of one of its projects, and a 45-day Usage explorer CSV, and
times recorder-shaped inserts with and without the rollup trigger. The
database is dropped at the end unless --keep is given.

Usage: `python -m bench.analytics_scale [--rows N] [--keep] [--reuse URL]`.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import streamlit as st
from sqlalchemy import Connection
from streamlit.runtime.context import ContextProxy, StreamlitCookies
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from bench.stack import DEFAULT_POSTGRES, BenchDatabase
from gateway_core import analytics, budgets, directory, explorer, reports, usage_stats
from gateway_core.config import PROJECT_ROOT
from gateway_core.db import get_engine
from gateway_core.time_ranges import day_range, period_range, zone_info
from gateway_core.usage_stats import UsageScope

TIMEZONE = "America/New_York"
TEAMS = 10
PROJECTS_PER_TEAM = 3
KEYS_PER_TEAM = 10
CHUNK_ROWS = 1_000_000
EXPORT_DAYS = 45
RECORDER_BATCHES = 40
RECORDER_BATCH_ROWS = 500
# Pages read GATEWAYZ_SECRET at start but use it only for keys, which these pages do not create.
BENCH_SECRET = "analytics-bench-secret-not-for-production"
BENCH_PASSWORD = "analytics-bench-password"
# Page title and the page's PAGE_NAME, which is also its file name under pages/.
PAGES = {
    "Overview": "overview",
    "Team spend": "team_spend",
    "Model analytics": "model_analytics",
    "Usage explorer": "explorer",
    "Research reports": "reports",
    "Usage": "usage",
}
# (model, provider, USD per input token, USD per output token)
MODELS = [
    ("openai/gpt-4o-mini", "openai", "0.00000015", "0.0000006"),
    ("openai/gpt-4o", "openai", "0.0000025", "0.00001"),
    ("openai/o3-mini", "openai", "0.0000011", "0.0000044"),
    ("anthropic/claude-sonnet-4", "anthropic", "0.000003", "0.000015"),
    ("anthropic/claude-haiku-3.5", "anthropic", "0.0000008", "0.000004"),
    ("gemini/gemini-2.5-flash", "gemini", "0.0000003", "0.0000025"),
    ("gemini/gemini-2.5-pro", "gemini", "0.00000125", "0.00001"),
    ("azure/gpt-4.1", "azure", "0.000002", "0.000008"),
]

# Each key uses three models, so an hour contains a few hundred distinct rollup
# rows rather than one per call. A third of the calls go to team-00's keys,
# so that team has about 40% of the traffic. OFFSET 0 keeps the inner query
# from being merged into the outer one, so each random() runs once per row.
# Calls arrive in time order, as the recorder writes them, so the rows of
# one week sit together on disk as they would in production.
GENERATE_SQL = """
INSERT INTO usage_events (
    request_id, created_at, organization_id, team_id, api_key_id, project_id, endpoint,
    model, provider, status_code, error_type, stream, partial, prompt_tokens,
    completion_tokens, cached_tokens, cost_usd, latency_ms, ttft_ms, attempts
)
SELECT
    'bench-' || g.i,
    %(end)s::timestamptz - g.age,
    k.organization_id, k.team_id, k.key_id, k.project_id, 'chat.completions',
    m.model, m.provider,
    g.status, CASE WHEN g.status >= 400 THEN 'upstream_error' END,
    g.i %% 2 = 0, false, g.prompt, g.completion, g.prompt / 4,
    CASE WHEN g.status < 400 THEN g.prompt * m.input_price + g.completion * m.output_price
         ELSE 0 END,
    g.latency,
    CASE WHEN g.i %% 2 = 0 THEN g.ttft END,
    g.attempts
FROM (
    SELECT
        i,
        (%(rows)s - i) * (interval '365 days' / %(rows)s) + random() * interval '1 minute'
            AS age,
        CASE WHEN i %% 100 < 2 THEN 429 WHEN i %% 100 = 2 THEN 502 ELSE 200 END AS status,
        100 + (random() * 4000)::int AS prompt,
        10 + (random() * 800)::int AS completion,
        50 + (random() * 3000)::int AS latency,
        20 + (random() * 400)::int AS ttft,
        CASE WHEN random() < 0.05 THEN 2 ELSE 1 END AS attempts
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
    OFFSET 0
) AS g
JOIN bench_keys AS k
    ON k.idx = CASE WHEN g.i %% 3 = 0 THEN g.i %% %(keys_per_team)s ELSE g.i %% %(keys)s END
JOIN bench_models AS m ON m.idx = (k.idx + g.i %% 3) %% %(models)s
"""


@dataclass
class Timing:
    name: str
    seconds: list[float]
    detail: str = ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def create_directory(conn: psycopg.Connection) -> None:
    """Insert the organization, teams, projects and keys, and the bench_* lookup tables."""
    conn.execute("INSERT INTO organizations (name, timezone) VALUES ('Bench', %s)", (TIMEZONE,))
    conn.execute(
        "INSERT INTO teams (organization_id, name) "
        "SELECT 1, 'team-' || lpad(t::text, 2, '0') FROM generate_series(0, %s) AS t",
        (TEAMS - 1,),
    )
    conn.execute(
        "INSERT INTO projects (team_id, name, principal_investigator, cost_centre) "
        "SELECT t.id, 'project-' || t.id || '-' || p, 'Dr. PI ' || t.id, 'CC-' || t.id || p "
        "FROM teams AS t CROSS JOIN generate_series(0, %s) AS p",
        (PROJECTS_PER_TEAM - 1,),
    )
    # Key j of a team belongs to project j % (PROJECTS_PER_TEAM + 1), none for the last.
    conn.execute(
        "INSERT INTO api_keys (team_id, project_id, name, key_hash, prefix, last4, mode) "
        "SELECT t.id, (SELECT p.id FROM projects AS p WHERE p.team_id = t.id "
        "ORDER BY p.id OFFSET j %% %s LIMIT 1), 'key-' || t.id || '-' || j, "
        "sha256(convert_to(t.id || '-' || j, 'UTF8')), 'gw_live_Bnch', lpad(j::text, 4, '0'), "
        "'live' FROM teams AS t CROSS JOIN generate_series(0, %s) AS j",
        (PROJECTS_PER_TEAM + 1, KEYS_PER_TEAM - 1),
    )
    # The key of row idx: team idx % TEAMS, so low idx values cycle over team 0's keys first.
    conn.execute(
        "CREATE TABLE bench_keys AS SELECT (row_number() OVER (ORDER BY k.team_id, k.id) - 1) "
        "AS idx, k.id AS key_id, k.team_id, k.project_id, t.organization_id "
        "FROM api_keys AS k JOIN teams AS t ON t.id = k.team_id"
    )
    conn.execute(
        "CREATE TABLE bench_models (idx int, model text, provider text, "
        "input_price numeric, output_price numeric)"
    )
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO bench_models VALUES (%s, %s, %s, %s, %s)",
            [(i, *model) for i, model in enumerate(MODELS)],
        )


def generate_rows(url: str, rows: int, end: datetime) -> float:
    """Insert `rows` calls in chunks and return the seconds taken, VACUUM ANALYZE included."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for first in range(0, rows, CHUNK_ROWS):
            last = min(first + CHUNK_ROWS, rows) - 1
            chunk_started = time.perf_counter()
            conn.execute(
                GENERATE_SQL,
                {
                    "end": end,
                    "rows": rows,
                    "first": first,
                    "last": last,
                    "keys": TEAMS * KEYS_PER_TEAM,
                    "keys_per_team": KEYS_PER_TEAM,
                    "models": len(MODELS),
                },
            )
            log(
                f"  inserted rows {first:,}..{last:,} in "
                f"{time.perf_counter() - chunk_started:.1f} s"
            )
        conn.execute("VACUUM ANALYZE usage_events")
        conn.execute("VACUUM ANALYZE usage_hourly")
        conn.execute("VACUUM ANALYZE usage_daily")
        conn.execute("VACUUM ANALYZE usage_latency_hourly")
        conn.execute("VACUUM ANALYZE usage_latency_daily")
    return time.perf_counter() - started


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]


class CountingWriter(io.TextIOBase):
    """A text sink that counts characters, so the export measures query and CSV work only."""

    def __init__(self) -> None:
        self.characters = 0

    def write(self, text: str) -> int:
        self.characters += len(text)
        return len(text)


def page_queries(now: datetime) -> dict[str, Callable[[Any, Connection], Any]]:
    """Return, per page, a function that runs the data functions of its first view.

    Each function gets a DuckDB cursor and a SQLAlchemy connection, which the
    pages use for budgets and report scopes only.
    """
    today = now.astimezone(zone_info(TIMEZONE)).date()
    scope = UsageScope(1)

    def last_days(days: int):
        return day_range(today - timedelta(days=days - 1), today + timedelta(days=1), TIMEZONE)

    def overview(con: Any, period: str) -> None:
        usage_stats.list_organizations(con)
        current, previous = period_range(period, now, TIMEZONE)
        today_range, _ = period_range("today", now, TIMEZONE)
        for time_range in (current, previous, today_range):
            usage_stats.usage_totals(con, scope, time_range)
        usage_stats.latency_percentiles(con, scope, current)
        usage_stats.latency_percentiles(con, scope, previous)
        usage_stats.spend_over_time(con, scope, current, "day", TIMEZONE)
        for by in usage_stats.TOP_DIMENSIONS:
            usage_stats.top_spenders(con, scope, current, by)

    def team_spend(con: Any, conn: Connection) -> None:
        usage_stats.list_organizations(con)
        names = usage_stats.organization_names(con, 1)
        team_id = next(iter(names.teams))
        time_range = last_days(30)
        team = UsageScope(1, team_id=team_id)
        usage_stats.spend_by(con, scope, time_range, "team")
        usage_stats.spend_over_time(con, team, time_range, "day", TIMEZONE)
        usage_stats.spend_by(con, team, time_range, "project")
        usage_stats.spend_by(con, team, time_range, "key")
        for budget in budgets.list_budgets(conn, "team", team_id):
            budgets.budget_status(conn, budget, TIMEZONE)

    def model_analytics(con: Any, conn: Connection) -> None:
        usage_stats.list_organizations(con)
        usage_stats.organization_names(con, 1)
        usage_stats.model_stats(con, scope, last_days(7))

    def usage_explorer(con: Any, conn: Connection) -> None:
        usage_stats.list_organizations(con)
        usage_stats.organization_names(con, 1)
        time_range = last_days(7)
        filters = explorer.ExplorerFilters(time_range.start, time_range.end, organization_id=1)
        explorer.count_rows(con, filters, 100_001)
        explorer.fetch_rows(con, filters)

    def research_reports(con: Any, conn: Connection) -> None:
        usage_stats.list_organizations(con)
        names = usage_stats.organization_names(con, 1)
        team_scope = reports.scope_for_team(conn, next(iter(names.teams)))
        reports.report_summary(con, team_scope, today.replace(day=1), today + timedelta(days=1))

    def usage_page(con: Any, conn: Connection) -> None:
        directory.list_teams(conn)
        time_range = last_days(7)
        analytics.usage_over_time(con, start=time_range.start, end=time_range.end, bucket="day")
        analytics.usage_rows(con, start=time_range.start, end=time_range.end)

    return {
        "Overview": lambda con, conn: overview(con, "this_month"),
        "Overview, last 30 days": lambda con, conn: overview(con, "last_30_days"),
        "Team spend": team_spend,
        "Model analytics": model_analytics,
        "Usage explorer": usage_explorer,
        "Research reports": research_reports,
        "Usage": usage_page,
    }


def time_cold_and_warm(url: str, name: str, run: Callable[[Any, Connection], Any]) -> Timing:
    """Time the data functions on a new DuckDB connection, then again on the same one."""
    seconds = []
    con = analytics.connect(url)
    try:
        for _ in range(2):
            with get_engine(url).connect() as conn, con.cursor() as cursor:
                started = time.perf_counter()
                run(cursor, conn)
                seconds.append(time.perf_counter() - started)
    finally:
        con.close()
    return Timing(name, seconds)


def prepare_app_test() -> None:
    """Patch Streamlit so AppTest runs the app as a browser session on a server would.

    AppTest has no cookies and reports a MagicMock as the client address,
    and it resets the "use the pages/ folder" flag before every run, so a
    rerun would execute the page without app.py. The same patches are the
    fixtures of tests/test_app_pages.py.
    """
    jar: dict[str, str] = {}
    ContextProxy.cookies = property(lambda self: StreamlitCookies(jar))  # type: ignore[method-assign,assignment]
    ContextProxy.ip_address = property(lambda self: None)  # type: ignore[method-assign,assignment]
    original_init = PagesManager.__init__

    def init_after_navigation(self: PagesManager, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init_after_navigation  # type: ignore[method-assign]


def signed_in_app(url: str) -> AppTest:
    """Return the app signed in as a new owner, who may open every analytics page."""
    prepare_app_test()
    username = f"bench-{uuid.uuid4().hex[:8]}"
    with get_engine(url).begin() as conn:
        directory.create_user(conn, username=username, password=BENCH_PASSWORD, role="owner")
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.text_input[0].input(username)
    at.text_input[1].input(BENCH_PASSWORD)
    next(button for button in at.button if button.label == "Login").click()
    at.run()
    if at.exception:
        raise RuntimeError(f"sign-in failed: {at.exception[0].message}")
    return at


def time_page_render(at: AppTest, name: str, page: str) -> Timing:
    """Open a page in the signed-in app after clearing Streamlit's caches, then rerun it.

    The first run renders the page with cold caches and a new DuckDB
    connection. The rerun reads from the caches.
    """
    st.cache_data.clear()
    st.cache_resource.clear()
    at.switch_page(f"pages/{page}.py")
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        at.run()
        seconds.append(time.perf_counter() - started)
        if at.exception:
            raise RuntimeError(f"page {page} failed: {at.exception[0].message}")
    detail = f"{len(at.dataframe)} tables, {len(at.get('plotly_chart'))} charts"
    return Timing(f"{name} page (AppTest)", seconds, detail)


def time_report_export(url: str, today: date, project: bool) -> Timing:
    """Export a 365-day research report of team-00, or of its first project, to a counting sink."""
    with get_engine(url).connect() as conn:
        scope = reports.scope_for_team(conn, 1)
        if project:
            scope = reports.scope_for_team(conn, 1, scope.team_projects[0].id)
    con = analytics.connect(url)
    try:
        out = CountingWriter()
        started = time.perf_counter()
        totals = reports.write_report_csv(con, scope, today - timedelta(days=365), today, out)
        seconds = time.perf_counter() - started
    finally:
        con.close()
    detail = (
        f"{totals.rows:,} rows, {totals.requests:,} requests, {out.characters / 1e6:.1f} MB CSV"
    )
    subject = f"team-00 / {scope.project.name}" if scope.project else "team-00"
    return Timing(f"Research report, {subject}, 365 days", [seconds], detail)


def time_explorer_export(url: str, now: datetime) -> Timing:
    """Time a 45-day explorer export, then repeat it under tracemalloc for its peak memory."""
    today = now.astimezone(zone_info(TIMEZONE)).date()
    time_range = day_range(
        today - timedelta(days=EXPORT_DAYS - 1), today + timedelta(days=1), TIMEZONE
    )
    filters = explorer.ExplorerFilters(time_range.start, time_range.end, organization_id=1)
    con = analytics.connect(url)
    try:
        started = time.perf_counter()
        written = explorer.write_csv(con, filters, CountingWriter())
        seconds = time.perf_counter() - started
        # tracemalloc slows allocations several times over, so it gets its own run.
        tracemalloc.start()
        explorer.write_csv(con, filters, CountingWriter())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        con.close()
    detail = (
        f"{written:,} rows ({written / seconds:,.0f} rows/s), peak Python allocations "
        f"{peak / 1e6:.1f} MB (tracemalloc; DuckDB's own memory not included)"
    )
    return Timing(f"Usage explorer CSV, {EXPORT_DAYS} days", [seconds], detail)


def time_recorder_batches(url: str, enabled: bool) -> list[float]:
    """Time recorder-shaped writes: 500 staged rows moved by INSERT ... SELECT ON CONFLICT.

    Each batch is its own transaction, as in the recorder. Rows are stamped
    now with the keys and models of GENERATE_SQL, so the trigger updates
    existing rollup rows as it does in production.
    """
    action = "ENABLE" if enabled else "DISABLE"
    seconds = []
    with psycopg.connect(url) as conn:
        conn.execute(f"ALTER TABLE usage_events {action} TRIGGER usage_events_rollups")
        conn.commit()
        conn.execute(
            "CREATE TEMP TABLE staging (LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        conn.commit()
        for batch in range(RECORDER_BATCHES):
            first = 10**10 * (2 if enabled else 3) + batch * RECORDER_BATCH_ROWS
            conn.execute(
                GENERATE_SQL.replace("INSERT INTO usage_events", "INSERT INTO staging"),
                {
                    "end": datetime.now(UTC),
                    # The last row of the batch ends the generated year, so rows are stamped now.
                    "rows": first + RECORDER_BATCH_ROWS,
                    "first": first,
                    "last": first + RECORDER_BATCH_ROWS - 1,
                    "keys": TEAMS * KEYS_PER_TEAM,
                    "keys_per_team": KEYS_PER_TEAM,
                    "models": len(MODELS),
                },
            )
            started = time.perf_counter()
            conn.execute("INSERT INTO usage_events SELECT * FROM staging ON CONFLICT DO NOTHING")
            conn.commit()
            seconds.append(time.perf_counter() - started)
        conn.execute("ALTER TABLE usage_events ENABLE TRIGGER usage_events_rollups")
        conn.commit()
    return seconds


def time_trigger_cost(url: str) -> Timing:
    without = statistics.median(time_recorder_batches(url, enabled=False))
    with_trigger = statistics.median(time_recorder_batches(url, enabled=True))
    detail = (
        f"median of {RECORDER_BATCHES} batches of {RECORDER_BATCH_ROWS} rows; "
        f"{without * 1000:,.1f} ms without the rollup trigger"
    )
    return Timing("Recorder batch with rollup trigger", [with_trigger], detail)


def format_report(
    rows: int, load_seconds: float | None, counts: dict[str, int], timings: list[Timing]
) -> str:
    lines = [
        f"Analytics at scale: {rows:,} usage rows requested, {counts['usage_events']:,} stored",
        f"usage_hourly rows: {counts['usage_hourly']:,}; usage_daily rows: "
        f"{counts['usage_daily']:,}",
        f"usage_latency_hourly rows: {counts['usage_latency_hourly']:,}; "
        f"usage_latency_daily rows: {counts['usage_latency_daily']:,}",
    ]
    if load_seconds is not None:
        lines.append(
            f"Insert with rollup trigger, then VACUUM ANALYZE: {load_seconds:.1f} s "
            f"({counts['usage_events'] / load_seconds:,.0f} rows/s)"
        )
    lines += [
        f"Host: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "",
        f"{'Query set':<48} {'first run':>10} {'second run':>11}  detail",
    ]
    for timing in timings:
        runs = [f"{seconds * 1000:,.0f} ms" for seconds in timing.seconds]
        second = runs[1] if len(runs) > 1 else ""
        lines.append(f"{timing.name:<48} {runs[0]:>10} {second:>11}  {timing.detail}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics_scale", description=__doc__)
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="usage rows to generate (default: 10,000,000)"
    )
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="server URL; a fresh database is created"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse",
        metavar="URL",
        help="time the pages on a database that a --keep run left, without inserting rows "
        "or timing the trigger; its calls end at the time of that run",
    )
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def time_pages_and_exports(url: str, now: datetime) -> list[Timing]:
    timings = [time_cold_and_warm(url, name, run) for name, run in page_queries(now).items()]
    os.environ.update(DATABASE_URL=url, GATEWAYZ_SECRET=BENCH_SECRET)
    app = signed_in_app(url)
    timings += [time_page_render(app, name, page) for name, page in PAGES.items()]
    today = now.astimezone(zone_info(TIMEZONE)).date()
    timings.append(time_report_export(url, today, project=True))
    timings.append(time_report_export(url, today, project=False))
    timings.append(time_explorer_export(url, now))
    return timings


def table_counts(url: str) -> dict[str, int]:
    tables = (
        "usage_events",
        "usage_hourly",
        "usage_daily",
        "usage_latency_hourly",
        "usage_latency_daily",
    )
    return {table: count(url, table) for table in tables}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reuse:
        now = datetime.now(UTC)
        counts = table_counts(args.reuse)
        timings = time_pages_and_exports(args.reuse, now)
        print(format_report(counts["usage_events"], None, counts, timings))
        return 0
    database = BenchDatabase(args.postgres)
    log(f"created database {database.name}")
    try:
        now = datetime.now(UTC)
        with psycopg.connect(database.url, autocommit=True) as conn:
            create_directory(conn)
        log(f"inserting {args.rows:,} usage rows")
        load_seconds = generate_rows(database.url, args.rows, now)
        counts = table_counts(database.url)
        timings = time_pages_and_exports(database.url, now)
        timings.append(time_trigger_cost(database.url))
        print(format_report(args.rows, load_seconds, counts, timings))
    finally:
        if args.keep:
            log(f"kept database {database.url}")
        else:
            database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
