"""Role permissions for admin actions, and the teams that a team admin may act on.

`PERMISSIONS` is the one table of roles per action. Functions in gateway_core
that change something call `require` or `require_team` before they write, so
a page that hides a form is not the only guard. Roles are the `users.role`
values in `directory.ROLES`. A `team_admin` user acts only on the teams where
their `team_members` row has the team role "admin". Every other role that an
action allows acts on every team.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import Connection, select

from gateway_core.directory import ROLES
from gateway_core.errors import PermissionDeniedError
from gateway_core.schema import team_members, users

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
        "billing.manage": _FINANCE,
        # Switching self-service sign-up and approving live keys.
        "signup.manage": _OWNER_ADMIN,
        # Sends prompts to upstream models, which costs money.
        "compare.run": _OWNER_ADMIN | {"team_admin", "researcher"},
        "templates.edit": _OWNER_ADMIN | {"team_admin", "researcher"},
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


def require_team(conn: Connection, actor: Actor, team_id: int, action: str) -> None:
    """Raise PermissionDeniedError unless the actor may take `action` on this team."""
    require(actor.role, action)
    if actor.role not in TEAM_SCOPED_ROLES:
        return
    if team_id not in administered_team_ids(conn, actor.username):
        raise PermissionDeniedError(
            f"user {actor.username!r} is not an admin of team {team_id}, so may not "
            f"perform {action!r} on it. An owner or admin can make them a team admin "
            "on the Users page.",
            code="team_not_administered",
        )
