"""Keys page: create teams, issue API keys and revoke them.

app.py registers this page for owners and admins only. The check below also
stops the page when Streamlit runs it without app.py (see app.py's docstring).
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from gateway_core import directory, keys
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import InvalidRequestError, NotFoundError

PAGE_NAME = "keys"
LIST_TTL_SECONDS = 10
# Session-state key for a message shown once after the rerun that follows a write.
FLASH_MESSAGE = "keys_page_flash"

logger = logging.getLogger("gatewayz.app.keys")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in as an owner or admin to manage API keys: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_teams(database_url: str) -> list[directory.Team]:
    with engine_for(database_url).connect() as conn:
        return directory.list_teams(conn)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_keys(database_url: str) -> list[keys.KeySummary]:
    with engine_for(database_url).connect() as conn:
        return keys.list_keys(conn)


def key_label(key: keys.KeySummary) -> str:
    return f"{key.prefix}…{key.last4}"


def render_create_team(engine: Engine, username: str) -> None:
    st.subheader("Create a team")
    with st.form("create_team", clear_on_submit=True):
        name = st.text_input("Team name", max_chars=200, key="team_name")
        submitted = st.form_submit_button("Create team")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            team = directory.create_team(conn, name)
    except InvalidRequestError as error:
        logger.info("user %s: team not created: %s", username, error.message)
        st.error(error.message)
        return
    except IntegrityError:
        # Another session created the same team between the check and the insert.
        logger.warning("user %s: team %r created concurrently by another session", username, name)
        st.error(f"Team {name.strip()!r} already exists.")
        return

    load_teams.clear()
    logger.info("user %s created team %d", username, team.id)
    st.success(f"Created team {team.name!r}.")


def key_form(teams: list[directory.Team]) -> tuple[int, str, str] | None:
    """Render the key form and return (team id, key name, mode) when it is submitted."""
    team_names = {team.id: team.name for team in teams}
    with st.form("create_key", clear_on_submit=True):
        team_id = st.selectbox(
            "Team", list(team_names), format_func=team_names.__getitem__, key="key_team"
        )
        name = st.text_input("Key name", max_chars=200, placeholder="ci-pipeline", key="key_name")
        mode = st.radio(
            "Mode",
            ["live", "test"],
            horizontal=True,
            key="key_mode",
            help="Live keys start with gw_live_, test keys with gw_test_.",
        )
        submitted = st.form_submit_button("Create key")
    return (team_id, name, mode) if submitted else None


def render_create_key(
    engine: Engine, secret: bytes, teams: list[directory.Team], username: str
) -> None:
    st.subheader("Create an API key")
    if not teams:
        st.info("No teams yet: create one above.")
        return
    submission = key_form(teams)
    if submission is None:
        return
    team_id, name, mode = submission
    if not name.strip():
        st.error("Key name must not be empty: enter a name that says where the key is used.")
        return

    try:
        with engine.begin() as conn:
            issued = keys.create_key(
                conn, secret, team_id=team_id, name=name.strip(), mode=mode, created_by=username
            )
    except IntegrityError:
        load_teams.clear()
        logger.warning(
            "user %s: key not created because team %d no longer exists", username, team_id
        )
        st.error("That team no longer exists. Pick another team.")
        return

    load_keys.clear()
    logger.info("user %s created %s key %d for team %d", username, mode, issued.id, team_id)
    team_name = next(team.name for team in teams if team.id == team_id)
    st.success(f"Created {issued.mode} key {issued.name!r} for team {team_name!r}.")
    st.warning(
        "Copy this key now. Gatewayz stores only its hash, so the key will not be shown again."
    )
    # Shown in this run only: the key is not kept in session state.
    st.code(issued.secret, language=None)


def render_key_list(key_list: list[keys.KeySummary]) -> None:
    st.subheader("API keys")
    if not key_list:
        st.info("No API keys yet: create one above.")
        return
    frame = pd.DataFrame(
        {
            "Team": [key.team_name for key in key_list],
            "Name": [key.name for key in key_list],
            "Key": [key_label(key) for key in key_list],
            "Mode": [key.mode for key in key_list],
            "Created": [key.created_at for key in key_list],
            "Revoked": [key.revoked_at for key in key_list],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "Created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm z"),
            "Revoked": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm z"),
        },
    )


def render_revoke(engine: Engine, key_list: list[keys.KeySummary], username: str) -> None:
    st.subheader("Revoke a key")
    active = {key.id: key for key in key_list if key.revoked_at is None}
    if not active:
        st.info("No active keys to revoke.")
        return
    with st.form("revoke_key"):
        key_id = st.selectbox(
            "Key",
            list(active),
            format_func=lambda i: (
                f"{active[i].team_name} / {active[i].name} ({key_label(active[i])})"
            ),
            key="revoke_key_id",
        )
        confirmed = st.checkbox(
            "I understand that applications using this key will stop working.",
            key="revoke_confirm",
        )
        submitted = st.form_submit_button("Revoke key")
    if not submitted:
        return

    if not confirmed:
        st.warning("Tick the confirmation box to revoke the key.")
        return

    try:
        with engine.begin() as conn:
            revoked = keys.revoke_key(conn, key_id)
    except NotFoundError:
        logger.warning("user %s: key %d not revoked because it no longer exists", username, key_id)
        st.error("That key no longer exists. Reload the page.")
        return

    load_keys.clear()
    if revoked:
        logger.info("user %s revoked key %d", username, key_id)
    label = f"{active[key_id].name!r} ({key_label(active[key_id])})"
    st.session_state[FLASH_MESSAGE] = (
        f"Revoked key {label}." if revoked else f"Key {label} was already revoked."
    )
    st.rerun()


settings = Settings.from_env()
engine = engine_for(settings.database_url)
user = st.session_state["gatewayz_user"]

st.title("API keys")
if FLASH_MESSAGE in st.session_state:
    st.success(st.session_state.pop(FLASH_MESSAGE))
render_create_team(engine, user["username"])
render_create_key(engine, settings.secret, load_teams(settings.database_url), user["username"])
key_list = load_keys(settings.database_url)
render_key_list(key_list)
render_revoke(engine, key_list, user["username"])
