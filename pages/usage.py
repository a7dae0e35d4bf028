"""Usage page: requests and cost per team over time, and the most recent calls.

Reads Postgres through DuckDB (gateway_core.analytics). Dates are UTC days.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.graph_objects import Figure
from sqlalchemy import Engine

from app_support import current_actor, duckdb_for
from gateway_core import analytics, directory
from gateway_core.access import Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine

PAGE_NAME = "usage"
USAGE_TTL_SECONDS = 30
TEAMS_TTL_SECONDS = 60
DEFAULT_DAYS = 7
BUCKET_MILLISECONDS = {"hour": 3_600_000, "day": 86_400_000}
NO_TEAM_LABEL = "(no team)"

logger = logging.getLogger("gatewayz.app.usage")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to see usage: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=TEAMS_TTL_SECONDS, show_spinner=False)
def load_teams(database_url: str, actor: Actor) -> list[directory.Team]:
    with engine_for(database_url).connect() as conn:
        return [team for team in directory.list_teams(conn) if actor.may_see(team.organization_id)]


@st.cache_data(ttl=USAGE_TTL_SECONDS, show_spinner=False)
def load_usage_over_time(
    database_url: str,
    start: datetime,
    end: datetime,
    bucket: str,
    team_id: int | None,
    actor: Actor,
) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return analytics.usage_over_time(
            cursor,
            start=start,
            end=end,
            bucket=bucket,
            team_id=team_id,
            organization_ids=actor.organization_ids,
        )


@st.cache_data(ttl=USAGE_TTL_SECONDS, show_spinner=False)
def load_usage_rows(
    database_url: str, start: datetime, end: datetime, team_id: int | None, actor: Actor
) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return analytics.usage_rows(
            cursor, start=start, end=end, team_id=team_id, organization_ids=actor.organization_ids
        )


def day_range(first: date, last: date) -> tuple[datetime, datetime]:
    """Return [first 00:00 UTC, the day after last 00:00 UTC)."""
    start = datetime.combine(first, time.min, tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC)
    return start, end


def usage_chart(
    frame: pd.DataFrame, column: str, title: str, axis_title: str, bucket: str
) -> Figure:
    figure = px.bar(
        frame,
        x="bucket",
        y=column,
        color="team",
        title=title,
        labels={"bucket": "Time (UTC)", column: axis_title, "team": "Team"},
    )
    # Each bar is 90% of its bucket wide and centered in it, instead of the
    # width Plotly derives from the spacing between bars.
    figure.update_traces(
        width=BUCKET_MILLISECONDS[bucket] * 0.9,
        xperiod=BUCKET_MILLISECONDS[bucket],
        xperiodalignment="middle",
    )
    figure.update_layout(legend_title_text="Team")
    return figure


def render_empty_state(settings: Settings) -> None:
    st.info(
        "No requests in this date range. To send a first request, create a key on the "
        "Keys page (owners and admins), then call the proxy's OpenAI-compatible API:"
    )
    st.code(
        f"curl http://{settings.proxy_host}:{settings.proxy_port}/v1/chat/completions \\\n"
        '  -H "Authorization: Bearer $GATEWAYZ_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        """  -d '{"model": "openai/gpt-4o-mini", """
        """"messages": [{"role": "user", "content": "Hello"}]}'""",
        language="bash",
    )


def render_charts(over_time: pd.DataFrame, bucket: str) -> None:
    total_cost = sum(over_time["cost_usd"], Decimal(0))
    requests_column, cost_column = st.columns(2)
    requests_column.metric("Requests", f"{int(over_time['requests'].sum()):,}")
    cost_column.metric("Cost (USD)", f"${total_cost:,.6f}")

    # Plotly needs floats, so cost becomes float here for drawing only. The
    # metric above and the table below use the exact Decimal values.
    chart_frame = over_time.assign(
        team=over_time["team"].fillna(NO_TEAM_LABEL),
        cost_usd=over_time["cost_usd"].map(float),
    )
    st.plotly_chart(
        usage_chart(chart_frame, "requests", f"Requests per {bucket}", "Requests", bucket)
    )
    cost_figure = usage_chart(
        chart_frame, "cost_usd", f"Cost per {bucket} (USD)", "Cost (USD)", bucket
    )
    cost_figure.update_yaxes(tickprefix="$")
    st.plotly_chart(cost_figure)


def render_recent_calls(rows: pd.DataFrame) -> None:
    st.subheader("Recent calls")
    if len(rows) >= analytics.DEFAULT_ROW_LIMIT:
        st.caption(f"The newest {analytics.DEFAULT_ROW_LIMIT} calls in the date range.")
    table = rows.drop(columns=["team_id"]).assign(team=rows["team"].fillna(NO_TEAM_LABEL))
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "time": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "request_id": "Request ID",
            "team": "Team",
            "key": "Key",
            "model": "Model",
            "provider": "Provider",
            "status": st.column_config.NumberColumn("Status", format="%d"),
            "prompt_tokens": st.column_config.NumberColumn("Prompt tokens", format="%d"),
            "completion_tokens": st.column_config.NumberColumn("Completion tokens", format="%d"),
            "cost_usd": st.column_config.NumberColumn(
                "Cost (USD)",
                format="$%.6f",
                help="Rounded to 6 decimal places here. Postgres stores 10.",
            ),
            "latency_ms": st.column_config.NumberColumn("Latency (ms)", format="%d"),
            "ttft_ms": st.column_config.NumberColumn(
                "TTFT (ms)", format="%d", help="Time to first token, for streamed calls."
            ),
        },
    )


settings = Settings.from_env()
st.title("Usage")

today = datetime.now(UTC).date()
actor = current_actor()
teams = load_teams(settings.analytics_database_url, actor)
team_names = {team.id: team.name for team in teams}
dates_column, team_column, bucket_column = st.columns([2, 2, 1])
dates = dates_column.date_input(
    "Dates (UTC)",
    value=(today - timedelta(days=DEFAULT_DAYS - 1), today),
    key="usage_dates",
)
team_id = team_column.selectbox(
    "Team",
    [None, *team_names],
    format_func=lambda i: "All teams" if i is None else team_names[i],
    key="usage_team",
)
bucket = bucket_column.selectbox("Group by", analytics.BUCKETS, index=1, key="usage_bucket")

if not isinstance(dates, tuple) or len(dates) != 2:
    st.info("Pick an end date to see usage.")
    st.stop()

start, end = day_range(*dates)
try:
    url = settings.analytics_database_url
    over_time = load_usage_over_time(url, start, end, bucket, team_id, actor)
    rows = load_usage_rows(url, start, end, team_id, actor)
except duckdb.Error as error:
    message = analytics.redact_password(str(error), settings.analytics_database_url)
    logger.error("usage query failed: %s", message)
    st.error(f"Could not read usage from Postgres: {message}")
    st.stop()

if over_time.empty:
    render_empty_state(settings)
else:
    render_charts(over_time, bucket)
    render_recent_calls(rows)
