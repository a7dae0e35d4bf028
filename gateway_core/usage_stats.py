"""Spend, traffic and latency figures for the Overview, Team spend and Model analytics pages.

Counts, tokens and cost come from the hourly rollup `usage_hourly`, so a
query reads at most one row per hour and dimension combination instead of
one per call. Latency percentiles need the individual calls, so they are
computed from `usage_events`, whose `created_at` index limits the scan to
the range.

These queries run in Postgres through SQLAlchemy rather than through DuckDB.
DuckDB 1.5.5's postgres_scanner reads a table of more than 1,000 pages in
ctid ranges that together cover every page (pg_debug_show_queries lists
them), so Postgres cannot use the indexes that keep these queries short.
Every filter value is a bound parameter. Costs are `Decimal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, Connection, Select, func, select

from gateway_core.errors import InvalidRequestError
from gateway_core.schema import (
    api_keys,
    organizations,
    projects,
    teams,
    usage_daily,
    usage_events,
    usage_hourly,
)
from gateway_core.time_ranges import BUCKET_UNITS, TimeRange

NO_TEAM = "(no team)"
NO_PROJECT = "(no project)"
NO_KEY = "(no key)"
NO_MODEL = "(no model)"
TOP_DIMENSIONS = ("model", "team", "key")
SPEND_DIMENSIONS = ("model", "team", "project", "key")
# The ten decimal places of the NUMERIC(20, 10) cost columns.
COST_QUANTUM = Decimal("1E-10")


@dataclass(frozen=True)
class Organization:
    id: int
    name: str
    # IANA zone that days, weeks and months of this organization follow.
    timezone: str


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    errors: int
    retried: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class LatencyPercentiles:
    """Percentiles in milliseconds, None when no call in the range has the value."""

    latency_p50: float | None
    latency_p95: float | None
    ttft_p50: float | None
    ttft_p95: float | None


@dataclass(frozen=True)
class UsageScope:
    """Calls of one organization, optionally narrowed to one team or project."""

    organization_id: int
    team_id: int | None = None
    project_id: int | None = None


@dataclass(frozen=True)
class OrganizationNames:
    """Display names of an organization's teams, projects and keys, by id."""

    teams: dict[int, str]
    # "Team / project"
    projects: dict[int, str]
    # "Team / key name (prefix…last4)"
    keys: dict[int, str]
    # The team each project belongs to.
    project_teams: dict[int, int]
    models: tuple[str, ...]


def list_organizations(conn: Connection) -> list[Organization]:
    rows = conn.execute(
        select(organizations.c.id, organizations.c.name, organizations.c.timezone).order_by(
            organizations.c.name
        )
    )
    return [Organization(*row) for row in rows]


def key_label(name: str | None, prefix: str | None, last4: str | None) -> str:
    """Return how a key is shown: its name with the visible prefix and last 4 characters."""
    if prefix is None:
        return NO_KEY
    return f"{name} ({prefix}…{last4})"


def _rollup_filter(scope: UsageScope, time_range: TimeRange) -> list[ColumnElement[bool]]:
    h = usage_hourly.c
    conditions = [
        h.organization_id == scope.organization_id,
        h.bucket_start >= time_range.start,
        h.bucket_start < time_range.end,
    ]
    if scope.team_id is not None:
        conditions.append(h.team_id == scope.team_id)
    if scope.project_id is not None:
        conditions.append(h.project_id == scope.project_id)
    return conditions


def _event_filter(scope: UsageScope, time_range: TimeRange) -> list[ColumnElement[bool]]:
    e = usage_events.c
    conditions = [
        e.organization_id == scope.organization_id,
        e.created_at >= time_range.start,
        e.created_at < time_range.end,
    ]
    if scope.team_id is not None:
        conditions.append(e.team_id == scope.team_id)
    if scope.project_id is not None:
        conditions.append(e.project_id == scope.project_id)
    return conditions


def _frame(conn: Connection, query: Select) -> pd.DataFrame:
    result = conn.execute(query)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


def usage_totals(conn: Connection, scope: UsageScope, time_range: TimeRange) -> UsageTotals:
    """Return request, error and token counts and cost of the calls in the range."""
    h = usage_hourly.c
    row = conn.execute(
        select(
            func.coalesce(func.sum(h.requests), 0),
            func.coalesce(func.sum(h.errors), 0),
            func.coalesce(func.sum(h.retried), 0),
            func.coalesce(func.sum(h.prompt_tokens), 0),
            func.coalesce(func.sum(h.completion_tokens), 0),
            func.coalesce(func.sum(h.cost_usd), Decimal(0)),
        ).where(*_rollup_filter(scope, time_range))
    ).one()
    return UsageTotals(*(int(value) for value in row[:5]), cost_usd=Decimal(row[5]))


