"""Overview page: spend, traffic, errors and latency of one organization at a glance.

Each figure is compared with the period before. Queries run in DuckDB
(gateway_core.usage_stats): counts and cost come from the daily and hourly
rollups, and latency percentiles are estimated from the latency histogram
rollups (shown with ≈, within 10%). Days and months follow the
organization's time zone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st

from app_support import duckdb_for, pick_organization
from gateway_core import analytics, usage_stats
from gateway_core.config import Settings
from gateway_core.time_ranges import PERIODS, TimeRange, period_range
from gateway_core.usage_stats import LatencyPercentiles, UsageScope, UsageTotals

PAGE_NAME = "overview"
TTL_SECONDS = 30
TOP_ROWS = 5

logger = logging.getLogger("gatewayz.app.overview")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to see the overview: open the app's home page.")
    st.stop()


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_totals(database_url: str, scope: UsageScope, time_range: TimeRange) -> UsageTotals:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.usage_totals(cursor, scope, time_range)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_latency(database_url: str, scope: UsageScope, time_range: TimeRange) -> LatencyPercentiles:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.latency_percentiles(cursor, scope, time_range)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_top(database_url: str, scope: UsageScope, time_range: TimeRange, by: str) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.top_spenders(cursor, scope, time_range, by, limit=TOP_ROWS)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_spend_over_time(
    database_url: str, scope: UsageScope, time_range: TimeRange, unit: str, timezone: str
) -> pd.DataFrame:
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.spend_over_time(cursor, scope, time_range, unit, timezone)


def usd(amount: Decimal) -> str:
    return f"${amount:,.4f}"


def percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.2%}"


LATENCY_ESTIMATE_NOTE = (
    "≈ marks an estimate from latency histograms with buckets 10% wide: "
    "it is within 10% of the exact percentile."
)


def milliseconds(value: float | None, estimated: bool = False) -> str:
    if value is None:
        return "–"
    return f"≈{value:,.0f} ms" if estimated else f"{value:,.0f} ms"


def change(
    current: float | Decimal | None, previous: float | Decimal | None, fmt: str
) -> str | None:
    """Return the signed difference as text for st.metric, or None when either side is missing."""
    if current is None or previous is None:
        return None
    return format(current - previous, fmt)


def render_metrics(
    today: UsageTotals,
    current: UsageTotals,
    previous: UsageTotals,
    latency: LatencyPercentiles,
    previous_latency: LatencyPercentiles,
    period_label: str,
) -> None:
    spend_today, spend_period, requests, errors = st.columns(4)
    spend_today.metric("Spend today (USD)", usd(today.cost_usd))
    spend_period.metric(
        f"Spend, {period_label.lower()} (USD)",
        usd(current.cost_usd),
        delta=change(current.cost_usd, previous.cost_usd, "+,.4f"),
        delta_color="off",
    )
    requests.metric(
        "Requests", f"{current.requests:,}", delta=change(current.requests, previous.requests, "+,")
    )
    error_rate, previous_rate = current.error_rate, previous.error_rate
    errors.metric(
        "Error rate",
        percent(error_rate),
        delta=change(
            None if error_rate is None else error_rate * 100,
            None if previous_rate is None else previous_rate * 100,
            "+.2f",
        ),
        delta_color="inverse",
        help="Calls that returned HTTP status 400 or higher. The change is in percentage points.",
    )
    columns = st.columns(4)
    for column, label, name in zip(
        columns,
        ("Latency p50", "Latency p95", "TTFT p50", "TTFT p95"),
        ("latency_p50", "latency_p95", "ttft_p50", "ttft_p95"),
        strict=True,
    ):
        value = getattr(latency, name)
        column.metric(
            label,
            milliseconds(value, latency.estimated),
            delta=change(value, getattr(previous_latency, name), "+,.0f"),
            delta_color="inverse",
            help="Over successful calls. TTFT (time to first token) exists for streamed calls."
            + (f" {LATENCY_ESTIMATE_NOTE}" if latency.estimated else ""),
        )
    st.caption(f"Changes compare with the {period_label.lower()} before, of the same length.")


def render_top_tables(tables: dict[str, pd.DataFrame]) -> None:
    columns = st.columns(3)
    for column, (title, frame) in zip(columns, tables.items(), strict=True):
        column.subheader(title)
        if frame.empty:
            column.caption("No calls in this period.")
            continue
        column.dataframe(
            frame[["name", "requests", "cost_usd"]],
            hide_index=True,
            column_config={
                "name": "Name",
                "requests": st.column_config.NumberColumn("Requests", format="%d"),
                "cost_usd": st.column_config.NumberColumn(
                    "Cost (USD)", format="$%.4f", help="Rounded here. Postgres stores 10 places."
                ),
            },
        )


def render_spend_chart(frame: pd.DataFrame, unit: str, timezone: str) -> None:
    # Plotly needs floats, so cost becomes float here for drawing only.
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
    st.plotly_chart(figure)


def render_empty_state() -> None:
    st.info(
        "No calls in this period. Create an API key on the Keys page (owners and admins) "
        "and send a request through the proxy; figures appear here within a minute."
    )


settings = Settings.from_env()
st.title("Overview")

organization_column, period_column = st.columns([2, 1])
organization = pick_organization(
    settings.analytics_database_url,
    "overview_organization",
    empty_message="No organization yet. Create a team on the Keys page to start one.",
    container=organization_column,
)
period = period_column.selectbox(
    "Period", list(PERIODS), index=3, format_func=PERIODS.get, key="overview_period"
)
scope = UsageScope(organization.id)
now = datetime.now(UTC)
current_range, previous_range = period_range(period, now, organization.timezone)
today_range, _ = period_range("today", now, organization.timezone)

url = settings.analytics_database_url
try:
    with st.spinner("Loading usage…"):
        current = load_totals(url, scope, current_range)
        previous = load_totals(url, scope, previous_range)
        today = load_totals(url, scope, today_range)
        latency = load_latency(url, scope, current_range)
        previous_latency = load_latency(url, scope, previous_range)
        unit = "hour" if period == "today" else "day"
        over_time = load_spend_over_time(url, scope, current_range, unit, organization.timezone)
        tables = {
            "Top models": load_top(url, scope, current_range, "model"),
            "Top teams": load_top(url, scope, current_range, "team"),
            "Top keys": load_top(url, scope, current_range, "key"),
        }
except duckdb.Error as error:
    detail = analytics.redact_password(str(error), settings.analytics_database_url)
    logger.error("overview queries failed: %s", detail)
    st.error("Could not read usage from Postgres. Reload the page to try again.")
    st.stop()

st.caption(f"Times in {organization.timezone}.")
render_metrics(today, current, previous, latency, previous_latency, PERIODS[period])
if current.requests == 0:
    render_empty_state()
else:
    render_spend_chart(over_time, unit, organization.timezone)
    render_top_tables(tables)
