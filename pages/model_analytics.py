"""Model analytics page: traffic, cost, reliability and speed per model and provider.

Queries run in DuckDB over the attached Postgres database. Requests,
tokens, cost, errors and retries come from the daily and hourly rollups,
and latency percentiles of successful calls are estimated from the latency
histogram rollups (marked ≈, within 10%). A call counts as
retried when it needed more than one upstream attempt, whether the same
provider was retried or a fallback model returned the response.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.graph_objects import Figure

from app_support import current_actor, duckdb_for, load_names, pick_organization
from gateway_core import analytics, usage_stats
from gateway_core.config import Settings
from gateway_core.errors import GatewayError
from gateway_core.time_ranges import TimeRange, day_range, zone_info
from gateway_core.usage_stats import UsageScope

PAGE_NAME = "model_analytics"
TTL_SECONDS = 30
DEFAULT_DAYS = 7
ALL_TEAMS = 0

logger = logging.getLogger("gatewayz.app.model_analytics")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to see model analytics: open the app's home page.")
    st.stop()


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_model_stats(database_url: str, scope: UsageScope, time_range: TimeRange) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.model_stats(cursor, scope, time_range)


def render_table(stats: pd.DataFrame, latency_estimated: bool) -> None:
    suffix = "ms, ≈" if latency_estimated else "ms"
    st.dataframe(
        stats,
        hide_index=True,
        column_config={
            "model": "Model",
            "provider": "Provider",
            "requests": st.column_config.NumberColumn("Requests", format="%d"),
            "prompt_tokens": st.column_config.NumberColumn("Input tokens", format="%d"),
            "completion_tokens": st.column_config.NumberColumn("Output tokens", format="%d"),
            "cost_usd": st.column_config.NumberColumn("Cost (USD)", format="$%.4f"),
            "cost_per_1k_requests": st.column_config.NumberColumn(
                "Cost per 1,000 requests (USD)", format="$%.4f"
            ),
            "error_rate": st.column_config.NumberColumn(
                "Error rate", format="percent", help="Calls that returned status 400 or higher."
            ),
            "retry_rate": st.column_config.NumberColumn(
                "Retry or fallback rate",
                format="percent",
                help="Calls that needed more than one upstream attempt (attempts > 1).",
            ),
            "latency_p50": st.column_config.NumberColumn(f"Latency p50 ({suffix})", format="%.0f"),
            "latency_p95": st.column_config.NumberColumn(f"Latency p95 ({suffix})", format="%.0f"),
            "latency_p99": st.column_config.NumberColumn(f"Latency p99 ({suffix})", format="%.0f"),
            "ttft_p50": st.column_config.NumberColumn(
                f"TTFT p50 ({suffix})", format="%.0f", help="Time to first token of streamed calls."
            ),
        },
    )
    if latency_estimated:
        st.caption(
            "≈ Latency and TTFT percentiles are estimates from latency histograms with "
            "buckets 10% wide: each is within 10% of the exact percentile."
        )


def chart_labels(stats: pd.DataFrame) -> list[str]:
    return [
        f"{model} ({provider})" if provider else model
        for model, provider in zip(stats["model"], stats["provider"], strict=True)
    ]


def cost_chart(chart: pd.DataFrame) -> Figure:
    figure = px.bar(
        chart,
        x="label",
        y="cost_per_1k_requests",
        title="Cost per 1,000 requests (USD)",
        labels={"label": "Model (provider)", "cost_per_1k_requests": "USD per 1,000 requests"},
    )
    figure.update_yaxes(tickprefix="$")
    return figure


def latency_chart(chart: pd.DataFrame) -> Figure:
    latency = chart.melt(
        id_vars="label",
        value_vars=["latency_p50", "latency_p95"],
        var_name="percentile",
        value_name="milliseconds",
    )
    latency["percentile"] = latency["percentile"].map({"latency_p50": "p50", "latency_p95": "p95"})
    return px.bar(
        latency,
        x="label",
        y="milliseconds",
        color="percentile",
        barmode="group",
        title="Latency of successful calls (ms)",
        labels={"label": "Model (provider)", "milliseconds": "Latency (ms)", "percentile": ""},
    )


def rates_chart(chart: pd.DataFrame) -> Figure:
    rates = chart.melt(
        id_vars="label",
        value_vars=["error_rate", "retry_rate"],
        var_name="rate",
        value_name="share",
    )
    rate_names = {"error_rate": "Errors", "retry_rate": "Retries or fallbacks"}
    rates["rate"] = rates["rate"].map(rate_names)
    figure = px.bar(
        rates,
        x="label",
        y="share",
        color="rate",
        barmode="group",
        title="Error and retry or fallback rate (% of requests)",
        labels={"label": "Model (provider)", "share": "Share of requests", "rate": ""},
    )
    figure.update_yaxes(tickformat=".0%")
    return figure


def render_charts(stats: pd.DataFrame) -> None:
    # Plotly needs floats, so the Decimal cost column becomes float for drawing only.
    chart = stats.assign(
        label=chart_labels(stats), cost_per_1k_requests=stats["cost_per_1k_requests"].map(float)
    )
    left, right = st.columns(2)
    left.plotly_chart(cost_chart(chart))
    right.plotly_chart(latency_chart(chart))
    st.plotly_chart(rates_chart(chart))


settings = Settings.from_env()
st.title("Model analytics")
url = settings.analytics_database_url

organization_column, dates_column, team_column = st.columns([1, 2, 2])
organization = pick_organization(
    url,
    "model_analytics_organization",
    empty_message="No organization yet. Create a team on the Keys page to start one.",
    container=organization_column,
)
names = load_names(url, organization.id, current_actor())
today = datetime.now(UTC).astimezone(zone_info(organization.timezone)).date()
dates = dates_column.date_input(
    f"Dates ({organization.timezone})",
    value=(today - timedelta(days=DEFAULT_DAYS - 1), today),
    key="model_analytics_dates",
)
team_id = team_column.selectbox(
    "Team",
    [ALL_TEAMS, *names.teams],
    format_func=lambda i: "All teams" if i == ALL_TEAMS else names.teams[i],
    key="model_analytics_team",
)
if not isinstance(dates, tuple) or len(dates) != 2:
    st.info("Pick an end date to see model analytics.")
    st.stop()
try:
    time_range = day_range(dates[0], dates[1] + timedelta(days=1), organization.timezone)
except GatewayError as error:
    logger.info("rejected model analytics dates: %s", error.message)
    st.error(f"Dates not applied: {error.message}.")
    st.stop()

scope = UsageScope(organization.id, team_id=None if team_id == ALL_TEAMS else team_id)
try:
    with st.spinner("Loading model analytics…"):
        stats = load_model_stats(url, scope, time_range)
except duckdb.Error as error:
    logger.error("model analytics query failed: %s", analytics.redact_password(str(error), url))
    st.error("Could not read usage from Postgres. Reload the page to try again.")
    st.stop()

if stats.empty:
    st.info(
        "No calls in this date range. Widen the dates or pick another team; models appear "
        "here once requests go through the proxy."
    )
    st.stop()
render_table(stats, usage_stats.latency_is_estimated(time_range))
render_charts(stats)
