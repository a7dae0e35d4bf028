"""Budgets & limits page: spending budgets with burn-down charts, rate limits,
alert recipients and projects.

app.py registers this page for owners, admins and billing users, and
gateway_core.limits_admin checks the role again before each write. The proxy
picks up a change when it next reloads these tables.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from app_support import current_actor
from gateway_core import alerts, budgets, limits_admin
from gateway_core.access import Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError
from gateway_core.limits_admin import RateLimits, Scope
from gateway_core.schema import SCOPE_TYPES

PAGE_NAME = "budgets"
LIST_TTL_SECONDS = 10
# Session-state key for a message shown once after the rerun that follows a write.
FLASH_MESSAGE = "budgets_page_flash"
SCOPE_LABELS = {"organization": "Organization", "team": "Team", "project": "Project", "key": "Key"}
PERIOD_LABELS = {"lifetime": "Lifetime", "daily": "Daily", "weekly": "Weekly", "monthly": "Monthly"}
DEFAULT_THRESHOLDS_TEXT = limits_admin.format_thresholds(budgets.DEFAULT_THRESHOLDS)
RATE_LIMIT_LABELS = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "requests_per_day": "Requests per day (UTC)",
    "max_concurrent": "Concurrent requests",
}
EMPTY_SCOPE_MESSAGES = {
    "organization": (
        "No organization yet. An owner or admin creates the first team on the Keys page, "
        "which also creates the Default organization."
    ),
    "team": "No teams yet. An owner or admin creates teams on the Keys page.",
    "project": "No projects yet. Create one under a team in Create a project below.",
    "key": "No API keys yet. An owner or admin creates keys on the Keys page.",
}

logger = logging.getLogger("gatewayz.app.budgets")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error(
        "Sign in as an owner, admin or billing user to manage budgets and limits: "
        "open the app's home page."
    )
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_scopes(database_url: str, actor: Actor) -> list[Scope]:
    with engine_for(database_url).connect() as conn:
        return limits_admin.list_scopes(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_budgets(database_url: str, actor: Actor) -> list[budgets.Budget]:
    with engine_for(database_url).connect() as conn:
        return limits_admin.list_budgets(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_rate_limits(database_url: str, actor: Actor) -> list[RateLimits]:
    with engine_for(database_url).connect() as conn:
        return limits_admin.list_rate_limits(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_channels(
    database_url: str, actor: Actor, organization_id: int
) -> list[alerts.AlertChannel]:
    with engine_for(database_url).connect() as conn:
        return limits_admin.list_alert_channels(conn, actor, organization_id)


def finish_write(message: str) -> None:
    """Empty the cached lists and rerun, so every table on the page shows the change."""
    load_scopes.clear()
    load_budgets.clear()
    load_rate_limits.clear()
    load_channels.clear()
    st.session_state[FLASH_MESSAGE] = message
    st.rerun()


def usd(amount: Decimal) -> str:
    """Write an amount exactly, with at least two decimal places: $1,250.00, $0.0000012345."""
    normalized = amount.normalize()
    if normalized.as_tuple().exponent > -2:
        normalized = normalized.quantize(Decimal("0.01"))
    return f"${normalized:,f}"


def scope_label(scope_by_key: dict[tuple[str, int], Scope], scope_type: str, scope_id: int) -> str:
    scope = scope_by_key.get((scope_type, scope_id))
    return scope.name if scope is not None else f"{scope_type} {scope_id} (deleted)"


def pick_scope(scopes: list[Scope]) -> Scope | None:
    """Render the scope picker and return the chosen scope, or None when its type has none."""
    columns = st.columns([2, 3])
    scope_type = columns[0].radio(
        "Scope",
        SCOPE_TYPES,
        format_func=SCOPE_LABELS.__getitem__,
        horizontal=True,
        key="scope_type",
    )
    choices = {scope.scope_id: scope for scope in scopes if scope.scope_type == scope_type}
    if not choices:
        st.info(EMPTY_SCOPE_MESSAGES[scope_type])
        return None
    scope_id = columns[1].selectbox(
        SCOPE_LABELS[scope_type],
        list(choices),
        format_func=lambda i: choices[i].name,
        key=f"scope_{scope_type}",
    )
    return choices[scope_id]


# Budgets of the chosen scope


def chart_title(scope: Scope, budget: budgets.Budget, now: datetime) -> str:
    title = f"{scope.name}: {budget.period} budget"
    if budget.period == "lifetime":
        return title
    start, end = budgets.period_bounds(budget.period, now, scope.timezone)
    first_day = start.astimezone(budgets.zone(scope.timezone)).date()
    last_day = (end.astimezone(budgets.zone(scope.timezone)) - timedelta(days=1)).date()
    if first_day == last_day:
        return f"{title}, {first_day:%Y-%m-%d}"
    return f"{title}, {first_day:%Y-%m-%d} to {last_day:%Y-%m-%d}"


def burn_down_chart(
    frame: pd.DataFrame, scope: Scope, budget: budgets.Budget, now: datetime
) -> go.Figure:
    """Draw spent (solid), reserved, the limit with what remains, and the forecast (dashed)."""
    # Local wall-clock time, so the axis shows the organization's dates.
    times = frame["time"].dt.tz_convert(scope.timezone).dt.tz_localize(None)
    past = frame["spent"].notna()
    now_row = frame.index[frame["reserved"].notna()][-1]
    spent_now = frame.at[now_row, "spent"]
    reserved = frame.at[now_row, "reserved"]
    remaining = frame.at[now_row, "remaining"]
    forecast = frame["forecast"].notna()

    # Plotly needs floats, so amounts become float here for drawing only. The
    # metrics above the chart show the exact Decimal values.
    figure = go.Figure()
    figure.add_scatter(
        x=times[past],
        y=[float(amount) for amount in frame["spent"][past]],
        name="Spent",
        mode="lines+markers",
        line={"dash": "solid", "color": "#1f77b4"},
    )
    figure.add_scatter(
        x=[times[now_row], times[now_row]],
        y=[float(spent_now), float(spent_now + reserved)],
        name=f"Reserved ({usd(reserved)})",
        mode="lines",
        line={"width": 8, "color": "#ff7f0e"},
    )
    figure.add_scatter(
        x=[times.iloc[0], times.iloc[-1]],
        y=[float(budget.limit_usd), float(budget.limit_usd)],
        name=f"Limit {usd(budget.limit_usd)}, {usd(remaining)} remaining",
        mode="lines",
        line={"dash": "dot", "color": "#d62728"},
    )
    figure.add_scatter(
        x=times[forecast],
        y=[float(amount) for amount in frame["forecast"][forecast]],
        name="Forecast",
        mode="lines",
        line={"dash": "dash", "color": "#7f7f7f"},
    )
    figure.update_layout(
        title=chart_title(scope, budget, now),
        xaxis_title=f"Date ({scope.timezone})",
        yaxis_title="Spend (USD)",
        legend_title_text="",
    )
    figure.update_yaxes(tickprefix="$", rangemode="tozero")
    return figure


def render_budget(engine: Engine, scope: Scope, budget: budgets.Budget) -> None:
    now = datetime.now(UTC)
    with engine.connect() as conn:
        frame = limits_admin.burn_down(conn, budget, scope.timezone, now)
        status = budgets.budget_status(conn, budget, scope.timezone, now)
    now_row = frame.index[frame["reserved"].notna()][-1]
    spent = frame.at[now_row, "spent"]

    st.markdown(f"**{PERIOD_LABELS[budget.period]} budget**")
    columns = st.columns(4)
    columns[0].metric("Limit (USD)", usd(budget.limit_usd))
    columns[1].metric("Spent (USD)", usd(spent))
    columns[2].metric("Reserved (USD)", usd(frame.at[now_row, "reserved"]))
    columns[3].metric("Remaining (USD)", usd(frame.at[now_row, "remaining"]))
    thresholds = limits_admin.format_thresholds(budget.alert_thresholds)
    captions = [
        f"Alerts at {thresholds} percent of the limit." if thresholds else "No alerts.",
        "Reserved is money the proxy holds for calls in flight.",
    ]
    if status.spent != spent:
        captions.append(
            f"The proxy counts {usd(status.spent)} against this budget, because it counts "
            "only calls made while the budget existed."
        )
    st.caption(" ".join(captions))
    st.plotly_chart(burn_down_chart(frame, scope, budget, now), key=f"burn_down_{budget.id}")


def render_budgets(engine: Engine, scope: Scope, scope_budgets: list[budgets.Budget]) -> None:
    st.subheader(f"Budgets of {scope.name}")
    st.caption(
        f"Daily, weekly and monthly budgets reset at midnight in the organization's time zone, "
        f"{scope.timezone}. Weeks start on Monday."
    )
    if not scope_budgets:
        st.info(
            f"No budgets for this {scope.scope_type}. Set one below: pick a period, "
            "enter a limit in USD and save."
        )
        return
    for budget in scope_budgets:
        render_budget(engine, scope, budget)


def render_set_budget(engine: Engine, scope: Scope, user: dict) -> None:
    st.subheader("Set a budget")
    with st.form("set_budget"):
        columns = st.columns(3)
        period = columns[0].selectbox(
            "Period",
            budgets.PERIODS,
            index=budgets.PERIODS.index("monthly"),
            format_func=PERIOD_LABELS.__getitem__,
            key="budget_period",
        )
        limit_text = columns[1].text_input("Limit (USD)", placeholder="250.00", key="budget_limit")
        thresholds_text = columns[2].text_input(
            "Alert thresholds (% of limit)",
            value=DEFAULT_THRESHOLDS_TEXT,
            key="budget_thresholds",
            help="Comma-separated percentages. Each sends one alert per period to the "
            "organization's alert recipients. Leave blank for no alerts.",
        )
        submitted = st.form_submit_button(
            "Save budget", help="Replaces this scope's budget for the same period, if it has one."
        )
    if not submitted:
        return

    try:
        thresholds = limits_admin.parse_alert_thresholds(thresholds_text)
        with engine.begin() as conn:
            limits_admin.save_budget(
                conn,
                user["actor"],
                scope_type=scope.scope_type,
                scope_id=scope.scope_id,
                period=period,
                limit_usd=limit_text,
                alert_thresholds=thresholds,
                actor=user["username"],
            )
    except GatewayError as error:
        logger.info(
            "user %s: %s budget of %s %d not saved: %s",
            user["username"],
            period,
            scope.scope_type,
            scope.scope_id,
            error.message,
        )
        st.error(f"Budget not saved: {error.message}.")
        return
    limit = limits_admin.parse_limit_usd(limit_text)
    logger.info(
        "user %s set the %s budget of %s %d to %s USD",
        user["username"],
        period,
        scope.scope_type,
        scope.scope_id,
        limit,
    )
    finish_write(f"Saved the {period} budget of {scope.name}: {usd(limit)}.")


def render_remove_budget(
    engine: Engine, scope: Scope, scope_budgets: list[budgets.Budget], user: dict
) -> None:
    if not scope_budgets:
        return
    st.subheader("Remove a budget")
    by_id = {budget.id: budget for budget in scope_budgets}
    with st.form("remove_budget"):
        budget_id = st.selectbox(
            "Budget",
            list(by_id),
            format_func=lambda i: f"{PERIOD_LABELS[by_id[i].period]}, {usd(by_id[i].limit_usd)}",
            key="remove_budget_id",
        )
        submitted = st.form_submit_button("Remove budget")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            removed = limits_admin.delete_budget(conn, user["actor"], budget_id)
    except GatewayError as error:
        logger.info(
            "user %s: budget %d not removed: %s", user["username"], budget_id, error.message
        )
        st.error(f"Budget not removed: {error.message}.")
        return
    period = by_id[budget_id].period
    if removed:
        logger.info("user %s removed budget %d", user["username"], budget_id)
    finish_write(
        f"Removed the {period} budget of {scope.name}."
        if removed
        else f"The {period} budget of {scope.name} was already removed."
    )


# Rate limits of the chosen scope


def render_rate_limits(
    engine: Engine, scope: Scope, current: RateLimits | None, user: dict
) -> None:
    st.subheader(f"Rate limits of {scope.name}")
    if current is None:
        st.info(
            f"No rate limits for this {scope.scope_type}. Enter the limits it needs below and "
            "save. A request must pass the rate limits of its key, team, project and "
            "organization."
        )
    suffix = f"{scope.scope_type}_{scope.scope_id}"
    with st.form("rate_limits"):
        columns = st.columns(len(RATE_LIMIT_LABELS))
        typed = {
            field: column.text_input(
                label,
                value=str(getattr(current, field) or "") if current is not None else "",
                placeholder="No limit",
                key=f"{field}_{suffix}",
            )
            for column, (field, label) in zip(columns, RATE_LIMIT_LABELS.items(), strict=True)
        }
        submitted = st.form_submit_button(
            "Save rate limits",
            help="Whole numbers. An empty field means no limit of that kind, so clearing "
            "every field removes the scope's rate limits.",
        )
    removed = current is not None and st.button(
        "Remove rate limits", key=f"remove_rate_limits_{suffix}"
    )
    if not (submitted or removed):
        return

    try:
        values = {
            field: None if removed else limits_admin.parse_rate_limit(text, field)
            for field, text in typed.items()
        }
        with engine.begin() as conn:
            stored = limits_admin.set_rate_limits(
                conn,
                user["actor"],
                scope_type=scope.scope_type,
                scope_id=scope.scope_id,
                **values,
            )
    except GatewayError as error:
        logger.info(
            "user %s: rate limits of %s %d not saved: %s",
            user["username"],
            scope.scope_type,
            scope.scope_id,
            error.message,
        )
        st.error(f"Rate limits not saved: {error.message}.")
        return
    logger.info(
        "user %s set the rate limits of %s %d to %s",
        user["username"],
        scope.scope_type,
        scope.scope_id,
        values,
    )
    # Forget the typed text, so the fields show the stored limits after the rerun.
    for field in typed:
        st.session_state.pop(f"{field}_{suffix}", None)
    if stored is None:
        finish_write(f"Removed the rate limits of {scope.name}.")
    else:
        finish_write(f"Saved the rate limits of {scope.name}.")


# Organization-wide settings


def render_alert_recipients(
    engine: Engine, settings: Settings, organizations: list[Scope], user: dict
) -> None:
    st.subheader("Alert recipients")
    if not organizations:
        st.info(EMPTY_SCOPE_MESSAGES["organization"])
        return
    database_url = settings.database_url
    by_id = {scope.scope_id: scope for scope in organizations}
    organization_id = st.selectbox(
        "Organization", list(by_id), format_func=lambda i: by_id[i].name, key="channel_org"
    )
    channels = load_channels(database_url, user["actor"], organization_id)
    if channels:
        st.dataframe(
            pd.DataFrame(
                {
                    "Kind": [channel.kind for channel in channels],
                    "Recipient": [channel.target for channel in channels],
                }
            ),
            hide_index=True,
        )
    else:
        st.info(
            "No alert recipients yet, so budget alerts reach nobody. Add an email address "
            "or a webhook below."
        )
    st.caption(
        "Email alerts need a mail server (GATEWAYZ_SMTP_HOST and GATEWAYZ_SMTP_FROM). "
        "Webhooks are signed with HMAC-SHA256 under their secret in the x-gatewayz-signature "
        "header."
    )
    with st.form("add_channel", clear_on_submit=True):
        kind = st.radio("Kind", alerts.CHANNEL_KINDS, horizontal=True, key="channel_kind")
        target = st.text_input(
            "Email address or webhook URL",
            placeholder="finance@example.org or https://hooks.example.org/gatewayz",
            key="channel_target",
        )
        webhook_secret = st.text_input(
            "Webhook signing secret",
            type="password",
            key="channel_secret",
            help=f"Webhooks only, at least {alerts.MIN_WEBHOOK_SECRET_LENGTH} characters. "
            "Stored encrypted. Generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
        submitted = st.form_submit_button("Add recipient")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            channel_id = limits_admin.add_alert_channel(
                conn,
                user["actor"],
                settings.secret,
                organization_id=organization_id,
                kind=kind,
                target=target,
                secret=(webhook_secret or None) if kind == "webhook" else None,
            )
    except GatewayError as error:
        logger.info("user %s: alert recipient not added: %s", user["username"], error.message)
        st.error(f"Recipient not added: {error.message}.")
        return
    logger.info(
        "user %s added %s alert channel %d to organization %d",
        user["username"],
        kind,
        channel_id,
        organization_id,
    )
    finish_write(f"Added {kind} recipient {target.strip()} to {by_id[organization_id].name}.")


def render_create_project(engine: Engine, teams: list[Scope], user: dict) -> None:
    st.subheader("Create a project")
    if not teams:
        st.info(EMPTY_SCOPE_MESSAGES["team"] + " Then create projects under them here.")
        return
    by_id = {scope.scope_id: scope for scope in teams}
    with st.form("create_project"):
        team_id = st.selectbox(
            "Team", list(by_id), format_func=lambda i: by_id[i].name, key="project_team"
        )
        name = st.text_input("Project name", max_chars=200, key="project_name")
        investigator = st.text_input(
            "Principal investigator (optional)", max_chars=200, key="project_investigator"
        )
        cost_centre = st.text_input(
            "Cost centre (optional)", max_chars=100, key="project_cost_centre"
        )
        submitted = st.form_submit_button("Create project")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            project = limits_admin.add_project(
                conn,
                user["actor"],
                team_id=team_id,
                name=name,
                principal_investigator=investigator,
                cost_centre=cost_centre,
            )
    except GatewayError as error:
        logger.info("user %s: project not created: %s", user["username"], error.message)
        st.error(f"Project not created: {error.message}.")
        return
    except IntegrityError:
        # Another session created the same project between the check and the insert.
        logger.warning("user %s: project %r created concurrently", user["username"], name)
        st.error(f"Project {name.strip()!r} already exists in {by_id[team_id].name}.")
        return
    logger.info("user %s created project %d in team %d", user["username"], project.id, team_id)
    finish_write(f"Created project {project.name!r} in {by_id[team_id].name}.")


# Overview of every scope


def render_overview(
    scopes: list[Scope], all_budgets: list[budgets.Budget], all_limits: list[RateLimits]
) -> None:
    """Show every budget and rate limit.

    An empty table is left out, because the section of the chosen scope shows that.
    """
    scope_by_key = {(scope.scope_type, scope.scope_id): scope for scope in scopes}
    if all_budgets:
        st.subheader("All budgets")
        st.dataframe(
            pd.DataFrame(
                {
                    "Scope type": [budget.scope_type for budget in all_budgets],
                    "Scope": [
                        scope_label(scope_by_key, budget.scope_type, budget.scope_id)
                        for budget in all_budgets
                    ],
                    "Period": [budget.period for budget in all_budgets],
                    "Limit (USD)": [usd(budget.limit_usd) for budget in all_budgets],
                    "Alerts (% of limit)": [
                        limits_admin.format_thresholds(budget.alert_thresholds)
                        for budget in all_budgets
                    ],
                }
            ),
            hide_index=True,
        )
    if not all_limits:
        return
    st.subheader("All rate limits")
    columns = {
        "Scope type": [limits.scope_type for limits in all_limits],
        "Scope": [
            scope_label(scope_by_key, limits.scope_type, limits.scope_id) for limits in all_limits
        ],
    }
    for field, label in RATE_LIMIT_LABELS.items():
        columns[label] = pd.array([getattr(limits, field) for limits in all_limits], dtype="Int64")
    st.dataframe(pd.DataFrame(columns), hide_index=True)


settings = Settings.from_env()
engine = engine_for(settings.database_url)
actor = current_actor()
# The render functions read the username, and pass the Actor to limits_admin.
user = {**st.session_state["gatewayz_user"], "actor": actor}

st.title("Budgets & limits")
if FLASH_MESSAGE in st.session_state:
    st.success(st.session_state.pop(FLASH_MESSAGE))

scopes = load_scopes(settings.database_url, actor)
if not any(scope.scope_type == "team" for scope in scopes):
    # Every other section needs a team, so one message replaces their empty states.
    st.info(
        "No teams yet. An owner or admin creates the first team on the Keys page, which also "
        "creates the Default organization. Then come back here to create projects and set "
        "budgets and rate limits."
    )
    st.stop()
all_budgets = load_budgets(settings.database_url, actor)
all_limits = load_rate_limits(settings.database_url, actor)
scope = pick_scope(scopes)
if scope is not None:
    scope_budgets = [
        budget
        for budget in all_budgets
        if (budget.scope_type, budget.scope_id) == (scope.scope_type, scope.scope_id)
    ]
    current_limits = next(
        (
            limits
            for limits in all_limits
            if (limits.scope_type, limits.scope_id) == (scope.scope_type, scope.scope_id)
        ),
        None,
    )
    render_budgets(engine, scope, scope_budgets)
    render_set_budget(engine, scope, user)
    render_remove_budget(engine, scope, scope_budgets, user)
    render_rate_limits(engine, scope, current_limits, user)

render_alert_recipients(
    engine,
    settings,
    [scope for scope in scopes if scope.scope_type == "organization"],
    user,
)
render_create_project(engine, [scope for scope in scopes if scope.scope_type == "team"], user)
render_overview(scopes, all_budgets, all_limits)
