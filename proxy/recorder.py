"""Usage recorder: writes one row per call to Postgres, off the request path.

Rows are buffered in memory and written in batches with COPY into a
temporary table followed by one INSERT that first claims each request id in
usage_request_ids (ON CONFLICT DO NOTHING), so a batch retried after a lost
connection or replayed from the spool never writes a row twice.
When the buffer holds `max_pending` rows, `wait_for_capacity` makes new
requests wait: a slow database slows intake instead of dropping rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import String

from gateway_core.schema import usage_events
from proxy.spend import SpendGuard
from proxy.spool import Spool

logger = logging.getLogger("gatewayz.recorder")

COLUMNS = (
    "request_id",
    "created_at",
    "organization_id",
    "team_id",
    "api_key_id",
    "project_id",
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
    "key_tags",
    "key_metadata",
    "session_id",
    "template_name",
    "template_version",
)
_COLUMN_LIST = ", ".join(COLUMNS)
# Maximum lengths of the text columns, from gateway_core/schema.py.
_TEXT_LIMITS = {
    column.name: column.type.length
    for column in usage_events.columns
    if isinstance(column.type, String) and column.type.length
}
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_staging "
    "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY usage_staging ({_COLUMN_LIST}) FROM STDIN"
# usage_events is partitioned by month, so it cannot hold a unique key on
# request_id alone; usage_request_ids does. Only rows whose request id this
# statement adds there are inserted, so a row replayed from the spool or a
# retried batch is skipped, whatever partition it belongs to. Ids are added
# in sorted order so concurrent writers lock them in the same order.
_MERGE = (
    "WITH claimed AS ("
    "INSERT INTO usage_request_ids (request_id, created_at) "
    "SELECT request_id, min(created_at) FROM usage_staging "
    "GROUP BY request_id ORDER BY request_id "
    "ON CONFLICT (request_id) DO NOTHING RETURNING request_id) "
    f"INSERT INTO usage_events ({_COLUMN_LIST}) "
    f"SELECT DISTINCT ON (s.request_id) {', '.join(f's.{c}' for c in COLUMNS)} "
    "FROM usage_staging AS s JOIN claimed USING (request_id) ORDER BY s.request_id "
    "RETURNING request_id"
)
_ADD_SPEND = (
    "INSERT INTO budget_spend (budget_id, period_start, spent) VALUES (%s, %s, %s) "
    "ON CONFLICT (budget_id, period_start) DO UPDATE "
    "SET spent = budget_spend.spent + EXCLUDED.spent RETURNING spent"
)
_STORE_BODY = (
    "INSERT INTO request_bodies (request_id, created_at, organization_id, api_key_id, "
    "request, response) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_CHARGE_CREDITS = (
    "INSERT INTO ledger_entries (scope_type, scope_id, amount, kind, reference, actor) "
    "SELECT s, i, -a, 'usage', r, 'proxy' FROM unnest("
    "%s::text[], %s::bigint[], %s::numeric[], %s::text[]) AS t(s, i, a, r) "
    "ON CONFLICT ON CONSTRAINT uq_ledger_reference DO NOTHING"
)
_SHRINK_LEASE = "UPDATE spend_leases SET amount = amount - %s WHERE limit_key = %s AND holder = %s"


@dataclass(frozen=True)
class BudgetCrossing:
    """A budget's settled spend before and after one recorder batch."""

    budget_id: int
    period_start: datetime
    spent_before: Decimal
    spent_after: Decimal


