"""Research reports page: a team's or project's usage per day and model, as a CSV download.

The same report as `python -m gateway_core.reports research`. Dates are days
in the organization's time zone and both picked days are included. The CSV
is written only when the download button is clicked: a deferred callable
streams the rows into a temporary file and hands Streamlit the open file.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import duckdb
import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app_support import current_actor, duckdb_for, load_names, pick_organization
from gateway_core import analytics, directory, reports
from gateway_core.access import Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError
from gateway_core.reports import ReportScope
from gateway_core.reports.research import CURRENCY, PRICE_SOURCE
from gateway_core.time_ranges import zone_info

PAGE_NAME = "reports"
TTL_SECONDS = 30
ALL_PROJECTS = 0

logger = logging.getLogger("gatewayz.app.reports")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to see research reports: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_scope(
    database_url: str, team_id: int, project_id: int | None, actor: Actor
) -> ReportScope:
    with engine_for(database_url).connect() as conn:
        return reports.scope_for_team(conn, team_id, project_id, actor)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_summary(database_url: str, scope: ReportScope, first: date, end: date) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return reports.report_summary(cursor, scope, first, end)


def file_name(scope: ReportScope, first: date, last: date) -> str:
    """Return the download's name, which gives the first and the last day, both included."""
    subject = scope.team_name if scope.project is None else scope.project.name
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in subject).strip("-") or "report"
    return f"research-{slug}-{first.isoformat()}-to-{last.isoformat()}.csv"


def render_header(scope: ReportScope, first: date, last: date) -> None:
    header = dict(
        reports.report_header(
            scope, first, last + timedelta(days=1), generated_at=datetime.now(UTC)
        )
    )
    st.markdown(
        f"**Project:** {header['Project']}  \n"
        f"**Principal investigator:** {header['Principal investigator'] or '–'}  \n"
        f"**Grant or cost centre:** {header['Grant or cost centre'] or '–'}  \n"
        f"**Period:** {first.isoformat()} to {last.isoformat()} ({scope.timezone}), "
        f"costs in {CURRENCY} at the {PRICE_SOURCE}"
    )


def render_summary(summary: pd.DataFrame) -> None:
    total_cost = sum(summary["cost_usd"], Decimal(0))
    requests, input_tokens, output_tokens, cost = st.columns(4)
    requests.metric("Requests", f"{int(summary['requests'].sum()):,}")
    input_tokens.metric("Input tokens", f"{int(summary['input_tokens'].sum()):,}")
    output_tokens.metric("Output tokens", f"{int(summary['output_tokens'].sum()):,}")
    cost.metric("Cost (USD)", f"${total_cost:,.4f}")
    st.dataframe(
        summary,
        hide_index=True,
        column_config={
            "project": "Project",
            "model": "Model",
            "requests": st.column_config.NumberColumn("Requests", format="%d"),
            "input_tokens": st.column_config.NumberColumn("Input tokens", format="%d"),
            "cached_input_tokens": st.column_config.NumberColumn(
                "Cached input tokens", format="%d", help="Included in input tokens."
            ),
            "output_tokens": st.column_config.NumberColumn("Output tokens", format="%d"),
            "cost_usd": st.column_config.NumberColumn(
                "Cost (USD)", format="$%.4f", help="The CSV has all 10 decimal places."
            ),
        },
    )


settings = Settings.from_env()
st.title("Research reports")
url = settings.analytics_database_url

try:
    with engine_for(url).connect() as conn:
        version = directory.directory_version(conn)
except SQLAlchemyError as error:
    logger.error("reading organizations failed: %s", analytics.redact_password(str(error), url))
    st.error("Cannot read from Postgres. Check that the database is running, then reload.")
    st.stop()
actor = current_actor()
organization = pick_organization(
    url,
    "reports_organization",
    empty_message="No teams yet. An admin creates teams and projects; reports cover their usage.",
    version=version,
)
names = load_names(url, organization.id, actor, version)
if not names.teams:
    st.info("No teams yet. An admin creates teams and projects; reports cover their usage.")
    st.stop()

today = datetime.now(UTC).astimezone(zone_info(organization.timezone)).date()
team_column, project_column, dates_column = st.columns([2, 2, 2])
team_id = team_column.selectbox(
    "Team", list(names.teams), format_func=names.teams.get, key="reports_team"
)
team_projects = [p for p, owner in names.project_teams.items() if owner == team_id]
project_id = project_column.selectbox(
    "Project",
    [ALL_PROJECTS, *team_projects],
    format_func=lambda i: "All projects of the team" if i == ALL_PROJECTS else names.projects[i],
    key="reports_project",
)
dates = dates_column.date_input(
    f"Days ({organization.timezone}), both included",
    value=(today.replace(day=1), today),
    key="reports_dates",
)
if not isinstance(dates, tuple) or len(dates) != 2:
    st.info("Pick the last day of the report.")
    st.stop()
first, last = dates
end = last + timedelta(days=1)

try:
    scope = load_scope(url, team_id, None if project_id == ALL_PROJECTS else project_id, actor)
    with st.spinner("Summing usage…"):
        summary = load_summary(url, scope, first, end)
except GatewayError as error:
    logger.info("research report for team %s not shown: %s", team_id, error.message)
    st.error(f"Report not shown: {error.message}.")
    st.stop()
except (duckdb.Error, SQLAlchemyError) as error:
    logger.error("research report query failed: %s", analytics.redact_password(str(error), url))
    st.error("Could not read usage from Postgres. Reload the page to try again.")
    st.stop()

render_header(scope, first, last)
if summary.empty:
    st.info(
        "No calls in this period. Pick other days, or check that the project's API keys "
        "are assigned to it (keys without a project count for the team only)."
    )
else:
    render_summary(summary)
con = duckdb_for(url)
st.download_button(
    "Download CSV",
    # Runs in a separate thread when clicked, with its own DuckDB cursor.
    data=lambda: reports.export_report_file(con, scope, first, end),
    file_name=file_name(scope, first, last),
    mime="text/csv",
    icon=":material/download:",
    key="reports_download",
)
