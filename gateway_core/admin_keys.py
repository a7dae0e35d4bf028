"""Admin keys: credentials for the admin API at /admin.

An admin key is `gw_admin_` followed by 43 URL-safe characters (32 random
bytes). Like API keys, Postgres stores only HMAC-SHA256(server secret, key),
a display prefix and the last four characters, so the key itself exists only
in the output of the command that created it.

Roles, from most to least rights in the admin API:

- owner and admin: everything (organizations, teams, projects, keys,
  budgets, rate limits, usage).
- billing: budgets and rate limits, and every read.
- viewer: reads only.

An admin key applies to the whole installation: it is not limited to one
organization.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, text, update

from gateway_core.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from gateway_core.keys import KEY_RANDOM_BYTES, hash_key
from gateway_core.schema import admin_keys

ADMIN_KEY_PREFIX = "gw_admin_"
ADMIN_ROLES = ("owner", "admin", "billing", "viewer")
# Longer than any key this module generates; longer tokens are rejected unhashed.
MAX_TOKEN_LENGTH = 200
# Keeps the audit actor "admin_key:ID:NAME" within the 100 characters of created_by columns.
MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class AdminIdentity:
    """The admin key that authenticated a request."""

    id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        """Return the name under which this key's actions are written to the audit log."""
        return f"admin_key:{self.id}:{self.name}"


@dataclass(frozen=True)
class IssuedAdminKey:
    id: int
    name: str
    role: str
    prefix: str
    last4: str
    # The plain key; shown once to the operator who created it.
    secret: str


@dataclass(frozen=True)
class AdminKeySummary:
    id: int
    name: str
    role: str
    prefix: str
    last4: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None


def check_role(role: str) -> str:
    if role not in ADMIN_ROLES:
        raise InvalidRequestError(
            f"admin key role must be one of {', '.join(ADMIN_ROLES)}; got {role!r}", param="role"
        )
    return role


def create_admin_key(
    conn: Connection, secret: bytes, *, name: str, role: str, created_by: str | None = None
) -> IssuedAdminKey:
    """Insert a new admin key and return it with its plain secret."""
    check_role(role)
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"admin key name must be 1 to {MAX_NAME_LENGTH} characters; got {len(name)}",
            param="name",
        )
    plain = ADMIN_KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    prefix = plain[: len(ADMIN_KEY_PREFIX) + 4]
    last4 = plain[-4:]
    key_id = conn.execute(
        insert(admin_keys)
        .values(
            name=name,
            key_hash=hash_key(secret, plain),
            prefix=prefix,
            last4=last4,
            role=role,
            created_by=created_by,
        )
        .returning(admin_keys.c.id)
    ).scalar_one()
    return IssuedAdminKey(key_id, name, role, prefix, last4, plain)


def revoke_admin_key(conn: Connection, key_id: int) -> bool:
    """Revoke an admin key at once; return False when it was already revoked."""
    revoked = conn.execute(
        update(admin_keys)
        .where(admin_keys.c.id == key_id, admin_keys.c.revoked_at.is_(None))
        .values(revoked_at=text("now()"))
        .returning(admin_keys.c.id)
    ).scalar_one_or_none()
    if revoked is not None:
        return True
    if conn.execute(select(admin_keys.c.id).where(admin_keys.c.id == key_id)).first() is None:
        raise NotFoundError(f"no admin key with id {key_id}")
    return False


def list_admin_keys(conn: Connection) -> list[AdminKeySummary]:
    rows = conn.execute(
        select(
            admin_keys.c.id,
            admin_keys.c.name,
            admin_keys.c.role,
            admin_keys.c.prefix,
            admin_keys.c.last4,
            admin_keys.c.created_by,
            admin_keys.c.created_at,
            admin_keys.c.revoked_at,
        ).order_by(admin_keys.c.id)
    )
    return [AdminKeySummary(**row._mapping) for row in rows]


def verify_admin_key(conn: Connection, secret: bytes, token: str) -> AdminIdentity:
    """Return the identity of an active admin key.

    Raises AuthenticationError (401) for a token that is not an admin key and
    PermissionDeniedError (403) for a revoked one.
    """
    if not token.startswith(ADMIN_KEY_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationError(
            "invalid admin key: expected 'Authorization: Bearer gw_admin_...'",
            code="invalid_admin_key",
        )
    digest = hash_key(secret, token)
    row = conn.execute(
        select(
            admin_keys.c.id,
            admin_keys.c.name,
            admin_keys.c.role,
            admin_keys.c.key_hash,
            admin_keys.c.revoked_at,
        ).where(admin_keys.c.key_hash == digest)
    ).first()
    # The index lookup already matched the digest; comparing again in constant
    # time keeps the check independent of how the row was found.
    if row is None or not hmac.compare_digest(bytes(row.key_hash), digest):
        raise AuthenticationError("invalid admin key", code="invalid_admin_key")
    if row.revoked_at is not None:
        raise PermissionDeniedError(
            f"admin key {row.id} has been revoked; ask an owner for a new one",
            code="admin_key_revoked",
        )
    return AdminIdentity(row.id, row.name, row.role)


def require_role(identity: AdminIdentity, allowed: frozenset[str], action: str) -> None:
    """Raise PermissionDeniedError unless the key's role is one of `allowed`."""
    if identity.role not in allowed:
        roles = ", ".join(role for role in ADMIN_ROLES if role in allowed)
        raise PermissionDeniedError(
            f"admin key {identity.id} has role {identity.role!r}, but {action} "
            f"needs one of: {roles}",
            code="insufficient_role",
        )
