"""Concurrency limits shared by proxy processes through Postgres.

Each process leases concurrency slots of a scope from the
`rate_limit_slot_leases` table and admits requests against the slots it
holds, in memory. A request that finds every held slot busy claims one more
slot: under an advisory lock on the scope, the claim succeeds only if the
slots held by all processes stay within the limit. So the processes
together never run more requests at once than the limit allows.

A slot that has been idle for `idle_return` seconds goes back to the table,
so another process can claim it. Leases carry an expiry that a live process
keeps extending, so the slots of a process that died free themselves after
`lease_ttl` seconds. A process may therefore reject a request while another
process still has an idle slot, so a failed claim is retried once, two
`idle_return` periods later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

if TYPE_CHECKING:
    from proxy.ratelimit import Scope, SlotCheck, SlotTable

logger = logging.getLogger("gatewayz.ratelimit")

_CLAIM_SQL = """
WITH others AS (
    SELECT coalesce(sum(slots), 0) AS held FROM rate_limit_slot_leases
    WHERE scope_type = %(scope_type)s AND scope_id = %(scope_id)s
      AND holder <> %(holder)s AND expires_at > now()
)
INSERT INTO rate_limit_slot_leases AS l (scope_type, scope_id, holder, slots, expires_at)
SELECT %(scope_type)s, %(scope_id)s, %(holder)s, %(slots)s,
       now() + make_interval(secs => %(ttl)s)
FROM others WHERE others.held + %(slots)s <= %(limit)s
ON CONFLICT (scope_type, scope_id, holder) DO UPDATE
SET slots = EXCLUDED.slots, expires_at = EXCLUDED.expires_at
RETURNING l.slots
"""

_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"

_SET_SQL = """
UPDATE rate_limit_slot_leases SET slots = %(slots)s,
    expires_at = now() + make_interval(secs => %(ttl)s)
WHERE scope_type = %(scope_type)s AND scope_id = %(scope_id)s AND holder = %(holder)s
"""

_DROP_SQL = """
DELETE FROM rate_limit_slot_leases
WHERE scope_type = %(scope_type)s AND scope_id = %(scope_id)s AND holder = %(holder)s
"""

_EXTEND_SQL = """
UPDATE rate_limit_slot_leases SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE holder = %(holder)s
"""

_PRUNE_SQL = "DELETE FROM rate_limit_slot_leases WHERE expires_at < now() - interval '1 hour'"


class SlotLeases:
    """Concurrency slots leased by this process, per scope."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        table: SlotTable,
        *,
        lease_ttl: float = 30.0,
        idle_return: float = 0.2,
        timeout: float = 2.0,
    ) -> None:
        self._pool = pool
        self._table = table
        self._lease_ttl = lease_ttl
        self._idle_return = idle_return
        self._timeout = timeout
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._held: dict[Scope, int] = {}
        # Since when each scope has had more slots than requests in flight.
        self._idle_since: dict[Scope, float] = {}
        # The rate limiter's clock minus time.monotonic(), so the upkeep task
        # reads the same clock as the requests.
        self._clock_offset = 0.0
        self._locks: dict[Scope, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    def held(self, scope: Scope) -> int:
        return self._held.get(scope, 0)

    def short(self, slots: Sequence[SlotCheck], now: float) -> list[int]:
        """Return the indexes of the slot checks that need one more slot leased."""
        self._clock_offset = now - time.monotonic()
        return [
            index
            for index, slot in enumerate(slots)
            if self._table.in_flight(slot.scope, now) >= self.held(slot.scope)
        ]

    async def claim(self, slot: SlotCheck, now: float) -> bool:
        """Lease one more slot of `slot.scope`; False when the limit is reached."""
        lock = self._locks.setdefault(slot.scope, asyncio.Lock())
        async with lock:
            if self._table.in_flight(slot.scope, now) < self.held(slot.scope):
                return True
            if await self._claim_one(slot):
                self._ensure_task()
                return True
        # Another process may hold an idle slot that it gives back soon.
        await asyncio.sleep(self._idle_return * 2)
        async with lock:
            if self._table.in_flight(slot.scope, self._now()) < self.held(slot.scope):
                return True
            claimed = await self._claim_one(slot)
        if claimed:
            self._ensure_task()
        return claimed

    async def close(self) -> None:
        """Stop the upkeep task and give back every slot."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._held:
            with contextlib.suppress(psycopg.Error, PoolTimeout, OSError):
                async with self._pool.connection(timeout=self._timeout) as conn:
                    await conn.execute(
                        "DELETE FROM rate_limit_slot_leases WHERE holder = %s", (self.holder,)
                    )
        self._held.clear()

    async def _claim_one(self, slot: SlotCheck) -> bool:
        scope_type, scope_id = slot.scope
        params = {
            "scope_type": scope_type,
            "scope_id": scope_id,
            "holder": self.holder,
            "slots": self.held(slot.scope) + 1,
            "limit": slot.limit,
            "ttl": self._lease_ttl,
        }
        async with self._pool.connection(timeout=self._timeout) as conn, conn.transaction():
            await conn.execute(_LOCK_SQL, (f"slots:{scope_type}:{scope_id}",))
            row = await (await conn.execute(_CLAIM_SQL, params)).fetchone()
        if row is None:
            return False
        self._held[slot.scope] = int(row[0])
        self._idle_since.pop(slot.scope, None)
        return True

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._upkeep(), name="rate-limit-slot-leases")

    async def _upkeep(self) -> None:
        next_extend = 0.0
        next_prune = 0.0
        while True:
            await asyncio.sleep(self._idle_return / 4)
            now = self._now()
            if not self._held:
                # Nothing to give back or renew; a later claim starts a new task.
                self._task = None
                return
            try:
                await self._return_idle(now)
                if now >= next_extend and self._held:
                    await self._run(_EXTEND_SQL, {"holder": self.holder, "ttl": self._lease_ttl})
                    next_extend = now + self._lease_ttl / 3
                if now >= next_prune:
                    await self._run(_PRUNE_SQL, {})
                    next_prune = now + 300
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                # Slots stay held locally; their leases expire if this keeps failing.
                logger.warning("concurrency slot upkeep failed (%s); retrying", exc)

    async def _return_idle(self, now: float) -> None:
        for scope in list(self._held):
            if self._table.in_flight(scope, now) >= self.held(scope):
                self._idle_since.pop(scope, None)
                continue
            since = self._idle_since.setdefault(scope, now)
            if now - since < self._idle_return:
                continue
            lock = self._locks.setdefault(scope, asyncio.Lock())
            async with lock:
                in_flight = self._table.in_flight(scope, now)
                # Lowered before the write, so no request is admitted against
                # a slot while it is being given back.
                if in_flight == 0:
                    self._held.pop(scope, None)
                else:
                    self._held[scope] = in_flight
                self._idle_since.pop(scope, None)
                params = {
                    "scope_type": scope[0],
                    "scope_id": scope[1],
                    "holder": self.holder,
                    "slots": in_flight,
                    "ttl": self._lease_ttl,
                }
                await self._run(_DROP_SQL if in_flight == 0 else _SET_SQL, params)

    async def _run(self, query: str, params: dict[str, object]) -> None:
        async with self._pool.connection(timeout=self._timeout) as conn:
            await conn.execute(query, params)
