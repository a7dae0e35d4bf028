"""Inviting users, resetting their passwords, disabling them and changing their roles.

Every function checks the actor's role with `access.require` before it
writes, and appends an audit entry in the caller's transaction. Audit
entries never contain a password or a password hash. Only an owner may
grant the owner role or act on an owner's account. The last enabled owner
among an organization's members, and the last enabled owner among the
installation staff, can be neither disabled nor given another role, so
each keeps someone who can manage users.

An organization user manages only the members of their organizations, and
the users they invite become members of one of them. Users in no
organization are installation staff, and only staff manage them.

NOTE: a user who signs in with a temporary password is not asked to change
it, because the app has no page for changing one's own password yet.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import access, audit, notifications
from gateway_core.access import TEAM_ROLES, Actor, require
from gateway_core.directory import ROLES, hash_password
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.schema import organization_members, organizations, team_members, teams, users

# secrets.token_urlsafe(12) returns 16 characters carrying 96 random bits.
TEMPORARY_PASSWORD_BYTES = 12
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
# One @ with something on each side and no whitespace: enough to catch typos.
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+")
MAX_EMAIL_LENGTH = 320
MAX_DISPLAY_NAME_LENGTH = 200
# The users columns that audit entries show. password_hash is never one of them.
AUDITED_FIELDS = ("username", "display_name", "email", "role", "disabled")


@dataclass(frozen=True)
class Account:
    """A user as the Users page lists them, without the password hash."""

    id: int
    username: str
    display_name: str
    email: str
    role: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class TeamMembership:
    user_id: int
    username: str
    team_id: int
    team_name: str
    role: str


def _temporary_password() -> str:
    return secrets.token_urlsafe(TEMPORARY_PASSWORD_BYTES)


def _account(conn: Connection, user_id: int, *, lock: bool = False) -> dict[str, Any]:
    """Return the user's fields that audit entries show, without the password hash."""
    query = select(*(users.c[name] for name in AUDITED_FIELDS)).where(users.c.id == user_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"no user with id {user_id}")
    return dict(zip(AUDITED_FIELDS, row, strict=True))


def _user_organizations(conn: Connection, user_id: int) -> frozenset[int]:
    rows = conn.execute(
        select(organization_members.c.organization_id).where(
            organization_members.c.user_id == user_id
        )
    )
    return frozenset(rows.scalars())


def _require_user_in_scope(conn: Connection, actor: Actor, user_id: int, action: str) -> None:
    """Raise NotFoundError unless the actor may manage this user.

    An organization user may manage a user who is a member of one of their
    organizations, and never a staff user (one in no organization). Any
    other user reads as missing, as another organization's key does, so an
    organization user cannot learn which user ids exist.
    """
    if actor.is_staff:
        return
    shared = _user_organizations(conn, user_id) & (actor.organization_ids or frozenset())
    if not shared:
        raise NotFoundError(f"no user with id {user_id}")


def _require_owner_for(actor: Actor, account: dict[str, Any], what: str) -> None:
    if account["role"] == "owner" and actor.role != "owner":
        raise PermissionDeniedError(
            f"only an owner may {what} the owner account {account['username']!r}",
            code="owner_account",
        )


def _keep_an_owner(conn: Connection, user_id: int, account: dict[str, Any]) -> None:
    """Raise InvalidRequestError if this change would leave a group with no enabled owner.

    The groups are each organization the user is a member of, or, for a
    staff user, the installation staff (users in no organization). Locking
    every enabled owner row of the group makes two concurrent demotions of
    its last two owners wait for each other, so the second finds one owner left.
    """
    if account["role"] != "owner" or account["disabled"]:
        return
    enabled_owners = select(users.c.id).where(users.c.role == "owner", users.c.disabled.is_(False))
    organization_ids = sorted(_user_organizations(conn, user_id))
    if not organization_ids:
        staff = ~exists().where(organization_members.c.user_id == users.c.id)
        owners = conn.execute(enabled_owners.where(staff).with_for_update(of=users)).scalars()
        if set(owners) <= {user_id}:
            raise InvalidRequestError(
                f"{account['username']!r} is the last enabled owner among the installation "
                "staff. Make another staff user an owner first.",
                code="last_owner",
            )
        return
    for organization_id in organization_ids:
        members = select(organization_members.c.user_id).where(
            organization_members.c.organization_id == organization_id
        )
        query = enabled_owners.where(users.c.id.in_(members)).with_for_update(of=users)
        if set(conn.execute(query).scalars()) <= {user_id}:
            raise InvalidRequestError(
                f"{account['username']!r} is the last enabled owner of organization "
                f"{organization_id}. Make another member of it an owner first.",
                code="last_owner",
            )


