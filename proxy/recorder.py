"""Usage recorder: writes one row per call to Postgres, off the request path.

Rows are buffered in memory and written in batches with COPY into a
temporary table followed by INSERT ... ON CONFLICT (request_id) DO NOTHING,
so a batch retried after a lost connection never writes a row twice.
When the buffer holds `max_pending` rows, `wait_for_capacity` makes new
requests wait: a slow database slows intake instead of dropping rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger("gatewayz.recorder")

COLUMNS = (
    "request_id",
    "created_at",
    "organization_id",
    "team_id",
    "api_key_id",
    "endpoint",
    "model",
    "provider",
    "status_code",
    "error_type",
    "stream",
    "partial",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "attempts",
)
_COLUMN_LIST = ", ".join(COLUMNS)
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_staging "
    "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY usage_staging ({_COLUMN_LIST}) FROM STDIN"
_MERGE = (
    f"INSERT INTO usage_events ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM usage_staging "
    "ON CONFLICT (request_id) DO NOTHING"
)


class UsageRecorder:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_pending: int = 10_000,
        retry_delay: float = 0.5,
    ) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retry_delay = retry_delay
        self._pending: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    def record(self, row: dict[str, Any]) -> None:
        """Queue one usage row; never blocks, so it is safe in `finally` blocks."""
        self._pending.append(row)
        if len(self._pending) >= self._max_pending:
            self._capacity.clear()
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()

    async def wait_for_capacity(self) -> None:
        if not self._capacity.is_set():
            await self._capacity.wait()

    async def close(self, timeout: float = 10.0) -> None:
        """Write every queued row, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                logger.error("recorder stopped with %d unwritten usage rows", len(self._pending))

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
                self._wakeup.clear()
                continue
            batch = [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]
            try:
                await self._write(batch)
            except Exception:
                # Rows stay queued and the same batch is retried; the
                # ON CONFLICT clause makes a retry after a commit harmless.
                logger.exception("writing %d usage rows failed; retrying", len(batch))
                await asyncio.sleep(self._retry_delay)
                continue
            for _ in batch:
                self._pending.popleft()
            self.written += len(batch)
            if len(self._pending) < self._max_pending:
                self._capacity.set()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(_CREATE_STAGING)
            async with conn.cursor().copy(_COPY) as copy:
                for row in batch:
                    await copy.write_row([row[column] for column in COLUMNS])
            await conn.execute(_MERGE)
