"""Audit log page: search admin actions, export them as CSV and verify the hash chain.

app.py registers this page for the roles that gateway_core.access allows
"audit.read". The check below also stops the page when Streamlit runs it
without app.py (see app.py's docstring), and gateway_core.audit_search checks
the role again before every read.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import BinaryIO

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from app_support import current_actor
from gateway_core import audit_search
from gateway_core.access import Actor
from gateway_core.audit_search import AuditFilters
from gateway_core.config import Settings
from gateway_core.csv_cells import spool_to_file
from gateway_core.db import get_engine

PAGE_NAME = "audit"
DEFAULT_DAYS = 30
# The table shows at most this many of the newest matches, but the CSV has every match.
TABLE_LIMIT = 1000
TABLE_COLUMNS = (
    "id",
    "created_at",
    "actor",
    "action",
    "object_type",
    "object_id",
    "before",
    "after",
    "client_address",
)

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error(
        "Sign in as an owner, admin or billing user to read the audit log: "
        "open the app's home page."
    )
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, UTC)


def choose(label: str, options: list[str], key: str) -> str | None:
    """Render a selectbox whose first choice, "All", returns None."""
    return st.selectbox(label, [None, *options], format_func=lambda value: value or "All", key=key)


def filter_widgets(engine: Engine, role: Actor) -> AuditFilters:
    today = datetime.now(UTC).date()
    with engine.connect() as conn:
        choices = {
            column: audit_search.distinct_values(conn, role, column)
            for column in ("actor", "action", "object_type")
        }
    dates_column, actor_column, action_column, type_column, id_column = st.columns(5)
    with dates_column:
        dates = st.date_input(
            "Dates (UTC)",
            value=(today - timedelta(days=DEFAULT_DAYS - 1), today),
            key="audit_dates",
        )
    with actor_column:
        actor = choose("Actor", choices["actor"], "audit_actor")
    with action_column:
        action = choose("Action", choices["action"], "audit_action")
    with type_column:
        object_type = choose("Object type", choices["object_type"], "audit_object_type")
    with id_column:
        object_id = st.text_input("Object id", key="audit_object_id").strip()
    # While a range is being picked, the widget returns only its first day.
    first, last = (dates[0], dates[-1]) if dates else (None, None)
    return AuditFilters(
        start=utc_midnight(first) if first else None,
        end=utc_midnight(last + timedelta(days=1)) if last else None,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id or None,
    )


def json_text(value: object) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)


def render_entries(engine: Engine, role: Actor, filters: AuditFilters) -> None:
    with engine.connect() as conn:
        entries = audit_search.search(conn, role, filters, limit=TABLE_LIMIT + 1)
    if not entries:
        st.info("No audit entries match these filters.")
        return
    if len(entries) > TABLE_LIMIT:
        entries = entries[:TABLE_LIMIT]
        st.caption(f"Showing the newest {TABLE_LIMIT} matches. The CSV has all of them.")
    frame = pd.DataFrame(entries, columns=TABLE_COLUMNS)
    frame["before"] = frame["before"].map(json_text)
    frame["after"] = frame["after"].map(json_text)
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "created_at": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss z")
        },
    )


def render_export(engine: Engine, role: Actor, filters: AuditFilters) -> None:
    def export() -> BinaryIO:
        with engine.connect() as conn:
            return spool_to_file(lambda out: audit_search.write_csv(conn, role, filters, out))

    st.download_button(
        "Download CSV",
        data=export,
        file_name="gatewayz-audit-log.csv",
        mime="text/csv",
        on_click="ignore",
        key="audit_csv",
    )


def render_verify(engine: Engine, role: Actor) -> None:
    st.subheader("Hash chain")
    st.caption(
        "Each entry stores a SHA-256 hash of its content and of the entry before it, "
        "so an edited, deleted or reordered entry breaks the chain from that point."
    )
    if not st.button("Verify chain", key="audit_verify"):
        return
    with engine.connect() as conn:
        breaks = audit_search.verify(conn, role)
    if not breaks:
        st.success("The audit log is intact: every entry matches its hash and the one before it.")
        return
    first = breaks[0]
    st.error(
        f"The chain is broken at entry {first.entry_id}: {first.reason}. "
        f"{len(breaks)} break(s) in total."
    )


settings = Settings.from_env()
engine = engine_for(settings.database_url)
role = current_actor()

st.title("Audit log")
filters = filter_widgets(engine, role)
render_entries(engine, role, filters)
render_export(engine, role, filters)
if role.is_staff:
    # The chain covers every organization, so only installation staff verify it.
    render_verify(engine, role)
