"""Keys page: create organizations and teams, issue API keys, restrict them and revoke them.

app.py registers this page for the roles that gateway_core.access allows
"keys.create": owners and admins for every team, team admins for the teams
they administer. The check below also stops the page when Streamlit runs it
without app.py (see app.py's docstring). gateway_core.keys_admin checks the
role again before each write and records it in the audit log.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import available_timezones

import pandas as pd
import streamlit as st
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from app_support import current_actor
from gateway_core import access, directory, keys, keys_admin, provisioning
from gateway_core.access import Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.schema import organizations
from gateway_core.usage_stats import Organization

PAGE_NAME = "keys"
LIST_TTL_SECONDS = 10
# Session-state key for a message shown once after the rerun that follows a write.
FLASH_MESSAGE = "keys_page_flash"
# Widgets of the restrictions form, whose keys are f"policy_{name}_{key id}".
POLICY_WIDGETS = ("models", "endpoints", "networks", "referrers", "expires", "tags")
# Project choice of a key that counts for its team only.
NO_PROJECT = 0

logger = logging.getLogger("gatewayz.app.keys")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error(
        "Sign in as an owner, admin or team admin to manage API keys: open the app's home page."
    )
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_organizations(
    database_url: str, actor: Actor, version: tuple[int, ...]
) -> list[Organization]:
    """Return the actor's organizations by name; `version` is directory_version."""
    query = select(organizations.c.id, organizations.c.name, organizations.c.timezone)
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(query.order_by(organizations.c.name, organizations.c.id)).all()
    return [Organization(*row) for row in rows if actor.may_see(row.id)]


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_teams(database_url: str, actor: Actor) -> list[directory.Team]:
    """Return the teams whose keys this user may manage."""
    with engine_for(database_url).connect() as conn:
        return keys_admin.visible_teams(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_projects(database_url: str, version: tuple[int, ...]) -> list[directory.Project]:
    """Return every project; `version` is directory_version, so a new project shows at once."""
    with engine_for(database_url).connect() as conn:
        return directory.list_projects(conn)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_keys(database_url: str) -> list[keys.KeySummary]:
    with engine_for(database_url).connect() as conn:
        return keys.list_keys(conn)


def key_label(key: keys.KeySummary) -> str:
    return f"{key.prefix}…{key.last4}"


def split_list(text: str) -> list[str] | None:
    """Return the comma-separated items of `text`, or None (no restriction) when it has none."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    return items or None


def organization_form() -> tuple[str, str, str, int] | None:
    """Render the organization form; return (name, time zone, trial USD text, trial days)."""
    zones = sorted(available_timezones())
    with st.form("create_organization", clear_on_submit=True):
        name = st.text_input("Organization name", max_chars=200, key="organization_name")
        timezone = st.selectbox(
            "Time zone",
            zones,
            index=zones.index("UTC"),
            key="organization_timezone",
            help="Daily, weekly and monthly budgets and report days start at midnight here.",
        )
        trial_text = st.text_input(
            "Trial credit (USD)",
            value="0",
            key="organization_trial_usd",
            help="0 grants none, so only budgets limit the organization's calls. A positive "
            "amount makes the organization credit-metered: its calls are rejected once the "
            "credit is spent or has expired, until more is added, such as a top-up on the "
            "Billing page.",
        )
        trial_days = st.number_input(
            "Trial days",
            min_value=1,
            max_value=3650,
            value=provisioning.DEFAULT_TRIAL_DAYS,
            step=1,
            key="organization_trial_days",
            help="Days until unused trial credit expires.",
        )
        submitted = st.form_submit_button("Create organization")
    if not submitted:
        return None
    return name, timezone, trial_text, int(trial_days)


def render_create_organization(engine: Engine, actor: Actor) -> None:
    # Organization users may not create organizations (access.INSTALLATION_ACTIONS).
    if not actor.is_staff or not access.can(actor.role, "organizations.create"):
        return
    st.subheader("Create an organization")
    submission = organization_form()
    if submission is None:
        return
    name, timezone, trial_text, trial_days = submission

    try:
        trial_usd = provisioning.parse_trial_usd(trial_text)
        with engine.begin() as conn:
            organization_id = keys_admin.create_organization(
                conn, actor, name, timezone=timezone, trial_usd=trial_usd, trial_days=trial_days
            )
    except (InvalidRequestError, PermissionDeniedError) as error:
        logger.info("user %s: organization not created: %s", actor.username, error.message)
        st.error(error.message)
        return
    except IntegrityError:
        # Another session created the same organization between the check and the insert.
        logger.warning(
            "user %s: organization %r created concurrently by another session",
            actor.username,
            name,
        )
        st.error(f"Organization {name.strip()!r} already exists.")
        return

    logger.info("user %s created organization %d", actor.username, organization_id)
    # Preselected in the team form below, which is usually the next step.
    st.session_state["team_organization"] = organization_id
    st.success(f"Created organization {name.strip()!r}.")


def render_create_team(engine: Engine, actor: Actor, organization_list: list[Organization]) -> None:
    if not access.can(actor.role, "teams.create"):
        return
    st.subheader("Create a team")
    organizations = {organization.id: organization.name for organization in organization_list}
    with st.form("create_team", clear_on_submit=True):
        # Without organizations, keys_admin.create_team creates the Default one.
        organization_id = None
        if organizations:
            organization_id = st.selectbox(
                "Organization",
                list(organizations),
                format_func=organizations.__getitem__,
                key="team_organization",
            )
        name = st.text_input("Team name", max_chars=200, key="team_name")
        submitted = st.form_submit_button("Create team")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            team = keys_admin.create_team(conn, actor, name, organization_id)
    except (InvalidRequestError, NotFoundError, PermissionDeniedError) as error:
        logger.info("user %s: team not created: %s", actor.username, error.message)
        st.error(error.message)
        return
    except IntegrityError:
        # Another session created the same team between the check and the insert.
        logger.warning(
            "user %s: team %r created concurrently by another session", actor.username, name
        )
        st.error(f"Team {name.strip()!r} already exists.")
        return

    load_teams.clear()
    logger.info("user %s created team %d", actor.username, team.id)
    organization = organizations.get(team.organization_id, directory.DEFAULT_ORGANIZATION)
    st.success(f"Created team {team.name!r} in {organization!r}.")


def key_form(
    teams: list[directory.Team], projects: list[directory.Project]
) -> tuple[int, int | None, str, str] | None:
    """Render the key form and return (team id, project id, key name, mode) when submitted."""
    team_names = {team.id: team.name for team in teams}
    # A team admin sees only the projects of the teams they administer.
    project_labels = {
        project.id: f"{team_names[project.team_id]} / {project.name}"
        for project in projects
        if project.team_id in team_names
    }
    with st.form("create_key", clear_on_submit=True):
        team_id = st.selectbox(
            "Team", list(team_names), format_func=team_names.__getitem__, key="key_team"
        )
        project_id = st.selectbox(
            "Project",
            [NO_PROJECT, *project_labels],
            format_func=lambda i: "No project" if i == NO_PROJECT else project_labels[i],
            key="key_project",
            help="The project's budgets and rate limits also apply to the key, and research "
            "reports count its calls under the project. Projects are created on the "
            "Budgets & limits page.",
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
    if not submitted:
        return None
    return team_id, None if project_id == NO_PROJECT else project_id, name, mode


def render_create_key(
    engine: Engine,
    secret: bytes,
    teams: list[directory.Team],
    projects: list[directory.Project],
    actor: Actor,
) -> None:
    st.subheader("Create an API key")
    if not teams and access.can(actor.role, "teams.create"):
        st.info("No teams yet: create one above.")
        return
    if not teams:
        st.info(
            "You administer no teams yet. An owner or admin can make you a team admin "
            "on the Users page."
        )
        return
    submission = key_form(teams, projects)
    if submission is None:
        return
    team_id, project_id, name, mode = submission
    if not name.strip():
        st.error("Key name must not be empty: enter a name that says where the key is used.")
        return
    team_name = next(team.name for team in teams if team.id == team_id)
    project = next((project for project in projects if project.id == project_id), None)
    if project is not None and project.team_id != team_id:
        st.error(
            f"Project {project.name!r} belongs to another team. Pick its team, "
            f"or pick a project of {team_name!r}."
        )
        return

    try:
        with engine.begin() as conn:
            issued = keys_admin.create_key(
                conn,
                secret,
                actor,
                team_id=team_id,
                name=name.strip(),
                mode=mode,
                project_id=project_id,
            )
    except (InvalidRequestError, PermissionDeniedError) as error:
        load_teams.clear()
        load_projects.clear()
        logger.warning("user %s: key not created: %s", actor.username, error.message)
        st.error(error.message)
        return
    except IntegrityError:
        load_teams.clear()
        load_projects.clear()
        logger.warning(
            "user %s: key not created because team %d or project %s no longer exists",
            actor.username,
            team_id,
            project_id,
        )
        st.error("That team or project no longer exists. Pick another one.")
        return

    load_keys.clear()
    logger.info("user %s created %s key %d for team %d", actor.username, mode, issued.id, team_id)
    owner = f"team {team_name!r}" if project is None else f"project {project.name!r}"
    st.success(f"Created {issued.mode} key {issued.name!r} for {owner}.")
    st.warning(
        "Copy this key now. Gatewayz stores only its hash, so the key will not be shown again."
    )
    # Shown in this run only: the key is not kept in session state.
    st.code(issued.secret, language=None)


def revoked_cell(revoked_at: datetime | None) -> str:
    """Return the Revoked column's text: empty for an active key, else the UTC time."""
    if revoked_at is None:
        return ""
    return revoked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_key_list(key_list: list[keys.KeySummary]) -> None:
    st.subheader("API keys")
    if not key_list:
        st.info("No API keys yet: create one above.")
        return
    frame = pd.DataFrame(
        {
            "Team": [key.team_name for key in key_list],
            "Project": [key.project_name or "–" for key in key_list],
            "Name": [key.name for key in key_list],
            "Key": [key_label(key) for key in key_list],
            "Mode": [key.mode for key in key_list],
            "Created": [key.created_at for key in key_list],
            "Revoked": [revoked_cell(key.revoked_at) for key in key_list],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "Created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm z"),
        },
    )


