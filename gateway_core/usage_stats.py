"""Spend, traffic and latency figures for the Overview, Team spend and Model analytics pages.

The queries run in DuckDB over the Postgres database that
`gateway_core.analytics.connect` attaches. Counts, tokens and cost come from
the rollups: `usage_daily` for whole UTC days inside a range and
`usage_hourly` for the hours at its edges, so a query reads at most one row
per day or hour and dimension combination instead of one per call. Latency
percentiles are estimated from the latency histogram rollups
(`gateway_core.latency_histogram`), within 10% of the exact value, except
in short ranges that do not start and end on whole UTC hours, whose exact
percentiles come from the individual calls in `usage_events`.

Every filter value is a bound `?` parameter. Costs are `Decimal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import duckdb
import pandas as pd

from gateway_core import access, latency_histogram
from gateway_core.access import Actor
from gateway_core.analytics import to_frame
from gateway_core.errors import InvalidRequestError
from gateway_core.rollups import rollup_source
from gateway_core.time_ranges import BUCKET_UNITS, TimeRange

NO_TEAM = "(no team)"
NO_PROJECT = "(no project)"
NO_KEY = "(no key)"
NO_MODEL = "(no model)"
TOP_DIMENSIONS = ("model", "team", "key")
SPEND_DIMENSIONS = ("model", "team", "project", "key")
# The ten decimal places of the NUMERIC(20, 10) cost columns.
COST_QUANTUM = Decimal("1E-10")
# Ranges up to this long that do not start and end on whole UTC hours get
# exact percentiles from usage_events. All other ranges get estimates from
# the latency histograms.
EXACT_LATENCY_MAX_LENGTH = timedelta(hours=6)


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
    """Percentiles in milliseconds, None when no call in the range has the value.

    When `estimated` is true, each value is within 10% of the exact
    percentile (within 1 ms below 1 ms).
    """

    latency_p50: float | None
    latency_p95: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    estimated: bool = False


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


def list_organizations(
    con: duckdb.DuckDBPyConnection, actor: Actor | None = None
) -> list[Organization]:
    """Return every organization by name, or only those the actor may see."""
    rows = con.execute(
        "SELECT id, name, timezone FROM pg.public.organizations ORDER BY name, id"
    ).fetchall()
    listed = [Organization(*row) for row in rows]
    if actor is None:
        return listed
    return [organization for organization in listed if actor.may_see(organization.id)]


def key_label(name: str | None, prefix: str | None, last4: str | None) -> str:
    """Return how a key is shown: its name with the visible prefix and last 4 characters."""
    if prefix is None:
        return NO_KEY
    return f"{name} ({prefix}…{last4})"


# Sums over rollup rows, with the column names of spend_by's frames. DuckDB sums
# BIGINT as HUGEINT, so counts are cast back to BIGINT.
_ROLLUP_SUMS = """
    sum(h.requests)::BIGINT AS requests,
    sum(h.errors)::BIGINT AS errors,
    sum(h.prompt_tokens)::BIGINT AS prompt_tokens,
    sum(h.completion_tokens)::BIGINT AS completion_tokens,
    sum(h.cost_usd) AS cost_usd"""
_ROLLUP_MEASURES = (
    "requests",
    "errors",
    "retried",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)


def _scope_equal(scope: UsageScope) -> dict[str, Any]:
    return {
        "organization_id": scope.organization_id,
        "team_id": scope.team_id,
        "project_id": scope.project_id,
    }


def _event_filter(scope: UsageScope, time_range: TimeRange) -> tuple[str, list[Any]]:
    """Return the WHERE conditions on usage_events `e` for the scope and range, and their values."""
    conditions = ["e.organization_id = ?", "e.created_at >= ?", "e.created_at < ?"]
    params: list[Any] = [scope.organization_id, time_range.start, time_range.end]
    for column, value in (("team_id", scope.team_id), ("project_id", scope.project_id)):
        if value is not None:
            conditions.append(f"e.{column} = ?")
            params.append(value)
    return " AND ".join(conditions), params


def usage_totals(
    con: duckdb.DuckDBPyConnection, scope: UsageScope, time_range: TimeRange
) -> UsageTotals:
    """Return request, error and token counts and cost of the calls in the range."""
    source, params = rollup_source(_ROLLUP_MEASURES, _scope_equal(scope), time_range)
    row = con.execute(
        f"""
        SELECT
            coalesce(sum(requests), 0)::BIGINT,
            coalesce(sum(errors), 0)::BIGINT,
            coalesce(sum(retried), 0)::BIGINT,
            coalesce(sum(prompt_tokens), 0)::BIGINT,
            coalesce(sum(completion_tokens), 0)::BIGINT,
            coalesce(sum(cost_usd), 0::DECIMAL(38, 10))
        FROM ({source})
        """,
        params,
    ).fetchone()
    assert row is not None
    return UsageTotals(*(int(value) for value in row[:5]), cost_usd=Decimal(row[5]))


def latency_is_estimated(time_range: TimeRange) -> bool:
    """Return whether latency percentiles of the range come from the histograms."""
    whole_hours = latency_histogram.whole_hours(time_range)
    return whole_hours == time_range or time_range.length > EXACT_LATENCY_MAX_LENGTH


def latency_percentiles(
    con: duckdb.DuckDBPyConnection, scope: UsageScope, time_range: TimeRange
) -> LatencyPercentiles:
    """Return p50 and p95 of latency and time to first token over successful calls."""
    if latency_is_estimated(time_range):
        histograms = latency_histogram.read_counts(con, _scope_equal(scope), time_range)
        if not histograms:
            return LatencyPercentiles(None, None, None, None, estimated=True)
        counts = histograms[()]
        return LatencyPercentiles(
            latency_histogram.estimate_percentile(counts.latency, 0.5),
            latency_histogram.estimate_percentile(counts.latency, 0.95),
            latency_histogram.estimate_percentile(counts.ttft, 0.5),
            latency_histogram.estimate_percentile(counts.ttft, 0.95),
            estimated=True,
        )
    where, params = _event_filter(scope, time_range)
    succeeded = "FILTER (WHERE e.status_code < 400)"
    row = con.execute(
        f"""
        SELECT
            quantile_cont(e.latency_ms, 0.5) {succeeded},
            quantile_cont(e.latency_ms, 0.95) {succeeded},
            quantile_cont(e.ttft_ms, 0.5) {succeeded},
            quantile_cont(e.ttft_ms, 0.95) {succeeded}
        FROM pg.public.usage_events AS e
        WHERE {where}
        """,
        params,
    ).fetchone()
    assert row is not None
    return LatencyPercentiles(*row)


def top_spenders(
    con: duckdb.DuckDBPyConnection,
    scope: UsageScope,
    time_range: TimeRange,
    by: str,
    limit: int = 10,
) -> pd.DataFrame:
    """Return the `limit` models, teams or keys with the highest cost in the range.

    Columns: name, requests, cost_usd (Decimal), ordered by cost, then requests.
    """
    if by not in TOP_DIMENSIONS:
        raise InvalidRequestError(f"by must be one of {', '.join(TOP_DIMENSIONS)}; got {by!r}")
    frame = spend_by(con, scope, time_range, by)
    return frame.head(limit).reset_index(drop=True)


# Per dimension of spend_by: the rollup column, the name expression and its
# join. `?` in the name expression is bound to the label of rows without a value.
_SPEND_GROUPS = {
    "model": ("model", "coalesce(h.model, ?)", "", NO_MODEL),
    "team": (
        "team_id",
        "coalesce(t.name, ?)",
        "LEFT JOIN pg.public.teams AS t ON t.id = h.team_id",
        NO_TEAM,
    ),
    "project": (
        "project_id",
        "coalesce(p.name, ?)",
        "LEFT JOIN pg.public.projects AS p ON p.id = h.project_id",
        NO_PROJECT,
    ),
    "key": (
        "api_key_id",
        "CASE WHEN k.prefix IS NULL THEN ? "
        "ELSE k.name || ' (' || k.prefix || '…' || k.last4 || ')' END",
        "LEFT JOIN pg.public.api_keys AS k ON k.id = h.api_key_id",
        NO_KEY,
    ),
}


def spend_by(
    con: duckdb.DuckDBPyConnection, scope: UsageScope, time_range: TimeRange, dimension: str
) -> pd.DataFrame:
    """Return requests, tokens and cost per model, team, project or key in the range.

    Columns: name, requests, errors, prompt_tokens, completion_tokens,
    cost_usd (Decimal), highest cost first. Names replace ids: a key is
    shown as "name (prefix…last4)".
    """
    if dimension not in _SPEND_GROUPS:
        raise InvalidRequestError(
            f"dimension must be one of {', '.join(SPEND_DIMENSIONS)}; got {dimension!r}"
        )
    column, name, join, missing = _SPEND_GROUPS[dimension]
    source, params = rollup_source((column, *_ROLLUP_MEASURES), _scope_equal(scope), time_range)
    sql = f"""
        SELECT h.{column} AS group_id, {name} AS name, {_ROLLUP_SUMS}
        FROM ({source}) AS h
        {join}
        GROUP BY ALL
        ORDER BY sum(h.cost_usd) DESC, sum(h.requests) DESC, name
    """
    frame = to_frame(con.execute(sql, [missing, *params]))
    return frame.drop(columns=["group_id"])


def spend_over_time(
    con: duckdb.DuckDBPyConnection,
    scope: UsageScope,
    time_range: TimeRange,
    unit: str,
    timezone: str,
) -> pd.DataFrame:
    """Return requests and cost per local time bucket and model in the range.

    Columns: bucket (local wall-clock start of the hour, day, week or month,
    as a naive datetime), model, requests, cost_usd (Decimal). Weeks start on
    Monday. Buckets without calls are absent.
    """
    if unit not in BUCKET_UNITS:
        raise InvalidRequestError(f"unit must be one of {', '.join(BUCKET_UNITS)}; got {unit!r}")
    # NOTE: hourly rollups start on whole UTC hours, so in zones whose offset
    # is not a whole number of hours (such as +05:30) each local bucket is
    # shifted by that fraction of an hour.
    source, params = rollup_source(
        ("bucket_start", "model", "requests", "cost_usd"),
        _scope_equal(scope),
        time_range,
        hourly_only=True,
    )
    sql = f"""
        SELECT
            date_trunc(?, timezone(?, h.bucket_start)) AS bucket,
            coalesce(h.model, ?) AS model,
            sum(h.requests)::BIGINT AS requests,
            sum(h.cost_usd) AS cost_usd
        FROM ({source}) AS h
        GROUP BY ALL
        ORDER BY bucket, model
    """
    return to_frame(con.execute(sql, [unit, timezone, NO_MODEL, *params]))


_MODEL_STATS_COLUMNS = [
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


def model_stats(
    con: duckdb.DuckDBPyConnection, scope: UsageScope, time_range: TimeRange
) -> pd.DataFrame:
    """Return traffic, cost, error and retry rates and latency percentiles per model and provider.

    Columns: model, provider, requests, prompt_tokens, completion_tokens,
    cost_usd and cost_per_1k_requests (Decimal), error_rate, retry_rate
    (calls with more than one upstream attempt: a retry or a fallback),
    latency_p50, latency_p95, latency_p99 and ttft_p50 in milliseconds over
    successful calls. Ordered by requests, most first.
    """
    source, params = rollup_source(
        ("model", "provider", *_ROLLUP_MEASURES), _scope_equal(scope), time_range
    )
    totals = to_frame(
        con.execute(
            f"""
            SELECT
                coalesce(h.model, ?) AS model,
                coalesce(h.provider, '') AS provider,
                sum(h.retried)::BIGINT AS retried,
                {_ROLLUP_SUMS}
            FROM ({source}) AS h
            GROUP BY h.model, h.provider
            """,
            [NO_MODEL, *params],
        )
    )
    if totals.empty:
        return pd.DataFrame(columns=_MODEL_STATS_COLUMNS)
    requests = totals["requests"].astype("int64")
    totals["cost_per_1k_requests"] = [
        (cost * 1000 / int(count)).quantize(COST_QUANTUM)
        for cost, count in zip(totals["cost_usd"], requests, strict=True)
    ]
    totals["error_rate"] = totals["errors"].astype("int64") / requests
    totals["retry_rate"] = totals["retried"].astype("int64") / requests
    merged = totals.merge(
        _model_latency(con, scope, time_range), on=["model", "provider"], how="left"
    )
    ordered = merged.sort_values(["requests", "model"], ascending=[False, True])
    return ordered[_MODEL_STATS_COLUMNS].reset_index(drop=True)


_MODEL_LATENCY_COLUMNS = ["latency_p50", "latency_p95", "latency_p99", "ttft_p50"]


def _model_latency(
    con: duckdb.DuckDBPyConnection, scope: UsageScope, time_range: TimeRange
) -> pd.DataFrame:
    if latency_is_estimated(time_range):
        return _model_latency_estimates(con, scope, time_range)
    where, params = _event_filter(scope, time_range)
    succeeded = "FILTER (WHERE e.status_code < 400)"
    sql = f"""
        SELECT
            coalesce(e.model, ?) AS model,
            coalesce(e.provider, '') AS provider,
            quantile_cont(e.latency_ms, 0.5) {succeeded} AS latency_p50,
            quantile_cont(e.latency_ms, 0.95) {succeeded} AS latency_p95,
            quantile_cont(e.latency_ms, 0.99) {succeeded} AS latency_p99,
            quantile_cont(e.ttft_ms, 0.5) {succeeded} AS ttft_p50
        FROM pg.public.usage_events AS e
        WHERE {where}
        GROUP BY e.model, e.provider
    """
    return to_frame(con.execute(sql, [NO_MODEL, *params]))


def _model_latency_estimates(
    con: duckdb.DuckDBPyConnection, scope: UsageScope, time_range: TimeRange
) -> pd.DataFrame:
    histograms = latency_histogram.read_counts(
        con, _scope_equal(scope), time_range, ("model", "provider")
    )
    estimate = latency_histogram.estimate_percentile
    rows = [
        {
            "model": NO_MODEL if model is None else model,
            "provider": provider or "",
            "latency_p50": estimate(counts.latency, 0.5),
            "latency_p95": estimate(counts.latency, 0.95),
            "latency_p99": estimate(counts.latency, 0.99),
            "ttft_p50": estimate(counts.ttft, 0.5),
        }
        for (model, provider), counts in histograms.items()
    ]
    columns = ["model", "provider", *_MODEL_LATENCY_COLUMNS]
    return pd.DataFrame(rows, columns=columns).astype(
        {name: "float64" for name in _MODEL_LATENCY_COLUMNS}
    )


def organization_names(
    con: duckdb.DuckDBPyConnection, organization_id: int, actor: Actor | None = None
) -> OrganizationNames:
    """Return the names that filters and tables of one organization show in place of ids.

    With an `actor`, raises PermissionDeniedError unless the actor may see the organization.
    """
    if actor is not None:
        access.require_organization(actor, organization_id, "usage.read")
    team_rows = con.execute(
        "SELECT id, name FROM pg.public.teams WHERE organization_id = ? ORDER BY name, id",
        [organization_id],
    ).fetchall()
    team_names = {team_id: name for team_id, name in team_rows}
    project_rows = con.execute(
        """
        SELECT p.id, p.team_id, p.name
        FROM pg.public.projects AS p
        JOIN pg.public.teams AS t ON t.id = p.team_id
        WHERE t.organization_id = ?
        ORDER BY p.name, p.id
        """,
        [organization_id],
    ).fetchall()
    key_rows = con.execute(
        """
        SELECT k.id, k.team_id, k.name, k.prefix, k.last4
        FROM pg.public.api_keys AS k
        JOIN pg.public.teams AS t ON t.id = k.team_id
        WHERE t.organization_id = ?
        ORDER BY k.name, k.id
        """,
        [organization_id],
    ).fetchall()
    # The daily rollup is the smallest table that lists every model used.
    models = con.execute(
        """
        SELECT DISTINCT model FROM pg.public.usage_daily
        WHERE organization_id = ? AND model IS NOT NULL
        ORDER BY model
        """,
        [organization_id],
    ).fetchall()
    return OrganizationNames(
        teams=team_names,
        projects={
            project_id: f"{team_names[team_id]} / {name}"
            for project_id, team_id, name in project_rows
        },
        keys={
            key_id: f"{team_names[team_id]} / {key_label(name, prefix, last4)}"
            for key_id, team_id, name, prefix, last4 in key_rows
        },
        project_teams={project_id: team_id for project_id, team_id, _ in project_rows},
        models=tuple(model for (model,) in models),
    )
