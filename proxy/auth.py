"""API key verification with a short per-worker cache.

A verified key is cached for `ttl` seconds. Revocations are also pushed by
Postgres NOTIFY on `keys.REVOCATION_CHANNEL`, which evicts the entry at once;
the TTL bounds the delay if a notification is missed while reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway_core.errors import (
    AuthenticationError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from gateway_core.keys import REVOCATION_CHANNEL, hash_key, looks_like_key
from proxy.context import KeyIdentity
from proxy.key_policy import KeyPolicy, parse_networks

logger = logging.getLogger("gatewayz.auth")

_LOOKUP = (
    "SELECT k.id, k.team_id, t.organization_id, k.mode, k.project_id, "
    "k.revoked_at IS NOT NULL, k.key_hash, k.expires_at, k.allowed_models, "
    "k.allowed_endpoints, k.allowed_ips::text[], k.allowed_referrers, k.tags, k.metadata "
    "FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.key_hash = %s"
)


def bearer_token(authorization: str | None, api_key_header: str | None) -> str:
    """Return the key from `Authorization: Bearer` or Anthropic's `x-api-key`."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthenticationError(
            "invalid Authorization header: use 'Authorization: Bearer gw_...'",
            code="invalid_authorization_header",
        )
    if api_key_header:
        return api_key_header.strip()
    raise AuthenticationError(
        "missing API key: send it as 'Authorization: Bearer gw_...'", code="missing_api_key"
    )


def policy_of(row: Any) -> KeyPolicy:
    expires_at, models, endpoints, networks, referrers, tags, metadata = row[7:14]
    return KeyPolicy(
        expires_at=expires_at,
        allowed_models=tuple(models) if models is not None else None,
        allowed_endpoints=frozenset(endpoints) if endpoints is not None else None,
        allowed_networks=parse_networks(networks),
        allowed_referrers=tuple(r.lower() for r in referrers) if referrers is not None else None,
        tags=tuple(tags or ()),
        metadata=dict(metadata or {}),
    )


class KeyVerifier:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        secret: bytes,
        ttl: float = 1.0,
        stale_grace: float = 60.0,
    ) -> None:
        self._pool = pool
        self._secret = secret
        self._ttl = ttl
        # Seconds past expiry that a cached key is still accepted while the
        # database cannot be reached.
        self._stale_grace = stale_grace
        self._cache: dict[bytes, tuple[float, KeyIdentity]] = {}
        # Lookups in flight, by key digest.
        self._pending: dict[bytes, asyncio.Future[KeyIdentity]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def verify(self, token: str) -> KeyIdentity:
        if not looks_like_key(token):
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        digest = hash_key(self._secret, token)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(digest)
        if pending is not None:
            # Another request is looking this key up; share its result rather
            # than sending the same query once per concurrent request.
            return await asyncio.shield(pending)
        lookup = asyncio.ensure_future(self._lookup(digest, cached, now))
        self._pending[digest] = lookup
        lookup.add_done_callback(functools.partial(self._lookup_done, digest))
        return await asyncio.shield(lookup)

    def _lookup_done(self, digest: bytes, lookup: asyncio.Future[KeyIdentity]) -> None:
        del self._pending[digest]
        # Every request that waited may have been cancelled; reading the
        # error here keeps asyncio from logging it as never retrieved.
        if not lookup.cancelled():
            lookup.exception()

    async def _lookup(
        self, digest: bytes, cached: tuple[float, KeyIdentity] | None, now: float
    ) -> KeyIdentity:
        try:
            async with self._pool.connection(timeout=5.0) as conn:
                row = await (await conn.execute(_LOOKUP, (digest,))).fetchone()
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            if cached is not None and now - cached[0] < self._stale_grace:
                # With the database away, a key verified shortly before keeps
                # working; revocations cannot arrive until it is back.
                return cached[1]
            logger.warning("key lookup failed: %s", exc)
            raise ServiceUnavailableError(
                "the API key cannot be verified because the gateway's database is "
                "unavailable; retry shortly",
                code="auth_unavailable",
            ) from exc
        # The index lookup already matched the digest; comparing again in
        # constant time keeps the check independent of how the row was found.
        if row is None or not hmac.compare_digest(bytes(row[6]), digest):
            self._cache.pop(digest, None)
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        key_id, team_id, organization_id, mode, project_id, revoked = row[:6]
        identity = KeyIdentity(key_id, team_id, organization_id, mode, project_id, policy_of(row))
        if revoked:
            self._cache.pop(digest, None)
            error = PermissionDeniedError(
                f"API key {key_id} has been revoked; ask an admin for a new key",
                code="api_key_revoked",
            )
            error.identity = identity
            raise error
        self._cache[digest] = (now + self._ttl, identity)
        return identity

    def evict(self, digest: bytes) -> None:
        self._cache.pop(digest, None)

    def start_listener(self, conninfo: str) -> None:
        self._listener = asyncio.create_task(self._listen(conninfo), name="key-revocations")

    async def stop_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self, conninfo: str) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {REVOCATION_CHANNEL}")
                    async for notify in conn.notifies():
                        try:
                            self.evict(bytes.fromhex(notify.payload))
                        except ValueError:
                            logger.warning("ignored malformed revocation notice")
            except asyncio.CancelledError:
                raise
            except psycopg.Error as exc:
                # A revocation missed meanwhile still takes effect when the
                # cached entry expires, within the cache TTL.
                logger.warning("revocation listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
