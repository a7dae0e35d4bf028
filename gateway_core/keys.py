"""API keys: generation, hashing, storage and revocation.

A key is `gw_live_` or `gw_test_` followed by 43 URL-safe characters
(32 random bytes). Postgres stores only HMAC-SHA256(secret, key), a display
prefix and the last four characters; the key itself exists only in the
response that created it.

`create_key` rejects a live key for an organization that `live_keys` does
not allow yet, and queues a key-created email in the caller's transaction.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from gateway_core import live_keys, notifications
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import api_keys, projects, teams

KEY_PREFIXES = {"live": "gw_live_", "test": "gw_test_"}
KEY_RANDOM_BYTES = 32
# Postgres channel on which revocations are announced to proxy workers.
REVOCATION_CHANNEL = "gatewayz_key_revoked"


@dataclass(frozen=True)
class IssuedKey:
    id: int
    team_id: int
    name: str
    mode: str
    prefix: str
    last4: str
    # The plain key; shown once to the person who asked for it.
    secret: str


@dataclass(frozen=True)
class KeySummary:
    id: int
    team_id: int
    team_name: str
    name: str
    mode: str
    prefix: str
    last4: str
    created_at: datetime
    revoked_at: datetime | None
    # None for a key that counts for its team only.
    project_name: str | None = None


def hash_key(secret: bytes, key: str) -> bytes:
    return hmac.digest(secret, key.encode(), "sha256")


def generate_key(mode: str) -> str:
    if mode not in KEY_PREFIXES:
        raise ValueError(f"key mode must be 'live' or 'test', got {mode!r}")
    return KEY_PREFIXES[mode] + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def looks_like_key(candidate: str) -> bool:
    return candidate.startswith(("gw_live_", "gw_test_")) and len(candidate) < 200


def create_key(
    conn: Connection,
    secret: bytes,
    *,
    team_id: int,
    name: str,
    mode: str = "live",
    created_by: str | None = None,
    project_id: int | None = None,
    notify: bool = True,
) -> IssuedKey:
    """Insert a new key for a team (and optionally one of its projects) and return it.

    Raises PermissionDeniedError for a live key of an organization that may
    not create live keys yet. With `notify`, queues a key-created email.
    """
    if mode == "live":
        live_keys.check_team(conn, team_id)
    if project_id is not None:
        owner = conn.execute(
            select(projects.c.team_id).where(projects.c.id == project_id)
        ).scalar_one_or_none()
        if owner != team_id:
            raise InvalidRequestError(f"project {project_id} does not belong to team {team_id}")
    plain = generate_key(mode)
    prefix = plain[: len(KEY_PREFIXES[mode]) + 4]
    last4 = plain[-4:]
    key_id = conn.execute(
        insert(api_keys)
        .values(
            team_id=team_id,
            project_id=project_id,
            name=name,
            key_hash=hash_key(secret, plain),
            prefix=prefix,
            last4=last4,
            mode=mode,
            created_by=created_by,
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    if notify:
        notifications.key_created(
            conn,
            key_id=key_id,
            team_id=team_id,
            key_name=name,
            mode=mode,
            key_prefix=prefix,
            key_last4=last4,
            created_by=created_by,
        )
    return IssuedKey(key_id, team_id, name, mode, prefix, last4, plain)


def revoke_key(conn: Connection, key_id: int) -> bool:
    """Revoke a key and tell proxy workers at commit; False if it was not active."""
    key_hash = conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=text("now()"))
        .returning(api_keys.c.key_hash)
    ).scalar_one_or_none()
    if key_hash is None:
        exists = conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id)).first()
        if exists is None:
            raise NotFoundError(f"no API key with id {key_id}")
        return False
    conn.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": REVOCATION_CHANNEL, "payload": key_hash.hex()},
    )
    return True


def list_keys(conn: Connection, team_id: int | None = None) -> list[KeySummary]:
    query = (
        select(
            api_keys.c.id,
            api_keys.c.team_id,
            teams.c.name.label("team_name"),
            api_keys.c.name,
            api_keys.c.mode,
            api_keys.c.prefix,
            api_keys.c.last4,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
            projects.c.name.label("project_name"),
        )
        .join(teams, teams.c.id == api_keys.c.team_id)
        .outerjoin(projects, projects.c.id == api_keys.c.project_id)
        .order_by(api_keys.c.id)
    )
    if team_id is not None:
        query = query.where(api_keys.c.team_id == team_id)
    return [KeySummary(**row._mapping) for row in conn.execute(query)]


# Fields of set_key_policy and the api_keys columns they write.
POLICY_FIELDS = (
    "expires_at",
    "allowed_models",
    "allowed_endpoints",
    "allowed_ips",
    "allowed_referrers",
    "tags",
    "metadata",
)
ENDPOINTS = frozenset({"chat", "completions", "embeddings", "images", "responses", "messages"})


def check_policy(values: dict[str, Any]) -> dict[str, Any]:
    """Validate key restrictions; raise InvalidRequestError naming the bad value."""
    unknown = set(values) - set(POLICY_FIELDS)
    if unknown:
        raise InvalidRequestError(f"unknown key settings: {', '.join(sorted(unknown))}")
    checked = dict(values)
    expires_at = checked.get("expires_at")
    if expires_at is not None and (
        not isinstance(expires_at, datetime) or expires_at.tzinfo is None
    ):
        raise InvalidRequestError("expires_at must be a datetime with a time zone")
    endpoints = checked.get("allowed_endpoints")
    if endpoints is not None:
        bad = set(endpoints) - ENDPOINTS
        if bad:
            raise InvalidRequestError(
                f"unknown endpoints {sorted(bad)}; use {', '.join(sorted(ENDPOINTS))}",
                param="allowed_endpoints",
            )
    networks = checked.get("allowed_ips")
    if networks is not None:
        try:
            checked["allowed_ips"] = [
                str(ipaddress.ip_network(value, strict=False)) for value in networks
            ]
        except ValueError as exc:
            raise InvalidRequestError(f"invalid network: {exc}", param="allowed_ips") from exc
    referrers = checked.get("allowed_referrers")
    if referrers is not None:
        checked["allowed_referrers"] = [value.strip().lower() for value in referrers]
    if "tags" in checked and checked["tags"] is None:
        checked["tags"] = []
    if "metadata" in checked:
        metadata = checked["metadata"] or {}
        if not isinstance(metadata, dict):
            raise InvalidRequestError("metadata must be an object", param="metadata")
        checked["metadata"] = metadata
    return checked


def set_key_policy(conn: Connection, key_id: int, **values: Any) -> None:
    """Change a key's restrictions; proxy workers drop their cached copy at commit."""
    checked = check_policy(values)
    key_hash = conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id)
        .values(**checked)
        .returning(api_keys.c.key_hash)
    ).scalar_one_or_none()
    if key_hash is None:
        raise NotFoundError(f"no API key with id {key_id}")
    conn.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": REVOCATION_CHANNEL, "payload": key_hash.hex()},
    )


def rotate_key(
    conn: Connection,
    secret: bytes,
    key_id: int,
    *,
    grace: timedelta = timedelta(hours=24),
    created_by: str | None = None,
) -> IssuedKey:
    """Issue a replacement key with the same settings; the old one works until the grace ends."""
    old = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
    if old is None:
        raise NotFoundError(f"no API key with id {key_id}")
    if old.revoked_at is not None:
        raise InvalidRequestError(f"API key {key_id} is revoked and cannot be rotated")
    issued = create_key(
        conn,
        secret,
        team_id=old.team_id,
        name=old.name,
        mode=old.mode,
        created_by=created_by,
        project_id=old.project_id,
    )
    copied = {field: getattr(old, field) for field in POLICY_FIELDS}
    conn.execute(
        update(api_keys).where(api_keys.c.id == issued.id).values(rotated_from=key_id, **copied)
    )
    grace_end = datetime.now(UTC) + grace
    if old.expires_at is None or old.expires_at > grace_end:
        set_key_policy(conn, key_id, expires_at=grace_end)
    return issued
