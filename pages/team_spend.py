"""Team spend page: what each team spent over time, by model, against its budgets.

Pick a team, and optionally one of its projects, to see spend per day, week
or month stacked by model, with the budget of that period drawn as a line,
and the split by project and by key. Figures come from the daily and
hourly rollups, read through DuckDB, and follow the organization's time zone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.graph_objects import Figure
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app_support import current_actor, duckdb_for, load_names, pick_organization
from gateway_core import analytics, budgets, directory, usage_stats
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError
from gateway_core.time_ranges import TimeRange, day_range, default_bucket_unit, zone_info
from gateway_core.usage_stats import UsageScope

PAGE_NAME = "team_spend"
TTL_SECONDS = 30
DEFAULT_DAYS = 30
UNITS = ("day", "week", "month")
# The budget period whose limit applies to one bar of each time bucket.
BUDGET_PERIOD_FOR_UNIT = {"day": "daily", "week": "weekly", "month": "monthly"}
ALL_PROJECTS = 0

logger = logging.getLogger("gatewayz.app.team_spend")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to see team spend: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_spend_by(
    database_url: str, scope: UsageScope, time_range: TimeRange, dimension: str
) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.spend_by(cursor, scope, time_range, dimension)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_spend_over_time(
    database_url: str, scope: UsageScope, time_range: TimeRange, unit: str, timezone: str
) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.spend_over_time(cursor, scope, time_range, unit, timezone)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_budgets(
    database_url: str, scope_type: str, scope_id: int, timezone: str
) -> list[budgets.BudgetStatus]:
    with engine_for(database_url).connect() as conn:
        return [
            budgets.budget_status(conn, budget, timezone)
            for budget in budgets.list_budgets(conn, scope_type, scope_id)
        ]


def spend_table(frame: pd.DataFrame, name_title: str) -> None:
    st.dataframe(
        frame[["name", "requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd"]],
        hide_index=True,
        column_config={
            "name": name_title,
            "requests": st.column_config.NumberColumn("Requests", format="%d"),
            "errors": st.column_config.NumberColumn("Errors", format="%d"),
            "prompt_tokens": st.column_config.NumberColumn("Input tokens", format="%d"),
            "completion_tokens": st.column_config.NumberColumn("Output tokens", format="%d"),
            "cost_usd": st.column_config.NumberColumn(
                "Cost (USD)", format="$%.4f", help="Rounded here. Postgres stores 10 places."
            ),
        },
    )


def spend_chart(
    frame: pd.DataFrame, unit: str, timezone: str, statuses: list[budgets.BudgetStatus]
) -> Figure:
    # Plotly needs floats, so costs and limits become floats for drawing only.
    chart = frame.assign(cost_usd=frame["cost_usd"].map(float))
    figure = px.bar(
        chart,
        x="bucket",
        y="cost_usd",
        color="model",
        title=f"Spend per {unit} by model (USD)",
        labels={"bucket": f"Time ({timezone})", "cost_usd": "Cost (USD)", "model": "Model"},
    )
    figure.update_yaxes(tickprefix="$")
    # Buckets start at midnight, so the axis shows dates without a time of day.
    figure.update_xaxes(tickformat="%Y-%m" if unit == "month" else "%Y-%m-%d")
    for status in statuses:
        budget = status.budget
        if budget.period == BUDGET_PERIOD_FOR_UNIT[unit]:
            figure.add_hline(
                y=float(budget.limit_usd),
                line_dash="dash",
                line_color="red",
                annotation_text=f"{budget.period} budget ${budget.limit_usd:,.2f}",
            )
    return figure


def budget_table(statuses: list[budgets.BudgetStatus], unit: str) -> None:
    rows = [
        {
            "period": status.budget.period,
            "limit_usd": status.budget.limit_usd,
            "spent_usd": status.spent,
            "remaining_usd": status.remaining,
            "on_chart": status.budget.period == BUDGET_PERIOD_FOR_UNIT[unit],
        }
        for status in statuses
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "period": "Budget period",
            "limit_usd": st.column_config.NumberColumn("Limit (USD)", format="$%.2f"),
            "spent_usd": st.column_config.NumberColumn("Spent this period (USD)", format="$%.4f"),
            "remaining_usd": st.column_config.NumberColumn("Remaining (USD)", format="$%.4f"),
            "on_chart": st.column_config.CheckboxColumn(
                "Line on chart", help="Drawn when the budget period matches the bars."
            ),
        },
    )


settings = Settings.from_env()
st.title("Team spend")
url = settings.analytics_database_url

try:
    with engine_for(url).connect() as conn:
        version = directory.directory_version(conn)
except SQLAlchemyError as error:
    logger.error("reading organizations failed: %s", analytics.redact_password(str(error), url))
    st.error("Cannot read from Postgres. Check that the database is running, then reload.")
    st.stop()
organization = pick_organization(
    url,
    "team_spend_organization",
    empty_message="No teams yet. Create one on the Keys page, then come back to see its spend.",
    version=version,
)
names = load_names(url, organization.id, current_actor(), version)
if not names.teams:
    st.info("No teams yet. Create one on the Keys page, then come back to see its spend.")
    st.stop()

today = datetime.now(UTC).astimezone(zone_info(organization.timezone)).date()
dates_column, team_column, project_column, unit_column = st.columns([2, 2, 2, 1])
dates = dates_column.date_input(
    f"Dates ({organization.timezone})",
    value=(today - timedelta(days=DEFAULT_DAYS - 1), today),
    key="team_spend_dates",
)
team_id = team_column.selectbox(
    "Team", list(names.teams), format_func=names.teams.get, key="team_spend_team"
)
team_projects = [p for p, owner in names.project_teams.items() if owner == team_id]
project_id = project_column.selectbox(
    "Project",
    [ALL_PROJECTS, *team_projects],
    format_func=lambda i: "All projects" if i == ALL_PROJECTS else names.projects[i],
    key="team_spend_project",
)
if not isinstance(dates, tuple) or len(dates) != 2:
    st.info("Pick an end date to see spend.")
    st.stop()
try:
    time_range = day_range(dates[0], dates[1] + timedelta(days=1), organization.timezone)
except GatewayError as error:
    logger.info("rejected team spend dates: %s", error.message)
    st.error(f"Dates not applied: {error.message}.")
    st.stop()
default_unit = default_bucket_unit(time_range.length)
unit = unit_column.selectbox(
    "Group by",
    UNITS,
    index=UNITS.index(default_unit) if default_unit in UNITS else 0,
    key="team_spend_unit",
)

organization_scope = UsageScope(organization.id)
scope = UsageScope(
    organization.id, team_id=team_id, project_id=None if project_id == ALL_PROJECTS else project_id
)
budget_scope = ("team", team_id) if scope.project_id is None else ("project", scope.project_id)
try:
    with st.spinner("Loading spend…"):
        per_team = load_spend_by(url, organization_scope, time_range, "team")
        over_time = load_spend_over_time(url, scope, time_range, unit, organization.timezone)
        by_project = load_spend_by(url, scope, time_range, "project")
        by_key = load_spend_by(url, scope, time_range, "key")
        statuses = load_budgets(url, *budget_scope, organization.timezone)
except (duckdb.Error, SQLAlchemyError) as error:
    logger.error("team spend queries failed: %s", analytics.redact_password(str(error), url))
    st.error("Could not read spend from Postgres. Reload the page to try again.")
    st.stop()

st.subheader("All teams")
if per_team.empty:
    st.info(
        "No calls in this date range. Widen the dates, or send requests with a team's key "
        "(Keys page) to see spend here."
    )
    st.stop()
spend_table(per_team, "Team")

subject = names.teams[team_id] if scope.project_id is None else names.projects[scope.project_id]
st.subheader(subject)
total = sum(over_time["cost_usd"], Decimal(0))
st.metric(f"Spend of {subject} (USD)", f"${total:,.4f}")
if over_time.empty:
    st.info(f"{subject} made no calls in this date range. Pick another team or widen the dates.")
elif total == 0:
    # A chart of zero-height bars reads as missing data, so it is left out.
    st.info(
        f"The calls of {subject} in this date range cost nothing, so there is no spend to "
        "chart. Sandbox models are free unless an owner or admin sets a price override for "
        "them on the Models page."
    )
else:
    st.plotly_chart(spend_chart(over_time, unit, organization.timezone, statuses))
if statuses:
    budget_table(statuses, unit)
else:
    st.caption("No budget is set for this scope. Owners, admins and billing users can add one.")

projects_column, keys_column = st.columns(2)
with projects_column:
    st.markdown("**By project**")
    spend_table(by_project, "Project")
with keys_column:
    st.markdown("**By key**")
    spend_table(by_key, "Key")
link_parameters = {
    "team": str(team_id),
    "start": dates[0].isoformat(),
    "end": dates[1].isoformat(),
}
if scope.project_id is not None:
    link_parameters["project"] = str(scope.project_id)
st.page_link(
    "pages/explorer.py",
    label=f"See the individual calls of {subject} in the Usage explorer",
    icon=":material/table_view:",
    query_params=link_parameters,
)
