"""Organizations, teams and the people who sign in to the app."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import bcrypt
from sqlalchemy import Connection, func, insert, select

from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import api_keys, organizations, projects, teams, users

DEFAULT_ORGANIZATION = "Default"
ROLES = ("owner", "admin", "team_admin", "researcher", "viewer", "billing")


@dataclass(frozen=True)
class Team:
    id: int
    organization_id: int
    name: str


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    email: str
    password_hash: str
    role: str
    disabled: bool


def ensure_organization(conn: Connection, name: str = DEFAULT_ORGANIZATION) -> int:
    """Return the id of the named organization, creating it if needed."""
    existing = conn.execute(
        select(organizations.c.id).where(organizations.c.name == name)
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    return conn.execute(
        insert(organizations).values(name=name).returning(organizations.c.id)
    ).scalar_one()


def create_team(conn: Connection, name: str, organization: str = DEFAULT_ORGANIZATION) -> Team:
    name = name.strip()
    if not name:
        raise InvalidRequestError("team name must not be empty", param="name")
    organization_id = ensure_organization(conn, organization)
    duplicate = conn.execute(
        select(teams.c.id).where(teams.c.organization_id == organization_id, teams.c.name == name)
    ).first()
    if duplicate is not None:
        raise InvalidRequestError(
            f"team {name!r} already exists in organization {organization!r}", param="name"
        )
    team_id = conn.execute(
        insert(teams).values(organization_id=organization_id, name=name).returning(teams.c.id)
    ).scalar_one()
    return Team(team_id, organization_id, name)


def get_team(conn: Connection, name: str, organization: str = DEFAULT_ORGANIZATION) -> Team:
    row = conn.execute(
        select(teams.c.id, teams.c.organization_id, teams.c.name)
        .join(organizations, organizations.c.id == teams.c.organization_id)
        .where(teams.c.name == name, organizations.c.name == organization)
    ).first()
    if row is None:
        raise NotFoundError(
            f"no team named {name!r} in organization {organization!r}; "
            "create it with `python -m gateway_core teams create NAME`"
        )
    return Team(*row)


@dataclass(frozen=True)
class Project:
    id: int
    team_id: int
    name: str


def create_project(
    conn: Connection,
    team_id: int,
    name: str,
    *,
    principal_investigator: str | None = None,
    cost_centre: str | None = None,
) -> Project:
    name = name.strip()
    if not name:
        raise InvalidRequestError("project name must not be empty", param="name")
    duplicate = conn.execute(
        select(projects.c.id).where(projects.c.team_id == team_id, projects.c.name == name)
    ).first()
    if duplicate is not None:
        raise InvalidRequestError(f"project {name!r} already exists in team {team_id}")
    project_id = conn.execute(
        insert(projects)
        .values(
            team_id=team_id,
            name=name,
            principal_investigator=principal_investigator,
            cost_centre=cost_centre,
        )
        .returning(projects.c.id)
    ).scalar_one()
    return Project(project_id, team_id, name)


def list_projects(conn: Connection, team_id: int | None = None) -> list[Project]:
    query = select(projects.c.id, projects.c.team_id, projects.c.name).order_by(projects.c.name)
    if team_id is not None:
        query = query.where(projects.c.team_id == team_id)
    return [Project(*row) for row in conn.execute(query)]


def directory_version(conn: Connection) -> tuple[int, ...]:
    """Return the count and highest id of organizations, teams, projects and API keys.

    The tuple changes whenever one of them is added or deleted, so pages key
    their cached name lists by it. A rename leaves it unchanged.
    """
    columns = []
    for table in (organizations, teams, projects, api_keys):
        columns.append(select(func.count()).select_from(table).scalar_subquery())
        columns.append(select(func.coalesce(func.max(table.c.id), 0)).scalar_subquery())
    return tuple(int(value) for value in conn.execute(select(*columns)).one())


def list_teams(conn: Connection) -> list[Team]:
    rows = conn.execute(
        select(teams.c.id, teams.c.organization_id, teams.c.name).order_by(teams.c.name)
    )
    return [Team(*row) for row in rows]


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def create_user(
    conn: Connection,
    *,
    username: str,
    password: str,
    role: str,
    display_name: str | None = None,
    email: str = "",
) -> int:
    if role not in ROLES:
        raise InvalidRequestError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    return conn.execute(
        insert(users)
        .values(
            username=username,
            display_name=display_name or username,
            email=email,
            password_hash=hash_password(password),
            role=role,
        )
        .returning(users.c.id)
    ).scalar_one()


def ensure_first_admin(conn: Connection, username: str = "admin") -> str | None:
    """Create the first admin if there are no users; return its new password.

    The password is generated here, returned once to be printed, and stored
    only as a bcrypt hash. Returns None when users already exist.
    """
    if conn.execute(select(func.count()).select_from(users)).scalar_one() > 0:
        return None
    password = secrets.token_urlsafe(12)
    create_user(
        conn, username=username, password=password, role="owner", display_name="Administrator"
    )
    ensure_organization(conn)
    return password


def list_users(conn: Connection) -> list[User]:
    rows = conn.execute(
        select(
            users.c.id,
            users.c.username,
            users.c.display_name,
            users.c.email,
            users.c.password_hash,
            users.c.role,
            users.c.disabled,
        ).order_by(users.c.id)
    )
    return [User(*row) for row in rows]