def latency_percentiles(
    conn: Connection, scope: UsageScope, time_range: TimeRange
) -> LatencyPercentiles:
    """Return p50 and p95 of latency and time to first token over successful calls."""
    e = usage_events.c
    succeeded = e.status_code < 400

    def percentile(fraction: float, column: Any) -> Any:
        return func.percentile_cont(fraction).within_group(column).filter(succeeded)

    row = conn.execute(
        select(
            percentile(0.5, e.latency_ms),
            percentile(0.95, e.latency_ms),
            percentile(0.5, e.ttft_ms),
            percentile(0.95, e.ttft_ms),
        ).where(*_event_filter(scope, time_range))
    ).one()
    return LatencyPercentiles(*row)


def top_spenders(
    conn: Connection, scope: UsageScope, time_range: TimeRange, by: str, limit: int = 10
) -> pd.DataFrame:
    """Return the `limit` models, teams or keys with the highest cost in the range.

    Columns: name, requests, cost_usd (Decimal), ordered by cost, then requests.
    """
    if by not in TOP_DIMENSIONS:
        raise InvalidRequestError(f"by must be one of {', '.join(TOP_DIMENSIONS)}; got {by!r}")
    frame = spend_by(conn, scope, time_range, by)
    return frame.head(limit).reset_index(drop=True)


def spend_by(
    conn: Connection, scope: UsageScope, time_range: TimeRange, dimension: str
) -> pd.DataFrame:
    """Return requests, tokens and cost per model, team, project or key in the range.

    Columns: name, requests, errors, prompt_tokens, completion_tokens,
    cost_usd (Decimal), highest cost first. Names replace ids: a key is
    shown as "name (prefix…last4)".
    """
    h = usage_hourly.c
    sums = (
        func.sum(h.requests).label("requests"),
        func.sum(h.errors).label("errors"),
        func.sum(h.prompt_tokens).label("prompt_tokens"),
        func.sum(h.completion_tokens).label("completion_tokens"),
        func.sum(h.cost_usd).label("cost_usd"),
    )
    where = _rollup_filter(scope, time_range)
    if dimension == "model":
        query = select(func.coalesce(h.model, NO_MODEL).label("name"), *sums).group_by(h.model)
    elif dimension == "team":
        query = (
            select(func.coalesce(teams.c.name, NO_TEAM).label("name"), *sums)
            .select_from(usage_hourly.outerjoin(teams, teams.c.id == h.team_id))
            .group_by(h.team_id, teams.c.name)
        )
    elif dimension == "project":
        query = (
            select(func.coalesce(projects.c.name, NO_PROJECT).label("name"), *sums)
            .select_from(usage_hourly.outerjoin(projects, projects.c.id == h.project_id))
            .group_by(h.project_id, projects.c.name)
        )
    elif dimension == "key":
        return _spend_by_key(conn, sums, where)
    else:
        raise InvalidRequestError(
            f"dimension must be one of {', '.join(SPEND_DIMENSIONS)}; got {dimension!r}"
        )
    query = query.where(*where).order_by(func.sum(h.cost_usd).desc(), func.sum(h.requests).desc())
    return _frame(conn, query)


def _spend_by_key(conn: Connection, sums: tuple, where: list) -> pd.DataFrame:
    h = usage_hourly.c
    k = api_keys.c
    query = (
        select(k.name.label("key_name"), k.prefix, k.last4, *sums)
        .select_from(usage_hourly.outerjoin(api_keys, k.id == h.api_key_id))
        .where(*where)
        .group_by(h.api_key_id, k.name, k.prefix, k.last4)
        .order_by(func.sum(h.cost_usd).desc(), func.sum(h.requests).desc())
    )
    frame = _frame(conn, query)
    labels = [
        key_label(name, prefix, last4)
        for name, prefix, last4 in zip(
            frame["key_name"], frame["prefix"], frame["last4"], strict=True
        )
    ]
    frame = frame.drop(columns=["key_name", "prefix", "last4"])
    frame.insert(0, "name", labels)
    return frame


def spend_over_time(
    conn: Connection, scope: UsageScope, time_range: TimeRange, unit: str, timezone: str
) -> pd.DataFrame:
    """Return requests and cost per local time bucket and model in the range.

    Columns: bucket (local wall-clock start of the hour, day, week or month,
    as a naive datetime), model, requests, cost_usd (Decimal). Weeks start on
    Monday. Buckets without calls are absent.
    """
    if unit not in BUCKET_UNITS:
        raise InvalidRequestError(f"unit must be one of {', '.join(BUCKET_UNITS)}; got {unit!r}")
    h = usage_hourly.c
    # NOTE: hourly rollups start on whole UTC hours, so in zones whose offset
    # is not a whole number of hours (such as +05:30) each local bucket is
    # shifted by that fraction of an hour.
    local_bucket = func.timezone(timezone, func.date_trunc(unit, h.bucket_start, timezone))
    per_hour = (
        select(
            local_bucket.label("bucket"),
            func.coalesce(h.model, NO_MODEL).label("model"),
            h.requests,
            h.cost_usd,
        )
        .where(*_rollup_filter(scope, time_range))
        .subquery()
    )
    query = (
        select(
            per_hour.c.bucket,
            per_hour.c.model,
            func.sum(per_hour.c.requests).label("requests"),
            func.sum(per_hour.c.cost_usd).label("cost_usd"),
        )
        .group_by(per_hour.c.bucket, per_hour.c.model)
        .order_by(per_hour.c.bucket, per_hour.c.model)
    )
    return _frame(conn, query)


