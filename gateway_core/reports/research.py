"""The research usage report: one row per project, model and local day, and a totals row.

Days follow the organization's time zone, and a report covers the local
dates [start, end). Counts and cost come from the hourly rollups when every
local midnight in the range falls on a whole UTC hour. Otherwise (zones such
as Asia/Kolkata at +05:30) the rows are summed from `usage_events`, because
those local days split hourly buckets.

The rows are summed in DuckDB over the Postgres database that
`gateway_core.analytics.connect` attaches, with every value bound as a `?`
parameter. Team and project lookups for the header use SQLAlchemy.

The CSV starts with a header block of label and value rows, then a blank
row, the column names, the data rows and a TOTAL row. Rows arrive in Arrow
record batches of STREAM_CHUNK_ROWS, so Python keeps one batch in memory at a time.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, BinaryIO, TextIO

import duckdb
import pandas as pd
from sqlalchemy import Connection, select

from gateway_core import access
from gateway_core.analytics import to_frame
from gateway_core.csv_cells import cell, spool_to_file, text_cell
from gateway_core.directory import DEFAULT_ORGANIZATION
from gateway_core.errors import NotFoundError
from gateway_core.rollups import rollup_source
from gateway_core.schema import organizations, projects, teams
from gateway_core.time_ranges import day_range, days_start_on_utc_hours
from gateway_core.usage_stats import NO_PROJECT

RESEARCH_TITLE = "Research usage report"
CURRENCY = "USD"
PRICE_SOURCE = "gateway catalog and admin overrides at time of call"
TOKEN_NOTE = "input_tokens includes cached_input_tokens; output_tokens includes reasoning tokens"
COLUMNS = (
    "date",
    "project",
    "model",
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
)
TOTAL_LABEL = "TOTAL"
# Model column of calls without a model. The proxy records a call's model once
# the request body is valid, so these are calls it rejected earlier, such as
# for an invalid key or body.
REJECTED_MODEL = "(rejected before a model was chosen)"
STREAM_CHUNK_ROWS = 2_000


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    principal_investigator: str | None
    # A grant number or cost-centre code, as entered for the project.
    cost_centre: str | None


@dataclass(frozen=True)
class ReportScope:
    """A team, or one project of it, with what the report header shows about them."""

    organization_id: int
    organization_name: str
    timezone: str
    team_id: int
    team_name: str
    # None for a report on the whole team.
    project: ProjectInfo | None
    # The team's projects, for the header of a whole-team report.
    team_projects: tuple[ProjectInfo, ...] = ()


@dataclass(frozen=True)
class ReportRow:
    day: date
    project: str
    model: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: Decimal


@dataclass
class ReportTotals:
    rows: int = 0
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    # Zero with the ten decimal places of the cost columns, so an empty
    # report prints 0.0000000000 like every other cost.
    cost_usd: Decimal = field(default_factory=lambda: Decimal("0E-10"))

    def add(self, row: ReportRow) -> None:
        self.rows += 1
        self.requests += row.requests
        self.input_tokens += row.input_tokens
        self.cached_input_tokens += row.cached_input_tokens
        self.output_tokens += row.output_tokens
        self.cost_usd += row.cost_usd


def _team_projects(conn: Connection, team_id: int) -> tuple[ProjectInfo, ...]:
    rows = conn.execute(
        select(
            projects.c.id,
            projects.c.name,
            projects.c.principal_investigator,
            projects.c.cost_centre,
        )
        .where(projects.c.team_id == team_id)
        .order_by(projects.c.name)
    )
    return tuple(ProjectInfo(*row) for row in rows)


def scope_for_team(
    conn: Connection,
    team_id: int,
    project_id: int | None = None,
    actor: access.Actor | None = None,
) -> ReportScope:
    """Return the report scope of a team, or of one of its projects, by id.

    With an `actor`, a team outside the actor's organizations raises the
    NotFoundError of a missing team.
    """
    if actor is not None:
        organization_id = access.organization_of_team(conn, team_id)
        access.require_object(actor, organization_id, "reports.read", f"no team with id {team_id}")
    row = conn.execute(
        select(organizations.c.id, organizations.c.name, organizations.c.timezone, teams.c.name)
        .join(teams, teams.c.organization_id == organizations.c.id)
        .where(teams.c.id == team_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no team with id {team_id}")
    organization_id, organization_name, timezone, team_name = row
    team_projects = _team_projects(conn, team_id)
    project = None
    if project_id is not None:
        project = next((p for p in team_projects if p.id == project_id), None)
        if project is None:
            raise NotFoundError(f"team {team_name!r} has no project with id {project_id}")
    return ReportScope(
        organization_id, organization_name, timezone, team_id, team_name, project, team_projects
    )


def find_scope(
    conn: Connection,
    *,
    team: str,
    project: str | None = None,
    organization: str = DEFAULT_ORGANIZATION,
) -> ReportScope:
    """Return the report scope named by team, optional project and organization names."""
    team_id = conn.execute(
        select(teams.c.id)
        .join(organizations, organizations.c.id == teams.c.organization_id)
        .where(teams.c.name == team, organizations.c.name == organization)
    ).scalar_one_or_none()
    if team_id is None:
        raise NotFoundError(
            f"no team named {team!r} in organization {organization!r}; "
            "list teams with `python -m gateway_core teams list`"
        )
    scope = scope_for_team(conn, team_id)
    if project is None:
        return scope
    match = next((p for p in scope.team_projects if p.name == project), None)
    if match is None:
        known = ", ".join(repr(p.name) for p in scope.team_projects) or "none"
        raise NotFoundError(f"team {team!r} has no project named {project!r} (projects: {known})")
    return scope_for_team(conn, team_id, match.id)


_MEASURES = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd")


def _daily_source(scope: ReportScope, first: date, end: date) -> tuple[str, list[Any]]:
    """Return SQL of local day, project, model and the measures from rollups or raw calls.

    The first `?` of the SQL is the time zone, and the returned values start with it.
    """
    time_range = day_range(first, end, scope.timezone)
    project_id = None if scope.project is None else scope.project.id
    if days_start_on_utc_hours(first, end, scope.timezone):
        source, params = rollup_source(
            ("bucket_start", "project_id", "model", *_MEASURES),
            {
                "organization_id": scope.organization_id,
                "team_id": scope.team_id,
                "project_id": project_id,
            },
            time_range,
            hourly_only=True,
        )
        sql = f"""
            SELECT CAST(timezone(?, bucket_start) AS DATE) AS day, project_id, model,
                requests, prompt_tokens, cached_tokens, completion_tokens, cost_usd
            FROM ({source})
        """
        return sql, [scope.timezone, *params]
    conditions = [
        "organization_id = ?",
        "team_id = ?",
        "created_at >= ?",
        "created_at < ?",
    ]
    params = [scope.organization_id, scope.team_id, time_range.start, time_range.end]
    if project_id is not None:
        conditions.append("project_id = ?")
        params.append(project_id)
    sql = f"""
        SELECT CAST(timezone(?, created_at) AS DATE) AS day, project_id, model,
            1 AS requests, prompt_tokens, cached_tokens, completion_tokens, cost_usd
        FROM pg.public.usage_events
        WHERE {" AND ".join(conditions)}
    """
    return sql, [scope.timezone, *params]


_SUMS = """
    sum(s.requests)::BIGINT AS requests,
    sum(s.prompt_tokens)::BIGINT AS input_tokens,
    sum(s.cached_tokens)::BIGINT AS cached_input_tokens,
    sum(s.completion_tokens)::BIGINT AS output_tokens,
    sum(s.cost_usd) AS cost_usd"""


def report_rows(
    con: duckdb.DuckDBPyConnection, scope: ReportScope, first: date, end: date
) -> Iterator[ReportRow]:
    """Yield one row per local day, project and model with calls, in that order."""
    source, params = _daily_source(scope, first, end)
    sql = f"""
        SELECT
            s.day,
            coalesce(p.name, ?) AS project,
            coalesce(s.model, ?) AS model,
            {_SUMS}
        FROM ({source}) AS s
        LEFT JOIN pg.public.projects AS p ON p.id = s.project_id
        GROUP BY s.day, s.project_id, p.name, s.model
        ORDER BY s.day, p.name NULLS LAST, s.model NULLS LAST
    """
    reader = con.execute(sql, [NO_PROJECT, REJECTED_MODEL, *params]).fetch_record_batch(
        STREAM_CHUNK_ROWS
    )
    for batch in reader:
        for values in zip(*batch.to_pydict().values(), strict=True):
            day, project, model, requests, input_tokens, cached, output_tokens, cost = values
            yield ReportRow(
                day=day,
                project=project,
                model=model,
                requests=requests,
                input_tokens=input_tokens,
                cached_input_tokens=cached,
                output_tokens=output_tokens,
                cost_usd=cost,
            )


def report_summary(
    con: duckdb.DuckDBPyConnection, scope: ReportScope, first: date, end: date
) -> pd.DataFrame:
    """Return the report's totals per project and model over the whole range.

    Columns: project, model, requests, input_tokens, cached_input_tokens,
    output_tokens, cost_usd (Decimal); highest cost first.
    """
    source, params = _daily_source(scope, first, end)
    sql = f"""
        SELECT
            coalesce(p.name, ?) AS project,
            coalesce(s.model, ?) AS model,
            {_SUMS}
        FROM ({source}) AS s
        LEFT JOIN pg.public.projects AS p ON p.id = s.project_id
        GROUP BY s.project_id, p.name, s.model
        ORDER BY sum(s.cost_usd) DESC, p.name, s.model
    """
    return to_frame(con.execute(sql, [NO_PROJECT, REJECTED_MODEL, *params]))


def _join_per_project(scope: ReportScope, attribute: str) -> str:
    if scope.project is not None:
        return getattr(scope.project, attribute) or ""
    values = [
        f"{project.name}: {getattr(project, attribute)}"
        for project in scope.team_projects
        if getattr(project, attribute)
    ]
    return "; ".join(values)


def report_header(
    scope: ReportScope,
    first: date,
    end: date,
    *,
    generated_at: datetime,
    title: str = RESEARCH_TITLE,
) -> list[tuple[str, str]]:
    """Return the label and value rows printed above the report table."""
    project = f"all projects of team {scope.team_name}"
    if scope.project is not None:
        project = scope.project.name
    return [
        ("Report", title),
        ("Organization", scope.organization_name),
        ("Team", scope.team_name),
        ("Project", project),
        ("Principal investigator", _join_per_project(scope, "principal_investigator")),
        ("Grant or cost centre", _join_per_project(scope, "cost_centre")),
        ("Period start", first.isoformat()),
        ("Period end (exclusive)", end.isoformat()),
        ("Time zone", scope.timezone),
        ("Currency", CURRENCY),
        ("Generated at", generated_at.astimezone(UTC).isoformat(timespec="seconds")),
        ("Price source", PRICE_SOURCE),
        ("Token counts", TOKEN_NOTE),
    ]


def write_report_csv(
    con: duckdb.DuckDBPyConnection,
    scope: ReportScope,
    first: date,
    end: date,
    out: TextIO,
    *,
    title: str = RESEARCH_TITLE,
    generated_at: datetime | None = None,
) -> ReportTotals:
    """Write the header block, the rows and a TOTAL row to `out`; return the totals."""
    writer = csv.writer(out)
    header = report_header(
        scope, first, end, generated_at=generated_at or datetime.now(UTC), title=title
    )
    for label, value in header:
        writer.writerow([label, text_cell(value)])
    writer.writerow([])
    writer.writerow(COLUMNS)
    totals = ReportTotals()
    for row in report_rows(con, scope, first, end):
        totals.add(row)
        writer.writerow(
            [
                row.day.isoformat(),
                cell(row.project),
                cell(row.model),
                row.requests,
                row.input_tokens,
                row.cached_input_tokens,
                row.output_tokens,
                cell(row.cost_usd),
            ]
        )
    writer.writerow(
        [
            TOTAL_LABEL,
            "",
            "",
            totals.requests,
            totals.input_tokens,
            totals.cached_input_tokens,
            totals.output_tokens,
            cell(totals.cost_usd),
        ]
    )
    return totals


def export_report_file(
    con: duckdb.DuckDBPyConnection, scope: ReportScope, first: date, end: date
) -> BinaryIO:
    """Write the report CSV to an unlinked temporary file and return it open for reading.

    The report runs on its own cursor of `con`, so it may run in another thread.
    """

    def write(out: TextIO) -> None:
        with con.cursor() as cursor:
            write_report_csv(cursor, scope, first, end, out)

    return spool_to_file(write)
