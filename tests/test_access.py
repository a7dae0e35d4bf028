"""Roles and permissions: page access, gated actions, team scope, users, sign-in limits, audit.

Page tests run the app headless with AppTest against the test database, with
the fixtures of tests/test_app_pages.py.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import streamlit as st
from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from streamlit.runtime.context import ContextProxy
from streamlit.runtime.download_data_util import convert_data_to_bytes_and_infer_mime
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from gateway_core import (
    access,
    audit,
    audit_search,
    directory,
    health_rules,
    keys,
    keys_admin,
    limits_admin,
    login_attempts,
    model_admin,
    signup,
    users_admin,
)
from gateway_core.access import Actor
from gateway_core.audit_search import AuditFilters
from gateway_core.directory import ROLES
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.schema import (
    api_keys,
    audit_log,
    billing_accounts,
    credit_balances,
    organizations,
    team_members,
    teams,
    users,
)
from tests import test_app_pages
from tests.conftest import TEST_SECRET
from tests.test_app_pages import (
    APP_PATH,
    PASSWORD,
    TIMEOUT_SECONDS,
    add_user,
    click,
    labels,
    open_page,
    sign_in,
    start_app,
    values,
)

# The app tests' fixtures: the app's environment and an empty cookie jar.
app_env = test_app_pages.app_env
cookies = test_app_pages.cookies

SECRET = TEST_SECRET.encode()
PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"
# Pages that one action guards: the roles allowed the action may open the page.
PAGE_ACTIONS = {"keys": "keys.create", "users": "users.manage", "audit": "audit.read"}
USERNAME_LIMIT_MESSAGE = "Too many failed sign-ins for this username. Try again in 15 minutes."


def audit_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings()
        return [dict(row) for row in rows]


def table_dump(engine: Engine, table: str) -> str:
    with engine.connect() as conn:
        query = text(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} AS t")
        return conn.execute(query).scalar_one()


def snapshot(engine: Engine) -> dict[str, list]:
    """Every row of the tables that gated actions write."""
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(table)).all()
            for table in (users, organizations, teams, team_members, api_keys, audit_log)
        }


# Permission matrix


def test_matrix_names_known_roles() -> None:
    for action, roles in access.PERMISSIONS.items():
        assert roles <= set(ROLES), action
        assert {"owner", "admin"} <= roles, action


def test_matrix_is_read_only() -> None:
    with pytest.raises(TypeError):
        access.PERMISSIONS["keys.create"] = frozenset({"viewer"})  # type: ignore[index]


def test_matrix_matches_existing_role_checks() -> None:
    assert access.roles_for("budgets.manage") == limits_admin.BUDGET_MANAGER_ROLES
    assert access.roles_for("limits.manage") == limits_admin.BUDGET_MANAGER_ROLES
    assert access.roles_for("projects.create") == limits_admin.BUDGET_MANAGER_ROLES
    assert access.roles_for("models.manage") == model_admin.MANAGER_ROLES


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(access.PERMISSIONS))
def test_require_follows_matrix(role: str, action: str) -> None:
    allowed = role in access.PERMISSIONS[action]
    assert access.can(role, action) is allowed
    if allowed:
        access.require(role, action)
    else:
        with pytest.raises(PermissionDeniedError) as raised:
            access.require(role, action)
        assert repr(role) in raised.value.message
        assert repr(action) in raised.value.message
        assert raised.value.status_code == 403


def test_unknown_action_rejected() -> None:
    with pytest.raises(ValueError, match="unknown action 'keys.delete'"):
        access.can("owner", "keys.delete")


def test_unknown_role_denied() -> None:
    assert not access.can("Owner", "keys.create")
    assert not access.can("", "usage.read")


# Gated action functions: allowed roles succeed, others raise and write nothing


def seed_targets(engine: Engine, role: str) -> dict[str, int]:
    """Create an actor with `role`, a viewer to act on, a team with one key and an organization.

    Names carry the role, so one test can seed every role. A team_admin actor
    administers the team, so team-scoped actions are refused only because of
    the role, never because of the team.
    """
    with engine.begin() as conn:
        actor_id = directory.create_user(
            conn, username=f"actor-{role}", password=PASSWORD, role=role
        )
        target_id = directory.create_user(
            conn, username=f"target-{role}", password=PASSWORD, role="viewer"
        )
        team = directory.create_team(conn, f"Lab {role}")
        key = keys.create_key(conn, SECRET, team_id=team.id, name="ci")
        conn.execute(insert(team_members).values(user_id=actor_id, team_id=team.id, role="admin"))
        organization_id = directory.ensure_organization(conn, f"Partner {role}")
    return {
        "actor": actor_id,
        "target": target_id,
        "team": team.id,
        "key": key.id,
        "organization": organization_id,
    }


@dataclass(frozen=True)
class GatedAction:
    # The access.PERMISSIONS action checked, and the audit action written.
    permission: str
    audit_action: str
    call: Callable[[Connection, Actor, dict[str, int]], object]


def toggle_signup(conn: Connection, actor: Actor, ids: dict[str, int]) -> bool:
    enabled = signup.get_settings(conn).signup_enabled
    return signup.set_signup_enabled(conn, actor, not enabled)


def approve_after_withdrawal(conn: Connection, actor: Actor, ids: dict[str, int]) -> bool:
    """Mark the team's organization as self-service without live keys, then approve it."""
    org_id = conn.execute(
        select(teams.c.organization_id).where(teams.c.id == ids["team"])
    ).scalar_one()
    statement = pg_insert(billing_accounts).values(organization_id=org_id, live_keys_allowed=False)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["organization_id"], set_={"live_keys_allowed": False}
        )
    )
    return signup.approve_live_keys(conn, actor, org_id)


