"""Sessions page: stored chat sessions with their usage, and prompt templates.

Sessions of the signed-in user's organizations (every organization for
installation staff) are listed with the usage rows of the calls
that named them summed (cost, tokens, mean latency), and picking one shows
its transcript. Every role that can open the page can preview templates
with variables, and every role but viewer can save a new version. Message
text is shown as plain text, never as Markdown, because API clients wrote it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app_support import current_actor
from gateway_core import access, prompt_templates, sessions
from gateway_core.access import Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError, InvalidRequestError
from gateway_core.prompt_templates import PromptTemplate
from gateway_core.sessions import SessionMessage, SessionTotals

PAGE_NAME = "sessions"
LIST_TTL_SECONDS = 10
EDITOR_ROLES = access.roles_for("templates.edit")
TEXT_FORMAT = "Text"
MESSAGES_FORMAT = "Messages (JSON array)"
# Session-state key for a message shown once after the rerun that follows a write.
FLASH_MESSAGE = "sessions_page_flash"

logger = logging.getLogger("gatewayz.app.sessions")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to see sessions and templates: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_totals(database_url: str, query: str | None, actor: Actor) -> list[SessionTotals]:
    with engine_for(database_url).connect() as conn:
        return sessions.session_totals(conn, query, actor=actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_transcript(
    database_url: str, organization_id: int, session_id: str
) -> list[SessionMessage]:
    with engine_for(database_url).connect() as conn:
        return sessions.list_messages(conn, organization_id, session_id)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_organizations(database_url: str, actor: Actor) -> dict[int, str]:
    with engine_for(database_url).connect() as conn:
        return sessions.organization_names(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_templates(database_url: str, organization_id: int) -> list[PromptTemplate]:
    with engine_for(database_url).connect() as conn:
        return prompt_templates.list_latest(conn, organization_id, limit=1000)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_versions(database_url: str, organization_id: int, name: str) -> list[PromptTemplate]:
    with engine_for(database_url).connect() as conn:
        return prompt_templates.list_versions(conn, organization_id, name)


def totals_frame(rows: list[SessionTotals]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Session": [row.id for row in rows],
            "Organization": [row.organization for row in rows],
            "Title": [row.title or "" for row in rows],
            "Model": [row.model or "" for row in rows],
            "Messages": [row.message_count for row in rows],
            "Calls": [row.calls for row in rows],
            # Strings keep every decimal place of the NUMERIC cost.
            "Cost (USD)": [format(row.cost_usd, "f") for row in rows],
            "Prompt tokens": [row.prompt_tokens for row in rows],
            "Completion tokens": [row.completion_tokens for row in rows],
            "Mean latency (ms)": [row.mean_latency_ms for row in rows],
            "Updated": [row.updated_at for row in rows],
        }
    )


def message_body(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] if isinstance(part.get("text"), str) else f"[{part.get('type')} part]"
            for part in content
            if isinstance(part, dict)
        )
    return ""


def render_transcript(url: str, row: SessionTotals) -> None:
    st.subheader(f"Transcript: {row.title or row.id}")
    transcript = load_transcript(url, row.organization_id, row.id)
    if not transcript:
        st.info("This session has no messages yet.")
        return
    if row.message_count > len(transcript):
        st.caption(f"Showing the first {len(transcript)} of {row.message_count} messages.")
    for item in transcript:
        message = item.message
        with st.chat_message(message.get("role", "?")):
            body = message_body(message)
            if body:
                st.text(body)
            if message.get("tool_calls"):
                st.code(json.dumps(message["tool_calls"], indent=2), language="json")
            if message.get("tool_call_id"):
                st.caption(f"result of tool call {message['tool_call_id']}")
            if item.partial:
                st.caption("Partial: the client disconnected before the answer ended.")


def render_sessions(url: str) -> None:
    query = st.text_input("Search titles, ids and message text", key="sessions_query").strip()
    rows = load_totals(url, query or None, current_actor())
    if not rows:
        st.info(
            "No sessions match." if query else "No sessions yet: create one with POST /v1/sessions."
        )
        return
    st.dataframe(
        totals_frame(rows),
        hide_index=True,
        column_config={
            "Updated": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm z"),
            "Mean latency (ms)": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    by_id = {row.id: row for row in rows}
    selected = st.selectbox(
        "Show transcript of",
        list(by_id),
        format_func=lambda session_id: f"{by_id[session_id].title or '(untitled)'} ({session_id})",
        key="sessions_selected",
    )
    if selected is not None:
        render_transcript(url, by_id[selected])


def render_template_messages(messages: list[dict[str, str]]) -> None:
    for message in messages:
        with st.chat_message(message["role"]):
            st.text(message["content"])


def render_preview(template: PromptTemplate) -> None:
    st.markdown("**Preview**")
    example = json.dumps({name: "" for name in template.variables})
    raw = st.text_area("Variables (JSON object)", value=example, key="templates_variables")
    if not st.button("Preview", key="templates_preview"):
        return
    try:
        variables = json.loads(raw)
    except json.JSONDecodeError as error:
        st.error(f"Variables are not valid JSON: {error}")
        return
    try:
        rendered = prompt_templates.render_template(template, variables)
    except InvalidRequestError as error:
        st.error(error.message)
        return
    render_template_messages(rendered)


def parse_content(text: str, content_format: str) -> Any:
    if content_format == TEXT_FORMAT:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"content is not a valid JSON array: {error}") from error


def editor_form(template: PromptTemplate | None) -> tuple[str, str, str, str] | None:
    """Render the template form and return (name, format, content, description) on submit."""
    current = template.content if template is not None else ""
    is_text = isinstance(current, str)
    with st.form("template_editor"):
        name = st.text_input(
            "Name", value=template.name if template else "", max_chars=100, key="template_name"
        )
        content_format = st.radio(
            "Content format",
            [TEXT_FORMAT, MESSAGES_FORMAT],
            index=0 if is_text else 1,
            horizontal=True,
            key="template_format",
        )
        text = st.text_area(
            "Content, with {{variable}} placeholders",
            value=current if is_text else json.dumps(current, indent=2),
            key="template_content",
        )
        description = st.text_input(
            "Description",
            value=(template.description or "") if template else "",
            key="template_description",
        )
        submitted = st.form_submit_button("Save new version")
    return (name, content_format, text, description) if submitted else None


def render_editor(
    engine: Engine, organization_id: int, template: PromptTemplate | None, username: str
) -> None:
    st.subheader("Save a template" if template is None else f"Edit {template.name!r}")
    st.caption("Saving under an existing name adds a new version. Old versions never change.")
    submission = editor_form(template)
    if submission is None:
        return

    name, content_format, text, description = submission
    try:
        content = parse_content(text, content_format)
        with engine.begin() as conn:
            saved = prompt_templates.create_version(
                conn,
                organization_id,
                name.strip(),
                content,
                description or None,
                username,
                actor=current_actor(),
            )
    except GatewayError as error:
        logger.info("user %s: template not saved: %s", username, error.message)
        st.error(error.message)
        return

    logger.info("user %s saved template %s version %d", username, saved.name, saved.version)
    load_templates.clear()
    load_versions.clear()
    st.session_state[FLASH_MESSAGE] = f"Saved template {saved.name!r} version {saved.version}."
    st.rerun()


def render_templates(engine: Engine, url: str, user: dict[str, Any]) -> None:
    organizations = load_organizations(url, current_actor())
    if not organizations:
        st.info("No organizations yet: create a team on the Keys page first.")
        return
    organization_id = st.selectbox(
        "Organization",
        list(organizations),
        format_func=organizations.__getitem__,
        key="templates_organization",
    )
    templates = load_templates(url, organization_id)
    selected: PromptTemplate | None = None
    if not templates:
        st.info("No templates in this organization yet.")
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "Name": [t.name for t in templates],
                    "Latest version": [t.version for t in templates],
                    "Variables": [", ".join(t.variables) for t in templates],
                    "Description": [t.description or "" for t in templates],
                    "Saved by": [t.created_by or "" for t in templates],
                    "Saved": [t.created_at for t in templates],
                }
            ),
            hide_index=True,
        )
        name = st.selectbox("Template", [t.name for t in templates], key="templates_selected")
        versions = load_versions(url, organization_id, name)
        version = st.selectbox("Version", [v.version for v in versions], key="templates_version")
        selected = next(v for v in versions if v.version == version)
        render_template_messages(prompt_templates.as_messages(selected.content))
        render_preview(selected)
    if user["role"] in EDITOR_ROLES:
        render_editor(engine, organization_id, selected, user["username"])


settings = Settings.from_env()
database_url = settings.database_url
current_user = st.session_state["gatewayz_user"]
st.title("Sessions & templates")
flash = st.session_state.pop(FLASH_MESSAGE, None)
if flash:
    st.success(flash)
sessions_tab, templates_tab = st.tabs(["Sessions", "Templates"])
try:
    with sessions_tab:
        render_sessions(database_url)
    with templates_tab:
        render_templates(engine_for(database_url), database_url, current_user)
except SQLAlchemyError as error:
    logger.error("reading sessions or templates from Postgres failed: %s", error)
    st.error(
        "Cannot read sessions and templates from Postgres. Check that the database is "
        "running and migrated, then reload the page."
    )
