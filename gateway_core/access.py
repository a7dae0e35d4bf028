"""Role permissions for admin actions, and the organizations and teams a user may act on.

`PERMISSIONS` is the one table of roles per action. Functions in gateway_core
that change something call `require`, `require_organization` or
`require_team` before they write, so a page that hides a form is not the
only guard. Roles are the `users.role` values in `directory.ROLES`.

A user with `organization_members` rows is an organization user: every role
they have applies only inside those organizations, and `Actor.organization_ids`
lists them. A user with no such row is installation staff, with
`organization_ids` None, and acts on every organization. Only staff take the
actions in `INSTALLATION_ACTIONS`, which change the whole installation.

An organization user who names a team, project, key, budget scope or rule
of another organization gets the NotFoundError that a missing id gets, so
errors do not reveal which ids exist elsewhere. A role that may not take
the action still gets PermissionDeniedError, checked before the lookup.

A `team_admin` user acts only on the teams where their `team_members` row
has the team role "admin". Every other role that an action allows acts on
every team of the organizations the user may act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, Connection, exists, select

from gateway_core.directory import ROLES
from gateway_core.errors import NotFoundError, PermissionDeniedError
from gateway_core.schema import api_keys, organization_members, projects, team_members, teams, users

ALL_ROLES = frozenset(ROLES)
_OWNER_ADMIN = frozenset({"owner", "admin"})
_FINANCE = _OWNER_ADMIN | {"billing"}
_KEY_MANAGERS = _OWNER_ADMIN | {"team_admin"}

PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "keys.create": _KEY_MANAGERS,
        "keys.revoke": _KEY_MANAGERS,
        "keys.policy": _KEY_MANAGERS,
        "organizations.create": _OWNER_ADMIN,
        "teams.create": _OWNER_ADMIN,
        "teams.members": _OWNER_ADMIN,
        # Projects, budgets and rate limits match limits_admin.BUDGET_MANAGER_ROLES.
        "projects.create": _FINANCE,
        "budgets.manage": _FINANCE,
        "limits.manage": _FINANCE,
        # Matches model_admin.MANAGER_ROLES.
        "models.manage": _OWNER_ADMIN,
        "users.manage": _OWNER_ADMIN,
        # Health alert rules send to every alert channel of an organization.
        "alerts.manage": _OWNER_ADMIN,
        "audit.read": _FINANCE,
        "usage.read": ALL_ROLES,
        "reports.read": ALL_ROLES,
        # Reading and paying for one organization's credit, plan and coupons.
        "billing.manage": _FINANCE,
        # Plans, coupons and the email outbox, which serve every organization.
        "billing.configure": _OWNER_ADMIN,
        # Switching self-service sign-up and approving live keys.
        "signup.manage": _OWNER_ADMIN,
        # Sends prompts to upstream models, which costs money.
        "compare.run": _OWNER_ADMIN | {"team_admin", "researcher"},
        "templates.edit": _OWNER_ADMIN | {"team_admin", "researcher"},
        # Provider accounts and their API keys serve every organization.
        "providers.manage": _OWNER_ADMIN,
    }
)
# Actions that change every organization, so organization users are rejected.
INSTALLATION_ACTIONS = frozenset(
    {
        "organizations.create",
        "models.manage",
        "providers.manage",
        "signup.manage",
        "billing.configure",
    }
)
# Roles whose allowed actions apply only to teams they administer.
TEAM_SCOPED_ROLES = frozenset({"team_admin"})
TEAM_ROLES = ("admin", "member")


@dataclass(frozen=True)
class Actor:
    """The signed-in user taking an action, as the audit log records them."""

    username: str
    role: str
    # The browser's address as Streamlit reports it, or None for localhost.
    client_address: str | None = None
    # The organizations of an organization user, or None for installation staff.
    organization_ids: frozenset[int] | None = None

    @property
    def is_staff(self) -> bool:
        """Whether the user belongs to no organization and so acts on all of them."""
        return self.organization_ids is None

    def may_see(self, organization_id: int | None) -> bool:
        """Return whether this actor may read and change the organization.

        Rows without an organization, such as calls that no key authenticated,
        are visible to staff only.
        """
        if self.organization_ids is None:
            return True
        return organization_id is not None and organization_id in self.organization_ids


def as_actor(principal: Actor | str) -> Actor:
    """Return `principal` as an Actor. A bare role is an installation-wide principal.

    The command line and admin API keys pass a role string, and both act on
    the whole installation.
    """
    if isinstance(principal, Actor):
        return principal
    return Actor(username=f"role:{principal}", role=principal)


def roles_for(action: str) -> frozenset[str]:
    """Return the roles allowed to take `action`, or raise ValueError for an unknown action."""
    try:
        return PERMISSIONS[action]
    except KeyError:
        raise ValueError(
            f"unknown action {action!r}, expected one of {', '.join(sorted(PERMISSIONS))}"
        ) from None


def can(role: str, action: str) -> bool:
    return role in roles_for(action)


def require(role: str, action: str) -> None:
    """Raise PermissionDeniedError unless `role` may take `action`."""
    if not can(role, action):
        allowed = ", ".join(sorted(roles_for(action)))
        raise PermissionDeniedError(
            f"role {role!r} may not perform {action!r}. Allowed roles: {allowed}.",
            code="action_not_allowed",
        )


def administered_team_ids(conn: Connection, username: str) -> frozenset[int]:
    """Return the ids of the teams where the user has the team role "admin"."""
    rows = conn.execute(
        select(team_members.c.team_id)
        .join(users, users.c.id == team_members.c.user_id)
        .where(users.c.username == username, team_members.c.role == "admin")
    )
    return frozenset(rows.scalars())


def require_team(
    conn: Connection, actor: Actor, team_id: int, action: str, not_found: str | None = None
) -> None:
    """Raise PermissionDeniedError unless the actor may take `action` on this team.

    For an organization user, a team that does not exist or is in another
    organization raises NotFoundError with `not_found`, by default
    "team ID not found". Staff pass for a missing team, so the caller's own
    lookup reports it.
    """
    message = f"team {team_id} not found" if not_found is None else not_found
    require_object(actor, organization_of_team(conn, team_id), action, message)
    if actor.role not in TEAM_SCOPED_ROLES:
        return
    if team_id not in administered_team_ids(conn, actor.username):
        raise PermissionDeniedError(
            f"user {actor.username!r} is not an admin of team {team_id}, so may not "
            f"perform {action!r} on it. An owner or admin can make them a team admin "
            "on the Users page.",
            code="team_not_administered",
        )


def organization_ids_of(conn: Connection, username: str) -> frozenset[int] | None:
    """Return the user's organizations, or None for a user in none (installation staff)."""
    rows = conn.execute(
        select(organization_members.c.organization_id)
        .join(users, users.c.id == organization_members.c.user_id)
        .where(users.c.username == username)
    )
    ids = frozenset(rows.scalars())
    return ids or None