GATED_ACTIONS = {
    "invite_user": GatedAction(
        "users.manage",
        "users.invite",
        lambda conn, actor, ids: users_admin.invite_user(
            conn, actor, f"new-{actor.role}", "new@example.org", "viewer", "New User"
        ),
    ),
    "reset_password": GatedAction(
        "users.manage",
        "users.reset_password",
        lambda conn, actor, ids: users_admin.reset_password(conn, actor, ids["target"]),
    ),
    "set_disabled": GatedAction(
        "users.manage",
        "users.disable",
        lambda conn, actor, ids: users_admin.set_disabled(conn, actor, ids["target"], True),
    ),
    "change_role": GatedAction(
        "users.manage",
        "users.change_role",
        lambda conn, actor, ids: users_admin.change_role(conn, actor, ids["target"], "researcher"),
    ),
    "set_team_membership": GatedAction(
        "teams.members",
        "teams.members",
        lambda conn, actor, ids: users_admin.set_team_membership(
            conn, actor, ids["target"], ids["team"], "member"
        ),
    ),
    "create_organization": GatedAction(
        "organizations.create",
        "organizations.create",
        lambda conn, actor, ids: keys_admin.create_organization(
            conn, actor, f"Org {actor.role}", timezone="UTC", trial_usd=Decimal(0)
        ),
    ),
    "create_team": GatedAction(
        "teams.create",
        "teams.create",
        lambda conn, actor, ids: keys_admin.create_team(conn, actor, f"Ops {actor.role}"),
    ),
    "create_team_in_organization": GatedAction(
        "teams.create",
        "teams.create",
        lambda conn, actor, ids: keys_admin.create_team(
            conn, actor, f"Ops {actor.role}", ids["organization"]
        ),
    ),
    "create_key": GatedAction(
        "keys.create",
        "keys.create",
        lambda conn, actor, ids: keys_admin.create_key(
            conn, SECRET, actor, team_id=ids["team"], name="web"
        ),
    ),
    "revoke_key": GatedAction(
        "keys.revoke",
        "keys.revoke",
        lambda conn, actor, ids: keys_admin.revoke_key(conn, actor, ids["key"]),
    ),
    "set_key_policy": GatedAction(
        "keys.policy",
        "keys.policy",
        lambda conn, actor, ids: keys_admin.set_key_policy(
            conn, actor, ids["key"], allowed_models=["openai/*"]
        ),
    ),
    "set_signup_enabled": GatedAction("signup.manage", "signup.set_enabled", toggle_signup),
    "approve_live_keys": GatedAction(
        "signup.manage", "organizations.approve_live_keys", approve_after_withdrawal
    ),
    "save_health_rule": GatedAction(
        "alerts.manage",
        "health_rule.create",
        lambda conn, actor, ids: health_rules.save_rule(
            conn,
            actor,
            organization_id=conn.execute(
                select(teams.c.organization_id).where(teams.c.id == ids["team"])
            ).scalar_one(),
            name="errors",
            kind="error_rate",
            provider=None,
            threshold="0.2",
            window_seconds=300,
            min_requests=10,
            cooldown_seconds=900,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(GATED_ACTIONS))
def test_gated_action_by_role(engine: Engine, name: str) -> None:
    gated = GATED_ACTIONS[name]
    seeded = {role: seed_targets(engine, role) for role in ROLES}

    for role in ROLES:
        before = snapshot(engine)
        actor = Actor(f"actor-{role}", role)
        if access.can(role, gated.permission):
            with engine.begin() as conn:
                gated.call(conn, actor, seeded[role])
            entry = audit_rows(engine)[-1]
            assert entry["action"] == gated.audit_action, role
            assert entry["actor"] == actor.username, role
            assert snapshot(engine) != before, role
        else:
            with pytest.raises(PermissionDeniedError), engine.begin() as conn:
                gated.call(conn, actor, seeded[role])
            assert snapshot(engine) == before, role


def test_organization_trial_is_audited(engine: Engine) -> None:
    with engine.begin() as conn:
        organization_id = keys_admin.create_organization(
            conn, Actor("olga", "owner"), "Acme", timezone="UTC", trial_usd=Decimal("5"),
            trial_days=7,
        )  # fmt: skip
        balance = conn.execute(
            select(credit_balances.c.balance).where(
                credit_balances.c.scope_type == "organization",
                credit_balances.c.scope_id == organization_id,
            )
        ).scalar_one()
    assert balance == Decimal(5)
    [entry] = audit_rows(engine)
    assert entry["action"] == "organizations.create"
    assert entry["object_id"] == str(organization_id)
    assert entry["after"] == {"name": "Acme", "timezone": "UTC", "trial_usd": "5",
                              "trial_days": 7}  # fmt: skip


def test_team_in_missing_organization(engine: Engine) -> None:
    before = snapshot(engine)
    with pytest.raises(NotFoundError, match="organization 999 not found"), engine.begin() as conn:
        keys_admin.create_team(conn, Actor("olga", "owner"), "Lab", 999)
    assert snapshot(engine) == before


@pytest.mark.parametrize("role", ROLES)
def test_audit_search_needs_audit_read(engine: Engine, role: str) -> None:
    with engine.connect() as conn:
        if access.can(role, "audit.read"):
            assert audit_search.search(conn, role, AuditFilters()) == []
            assert audit_search.verify(conn, role) == []
        else:
            with pytest.raises(PermissionDeniedError):
                audit_search.search(conn, role, AuditFilters())
            with pytest.raises(PermissionDeniedError):
                audit_search.write_csv(conn, role, AuditFilters(), io.StringIO())


# Team admins act only on the teams they administer


def seed_team_admin(engine: Engine) -> dict[str, int]:
    """Create team admin "tara": admin of Lab, member of Ops, not in Other. Each team has a key."""
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        tara = directory.create_user(conn, username="tara", password=PASSWORD, role="team_admin")
        for name, team_role in (("Lab", "admin"), ("Ops", "member"), ("Other", None)):
            team = directory.create_team(conn, name)
            ids[name] = team.id
            ids[f"{name} key"] = keys.create_key(conn, SECRET, team_id=team.id, name="ci").id
            if team_role is not None:
                conn.execute(
                    insert(team_members).values(user_id=tara, team_id=team.id, role=team_role)
                )
    return ids


TARA = Actor("tara", "team_admin")


def test_team_admin_visible_teams(engine: Engine) -> None:
    ids = seed_team_admin(engine)
    with engine.connect() as conn:
        assert [team.id for team in keys_admin.visible_teams(conn, TARA)] == [ids["Lab"]]
        assert access.administered_team_ids(conn, "tara") == {ids["Lab"]}
        owner_view = keys_admin.visible_teams(conn, Actor("olga", "owner"))
    assert {team.name for team in owner_view} == {"Lab", "Ops", "Other"}


def test_team_admin_creates_key_in_own_team(engine: Engine) -> None:
    ids = seed_team_admin(engine)
    with engine.begin() as conn:
        issued = keys_admin.create_key(conn, SECRET, TARA, team_id=ids["Lab"], name="web")
    assert issued.team_id == ids["Lab"]
    assert [row["action"] for row in audit_rows(engine)] == ["keys.create"]


@pytest.mark.parametrize("team", ["Ops", "Other"])
def test_team_admin_denied_on_other_teams(engine: Engine, team: str) -> None:
    ids = seed_team_admin(engine)
    before = snapshot(engine)
    calls = [
        lambda conn: keys_admin.create_key(conn, SECRET, TARA, team_id=ids[team], name="web"),
        lambda conn: keys_admin.revoke_key(conn, TARA, ids[f"{team} key"]),
        lambda conn: keys_admin.set_key_policy(conn, TARA, ids[f"{team} key"], tags=["x"]),
        lambda conn: keys_admin.key_policy(conn, TARA, ids[f"{team} key"]),
    ]
    for call in calls:
        with (
            pytest.raises(PermissionDeniedError, match="not an admin of team"),
            engine.begin() as conn,
        ):
            call(conn)
    assert snapshot(engine) == before


def test_require_team_for_organization_roles(engine: Engine) -> None:
    ids = seed_team_admin(engine)
    with engine.connect() as conn:
        access.require_team(conn, Actor("olga", "owner"), ids["Other"], "keys.revoke")
        with pytest.raises(PermissionDeniedError, match="may not perform 'keys.revoke'"):
            access.require_team(conn, Actor("vic", "viewer"), ids["Other"], "keys.revoke")


def test_membership_removal_ends_access(engine: Engine) -> None:
    ids = seed_team_admin(engine)
    with engine.begin() as conn:
        tara_id = conn.execute(select(users.c.id).where(users.c.username == "tara")).scalar_one()
        owner = Actor("olga", "owner")
        assert users_admin.set_team_membership(conn, owner, tara_id, ids["Lab"], None)
    with pytest.raises(PermissionDeniedError), engine.begin() as conn:
        keys_admin.revoke_key(conn, TARA, ids["Lab key"])
    (entry,) = audit_rows(engine)
    assert entry["action"] == "teams.members"
    assert entry["object_type"] == "team"
    assert entry["object_id"] == str(ids["Lab"])
    assert entry["before"] == {
        "user_id": tara_id,
        "username": "tara",
        "team": "Lab",
        "team_role": "admin",
    }
    assert entry["after"] is None


# Users administration

OWNER = Actor("olga", "owner", "198.51.100.4")
ADMIN = Actor("adam", "admin")


def user_row(engine: Engine, username: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(users).where(users.c.username == username)).one()


def assert_no_secrets(engine: Engine, *secrets: str) -> None:
    """Check that no audit entry contains these strings or any password hash."""
    dump = table_dump(engine, "audit_log")
    for secret in secrets:
        assert secret not in dump
    assert "password_hash" not in dump
    with engine.connect() as conn:
        hashes = conn.execute(select(users.c.password_hash)).scalars().all()
    for password_hash in hashes:
        assert password_hash not in dump
        # The salt and digest part, in case a hash were stored re-encoded.
        assert password_hash[7:] not in dump


def test_invite_stores_bcrypt_only(engine: Engine) -> None:
    with engine.begin() as conn:
        password = users_admin.invite_user(
            conn, OWNER, " rita ", "rita@example.org", "researcher", "Rita R"
        )

    row = user_row(engine, "rita")
    assert len(password) >= 16
    assert row.password_hash != password
    assert row.password_hash.startswith("$2b$")
    assert bcrypt.checkpw(password.encode(), row.password_hash.encode())
    assert (row.email, row.role, row.display_name, row.disabled) == (
        "rita@example.org",
        "researcher",
        "Rita R",
        False,
    )
    (entry,) = audit_rows(engine)
    assert entry["action"] == "users.invite"
    assert entry["actor"] == "olga"
    assert entry["client_address"] == "198.51.100.4"
    assert entry["object_id"] == str(row.id)
    assert entry["before"] is None
    assert entry["after"] == {
        "username": "rita",
        "display_name": "Rita R",
        "email": "rita@example.org",
        "role": "researcher",
        "disabled": False,
    }
    assert_no_secrets(engine, password)


def test_invite_passwords_differ(engine: Engine) -> None:
    with engine.begin() as conn:
        first = users_admin.invite_user(conn, OWNER, "a1", "a1@example.org", "viewer", "")
        second = users_admin.invite_user(conn, OWNER, "a2", "a2@example.org", "viewer", "")
    assert first != second
    assert user_row(engine, "a1").display_name == "a1"


@pytest.mark.parametrize(
    ("username", "email", "role", "param"),
    [
        ("", "x@example.org", "viewer", "username"),
        ("has space", "x@example.org", "viewer", "username"),
        ("-dash", "x@example.org", "viewer", "username"),
        ("x" * 101, "x@example.org", "viewer", "username"),
        ("rita", "not-an-email", "viewer", "email"),
        ("rita", "two@@example.org", "viewer", "email"),
        ("rita", "x@example.org", "superuser", "role"),
    ],
)
def test_invite_rejects_invalid_fields(
    engine: Engine, username: str, email: str, role: str, param: str
) -> None:
    with pytest.raises(InvalidRequestError) as raised, engine.begin() as conn:
        users_admin.invite_user(conn, OWNER, username, email, role, "")
    assert raised.value.param == param
    assert audit_rows(engine) == []


def test_invite_rejects_name_differing_in_case(engine: Engine) -> None:
    add_user(engine, "Carol", "viewer")
    with (
        pytest.raises(InvalidRequestError, match="'Carol' is already taken"),
        engine.begin() as conn,
    ):
        users_admin.invite_user(conn, OWNER, "carol", "c@example.org", "viewer", "")


def test_admin_cannot_create_or_touch_owners(engine: Engine) -> None:
    olga = add_user(engine, "olga", "owner")
    before = snapshot(engine)
    calls = [
        lambda conn: users_admin.invite_user(conn, ADMIN, "boss", "b@example.org", "owner", ""),
        lambda conn: users_admin.reset_password(conn, ADMIN, olga),
        lambda conn: users_admin.set_disabled(conn, ADMIN, olga, True),
        lambda conn: users_admin.change_role(conn, ADMIN, olga, "viewer"),
    ]
    for call in calls:
        with pytest.raises(PermissionDeniedError), engine.begin() as conn:
            call(conn)
    vic = add_user(engine, "vic", "viewer")
    with (
        pytest.raises(PermissionDeniedError, match="grant the owner role"),
        engine.begin() as conn,
    ):
        users_admin.change_role(conn, ADMIN, vic, "owner")
    assert snapshot(engine)["audit_log"] == before["audit_log"]


def test_reset_password_replaces_old_one(engine: Engine) -> None:
    rita = add_user(engine, "rita", "researcher")
    old_hash = user_row(engine, "rita").password_hash
    with engine.begin() as conn:
        password = users_admin.reset_password(conn, ADMIN, rita)

    new_hash = user_row(engine, "rita").password_hash
    assert bcrypt.checkpw(password.encode(), new_hash.encode())
    assert not bcrypt.checkpw(PASSWORD.encode(), new_hash.encode())
    (entry,) = audit_rows(engine)
    assert entry["action"] == "users.reset_password"
    assert entry["after"] == {"username": "rita"}
    assert_no_secrets(engine, password, PASSWORD, old_hash, new_hash)


def test_reset_password_unknown_user(engine: Engine) -> None:
    with pytest.raises(NotFoundError, match="no user with id 999"), engine.begin() as conn:
        users_admin.reset_password(conn, OWNER, 999)


def test_disable_and_enable_audited(engine: Engine) -> None:
    add_user(engine, "olga", "owner")
    vic = add_user(engine, "vic", "viewer")
    with engine.begin() as conn:
        assert users_admin.set_disabled(conn, OWNER, vic, True)
        assert not users_admin.set_disabled(conn, OWNER, vic, True)
    assert user_row(engine, "vic").disabled
    with engine.begin() as conn:
        assert users_admin.set_disabled(conn, OWNER, vic, False)
    assert not user_row(engine, "vic").disabled

    disabled, enabled = audit_rows(engine)
    assert disabled["action"] == "users.disable"
    assert disabled["before"]["disabled"] is False
    assert disabled["after"]["disabled"] is True
    assert enabled["action"] == "users.enable"
    assert enabled["after"]["disabled"] is False
    assert set(disabled["after"]) == set(users_admin.AUDITED_FIELDS)
    assert_no_secrets(engine, PASSWORD)


def test_change_role_audited(engine: Engine) -> None:
    vic = add_user(engine, "vic", "viewer")
    with engine.begin() as conn:
        assert users_admin.change_role(conn, ADMIN, vic, "billing")
        assert not users_admin.change_role(conn, ADMIN, vic, "billing")

    assert user_row(engine, "vic").role == "billing"
    (entry,) = audit_rows(engine)
    assert entry["action"] == "users.change_role"
    assert entry["before"]["role"] == "viewer"
    assert entry["after"]["role"] == "billing"
    assert_no_secrets(engine, PASSWORD)


def test_change_role_rejects_unknown_role(engine: Engine) -> None:
    vic = add_user(engine, "vic", "viewer")
    with pytest.raises(InvalidRequestError, match="invalid role 'root'"), engine.begin() as conn:
        users_admin.change_role(conn, OWNER, vic, "root")


def test_last_owner_kept(engine: Engine) -> None:
    olga = add_user(engine, "olga", "owner")
    other = Actor("otto", "owner")
    with pytest.raises(InvalidRequestError, match="last enabled owner"), engine.begin() as conn:
        users_admin.change_role(conn, other, olga, "admin")
    with pytest.raises(InvalidRequestError, match="last enabled owner"), engine.begin() as conn:
        users_admin.set_disabled(conn, other, olga, True)

    otto = add_user(engine, "otto", "owner")
    with engine.begin() as conn:
        users_admin.change_role(conn, other, olga, "admin")
    with pytest.raises(InvalidRequestError, match="last enabled owner"), engine.begin() as conn:
        users_admin.change_role(conn, OWNER, otto, "admin")


def test_cannot_disable_own_account(engine: Engine) -> None:
    add_user(engine, "olga", "owner")
    adam = add_user(engine, "adam", "admin")
    with pytest.raises(InvalidRequestError, match="your own account"), engine.begin() as conn:
        users_admin.set_disabled(conn, ADMIN, adam, True)


def test_team_membership_changes_audited(engine: Engine) -> None:
    rita = add_user(engine, "rita", "team_admin")
    with engine.begin() as conn:
        team = directory.create_team(conn, "Lab")
    with engine.begin() as conn:
        assert users_admin.set_team_membership(conn, ADMIN, rita, team.id, "member")
        assert users_admin.set_team_membership(conn, ADMIN, rita, team.id, "admin")
        assert not users_admin.set_team_membership(conn, ADMIN, rita, team.id, "admin")
    with engine.connect() as conn:
        (membership,) = users_admin.list_memberships(conn)
    assert (membership.username, membership.team_name, membership.role) == ("rita", "Lab", "admin")
    added, promoted = audit_rows(engine)
    assert added["before"] is None
    assert added["after"]["team_role"] == "member"
    assert promoted["before"]["team_role"] == "member"
    assert promoted["after"]["team_role"] == "admin"
    with pytest.raises(InvalidRequestError, match="invalid team role"), engine.begin() as conn:
        users_admin.set_team_membership(conn, ADMIN, rita, team.id, "owner")
    with pytest.raises(NotFoundError, match="no team with id 999"), engine.begin() as conn:
        users_admin.set_team_membership(conn, ADMIN, rita, 999, "member")


# Failed sign-in limits in gateway_core

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def attempt(
    engine: Engine, username: str, at: datetime, *, success: bool = False, session: str = "s1"
) -> login_attempts.Attempt:
    with engine.begin() as conn:
        begun = login_attempts.begin_attempt(
            conn, username, session_key=session, client_address=None, now=at
        )
    if not begun.rejected:
        with engine.begin() as conn:
            login_attempts.finish_attempt(conn, begun.attempt_id, success=success)
    return begun


def outcomes(engine: Engine, username: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT outcome FROM login_attempts WHERE username = :u ORDER BY id"),
            {"u": username},
        )
        return list(rows.scalars())


def test_username_limit_after_five_failures(engine: Engine) -> None:
    for minute in range(5):
        session = f"s{minute}"
        assert not attempt(
            engine, "alice", T0 + timedelta(minutes=minute), session=session
        ).rejected

    sixth = attempt(engine, "alice", T0 + timedelta(minutes=5), success=True, session="s9")

    assert sixth.rejected
    assert sixth.limit == login_attempts.Limit("username", timedelta(minutes=10))
    assert outcomes(engine, "alice") == ["failure"] * 5 + ["rejected"]


def test_username_limit_ends_with_window(engine: Engine) -> None:
    for minute in range(5):
        attempt(engine, "alice", T0 + timedelta(minutes=minute), session=f"s{minute}")
    assert attempt(engine, "alice", T0 + timedelta(minutes=14), session="x").rejected

    # The first failure left the 15-minute window at T0 + 15 min.
    later = attempt(engine, "alice", T0 + timedelta(minutes=15, seconds=1), session="y")
    assert not later.rejected


def test_username_is_case_insensitive(engine: Engine) -> None:
    for minute, spelling in enumerate(["Alice", "ALICE", " alice", "alice ", "aLiCe"]):
        attempt(engine, spelling, T0 + timedelta(minutes=minute), session=f"s{minute}")
    assert attempt(engine, "alice", T0 + timedelta(minutes=6), session="x").rejected


def test_success_resets_only_own_username(engine: Engine) -> None:
    for minute in range(4):
        attempt(engine, "alice", T0 + timedelta(minutes=minute), session=f"a{minute}")
        attempt(engine, "bob", T0 + timedelta(minutes=minute), session=f"b{minute}")
    attempt(engine, "bob", T0 + timedelta(minutes=4), success=True, session="b9")

    assert not attempt(engine, "alice", T0 + timedelta(minutes=5), session="a8").rejected
    assert attempt(engine, "alice", T0 + timedelta(minutes=6), session="a9").rejected
    for minute in range(6, 10):
        assert not attempt(engine, "bob", T0 + timedelta(minutes=minute), session="b8").rejected
    assert outcomes(engine, "bob") == ["failure"] * 4 + ["success"] + ["failure"] * 4


def test_session_limit_across_usernames(engine: Engine) -> None:
    maximum = login_attempts.MAX_SESSION_FAILURES
    for index in range(maximum):
        assert not attempt(engine, f"user{index}", T0 + timedelta(seconds=index)).rejected

    rejected = attempt(engine, "someone", T0 + timedelta(minutes=1))
    assert rejected.limit is not None
    assert rejected.limit.scope == "session"
    assert not attempt(engine, "someone", T0 + timedelta(minutes=1), session="fresh").rejected
    with engine.connect() as conn:
        limit = login_attempts.check_limits(
            conn, username=None, session_key="s1", now=T0 + timedelta(minutes=1)
        )
    assert limit == login_attempts.Limit("session", timedelta(minutes=14))


def test_concurrent_attempts_respect_limit(engine: Engine) -> None:
    results: list[login_attempts.Attempt] = []
    lock = threading.Lock()

    def guess(index: int) -> None:
        with engine.begin() as conn:
            begun = login_attempts.begin_attempt(
                conn, "alice", session_key=f"s{index}", client_address=None
            )
        with lock:
            results.append(begun)

    threads = [threading.Thread(target=guess, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(not result.rejected for result in results) == login_attempts.MAX_USERNAME_FAILURES
    assert sorted(outcomes(engine, "alice")) == ["failure"] * 5 + ["rejected"] * 7


def test_old_attempts_pruned(engine: Engine) -> None:
    attempt(engine, "alice", T0 - login_attempts.RETENTION - timedelta(seconds=1))
    attempt(engine, "bob", T0)
    with engine.connect() as conn:
        names = conn.execute(text("SELECT username FROM login_attempts")).scalars().all()
    assert names == ["bob"]


# Pages each role reaches


def page_names() -> set[str]:
    return {path.stem for path in PAGES_DIR.glob("*.py")}


@pytest.mark.parametrize("role", ROLES)
def test_navigation_for_role(cookies, engine: Engine, role: str) -> None:
    add_user(engine, "pat", role)
    at = sign_in(start_app(), "pat")
    allowed = at.session_state["gatewayz_allowed_pages"]
    landing = values(at.title)

    for page, action in PAGE_ACTIONS.items():
        assert (page in allowed) is access.can(role, action), page
    assert allowed <= page_names()
    # What a browser sends for the URL of a page the role does not have. AppTest
    # has no public way to request a page that is not registered.
    for page in sorted(page_names() - allowed):
        at._page_hash = calc_hash(page)
        at.run()
        assert not at.exception, page
        assert values(at.title) == landing, page
    for page in sorted(allowed & set(PAGE_ACTIONS)):
        open_page(at, f"pages/{page}.py")
        assert not [message for message in values(at.error) if message.startswith("Sign in")]


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("users", "Sign in as an owner or admin to manage users: open the app's home page."),
        (
            "audit",
            "Sign in as an owner, admin or billing user to read the audit log: "
            "open the app's home page.",
        ),
    ],
)
def test_page_run_directly_stops(app_env, page: str, message: str) -> None:
    # Before any run, AppTest runs the page file without app.py, as Streamlit
    # does for the first request to its URL after the server starts.
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.switch_page(f"pages/{page}.py")
    at.run()

    assert values(at.error) == [message]
    assert not at.button
    assert not at.dataframe


# Users page


def users_page(engine: Engine, role: str = "owner") -> AppTest:
    add_user(engine, "olga", role)
    at = sign_in(start_app(), "olga")
    return open_page(at, "pages/users.py")


def user_id_of(engine: Engine, username: str) -> int:
    return user_row(engine, username).id


def test_users_page_invites_user(cookies, engine: Engine) -> None:
    at = users_page(engine)

    at.text_input(key="invite_username").input("rita")
    at.text_input(key="invite_display_name").input("Rita R")
    at.text_input(key="invite_email").input("rita@example.org")
    at.selectbox(key="invite_role").set_value("researcher")
    click(at, "Invite user")

    (code,) = at.code
    password = code.value
    assert bcrypt.checkpw(password.encode(), user_row(engine, "rita").password_hash.encode())
    assert any("will not be shown again" in message for message in values(at.warning))
    assert "rita" in at.dataframe[0].value["Username"].tolist()
    (entry,) = audit_rows(engine)
    assert (entry["actor"], entry["action"]) == ("olga", "users.invite")
    assert password not in json.dumps({k: str(v) for k, v in at.session_state.to_dict().items()})
    assert_no_secrets(engine, password)

    at.run()
    assert not at.code

    # The app caches accounts for 30 seconds, and clearing the cache replaces the wait.
    st.cache_data.clear()
    invited = sign_in(start_app(), "rita", password)
    assert invited.session_state["gatewayz_user"]["role"] == "researcher"


def test_users_page_invite_error(cookies, engine: Engine) -> None:
    at = users_page(engine)

    at.text_input(key="invite_username").input("rita")
    at.text_input(key="invite_email").input("no email")
    click(at, "Invite user")

    assert "invalid email address 'no email'" in values(at.error)
    assert not at.code
    assert audit_rows(engine) == []


def test_admin_cannot_pick_owner_role(cookies, engine: Engine) -> None:
    at = users_page(engine, "admin")

    assert "owner" not in at.selectbox(key="invite_role").options
    assert "admin" in at.selectbox(key="invite_role").options


def test_users_page_resets_password(cookies, engine: Engine) -> None:
    add_user(engine, "rita", "researcher")
    at = users_page(engine)

    at.selectbox(key="reset_user_id").set_value(user_id_of(engine, "rita"))
    click(at, "Reset password")
    assert "Tick the confirmation box to reset the password." in values(at.warning)
    assert not at.code

    at.checkbox(key="reset_confirm").check()
    click(at, "Reset password")

    (code,) = at.code
    assert bcrypt.checkpw(code.value.encode(), user_row(engine, "rita").password_hash.encode())
    assert "Reset the password of 'rita'." in values(at.success)
    assert [entry["action"] for entry in audit_rows(engine)] == ["users.reset_password"]
    assert_no_secrets(engine, code.value)


def test_users_page_disables_and_enables(cookies, engine: Engine) -> None:
    add_user(engine, "vic", "viewer")
    at = users_page(engine)
    vic = user_id_of(engine, "vic")

    at.selectbox(key="status_user_id").set_value(vic)
    click(at, "Disable user")

    assert "Disabled 'vic'." in values(at.success)
    assert user_row(engine, "vic").disabled
    table = at.dataframe[0].value.set_index("Username")
    assert bool(table.loc["vic", "Disabled"])

    at.selectbox(key="status_user_id").set_value(vic)
    click(at, "Enable user")
    assert not user_row(engine, "vic").disabled
    assert [entry["action"] for entry in audit_rows(engine)] == ["users.disable", "users.enable"]


def test_users_page_changes_role(cookies, engine: Engine) -> None:
    add_user(engine, "vic", "viewer")
    at = users_page(engine)

    at.selectbox(key="role_user_id").set_value(user_id_of(engine, "vic"))
    at.selectbox(key="role_new").set_value("billing")
    click(at, "Change role")

    assert "'vic' is now billing." in values(at.success)
    assert user_row(engine, "vic").role == "billing"


def test_users_page_keeps_last_owner(cookies, engine: Engine) -> None:
    at = users_page(engine)

    at.selectbox(key="role_user_id").set_value(user_id_of(engine, "olga"))
    at.selectbox(key="role_new").set_value("viewer")
    click(at, "Change role")

    assert any("last enabled owner" in message for message in values(at.error))
    assert user_row(engine, "olga").role == "owner"
    assert audit_rows(engine) == []


def test_users_page_assigns_team(cookies, engine: Engine) -> None:
    add_user(engine, "tara", "team_admin")
    with engine.begin() as conn:
        team = directory.create_team(conn, "Lab")
    at = users_page(engine)

    at.selectbox(key="member_user_id").set_value(user_id_of(engine, "tara"))
    at.selectbox(key="member_team_id").set_value(team.id)
    at.selectbox(key="member_role").set_value("admin")
    click(at, "Save membership")

    assert "'tara' is now admin of team 'Lab'." in values(at.success)
    table = at.dataframe[0].value.set_index("Username")
    assert table.loc["tara", "Teams"] == "Lab (admin)"
    with engine.connect() as conn:
        assert access.administered_team_ids(conn, "tara") == {team.id}


# Keys page: audit entries and team scope

CLIENT = "203.0.113.9"


def test_keys_page_writes_audit_entries(cookies, engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: CLIENT))
    add_user(engine, "alice", "owner")
    at = open_page(sign_in(start_app(), "alice"), "pages/keys.py")

    at.text_input(key="team_name").input("Research")
    click(at, "Create team")
    at.text_input(key="key_name").input("ci-pipeline")
    click(at, "Create key")
    plain = at.code[0].value
    with engine.connect() as conn:
        key_id = conn.execute(select(api_keys.c.id)).scalar_one()
    at.selectbox(key="revoke_key_id").set_value(key_id)
    at.checkbox(key="revoke_confirm").check()
    click(at, "Revoke key")

    entries = audit_rows(engine)
    assert [entry["action"] for entry in entries] == ["teams.create", "keys.create", "keys.revoke"]
    assert {entry["actor"] for entry in entries} == {"alice"}
    assert {entry["client_address"] for entry in entries} == {CLIENT}
    created = entries[1]["after"]
    assert (created["name"], created["prefix"], created["last4"]) == (
        "ci-pipeline",
        plain[:12],
        plain[-4:],
    )
    assert entries[2]["before"]["revoked_at"] is None
    assert entries[2]["after"]["revoked_at"] is not None
    assert plain[12:-4] not in table_dump(engine, "audit_log")
    with engine.connect() as conn:
        assert audit_search.verify(conn, "owner") == []


def keys_page_with_key(engine: Engine) -> tuple[AppTest, int]:
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
        key_id = keys.create_key(conn, SECRET, team_id=team.id, name="ci").id
    add_user(engine, "alice", "admin")
    at = open_page(sign_in(start_app(), "alice"), "pages/keys.py")
    return at, key_id


def test_keys_page_saves_restrictions(cookies, engine: Engine) -> None:
    at, key_id = keys_page_with_key(engine)

    at.text_input(key=f"policy_models_{key_id}").input("openai/*, anthropic/claude-sonnet-4")
    at.multiselect(key=f"policy_endpoints_{key_id}").set_value(["chat", "embeddings"])
    at.text_input(key=f"policy_networks_{key_id}").input("10.1.2.3/8")
    at.date_input(key=f"policy_expires_{key_id}").set_value(date(2031, 1, 2))
    click(at, "Save restrictions")

    assert "Saved the restrictions of key 'ci'." in values(at.success)
    with engine.connect() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
    assert row.allowed_models == ["openai/*", "anthropic/claude-sonnet-4"]
    assert row.allowed_endpoints == ["chat", "embeddings"]
    assert [str(network) for network in row.allowed_ips] == ["10.0.0.0/8"]
    assert row.expires_at == datetime(2031, 1, 2, tzinfo=UTC)
    (entry,) = audit_rows(engine)
    assert entry["action"] == "keys.policy"
    assert entry["object_id"] == str(key_id)
    assert set(entry["before"]) == {
        "allowed_models",
        "allowed_endpoints",
        "allowed_ips",
        "expires_at",
    }
    assert entry["before"]["allowed_models"] is None
    assert entry["after"]["allowed_ips"] == ["10.0.0.0/8"]
    # The form shows the saved restrictions.
    assert at.text_input(key=f"policy_networks_{key_id}").value == "10.0.0.0/8"


def test_keys_page_rejects_invalid_network(cookies, engine: Engine) -> None:
    at, key_id = keys_page_with_key(engine)

    at.text_input(key=f"policy_networks_{key_id}").input("not-a-network")
    click(at, "Save restrictions")

    assert any("invalid network" in message for message in values(at.error))
    assert audit_rows(engine) == []


def test_team_admin_keys_page(cookies, engine: Engine) -> None:
    ids = seed_team_admin(engine)
    at = sign_in(start_app(), "tara")

    assert values(at.title) == ["API keys"]
    assert "Create team" not in labels(at.button)
    assert at.selectbox(key="key_team").options == ["Lab"]
    assert at.dataframe[0].value["Team"].tolist() == ["Lab"]

    at.text_input(key="key_name").input("web")
    click(at, "Create key")

    with engine.connect() as conn:
        teams_with_web = conn.execute(
            select(api_keys.c.team_id).where(api_keys.c.name == "web")
        ).scalars()
        assert list(teams_with_web) == [ids["Lab"]]
    assert [entry["actor"] for entry in audit_rows(engine)] == ["tara"]


def test_team_admin_without_teams(cookies, engine: Engine) -> None:
    add_user(engine, "tara", "team_admin")
    at = sign_in(start_app(), "tara")

    assert any("You administer no teams yet" in message for message in values(at.info))
    assert not at.dataframe


# Failed sign-in limits in the app


def test_sign_in_rejected_after_five_failures(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = start_app()
    for _ in range(5):
        sign_in(at, "alice", "wrong password")
        assert values(at.error) == ["Incorrect username or password."]

    sign_in(at, "alice")

    assert not at.session_state["authentication_status"]
    assert values(at.error) == [USERNAME_LIMIT_MESSAGE]
    assert "gatewayz_allowed_pages" not in at.session_state
    assert outcomes(engine, "alice") == ["failure"] * 5 + ["rejected"]


def test_unknown_username_limited_alike(cookies, engine: Engine) -> None:
    at = start_app()
    for _ in range(5):
        sign_in(at, "ghost", "wrong password")

    sign_in(at, "ghost", "wrong password")

    assert values(at.error) == [USERNAME_LIMIT_MESSAGE]
    assert outcomes(engine, "ghost") == ["failure"] * 5 + ["rejected"]


def test_lock_leaves_other_users_alone(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    add_user(engine, "bob", "viewer")
    now = datetime.now(UTC)
    for index in range(5):
        attempt(engine, "alice", now - timedelta(minutes=index), session=f"other{index}")

    bob = sign_in(start_app(), "bob")
    assert bob.session_state["authentication_status"] is True

    alice = sign_in(start_app(), "alice")
    assert not alice.session_state["authentication_status"]
    assert values(alice.error) == [
        "Too many failed sign-ins for this username. Try again in 11 minutes."
    ]
    assert outcomes(engine, "bob") == ["success"]
    assert outcomes(engine, "alice") == ["failure"] * 5 + ["rejected"]


def test_session_limit_hides_form(cookies, engine: Engine) -> None:
    at = start_app()
    session_key = at.session_state["gatewayz_sign_in_session"]
    now = datetime.now(UTC)
    for index in range(login_attempts.MAX_SESSION_FAILURES):
        attempt(engine, f"user{index}", now, session=session_key)

    at.run()

    assert not at.text_input
    assert values(at.error) == [
        "Too many failed sign-ins for this browser session. Try again in 15 minutes."
    ]


def test_sign_in_records_client_address(cookies, engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: CLIENT))
    add_user(engine, "alice", "owner")

    at = sign_in(start_app(), "ALICE")

    assert at.session_state["authentication_status"] is True
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM login_attempts")).one()
    assert (row.username, row.client_address, row.outcome) == ("alice", CLIENT, "success")
    assert row.session_key == at.session_state["gatewayz_sign_in_session"]


def test_cookie_sign_in_not_counted(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "admin")
    cookies["gatewayz_auth"] = test_app_pages.cookie_token("alice")

    at = start_app()

    assert at.session_state["authentication_status"] is True
    assert outcomes(engine, "alice") == []


# Audit log page


class FixedClock(datetime):
    """datetime whose now() returns the instant in `current`, to backdate audit entries."""

    current: datetime = T0

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:
        return cls.current


def seed_audit(engine: Engine) -> list[int]:
    """Append five entries: one 40 days ago, then 3, 2 and 1 days ago, then now."""
    now = datetime.now(UTC)
    seeds = [
        (40, "olga", "users.invite", "user", 1, {"username": "rita"}),
        (3, "olga", "keys.create", "api_key", 7, {"name": "ci"}),
        (2, "adam", "keys.revoke", "api_key", 7, {"name": "ci"}),
        (1, "=cmd|' /C calc'!A0", "teams.create", "team", 3, {"name": "=1+1"}),
        (0, "adam", "users.change_role", "user", 2, {"role": "billing"}),
    ]
    ids = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit, "datetime", FixedClock)
        for days, actor, action, object_type, object_id, after in seeds:
            FixedClock.current = now - timedelta(days=days, minutes=1)
            with engine.begin() as conn:
                ids.append(
                    audit.record(
                        conn,
                        actor=actor,
                        action=action,
                        object_type=object_type,
                        object_id=object_id,
                        after=after,
                    )
                )
    return ids


def capture_deferred_downloads(monkeypatch) -> list[Callable]:
    """Record the data callables of deferred download buttons, which AppTest never runs."""
    captured: list[Callable] = []
    original = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        captured.append(data_callable)
        return original(self, data_callable, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return captured


def download_rows(data_callable: Callable) -> list[dict[str, str]]:
    data, _ = convert_data_to_bytes_and_infer_mime(data_callable(), RuntimeError("unsupported"))
    return list(csv.DictReader(io.StringIO(data.decode())))


def audit_page(engine: Engine) -> AppTest:
    add_user(engine, "bill", "billing")
    at = sign_in(start_app(), "bill")
    return open_page(at, "pages/audit.py")


def listed_ids(at: AppTest) -> list[int]:
    return at.dataframe[0].value["id"].tolist()


def test_audit_page_filters(cookies, engine: Engine) -> None:
    ids = seed_audit(engine)
    at = audit_page(engine)

    # The default range is the last 30 days, newest first.
    assert listed_ids(at) == ids[:0:-1]

    at.selectbox(key="audit_actor").set_value("adam")
    at.run()
    assert listed_ids(at) == [ids[4], ids[2]]

    at.selectbox(key="audit_actor").set_value(None)
    at.selectbox(key="audit_action").set_value("keys.create")
    at.run()
    assert listed_ids(at) == [ids[1]]

    at.selectbox(key="audit_action").set_value(None)
    at.selectbox(key="audit_object_type").set_value("api_key")
    at.text_input(key="audit_object_id").input("7")
    at.run()
    assert listed_ids(at) == [ids[2], ids[1]]

    at.selectbox(key="audit_object_type").set_value(None)
    at.text_input(key="audit_object_id").input("")
    old = (datetime.now(UTC) - timedelta(days=40, minutes=1)).date()
    at.date_input(key="audit_dates").set_value((old, old))
    at.run()
    assert listed_ids(at) == [ids[0]]

    at.selectbox(key="audit_actor").set_value("adam")
    at.run()
    assert "No audit entries match these filters." in values(at.info)


def test_audit_page_csv_export(cookies, engine: Engine, monkeypatch) -> None:
    ids = seed_audit(engine)
    downloads = capture_deferred_downloads(monkeypatch)
    at = audit_page(engine)
    assert labels(at.get("download_button")) == ["Download CSV"]

    rows = download_rows(downloads[-1])
    assert list(rows[0]) == list(audit_search.CSV_COLUMNS)
    assert [int(row["id"]) for row in rows] == ids[1:]
    hostile = rows[2]
    assert hostile["actor"] == "'=cmd|' /C calc'!A0"
    assert json.loads(hostile["after"]) == {"name": "=1+1"}
    assert hostile["before"] == ""

    at.selectbox(key="audit_actor").set_value("adam")
    at.run()
    assert [int(row["id"]) for row in download_rows(downloads[-1])] == [ids[2], ids[4]]


def tamper(engine: Engine, statement: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        conn.execute(text(statement))
        conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


def test_audit_page_verifies_chain(cookies, engine: Engine) -> None:
    ids = seed_audit(engine)
    at = audit_page(engine)

    click(at, "Verify chain")
    assert values(at.success) == [
        "The audit log is intact: every entry matches its hash and the one before it."
    ]

    tamper(engine, f"UPDATE audit_log SET actor = 'mallory' WHERE id = {ids[2]}")
    click(at, "Verify chain")

    assert values(at.error) == [
        f"The chain is broken at entry {ids[2]}: content does not match its hash. "
        "1 break(s) in total."
    ]
