"""The research usage report: one row per project, model and local day, and a totals row.

Days follow the organization's time zone, and a report covers the local
dates [start, end). Counts and cost come from the hourly rollups when every
local midnight in the range falls on a whole UTC hour. Otherwise (zones such
as Asia/Kolkata at +05:30) the rows are summed from `usage_events`, because
those local days split hourly buckets.

The CSV starts with a header block of label and value rows, then a blank
row, the column names, the data rows and a TOTAL row. Rows stream from a
server-side cursor, so a report of any length is written in constant memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import BinaryIO, TextIO

import pandas as pd
from sqlalchemy import Connection, Date, Engine, Select, Subquery, cast, func, literal, select

from gateway_core.csv_cells import cell, spool_to_file, text_cell
from gateway_core.directory import DEFAULT_ORGANIZATION
from gateway_core.errors import NotFoundError
from gateway_core.schema import organizations, projects, teams, usage_events, usage_hourly
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


def scope_for_team(conn: Connection, team_id: int, project_id: int | None = None) -> ReportScope:
    """Return the report scope of a team, or of one of its projects, by id."""
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


def _daily_source(scope: ReportScope, first: date, end: date) -> Subquery:
    """Select local day, project, model and the measures from rollups or raw calls."""
    time_range = day_range(first, end, scope.timezone)
    if days_start_on_utc_hours(first, end, scope.timezone):
        h = usage_hourly.c
        query: Select = select(
            cast(func.timezone(scope.timezone, h.bucket_start), Date).label("day"),
            h.project_id,
            h.model,
            h.requests,
            h.prompt_tokens,
            h.cached_tokens,
            h.completion_tokens,
            h.cost_usd,
        ).where(
            h.organization_id == scope.organization_id,
            h.team_id == scope.team_id,
            h.bucket_start >= time_range.start,
            h.bucket_start < time_range.end,
        )
        if scope.project is not None:
            query = query.where(h.project_id == scope.project.id)
        return query.subquery()
    e = usage_events.c
    query = select(
        cast(func.timezone(scope.timezone, e.created_at), Date).label("day"),
        e.project_id,
        e.model,
        literal(1).label("requests"),
        e.prompt_tokens,
        e.cached_tokens,
        e.completion_tokens,
        e.cost_usd,
    ).where(
        e.organization_id == scope.organization_id,
        e.team_id == scope.team_id,
        e.created_at >= time_range.start,
        e.created_at < time_range.end,
    )
    if scope.project is not None:
        query = query.where(e.project_id == scope.project.id)
    return query.subquery()


def _sums(source: Subquery) -> tuple:
    return (
        func.sum(source.c.requests).label("requests"),
        func.sum(source.c.prompt_tokens).label("input_tokens"),
        func.sum(source.c.cached_tokens).label("cached_input_tokens"),
        func.sum(source.c.completion_tokens).label("output_tokens"),
        func.sum(source.c.cost_usd).label("cost_usd"),
    )


def report_rows(
    conn: Connection, scope: ReportScope, first: date, end: date
) -> Iterator[ReportRow]:
    """Yield one row per local day, project and model with calls, in that order."""
    source = _daily_source(scope, first, end)
    query = (
        select(
            source.c.day,
            func.coalesce(projects.c.name, NO_PROJECT).label("project"),
            func.coalesce(source.c.model, REJECTED_MODEL).label("model"),
            *_sums(source),
        )
        .select_from(source.outerjoin(projects, projects.c.id == source.c.project_id))
        .group_by(source.c.day, source.c.project_id, projects.c.name, source.c.model)
        .order_by(source.c.day, projects.c.name.nulls_last(), source.c.model.nulls_last())
    )
    result = conn.execution_options(yield_per=STREAM_CHUNK_ROWS).execute(query)
    for chunk in result.partitions():
        for row in chunk:
            yield ReportRow(
                day=row.day,
                project=row.project,
                model=row.model,
                requests=int(row.requests),
                input_tokens=int(row.input_tokens),
                cached_input_tokens=int(row.cached_input_tokens),
                output_tokens=int(row.output_tokens),
                cost_usd=row.cost_usd,
            )


def report_summary(conn: Connection, scope: ReportScope, first: date, end: date) -> pd.DataFrame:
    """Return the report's totals per project and model over the whole range.

    Columns: project, model, requests, input_tokens, cached_input_tokens,
    output_tokens, cost_usd (Decimal); highest cost first.
    """
    source = _daily_source(scope, first, end)
    query = (
        select(
            func.coalesce(projects.c.name, NO_PROJECT).label("project"),
            func.coalesce(source.c.model, REJECTED_MODEL).label("model"),
            *_sums(source),
        )
        .select_from(source.outerjoin(projects, projects.c.id == source.c.project_id))
        .group_by(source.c.project_id, projects.c.name, source.c.model)
        .order_by(func.sum(source.c.cost_usd).desc(), projects.c.name, source.c.model)
    )
    result = conn.execute(query)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


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
    conn: Connection,
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
    for row in report_rows(conn, scope, first, end):
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


def export_report_file(engine: Engine, scope: ReportScope, first: date, end: date) -> BinaryIO:
    """Write the report CSV to an unlinked temporary file and return it open for reading."""

    def write(out: TextIO) -> None:
        with engine.connect() as conn:
            write_report_csv(conn, scope, first, end, out)

    return spool_to_file(write)
