"""Organizations, teams and API keys as the admin app changes them: role-checked and audited.

Each function checks the actor's role and organizations with gateway_core.access before
it writes, then appends an audit entry in the caller's transaction, so the
entry commits or rolls back with the change. Audit entries show a key by
its prefix and last four characters, never the key or its hash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from gateway_core import access, audit, directory, keys, provisioning
from gateway_core.access import Actor
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import api_keys, organizations


def _record(
    conn: Connection,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: int,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
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


def visible_teams(conn: Connection, actor: Actor) -> list[directory.Team]:
    """Return the teams whose keys the actor may manage, by name."""
    access.require(actor.role, "keys.create")
    all_teams = [team for team in directory.list_teams(conn) if actor.may_see(team.organization_id)]
    if actor.role not in access.TEAM_SCOPED_ROLES:
        return all_teams
    administered = access.administered_team_ids(conn, actor.username)
    return [team for team in all_teams if team.id in administered]


def create_organization(
    conn: Connection,
    actor: Actor,
    name: str,
    *,
    timezone: str,
    trial_usd: Decimal,
    trial_days: int = provisioning.DEFAULT_TRIAL_DAYS,
) -> int:
    """Create an organization and return its id.

    A positive `trial_usd` grants trial credit that expires after `trial_days`
    days, and makes the organization credit-metered (see
    provisioning.create_organization).
    """
    access.require_actor(actor, "organizations.create")
    organization_id = provisioning.create_organization(
        conn,
        name,
        timezone=timezone,
        trial_usd=trial_usd,
        trial_days=trial_days,
        actor=actor.username,
    )
    after: dict[str, Any] = {"name": name.strip(), "timezone": timezone, "trial_usd": trial_usd}
    if trial_usd > 0:
        after["trial_days"] = trial_days
    _record(conn, actor, "organizations.create", "organization", organization_id, None, after)
    return organization_id


def create_team(
    conn: Connection, actor: Actor, name: str, organization_id: int | None = None
) -> directory.Team:
    """Create a team in an organization, by default the Default organization.

    An organization user must name one of their organizations.
    """
    if organization_id is None and not actor.is_staff:
        raise InvalidRequestError(
            "organization_id is required: pick one of your organizations",
            param="organization_id",
        )
    access.require_organization(actor, organization_id, "teams.create")
    if organization_id is None:
        team = directory.create_team(conn, name)
    else:
        organization = conn.execute(
            select(organizations.c.name).where(organizations.c.id == organization_id)
        ).scalar_one_or_none()
        if organization is None:
            raise NotFoundError(
                f"organization {organization_id} not found", param="organization_id"
            )
        team = directory.create_team(conn, name, organization)
    after = {"name": team.name, "organization_id": team.organization_id}
    _record(conn, actor, "teams.create", "team", team.id, None, after)
    return team


def create_key(
    conn: Connection,
    secret: bytes,
    actor: Actor,
    *,
    team_id: int,
    name: str,
    mode: str = "live",
    project_id: int | None = None,
) -> keys.IssuedKey:
    """Create a key for a team the actor may manage and return it with its plain secret."""
    access.require_team(conn, actor, team_id, "keys.create")
    issued = keys.create_key(
        conn,
        secret,
        team_id=team_id,
        name=name,
        mode=mode,
        created_by=actor.username,
        project_id=project_id,
    )
    after = {
        "team_id": team_id,
        "project_id": project_id,
        "name": issued.name,
        "mode": issued.mode,
        "prefix": issued.prefix,
        "last4": issued.last4,
    }
    _record(conn, actor, "keys.create", "api_key", issued.id, None, after)
    return issued


def _key_row(conn: Connection, key_id: int) -> Any:
    columns = [api_keys.c.team_id, api_keys.c.name, api_keys.c.prefix, api_keys.c.last4]
    columns += [api_keys.c.revoked_at, *(api_keys.c[field] for field in keys.POLICY_FIELDS)]
    row = conn.execute(select(*columns).where(api_keys.c.id == key_id).with_for_update()).first()
    if row is None:
        raise NotFoundError(f"no API key with id {key_id}")
    return row


def _require_key(conn: Connection, actor: Actor, key_id: int, team_id: int, action: str) -> None:
    """Check the actor may take `action` on the key of `team_id`.

    A key of another organization raises the NotFoundError of a missing key.
    """
    access.require_team(conn, actor, team_id, action, not_found=f"no API key with id {key_id}")


def key_policy(conn: Connection, actor: Actor, key_id: int) -> dict[str, Any]:
    """Return a key's restrictions, keyed by keys.POLICY_FIELDS, for a team the actor manages."""
    access.require_actor(actor, "keys.policy")
    columns = [api_keys.c.team_id, *(api_keys.c[field] for field in keys.POLICY_FIELDS)]
    row = conn.execute(select(*columns).where(api_keys.c.id == key_id)).first()
    if row is None:
        raise NotFoundError(f"no API key with id {key_id}")
    _require_key(conn, actor, key_id, row.team_id, "keys.policy")
    return {field: row._mapping[field] for field in keys.POLICY_FIELDS}


def revoke_key(conn: Connection, actor: Actor, key_id: int) -> bool:
    """Revoke a key of a team the actor may manage, and return False if it already was."""
    access.require_actor(actor, "keys.revoke")
    row = _key_row(conn, key_id)
    _require_key(conn, actor, key_id, row.team_id, "keys.revoke")
    if not keys.revoke_key(conn, key_id):
        return False
    label = {"team_id": row.team_id, "name": row.name, "prefix": row.prefix, "last4": row.last4}
    before = {**label, "revoked_at": None}
    after = {**label, "revoked_at": datetime.now(UTC)}
    _record(conn, actor, "keys.revoke", "api_key", key_id, before, after)
    return True


def set_key_policy(conn: Connection, actor: Actor, key_id: int, **values: Any) -> None:
    """Change a key's restrictions (see keys.POLICY_FIELDS) and audit the fields that changed."""
    access.require_actor(actor, "keys.policy")
    row = _key_row(conn, key_id)
    _require_key(conn, actor, key_id, row.team_id, "keys.policy")
    checked = keys.check_policy(values)
    keys.set_key_policy(conn, key_id, **checked)
    before = {field: row._mapping[field] for field in checked}
    after = _key_row(conn, key_id)
    after_values = {field: after._mapping[field] for field in checked}
    changed = [field for field in checked if before[field] != after_values[field]]
    if not changed:
        return
    _record(
        conn,
        actor,
        "keys.policy",
        "api_key",
        key_id,
        {field: before[field] for field in changed},
        {field: after_values[field] for field in changed},
    )