def render_revoke(engine: Engine, key_list: list[keys.KeySummary], actor: Actor) -> None:
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
            revoked = keys_admin.revoke_key(conn, actor, key_id)
    except NotFoundError:
        logger.warning(
            "user %s: key %d not revoked because it no longer exists", actor.username, key_id
        )
        st.error("That key no longer exists. Reload the page.")
        return
    except PermissionDeniedError as error:
        logger.warning("user %s: key %d not revoked: %s", actor.username, key_id, error.message)
        st.error(error.message)
        return

    load_keys.clear()
    if revoked:
        logger.info("user %s revoked key %d", actor.username, key_id)
    label = f"{active[key_id].name!r} ({key_label(active[key_id])})"
    st.session_state[FLASH_MESSAGE] = (
        f"Revoked key {label}." if revoked else f"Key {label} was already revoked."
    )
    st.rerun()


def policy_form(key_id: int, policy: dict[str, Any]) -> dict[str, Any] | None:
    """Render the restrictions form for one key and return the new values when it is submitted."""
    expires_at = policy["expires_at"]
    expires_date = expires_at.astimezone(UTC).date() if expires_at else None
    with st.form(f"key_policy_{key_id}"):
        models = st.text_input(
            "Allowed models",
            ", ".join(policy["allowed_models"] or []),
            placeholder="openai/gpt-4o-mini, anthropic/*",
            help="Model ids, aliases or glob patterns, separated by commas. Empty allows any.",
            key=f"policy_models_{key_id}",
        )
        endpoints = st.multiselect(
            "Allowed endpoints",
            sorted(keys.ENDPOINTS),
            default=sorted(policy["allowed_endpoints"] or []),
            help="Empty allows every endpoint.",
            key=f"policy_endpoints_{key_id}",
        )
        networks = st.text_input(
            "Allowed client networks",
            ", ".join(str(network) for network in policy["allowed_ips"] or []),
            placeholder="10.0.0.0/8, 203.0.113.7",
            help="IP addresses or CIDR networks, separated by commas. Empty allows any.",
            key=f"policy_networks_{key_id}",
        )
        referrers = st.text_input(
            "Allowed referrers",
            ", ".join(policy["allowed_referrers"] or []),
            help="Referer hosts, separated by commas. Empty allows any.",
            key=f"policy_referrers_{key_id}",
        )
        expires_on = st.date_input(
            "Expires on (00:00 UTC)",
            value=expires_date,
            help="Leave empty for a key that does not expire.",
            key=f"policy_expires_{key_id}",
        )
        tags = st.text_input(
            "Tags",
            ", ".join(policy["tags"] or []),
            help="Labels copied onto the key's usage rows, separated by commas.",
            key=f"policy_tags_{key_id}",
        )
        submitted = st.form_submit_button("Save restrictions")
    if not submitted:
        return None
    return {
        "allowed_models": split_list(models),
        "allowed_endpoints": endpoints or None,
        "allowed_ips": split_list(networks),
        "allowed_referrers": split_list(referrers),
        # An unchanged date keeps the time of day, such as the end of a rotation's grace.
        "expires_at": expires_at if expires_on == expires_date else expiry(expires_on),
        "tags": split_list(tags) or [],
    }