def _record(
    conn: Connection,
    actor: Actor,
    action: str,
    object_id: int,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    object_type: str = "user",
) -> None:
    audit.record(
        conn,
        actor=actor.username,
        action=action,
        object_type=object_type,
        object_id=object_id,
        before=before,
        after=after,
        client_address=actor.client_address,
    )


def check_new_user(username: str, email: str, role: str, display_name: str) -> None:
    """Raise InvalidRequestError naming the first invalid field of a new user."""
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidRequestError(
            f"invalid username {username!r}: use 1 to 100 letters, digits, '.', '_', '@' "
            "or '-', starting with a letter or digit",
            param="username",
        )
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL_PATTERN.fullmatch(email):
        raise InvalidRequestError(f"invalid email address {email!r}", param="email")
    if role not in ROLES:
        raise InvalidRequestError(
            f"invalid role {role!r}, expected one of {', '.join(ROLES)}", param="role"
        )
    if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidRequestError(
            f"display name is longer than {MAX_DISPLAY_NAME_LENGTH} characters",
            param="display_name",
        )


def invite_user(
    conn: Connection,
    actor: Actor,
    username: str,
    email: str,
    role: str,
    display_name: str,
    *,
    organization_id: int | None = None,
) -> str:
    """Create an enabled user and return their temporary password, stored only as a bcrypt hash.

    With `organization_id` the user becomes a member of that organization.
    An organization user must invite into one of their organizations, which
    is the default when they have only one. Without it a staff actor creates
    another staff user. Usernames are unique ignoring case, because
    streamlit-authenticator lowercases the name a user signs in with.
    """
    require(actor.role, "users.manage")
    if organization_id is None and actor.organization_ids is not None:
        if len(actor.organization_ids) != 1:
            raise InvalidRequestError(
                "organization_id is required: pick the organization to invite the user into",
                param="organization_id",
            )
        (organization_id,) = actor.organization_ids
    if organization_id is not None:
        access.require_organization(actor, organization_id, "users.manage")
        exists = conn.execute(
            select(organizations.c.id).where(organizations.c.id == organization_id)
        ).first()
        if exists is None:
            raise NotFoundError(
                f"organization {organization_id} not found", param="organization_id"
            )
    username, email, display_name = username.strip(), email.strip(), display_name.strip()
    check_new_user(username, email, role, display_name)
    if role == "owner" and actor.role != "owner":
        raise PermissionDeniedError("only an owner may invite another owner", code="owner_role")
    existing = conn.execute(
        select(users.c.username).where(func.lower(users.c.username) == username.lower())
    ).scalar_one_or_none()
    if existing is not None:
        raise InvalidRequestError(f"username {existing!r} is already taken", param="username")
    password = _temporary_password()
    account = {
        "username": username,
        "display_name": display_name or username,
        "email": email,
        "role": role,
        "disabled": False,
    }
    user_id = conn.execute(
        insert(users).values(password_hash=hash_password(password), **account).returning(users.c.id)
    ).scalar_one()
    if organization_id is not None:
        conn.execute(
            insert(organization_members).values(organization_id=organization_id, user_id=user_id)
        )
    after = account if organization_id is None else {**account, "organization_id": organization_id}
    _record(conn, actor, "users.invite", user_id, None, after)
    notifications.invitation(
        conn, user_id=user_id, username=username, email=email, role=role, inviter=actor.username
    )
    return password


def reset_password(conn: Connection, actor: Actor, user_id: int) -> str:
    """Give the user a new temporary password and return it. The old password stops working."""
    require(actor.role, "users.manage")
    _require_user_in_scope(conn, actor, user_id, "users.manage")
    account = _account(conn, user_id, lock=True)
    _require_owner_for(actor, account, "reset the password of")
    password = _temporary_password()
    conn.execute(
        update(users).where(users.c.id == user_id).values(password_hash=hash_password(password))
    )
    _record(conn, actor, "users.reset_password", user_id, None, {"username": account["username"]})
    return password


def set_disabled(conn: Connection, actor: Actor, user_id: int, disabled: bool) -> bool:
    """Disable or enable a user, and return False if they already were.

    A disabled user's open sessions end when the app next reloads its list
    of accounts, which it caches for up to 30 seconds.
    """
    require(actor.role, "users.manage")
    _require_user_in_scope(conn, actor, user_id, "users.manage")
    account = _account(conn, user_id, lock=True)
    _require_owner_for(actor, account, "disable or enable")
    if account["disabled"] == disabled:
        return False
    if disabled:
        if account["username"] == actor.username:
            raise InvalidRequestError("you cannot disable your own account", code="self")
        _keep_an_owner(conn, user_id, account)
    conn.execute(update(users).where(users.c.id == user_id).values(disabled=disabled))
    action = "users.disable" if disabled else "users.enable"
    _record(conn, actor, action, user_id, account, {**account, "disabled": disabled})
    return True


