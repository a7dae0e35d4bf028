"""Users page: invite users, reset passwords, disable accounts, change roles and team memberships.

app.py registers this page for the roles that gateway_core.access allows
"users.manage". The check below also stops the page when Streamlit runs it
without app.py (see app.py's docstring). gateway_core.users_admin checks the
role again before each write and records it in the audit log.

A temporary password is shown only in the run that created it and is not
kept in session state, like a new API key on the Keys page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd
import streamlit as st
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from app_support import current_actor
from gateway_core import directory, users_admin
from gateway_core.access import TEAM_ROLES, Actor
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.directory import ROLES
from gateway_core.errors import GatewayError
from gateway_core.schema import organizations
from gateway_core.users_admin import Account

PAGE_NAME = "users"
LIST_TTL_SECONDS = 10
# Session-state key for a message shown once after the rerun that follows a write.
FLASH_MESSAGE = "users_page_flash"
REMOVE_MEMBERSHIP = "remove from team"
# The invite form's organization choice for a user in no organization.
STAFF_CHOICE = "None (installation staff)"

logger = logging.getLogger("gatewayz.app.users")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in as an owner or admin to manage users: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_accounts(database_url: str, actor: Actor) -> list[Account]:
    with engine_for(database_url).connect() as conn:
        return users_admin.list_accounts(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_memberships(database_url: str, actor: Actor) -> list[users_admin.TeamMembership]:
    with engine_for(database_url).connect() as conn:
        return users_admin.list_memberships(conn, actor)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_teams(database_url: str, actor: Actor) -> list[directory.Team]:
    with engine_for(database_url).connect() as conn:
        return [team for team in directory.list_teams(conn) if actor.may_see(team.organization_id)]


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_organization_names(database_url: str, actor: Actor) -> dict[int, str]:
    """Return the names of the organizations the actor may invite users into: all for staff."""
    query = select(organizations.c.id, organizations.c.name)
    if actor.organization_ids is not None:
        query = query.where(organizations.c.id.in_(actor.organization_ids))
    with engine_for(database_url).connect() as conn:
        return dict(conn.execute(query.order_by(organizations.c.name)).tuples().all())


def clear_lists() -> None:
    load_accounts.clear()
    load_memberships.clear()


def account_label(account: Account) -> str:
    status = ", disabled" if account.disabled else ""
    return f"{account.username} ({account.role}{status})"


def pick_account(accounts: list[Account], key: str) -> int:
    by_id = {account.id: account for account in accounts}
    return st.selectbox("User", list(by_id), format_func=lambda i: account_label(by_id[i]), key=key)


def show_password_once(username: str, password: str) -> None:
    st.warning(
        f"Give this temporary password to {username} now. Gatewayz stores only its bcrypt "
        "hash, so it will not be shown again."
    )
    # Shown in this run only: the password is not kept in session state.
    st.code(password, language=None)


def render_invite(engine: Engine, actor: Actor, organization_names: dict[int, str]) -> None:
    st.subheader("Invite a user")
    roles = [role for role in ROLES if role != "owner" or actor.role == "owner"]
    with st.form("invite_user", clear_on_submit=True):
        username = st.text_input("Username", max_chars=100, key="invite_username")
        display_name = st.text_input("Display name", max_chars=200, key="invite_display_name")
        email = st.text_input("Email", max_chars=320, key="invite_email")
        role = st.selectbox("Role", roles, index=roles.index("viewer"), key="invite_role")
        # An organization user invites into one of their organizations. Staff
        # pick an organization, or None to invite another staff user.
        choices: list[int | None] = list(organization_names)
        if actor.is_staff:
            choices.insert(0, None)
        organization_id = st.selectbox(
            "Organization",
            choices,
            format_func=lambda choice: (
                STAFF_CHOICE if choice is None else organization_names[choice]
            ),
            key="invite_organization",
            disabled=len(choices) == 1,
        )
        submitted = st.form_submit_button("Invite user")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            password = users_admin.invite_user(
                conn, actor, username, email, role, display_name, organization_id=organization_id
            )
    except GatewayError as error:
        logger.info("user %s: user not invited: %s", actor.username, error.message)
        st.error(error.message)
        return
    except IntegrityError:
        # Another session created the same username between the check and the insert.
        logger.warning("user %s: username %r taken concurrently", actor.username, username)
        st.error(f"Username {username.strip()!r} is already taken.")
        return

    clear_lists()
    where = STAFF_CHOICE if organization_id is None else organization_names[organization_id]
    logger.info("user %s invited %s as %s into %s", actor.username, username.strip(), role, where)
    st.success(
        f"Invited {username.strip()!r} as {role} into {where}. They can sign in within 30 seconds."
    )
    show_password_once(username.strip(), password)


def render_reset(engine: Engine, accounts: list[Account], actor: Actor) -> None:
    st.subheader("Reset a password")
    with st.form("reset_password"):
        user_id = pick_account(accounts, "reset_user_id")
        confirmed = st.checkbox(
            "I understand that the user's current password stops working.", key="reset_confirm"
        )
        submitted = st.form_submit_button("Reset password")
    if not submitted:
        return
    if not confirmed:
        st.warning("Tick the confirmation box to reset the password.")
        return

    username = next(account.username for account in accounts if account.id == user_id)
    try:
        with engine.begin() as conn:
            password = users_admin.reset_password(conn, actor, user_id)
    except GatewayError as error:
        logger.info("user %s: password of user %d not reset: %s", actor.username, user_id, error)
        st.error(error.message)
        return
    logger.info("user %s reset the password of user %d", actor.username, user_id)
    st.success(f"Reset the password of {username!r}.")
    show_password_once(username, password)


def render_accounts(accounts: list[Account], memberships: list[users_admin.TeamMembership]) -> None:
    st.subheader("Users")
    teams_of: dict[int, list[str]] = {}
    for membership in memberships:
        teams_of.setdefault(membership.user_id, []).append(
            f"{membership.team_name} ({membership.role})"
        )
    frame = pd.DataFrame(
        {
            "Username": [account.username for account in accounts],
            "Display name": [account.display_name for account in accounts],
            "Email": [account.email for account in accounts],
            "Role": [account.role for account in accounts],
            "Disabled": [account.disabled for account in accounts],
            "Teams": [", ".join(teams_of.get(account.id, [])) for account in accounts],
            "Created": [account.created_at for account in accounts],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        column_config={"Created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm z")},
    )


def apply_change(
    engine: Engine,
    actor: Actor,
    change: Callable[[Connection], bool],
    success: str,
    unchanged: str,
) -> None:
    """Run one users_admin write in a transaction, then show `success` after a rerun.

    `change` returns False when there was nothing to change.
    """
    try:
        with engine.begin() as conn:
            changed = change(conn)
    except GatewayError as error:
        logger.info("user %s: change rejected: %s", actor.username, error.message)
        st.error(error.message)
        return
    clear_lists()
    if not changed:
        st.info(unchanged)
        return
    logger.info("user %s: %s", actor.username, success)
    st.session_state[FLASH_MESSAGE] = success
    st.rerun()


def render_status(engine: Engine, accounts: list[Account], actor: Actor) -> None:
    st.subheader("Disable or enable a user")
    with st.form("account_status"):
        user_id = pick_account(accounts, "status_user_id")
        disable = st.form_submit_button("Disable user")
        enable = st.form_submit_button("Enable user")
    if not (disable or enable):
        return
    username = next(account.username for account in accounts if account.id == user_id)
    apply_change(
        engine,
        actor,
        lambda conn: users_admin.set_disabled(conn, actor, user_id, disable),
        f"{'Disabled' if disable else 'Enabled'} {username!r}.",
        f"{username!r} is already {'disabled' if disable else 'enabled'}.",
    )


def render_role(engine: Engine, accounts: list[Account], actor: Actor) -> None:
    st.subheader("Change a role")
    with st.form("change_role"):
        user_id = pick_account(accounts, "role_user_id")
        role = st.selectbox("New role", ROLES, key="role_new")
        submitted = st.form_submit_button("Change role")
    if not submitted:
        return
    username = next(account.username for account in accounts if account.id == user_id)
    apply_change(
        engine,
        actor,
        lambda conn: users_admin.change_role(conn, actor, user_id, role),
        f"{username!r} is now {role}.",
        f"{username!r} already is {role}.",
    )


def render_membership(
    engine: Engine, accounts: list[Account], teams: list[directory.Team], actor: Actor
) -> None:
    st.subheader("Team memberships")
    st.caption("A team admin manages the API keys of the teams where their team role is admin.")
    if not teams:
        st.info("No teams yet: create one on the Keys page.")
        return
    team_names = {team.id: team.name for team in teams}
    with st.form("team_membership"):
        user_id = pick_account(accounts, "member_user_id")
        team_id = st.selectbox(
            "Team", list(team_names), format_func=team_names.__getitem__, key="member_team_id"
        )
        choice = st.selectbox("Team role", [*TEAM_ROLES, REMOVE_MEMBERSHIP], key="member_role")
        submitted = st.form_submit_button("Save membership")
    if not submitted:
        return
    team_role = None if choice == REMOVE_MEMBERSHIP else choice
    username = next(account.username for account in accounts if account.id == user_id)
    outcome = (
        f"Removed {username!r} from team {team_names[team_id]!r}."
        if team_role is None
        else f"{username!r} is now {team_role} of team {team_names[team_id]!r}."
    )
    apply_change(
        engine,
        actor,
        lambda conn: users_admin.set_team_membership(conn, actor, user_id, team_id, team_role),
        outcome,
        f"No change: {username!r} already is as chosen in team {team_names[team_id]!r}.",
    )


settings = Settings.from_env()
engine = engine_for(settings.database_url)
actor = current_actor()

st.title("Users")
if FLASH_MESSAGE in st.session_state:
    st.success(st.session_state.pop(FLASH_MESSAGE))
render_invite(engine, actor, load_organization_names(settings.database_url, actor))
accounts = load_accounts(settings.database_url, actor)
render_reset(engine, accounts, actor)
render_accounts(accounts, load_memberships(settings.database_url, actor))
render_status(engine, accounts, actor)
render_role(engine, accounts, actor)
render_membership(engine, accounts, load_teams(settings.database_url, actor), actor)