def model_stats(conn: Connection, scope: UsageScope, time_range: TimeRange) -> pd.DataFrame:
    """Return traffic, cost, error and retry rates and latency percentiles per model and provider.

    Columns: model, provider, requests, prompt_tokens, completion_tokens,
    cost_usd and cost_per_1k_requests (Decimal), error_rate, retry_rate
    (calls with more than one upstream attempt: a retry or a fallback),
    latency_p50, latency_p95, latency_p99 and ttft_p50 in milliseconds over
    successful calls. Ordered by requests, most first.
    """
    h = usage_hourly.c
    totals = _frame(
        conn,
        select(
            func.coalesce(h.model, NO_MODEL).label("model"),
            func.coalesce(h.provider, "").label("provider"),
            func.sum(h.requests).label("requests"),
            func.sum(h.errors).label("errors"),
            func.sum(h.retried).label("retried"),
            func.sum(h.prompt_tokens).label("prompt_tokens"),
            func.sum(h.completion_tokens).label("completion_tokens"),
            func.sum(h.cost_usd).label("cost_usd"),
        )
        .where(*_rollup_filter(scope, time_range))
        .group_by(h.model, h.provider),
    )
    columns = [
        "model",
        "provider",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "cost_per_1k_requests",
        "error_rate",
        "retry_rate",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "ttft_p50",
    ]
    if totals.empty:
        return pd.DataFrame(columns=columns)
    requests = totals["requests"].astype("int64")
    totals["cost_per_1k_requests"] = [
        (cost * 1000 / int(count)).quantize(COST_QUANTUM)
        for cost, count in zip(totals["cost_usd"], requests, strict=True)
    ]
    totals["error_rate"] = totals["errors"] / requests
    totals["retry_rate"] = totals["retried"] / requests
    merged = totals.merge(
        _model_latency(conn, scope, time_range), on=["model", "provider"], how="left"
    )
    return merged.sort_values(["requests", "model"], ascending=[False, True])[columns].reset_index(
        drop=True
    )


def _model_latency(conn: Connection, scope: UsageScope, time_range: TimeRange) -> pd.DataFrame:
    e = usage_events.c
    succeeded = e.status_code < 400

    def percentile(fraction: float, column: Any) -> Any:
        return func.percentile_cont(fraction).within_group(column).filter(succeeded)

    model = func.coalesce(e.model, NO_MODEL)
    provider = func.coalesce(e.provider, "")
    query = (
        select(
            model.label("model"),
            provider.label("provider"),
            percentile(0.5, e.latency_ms).label("latency_p50"),
            percentile(0.95, e.latency_ms).label("latency_p95"),
            percentile(0.99, e.latency_ms).label("latency_p99"),
            percentile(0.5, e.ttft_ms).label("ttft_p50"),
        )
        .where(*_event_filter(scope, time_range))
        .group_by(e.model, e.provider)
    )
    return _frame(conn, query)


def organization_names(conn: Connection, organization_id: int) -> OrganizationNames:
    """Return the names that filters and tables of one organization show in place of ids."""
    team_rows = conn.execute(
        select(teams.c.id, teams.c.name)
        .where(teams.c.organization_id == organization_id)
        .order_by(teams.c.name)
    ).all()
    team_names = {team_id: name for team_id, name in team_rows}
    project_rows = conn.execute(
        select(projects.c.id, projects.c.team_id, projects.c.name)
        .where(projects.c.team_id.in_(team_names))
        .order_by(projects.c.name)
    ).all()
    k = api_keys.c
    key_rows = conn.execute(
        select(k.id, k.team_id, k.name, k.prefix, k.last4)
        .where(k.team_id.in_(team_names))
        .order_by(k.name, k.id)
    ).all()
    # The daily rollup is the smallest table that lists every model used.
    d = usage_daily.c
    models = conn.execute(
        select(d.model)
        .where(d.organization_id == organization_id, d.model.is_not(None))
        .distinct()
        .order_by(d.model)
    ).scalars()
    return OrganizationNames(
        teams=team_names,
        projects={row.id: f"{team_names[row.team_id]} / {row.name}" for row in project_rows},
        keys={
            row.id: f"{team_names[row.team_id]} / {key_label(row.name, row.prefix, row.last4)}"
            for row in key_rows
        },
        project_teams={row.id: row.team_id for row in project_rows},
        models=tuple(models),
    )
