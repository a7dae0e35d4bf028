"""Admin API authentication, role checks and audit records.

Each request is checked against `admin_keys` in Postgres, without a cache,
so a revoked admin key stops working at the next request.

NOTE: failed admin authentication is logged but not rate-limited, so a client
that repeats invalid keys costs one Postgres query per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine

from gateway_core import audit
from gateway_core.admin_keys import ADMIN_ROLES, AdminIdentity, require_role, verify_admin_key
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import AuthenticationError, PermissionDeniedError
from proxy.key_policy import client_address

logger = logging.getLogger("gatewayz.admin")

READER_ROLES = frozenset(ADMIN_ROLES)
# Organizations, teams, projects and API keys.
DIRECTORY_ROLES = frozenset({"owner", "admin"})
# Budgets and rate limits.
SPENDING_ROLES = frozenset({"owner", "admin", "billing"})

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="An admin key, `gw_admin_...`, created with `python -m gateway_core admin-keys`.",
)


@dataclass(frozen=True)
class AdminContext:
    """The authenticated admin key of a request, and what its handler needs."""

    identity: AdminIdentity
    engine: Engine
    # The server secret that admin and API keys are hashed under; kept out of repr.
    secret: bytes = field(repr=False)
    client_address: str | None = None

    def audit(
        self,
        conn: Connection,
        action: str,
        object_type: str,
        object_id: int | str | None,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit entry in the transaction of `conn`, and log the action."""
        audit.record(
            conn,
            actor=self.identity.actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            before=before,
            after=after,
            client_address=self.client_address,
        )
        logger.info("admin key %s: %s %s %s", self.identity.id, action, object_type, object_id)


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> AdminContext:
    settings: Settings = request.app.state.settings
    address = None
    if request.client is not None:
        found = client_address(
            request.client.host,
            request.headers.get("x-forwarded-for"),
            settings.trusted_proxies,
        )
        address = None if found is None else str(found)
    if credentials is None:
        raise AuthenticationError(
            "missing admin key: send it as 'Authorization: Bearer gw_admin_...'",
            code="missing_admin_key",
        )
    engine = get_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            identity = verify_admin_key(conn, settings.secret, credentials.credentials)
    except (AuthenticationError, PermissionDeniedError) as exc:
        logger.info("rejected an admin key from %s: %s", address, exc.code)
        raise
    return AdminContext(identity, engine, settings.secret, address)


def _checker(allowed: frozenset[str]) -> Callable[..., AdminContext]:
    def check(
        request: Request, context: Annotated[AdminContext, Depends(authenticate)]
    ) -> AdminContext:
        require_role(context.identity, allowed, f"{request.method} {request.url.path}")
        return context

    return check


Reader = Annotated[AdminContext, Depends(_checker(READER_ROLES))]
DirectoryWriter = Annotated[AdminContext, Depends(_checker(DIRECTORY_ROLES))]
SpendingWriter = Annotated[AdminContext, Depends(_checker(SPENDING_ROLES))]
