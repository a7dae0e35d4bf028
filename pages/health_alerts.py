"""Health alerts page: rules on error rate, provider circuits, p95 latency and the
recorder spool, and their recent incidents.

app.py registers this page for the roles of the "alerts.manage" action, and
gateway_core.health_rules checks the role again and audits each change.
Messages go to the organization's alert recipients, set on the Budgets &
limits page.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st
from sqlalchemy import Engine, select

from app_support import current_actor
from gateway_core import health_rules
from gateway_core.access import Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError
from gateway_core.health_rules import KIND_LABELS, HealthRule
from gateway_core.schema import HEALTH_RULE_KINDS, organizations

PAGE_NAME = "health_alerts"
LIST_TTL_SECONDS = 10
FLASH_MESSAGE = "health_alerts_flash"
NEW_RULE = 0
RECENT_INCIDENTS = 50

logger = logging.getLogger("gatewayz.app.health_alerts")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in as an owner or admin to manage health alerts: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_organizations(database_url: str, actor: Actor) -> dict[int, str]:
    """Return the names of the organizations the actor may see, by id."""
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(select(organizations.c.id, organizations.c.name))
        return {row.id: row.name for row in rows if actor.may_see(row.id)}


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_rules(database_url: str, actor: Actor) -> list[HealthRule]:
    with engine_for(database_url).connect() as conn:
        return health_rules.visible_rules(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_incidents(database_url: str, actor: Actor) -> pd.DataFrame:
    with engine_for(database_url).connect() as conn:
        return pd.DataFrame(health_rules.recent_incidents(conn, actor, RECENT_INCIDENTS))


def finish_write(message: str) -> None:
    load_rules.clear()
    load_incidents.clear()
    st.session_state[FLASH_MESSAGE] = message
    st.rerun()


def render_rules(rules: list[HealthRule], names: dict[int, str]) -> None:
    st.subheader("Rules")
    if not rules:
        st.info("No health alert rules yet. Create one below.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "Id": [rule.id for rule in rules],
                "Name": [rule.name for rule in rules],
                "Organization": [names.get(rule.organization_id, "?") for rule in rules],
                "Kind": [rule.kind for rule in rules],
                "Provider": [rule.provider or "any" for rule in rules],
                "Threshold": [str(rule.threshold.normalize()) for rule in rules],
                "Window (s)": [rule.window_seconds for rule in rules],
                "Min calls": [rule.min_requests for rule in rules],
                "Cool-down (s)": [rule.cooldown_seconds for rule in rules],
                "Enabled": [rule.enabled for rule in rules],
            }
        ),
        hide_index=True,
    )


def render_edit(
    engine: Engine, actor: Actor, rules: list[HealthRule], names: dict[int, str]
) -> None:
    st.subheader("Create or change a rule")
    if not names:
        st.info("No organization yet. An owner or admin creates the first team on the Keys page.")
        return
    by_id = {rule.id: rule for rule in rules}
    rule_id = st.selectbox(
        "Rule",
        [NEW_RULE, *by_id],
        format_func=lambda i: "New rule" if i == NEW_RULE else f"{i}: {by_id[i].name}",
        key="rule_pick",
    )
    current = by_id.get(rule_id)
    # Widget keys carry the rule id, so picking another rule shows its values.
    with st.form(f"rule_form_{rule_id}"):
        organization_ids = list(names)
        organization_id = st.selectbox(
            "Organization",
            organization_ids,
            index=organization_ids.index(current.organization_id) if current else 0,
            format_func=lambda i: names[i],
            key=f"rule_org_{rule_id}",
        )
        name = st.text_input(
            "Name", value=current.name if current else "", key=f"rule_name_{rule_id}"
        )
        kind = st.selectbox(
            "Condition",
            HEALTH_RULE_KINDS,
            index=HEALTH_RULE_KINDS.index(current.kind) if current else 0,
            format_func=lambda k: KIND_LABELS[k],
            key=f"rule_kind_{rule_id}",
        )
        provider = st.text_input(
            "Provider",
            value=(current.provider or "") if current else "",
            help="Only calls to this provider count. Required for a circuit rule.",
            key=f"rule_provider_{rule_id}",
        )
        threshold = st.text_input(
            "Threshold",
            value=str(current.threshold.normalize()) if current else "0.2",
            help="Error rate: a fraction, 0.2 for 20%. Latency: milliseconds. "
            "Spool: rows. Unused for a circuit rule.",
            key=f"rule_threshold_{rule_id}",
        )
        window = st.number_input(
            "Window (seconds)",
            min_value=1,
            value=current.window_seconds if current else 300,
            key=f"rule_window_{rule_id}",
        )
        min_requests = st.number_input(
            "Minimum calls in the window",
            min_value=0,
            value=current.min_requests if current else 20,
            key=f"rule_min_requests_{rule_id}",
        )
        cooldown = st.number_input(
            "Cool-down (seconds)",
            min_value=0,
            value=current.cooldown_seconds if current else 900,
            help="A new incident within this time of the rule's last message sends none.",
            key=f"rule_cooldown_{rule_id}",
        )
        enabled = st.checkbox(
            "Enabled", value=current.enabled if current else True, key=f"rule_enabled_{rule_id}"
        )
        submitted = st.form_submit_button("Save rule")
    if not submitted:
        return
    try:
        with engine.begin() as conn:
            saved_id = health_rules.save_rule(
                conn,
                actor,
                rule_id=None if current is None else current.id,
                organization_id=organization_id,
                name=name,
                kind=kind,
                provider=provider,
                threshold=threshold,
                window_seconds=int(window),
                min_requests=int(min_requests),
                cooldown_seconds=int(cooldown),
                enabled=enabled,
            )
    except GatewayError as error:
        logger.info("user %s: health rule not saved: %s", actor.username, error.message)
        st.error(f"Rule not saved: {error.message}.")
        return
    logger.info("user %s saved health rule %d", actor.username, saved_id)
    finish_write(f"Saved rule {name.strip()!r}.")


def render_delete(engine: Engine, actor: Actor, rules: list[HealthRule]) -> None:
    if not rules:
        return
    st.subheader("Delete a rule")
    by_id = {rule.id: rule for rule in rules}
    with st.form("delete_rule"):
        rule_id = st.selectbox(
            "Rule", list(by_id), format_func=lambda i: f"{i}: {by_id[i].name}", key="delete_pick"
        )
        submitted = st.form_submit_button("Delete rule")
    if not submitted:
        return
    try:
        with engine.begin() as conn:
            health_rules.delete_rule(conn, actor, rule_id)
    except GatewayError as error:
        logger.info(
            "user %s: health rule %d not deleted: %s", actor.username, rule_id, error.message
        )
        st.error(f"Rule not deleted: {error.message}.")
        return
    logger.info("user %s deleted health rule %d", actor.username, rule_id)
    finish_write(f"Deleted rule {by_id[rule_id].name!r} and its incidents.")


settings = Settings.from_env()
engine = engine_for(settings.database_url)
actor = current_actor()

st.title("Health alerts")
if FLASH_MESSAGE in st.session_state:
    st.success(st.session_state.pop(FLASH_MESSAGE))
st.caption(
    "Each proxy worker evaluates the enabled rules every GATEWAYZ_HEALTH_INTERVAL seconds. "
    "An incident sends one message to the organization's alert recipients (Budgets & limits "
    "page) and is resolved when the condition clears."
)
names = load_organizations(settings.database_url, actor)
rules = load_rules(settings.database_url, actor)
render_rules(rules, names)
render_edit(engine, actor, rules, names)
render_delete(engine, actor, rules)
st.subheader("Recent incidents")
incidents = load_incidents(settings.database_url, actor)
if incidents.empty:
    st.info("No incidents yet.")
else:
    st.dataframe(incidents, hide_index=True)
