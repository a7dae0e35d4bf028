"""Background task that keeps the coming monthly usage partitions created.

Migrations create them too, but a proxy that runs for months without a
migration would otherwise send new rows to the DEFAULT partition, which
later makes creating that month's partition move them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway_core.usage_partitions import MONTHS_AHEAD

logger = logging.getLogger("gatewayz.partitions")


class PartitionKeeper:
    def __init__(self, pool: AsyncConnectionPool, *, interval: float = 3600.0) -> None:
        self._pool = pool
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-partitions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def ensure(self) -> int:
        """Create missing partitions of this month and the next ones; return how many."""
        async with self._pool.connection(timeout=5.0) as conn:
            cursor = await conn.execute(
                "SELECT usage_events_ensure_partitions(%s)", (MONTHS_AHEAD,)
            )
            row = await cursor.fetchone()
        created = int(row[0]) if row else 0
        if created:
            logger.info("created %d usage partitions", created)
        return created

    async def _run(self) -> None:
        while True:
            try:
                await self.ensure()
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                logger.warning("creating usage partitions failed (%s); retrying later", exc)
            await asyncio.sleep(self._interval)
