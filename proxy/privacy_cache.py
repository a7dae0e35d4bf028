"""Body-storage settings per scope and each organization's redactor, cached per worker."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway_core.privacy import Redactor
from proxy.context import KeyIdentity
from proxy.reloading import reload_once
from proxy.spend import scopes_of

logger = logging.getLogger("gatewayz.privacy")

_SETTINGS = "SELECT scope_type, scope_id, log_bodies FROM privacy_settings"
_PATTERNS = "SELECT organization_id, pattern FROM redaction_patterns"


class PrivacyCache:
    def __init__(self, pool: AsyncConnectionPool, refresh_interval: float = 2.0) -> None:
        self._pool = pool
        self._refresh_interval = refresh_interval
        self._log_bodies: dict[tuple[str, int], bool] = {}
        self._redactors: dict[int, Redactor] = {}
        self._default = Redactor.build()
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        async with self._pool.connection(timeout=5.0) as conn:
            settings = await (await conn.execute(_SETTINGS)).fetchall()
            patterns = await (await conn.execute(_PATTERNS)).fetchall()
        self._log_bodies = {(row[0], row[1]): row[2] for row in settings}
        extra: dict[int, list[str]] = {}
        for organization_id, pattern in patterns:
            try:
                re.compile(pattern)
            except re.error:
                logger.error("organization %s has an invalid redaction pattern", organization_id)
                continue
            extra.setdefault(organization_id, []).append(pattern)
        self._redactors = {org: Redactor.build(items) for org, items in extra.items()}
        self._loaded_at = time.monotonic()

    async def logs_bodies(self, identity: KeyIdentity) -> bool:
        """Return whether this key's calls store bodies; the most specific setting wins."""
        if time.monotonic() - self._loaded_at > self._refresh_interval:
            try:
                await reload_once(self._lock, self.refresh)
            except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
                self._loaded_at = time.monotonic()
                logger.warning("privacy settings not reloaded (%s); using the last ones", exc)
        for scope in scopes_of(identity):
            setting = self._log_bodies.get(scope)
            if setting is not None:
                return setting
        return False

    def redact(self, organization_id: int, value: Any) -> Any:
        return self._redactors.get(organization_id, self._default).redact(value)