def change_role(conn: Connection, actor: Actor, user_id: int, role: str) -> bool:
    """Give a user another role, and return False if they already have it."""
    require(actor.role, "users.manage")
    if role not in ROLES:
        raise InvalidRequestError(
            f"invalid role {role!r}, expected one of {', '.join(ROLES)}", param="role"
        )
    _require_user_in_scope(conn, actor, user_id, "users.manage")
    account = _account(conn, user_id, lock=True)
    _require_owner_for(actor, account, "change the role of")
    if role == "owner" and actor.role != "owner":
        raise PermissionDeniedError("only an owner may grant the owner role", code="owner_role")
    if account["role"] == role:
        return False
    _keep_an_owner(conn, user_id, account)
    conn.execute(update(users).where(users.c.id == user_id).values(role=role))
    _record(conn, actor, "users.change_role", user_id, account, {**account, "role": role})
    return True


def set_team_membership(
    conn: Connection, actor: Actor, user_id: int, team_id: int, team_role: str | None
) -> bool:
    """Add a user to a team, change their team role, or remove them (None).

    Return False if the membership already was as requested.
    """
    require(actor.role, "teams.members")
    if team_role is not None and team_role not in TEAM_ROLES:
        raise InvalidRequestError(
            f"invalid team role {team_role!r}, expected one of {', '.join(TEAM_ROLES)}",
            param="team_role",
        )
    # An organization user gets the same errors for a team or user of
    # another organization as for a missing one.
    access.require_team(
        conn, actor, team_id, "teams.members", not_found=f"no team with id {team_id}"
    )
    _require_user_in_scope(conn, actor, user_id, "teams.members")
    account = _account(conn, user_id)
    team_name = conn.execute(select(teams.c.name).where(teams.c.id == team_id)).scalar_one_or_none()
    if team_name is None:
        raise NotFoundError(f"no team with id {team_id}")
    user_organizations = _user_organizations(conn, user_id)
    team_organization = access.organization_of_team(conn, team_id)
    if team_role is not None and user_organizations and team_organization not in user_organizations:
        raise InvalidRequestError(
            f"user {account['username']!r} is a member of another organization than team "
            f"{team_name!r}; invite them into that organization first",
            code="organization_mismatch",
        )
    before = conn.execute(
        select(team_members.c.role).where(
            team_members.c.user_id == user_id, team_members.c.team_id == team_id
        )
    ).scalar_one_or_none()
    if before == team_role:
        return False
    if team_role is None:
        conn.execute(
            delete(team_members).where(
                team_members.c.user_id == user_id, team_members.c.team_id == team_id
            )
        )
    else:
        statement = pg_insert(team_members).values(user_id=user_id, team_id=team_id, role=team_role)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[team_members.c.user_id, team_members.c.team_id],
                set_={"role": statement.excluded.role},
            )
        )
    membership = {"user_id": user_id, "username": account["username"], "team": team_name}
    _record(
        conn,
        actor,
        "teams.members",
        team_id,
        None if before is None else {**membership, "team_role": before},
        None if team_role is None else {**membership, "team_role": team_role},
        object_type="team",
    )
    return True


def list_memberships(conn: Connection, actor: Actor | None = None) -> list[TeamMembership]:
    """Return team memberships, or only those of teams in the actor's organizations."""
    query = (
        select(
            team_members.c.user_id,
            users.c.username,
            team_members.c.team_id,
            teams.c.name,
            team_members.c.role,
        )
        .join(users, users.c.id == team_members.c.user_id)
        .join(teams, teams.c.id == team_members.c.team_id)
        .order_by(users.c.username, teams.c.name)
    )
    if actor is not None and actor.organization_ids is not None:
        query = query.where(teams.c.organization_id.in_(actor.organization_ids))
    return [TeamMembership(*row) for row in conn.execute(query)]


def list_accounts(conn: Connection, actor: Actor | None = None) -> list[Account]:
    """Return every user, or only the members of the actor's organizations."""
    query = select(
        users.c.id,
        users.c.username,
        users.c.display_name,
        users.c.email,
        users.c.role,
        users.c.disabled,
        users.c.created_at,
    ).order_by(users.c.username)
    if actor is not None and actor.organization_ids is not None:
        members = select(organization_members.c.user_id).where(
            organization_members.c.organization_id.in_(actor.organization_ids)
        )
        query = query.where(users.c.id.in_(members))
    return [Account(*row) for row in conn.execute(query)]