def expiry(expires_on: date | None) -> datetime | None:
    return None if expires_on is None else datetime.combine(expires_on, time(0), UTC)


def render_policy(engine: Engine, key_list: list[keys.KeySummary], actor: Actor) -> None:
    st.subheader("Restrict a key")
    active = {key.id: key for key in key_list if key.revoked_at is None}
    if not active:
        st.info("No active keys to restrict.")
        return
    # Outside the form, so choosing another key reruns the page and fills in its restrictions.
    key_id = st.selectbox(
        "Key",
        list(active),
        format_func=lambda i: f"{active[i].team_name} / {active[i].name} ({key_label(active[i])})",
        key="policy_key_id",
    )
    try:
        with engine.connect() as conn:
            policy = keys_admin.key_policy(conn, actor, key_id)
    except (NotFoundError, PermissionDeniedError) as error:
        st.error(f"{error.message}. Reload the page.")
        return
    values = policy_form(key_id, policy)
    if values is None:
        return

    try:
        with engine.begin() as conn:
            keys_admin.set_key_policy(conn, actor, key_id, **values)
    except (InvalidRequestError, NotFoundError, PermissionDeniedError) as error:
        logger.info("user %s: key %d not restricted: %s", actor.username, key_id, error.message)
        st.error(error.message)
        return
    logger.info("user %s changed the restrictions of key %d", actor.username, key_id)
    # Dropping the widgets' state makes the rerun fill them in from the saved values.
    for field in POLICY_WIDGETS:
        st.session_state.pop(f"policy_{field}_{key_id}", None)
    st.session_state[FLASH_MESSAGE] = f"Saved the restrictions of key {active[key_id].name!r}."
    st.rerun()


settings = Settings.from_env()
engine = engine_for(settings.database_url)
actor = current_actor()

st.title("API keys")
if FLASH_MESSAGE in st.session_state:
    st.success(st.session_state.pop(FLASH_MESSAGE))
render_create_organization(engine, actor)
with engine.connect() as conn:
    version = directory.directory_version(conn)
render_create_team(engine, actor, load_organizations(settings.database_url, actor, version))
teams = load_teams(settings.database_url, actor)
projects = load_projects(settings.database_url, version)
render_create_key(engine, settings.secret, teams, projects, actor)
team_ids = {team.id for team in teams}
key_list = [key for key in load_keys(settings.database_url) if key.team_id in team_ids]
# Without teams, the key form above already shows what to do first.
if teams:
    render_key_list(key_list)
if key_list:
    render_revoke(engine, key_list, actor)
    render_policy(engine, key_list, actor)