class UsageRecorder:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        spend: SpendGuard | None = None,
        on_budget_spend: Callable[[list[BudgetCrossing]], None] | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_pending: int = 10_000,
        retry_delay: float = 0.5,
        dead_letter: Path | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._pool = pool
        self._spend = spend
        self._on_budget_spend = on_budget_spend
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retry_delay = retry_delay
        self._dead_letter = dead_letter
        self._spool = spool
        # Set while Postgres is unreachable; batches then go to the spool.
        self._database_down_since: float | None = None
        self._last_attempt = 0.0
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
        row.setdefault("key_tags", [])
        row.setdefault("key_metadata", Jsonb({}))
        for column, limit in _TEXT_LIMITS.items():
            value = row.get(column)
            if isinstance(value, str) and (len(value) > limit or "\x00" in value):
                # Postgres text cannot hold NUL, and the columns have a
                # maximum length; client-supplied strings are cut to fit.
                row[column] = value.replace("\x00", "\ufffd")[:limit]
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
                self._task.cancel()
                rows = list(self._pending)
                self._pending.clear()
                if rows and self._spool is not None:
                    self._spool.append(rows)
                    logger.warning("spooled %d usage rows at shutdown for replay", len(rows))
                else:
                    self._set_aside(rows, "the database did not accept them before shutdown")

    def spooled_rows(self) -> int:
        return self._spool.size() if self._spool is not None else 0

    @property
    def database_down(self) -> bool:
        return self._database_down_since is not None

    async def _run(self) -> None:
        if self._spool is not None:
            self._spool.reclaim_abandoned()
        while True:
            await self._replay_spool()
            if not self._pending:
                if self._closing:
                    return
                await self._wait_for_wakeup(self._flush_interval)
                self._wakeup.clear()
                continue
            await self._linger()
            batch = [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]
            now = time.monotonic()
            if self.database_down and now - self._last_attempt < self._retry_delay:
                if self._spool_batch(batch):
                    continue
                await asyncio.sleep(self._retry_delay)
                continue
            self._last_attempt = now
            try:
                crossings = await self._write(batch)
            except (psycopg.DataError, psycopg.IntegrityError):
                # Some row in the batch can never be written; write the rows
                # one at a time so only that row is set aside.
                logger.exception("a batch of %d usage rows was rejected", len(batch))
                crossings = await self._write_one_by_one(batch)
            except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
                if not self.database_down:
                    logger.error("Postgres is unreachable (%s); spooling usage rows", exc)
                    self._database_down_since = now
                if not self._spool_batch(batch):
                    await asyncio.sleep(self._retry_delay)
                continue
            except Exception:
                # Rows stay queued and the same batch is retried; the
                # ON CONFLICT clause makes a retry after a commit harmless.
                logger.exception("writing %d usage rows failed; retrying", len(batch))
                await asyncio.sleep(self._retry_delay)
                continue
            if self.database_down:
                logger.info("Postgres is reachable again; replaying spooled usage rows")
                self._database_down_since = None
            self._done(batch, crossings)

    async def _linger(self) -> None:
        """Wait until a full batch is queued or `flush_interval` has passed since the last write.

        Under light load every row would otherwise be a transaction of its
        own; waiting gathers them, so the per-transaction work is shared.
        """
        if self._closing or self.database_down or len(self._pending) >= self._batch_size:
            return
        delay = self._last_attempt + self._flush_interval - time.monotonic()
        if delay <= 0:
            return
        self._wakeup.clear()
        await self._wait_for_wakeup(delay)
        self._wakeup.clear()

    async def _wait_for_wakeup(self, delay: float) -> None:
        """Wait until `record` or `close` sets the wakeup event, or `delay` seconds.

        asyncio.timeout runs the wait in this task, where wait_for would
        start a task for it on every call.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wakeup.wait()

    def _done(self, batch: list[dict[str, Any]], crossings: list[BudgetCrossing]) -> None:
        for _ in batch:
            self._pending.popleft()
        self.written += len(batch)
        if self._spend is not None:
            self._spend.committed(charges_by_key(batch))
        if crossings and self._on_budget_spend is not None:
            try:
                self._on_budget_spend(crossings)
            except Exception:
                logger.exception("budget alert hook failed")
        if len(self._pending) < self._max_pending:
            self._capacity.set()

    def _spool_batch(self, batch: list[dict[str, Any]]) -> bool:
        """Move a batch from memory to the spool; False when there is no spool."""
        if self._spool is None:
            return False
        try:
            self._spool.append(batch)
        except OSError:
            logger.exception("spooling %d usage rows failed; keeping them in memory", len(batch))
            return False
        for _ in batch:
            self._pending.popleft()
        if len(self._pending) < self._max_pending:
            self._capacity.set()
        return True

    async def _replay_spool(self) -> None:
        if self._spool is None:
            return
        if self.database_down and time.monotonic() - self._last_attempt < self._retry_delay:
            return
        for path in self._spool.pending_files():
            claimed = self._spool.claim(path)
            if claimed is None:
                continue
            rows = self._spool.read(claimed)
            self._last_attempt = time.monotonic()
            try:
                for start in range(0, len(rows), self._batch_size):
                    chunk = rows[start : start + self._batch_size]
                    crossings = await self._write(chunk)
                    if self._spend is not None:
                        self._spend.committed(charges_by_key(chunk))
                    if crossings and self._on_budget_spend is not None:
                        self._on_budget_spend(crossings)
            except (psycopg.OperationalError, PoolTimeout, OSError):
                self._spool.release(claimed)
                if not self.database_down:
                    self._database_down_since = time.monotonic()
                return
            except (psycopg.DataError, psycopg.IntegrityError):
                logger.exception("spool file %s has rows Postgres rejects", claimed)
                for row in rows:
                    try:
                        await self._write([row])
                    except (psycopg.DataError, psycopg.IntegrityError) as exc:
                        self._set_aside([row], str(exc))
            claimed.unlink()
            self._database_down_since = None
            self.written += len(rows)
            logger.info("replayed %d spooled usage rows from %s", len(rows), path.name)

    async def _write_one_by_one(self, batch: list[dict[str, Any]]) -> list[BudgetCrossing]:
        crossings: list[BudgetCrossing] = []
        for row in batch:
            try:
                crossings += await self._write([row])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                self._set_aside([row], str(exc))
        return crossings

    def _set_aside(self, rows: list[dict[str, Any]], reason: str) -> None:
        """Append rows Postgres rejected to the dead-letter file, so none is lost."""
        if not rows:
            return
        if self._dead_letter is None:
            logger.error("dropping %d usage rows (%s): no dead-letter file", len(rows), reason)
            return
        self._dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with self._dead_letter.open("ab") as handle:
            for row in rows:
                public = {k: v for k, v in row.items() if not k.startswith("_")}
                if isinstance(public.get("key_metadata"), Jsonb):
                    public["key_metadata"] = public["key_metadata"].obj
                handle.write(orjson.dumps(public, default=str) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        logger.error(
            "set aside %d usage rows in %s (%s); first request id %s",
            len(rows),
            self._dead_letter,
            reason,
            rows[0].get("request_id"),
        )

    async def _write(self, batch: list[dict[str, Any]]) -> list[BudgetCrossing]:
        """Write usage rows and, for rows new to the table, their charges; one transaction."""
        async with self._pool.connection(timeout=5.0) as conn, conn.transaction():
            await conn.execute(_CREATE_STAGING)
            async with conn.cursor().copy(_COPY) as copy:
                for row in batch:
                    await copy.write_row([row[column] for column in COLUMNS])
            cursor = await conn.execute(_MERGE)
            inserted = {request_id for (request_id,) in await cursor.fetchall()}
            new_rows = [row for row in batch if row["request_id"] in inserted]
            crossings = await self._charge(conn, new_rows)
            bodies = [
                (
                    row["request_id"],
                    row["created_at"],
                    row["organization_id"],
                    row["api_key_id"],
                    Jsonb(row["_body"]["request"]),
                    Jsonb(row["_body"]["response"]),
                )
                for row in new_rows
                if row.get("_body") is not None
            ]
            if bodies:
                async with conn.cursor() as cursor:
                    await cursor.executemany(_STORE_BODY, bodies)
            if self._spend is not None:
                # Leases shrink by what every row of the batch cost: rows a
                # retried batch finds already written were charged by the
                # earlier attempt, whose lease update committed with them.
                shrink = charges_by_key(new_rows)
                for key in sorted(shrink):
                    await conn.execute(_SHRINK_LEASE, (shrink[key], key, self._spend.holder))
        return crossings

    async def _charge(
        self, conn: AsyncConnection[Any], rows: list[dict[str, Any]]
    ) -> list[BudgetCrossing]:
        budget_totals: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
        credit_rows: list[tuple[str, int, Decimal, str]] = []
        for row in rows:
            cost = row["cost_usd"]
            if not cost:
                continue
            for limit in row.get("_limits", ()):
                if limit.kind == "budget":
                    budget_totals[(limit.budget_id, limit.period_start)] += cost
                else:
                    credit_rows.append((limit.scope_type, limit.scope_id, cost, row["request_id"]))
        crossings = []
        for (budget_id, period_start), amount in sorted(budget_totals.items()):
            cursor = await conn.execute(_ADD_SPEND, (budget_id, period_start, amount))
            (after,) = await cursor.fetchone()  # type: ignore[misc]
            crossings.append(BudgetCrossing(budget_id, period_start, after - amount, after))
        if credit_rows:
            credit_rows.sort()
            columns = [list(column) for column in zip(*credit_rows, strict=True)]
            await conn.execute(_CHARGE_CREDITS, columns)
        return crossings


def charges_by_key(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    charges: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        if row["cost_usd"]:
            for limit in row.get("_limits", ()):
                charges[limit.key] += row["cost_usd"]
    return charges