def load_actor(
    conn: Connection, username: str, role: str, client_address: str | None = None
) -> Actor:
    """Return the Actor of a signed-in user, with the organizations they belong to."""
    return Actor(username, role, client_address, organization_ids_of(conn, username))


def require_actor(actor: Actor, action: str) -> None:
    """Raise PermissionDeniedError unless the actor's role allows `action`.

    An action in INSTALLATION_ACTIONS also raises it for organization users.
    """
    require(actor.role, action)
    if action in INSTALLATION_ACTIONS and not actor.is_staff:
        raise PermissionDeniedError(
            f"user {actor.username!r} belongs to an organization, so may not perform "
            f"{action!r}, which changes every organization of this installation. "
            "Ask an installation administrator (a user in no organization).",
            code="installation_action",
        )


def require_organization(actor: Actor, organization_id: int | None, action: str) -> None:
    """Raise PermissionDeniedError unless the actor may take `action` in this organization."""
    require_actor(actor, action)
    if actor.may_see(organization_id):
        return
    target = (
        "an object of no organization"
        if organization_id is None
        else (f"organization {organization_id}")
    )
    raise PermissionDeniedError(
        f"user {actor.username!r} may not perform {action!r} on {target}: they act only "
        "inside the organizations they are a member of.",
        code="organization_not_member",
    )


def require_object(actor: Actor, organization_id: int | None, action: str, not_found: str) -> None:
    """Check the actor's role, then that an object is in one of the actor's organizations.

    `organization_id` is the object's organization, or None when the object
    does not exist. Raises PermissionDeniedError when the role may not take
    `action`. Raises NotFoundError with the message `not_found` when an
    organization user names a missing object or one outside their
    organizations, so the error does not reveal which ids other
    organizations use. Staff pass for any object, including a missing one,
    so the caller's own lookup reports it.
    """
    require_actor(actor, action)
    if actor.is_staff or actor.may_see(organization_id):
        return
    raise NotFoundError(not_found)


def organization_of_team(conn: Connection, team_id: int) -> int | None:
    """Return the organization of a team, or None when the team does not exist."""
    return conn.execute(
        select(teams.c.organization_id).where(teams.c.id == team_id)
    ).scalar_one_or_none()


def organization_of_project(conn: Connection, project_id: int) -> int | None:
    """Return the organization of a project, or None when the project does not exist."""
    return conn.execute(
        select(teams.c.organization_id)
        .join(projects, projects.c.team_id == teams.c.id)
        .where(projects.c.id == project_id)
    ).scalar_one_or_none()


def organization_of_key(conn: Connection, key_id: int) -> int | None:
    """Return the organization of an API key, or None when the key does not exist."""
    return conn.execute(
        select(teams.c.organization_id)
        .join(api_keys, api_keys.c.team_id == teams.c.id)
        .where(api_keys.c.id == key_id)
    ).scalar_one_or_none()


def organization_of_scope(conn: Connection, scope_type: str, scope_id: int) -> int | None:
    """Return the organization of a budget or rate limit scope, or None when it does not exist."""
    if scope_type == "organization":
        return scope_id
    if scope_type == "team":
        return organization_of_team(conn, scope_id)
    if scope_type == "project":
        return organization_of_project(conn, scope_id)
    if scope_type == "key":
        return organization_of_key(conn, scope_id)
    raise ValueError(f"unknown scope type {scope_type!r}")


def require_scope(
    conn: Connection, actor: Actor, scope_type: str, scope_id: int, action: str
) -> None:
    """Raise PermissionDeniedError unless the actor may take `action` on the scope's organization.

    For an organization user, a missing scope or one in another
    organization raises NotFoundError "SCOPE_TYPE ID not found", the message
    of `limits_admin.find_scope`. Staff pass for a missing scope, so the
    caller's own check reports it.
    """
    organization_id = organization_of_scope(conn, scope_type, scope_id)
    require_object(actor, organization_id, action, f"{scope_type} {scope_id} not found")


def written_by_member(
    organization_ids: frozenset[int],
    actor_column: ColumnElement[Any],
    time_column: ColumnElement[Any],
) -> ColumnElement[bool]:
    """Return a condition for rows written by a current member of these organizations.

    Rows name their writer by username, and a deleted user's username can
    be taken again, so a row counts only if it is no older than the
    member's account.
    """
    return exists(
        select(users.c.id)
        .join(organization_members, organization_members.c.user_id == users.c.id)
        .where(
            organization_members.c.organization_id.in_(organization_ids),
            users.c.username == actor_column,
            users.c.created_at <= time_column,
        )
    )
