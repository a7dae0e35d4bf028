"""Spend reservations that hold across workers and hosts sharing Postgres.

Before a call is forwarded, its maximum cost is reserved against every
budget and credit balance that applies to its key. Each limit is drawn
from Postgres in leases: a worker takes a chunk of what is left with one
locked transaction (`spend_leases`), then admits requests from that chunk
in memory, with no database round trip, until it runs low. When the
recorder writes a call's usage row it moves the real cost from the lease to
the budget's settled spend (or the ledger) in the same transaction.

Invariant: for every limit, settled spend plus the sum of live leases never
exceeds the limit (or the credit balance), because a lease is only granted
out of what is left under a row lock, and a worker only admits a request
whose maximum cost fits in its unreserved lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway_core.budgets import (
    LIFETIME_START,
    budget_limit_key,
    credit_limit_key,
    period_bounds,
)
from gateway_core.errors import InsufficientCreditsError, ServiceUnavailableError
from proxy.context import KeyIdentity
from proxy.reloading import reload_once

logger = logging.getLogger("gatewayz.spend")

ZERO = Decimal(0)
MONEY_QUANTUM = Decimal("1E-10")

# The name of the organization, team, project or key that row `s` applies to,
# so error messages name the scope without a query per request. The name is
# NULL when that row no longer exists.
_SCOPE_NAME = "coalesce(o.name, t.name, p.name, k.name)"
_SCOPE_JOINS = (
    "LEFT JOIN organizations o ON s.scope_type = 'organization' AND o.id = s.scope_id "
    "LEFT JOIN teams t ON s.scope_type = 'team' AND t.id = s.scope_id "
    "LEFT JOIN projects p ON s.scope_type = 'project' AND p.id = s.scope_id "
    "LEFT JOIN api_keys k ON s.scope_type = 'key' AND k.id = s.scope_id"
)
_LOAD_BUDGETS = (
    "SELECT s.id, s.scope_type, s.scope_id, s.period, s.limit_usd, s.alert_thresholds, "
    f"{_SCOPE_NAME} FROM budgets s {_SCOPE_JOINS}"
)
_LOAD_METERED = (
    f"SELECT s.scope_type, s.scope_id, {_SCOPE_NAME} FROM credit_balances s {_SCOPE_JOINS}"
)
_LOAD_ZONES = "SELECT id, timezone FROM organizations"

_ENSURE_SPEND = (
    "INSERT INTO budget_spend (budget_id, period_start, spent) VALUES (%s, %s, 0) "
    "ON CONFLICT DO NOTHING"
)
_LOCK_BUDGET = (
    "SELECT b.limit_usd - s.spent FROM budgets b JOIN budget_spend s "
    "ON s.budget_id = b.id AND s.period_start = %s WHERE b.id = %s FOR UPDATE OF s"
)
_LOCK_CREDIT = (
    "SELECT balance FROM credit_balances WHERE scope_type = %s AND scope_id = %s FOR UPDATE"
)
_LEASES = (
    "SELECT coalesce(sum(amount) FILTER (WHERE holder <> %s AND expires_at > now()), 0), "
    "coalesce(sum(amount) FILTER (WHERE holder = %s), 0) "
    "FROM spend_leases WHERE limit_key = %s"
)
_GROW_LEASE = (
    "INSERT INTO spend_leases (limit_key, holder, amount, expires_at) "
    "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
    "ON CONFLICT (limit_key, holder) DO UPDATE "
    "SET amount = spend_leases.amount + EXCLUDED.amount, expires_at = EXCLUDED.expires_at"
)
_SHRINK_LEASE = "UPDATE spend_leases SET amount = amount - %s WHERE limit_key = %s AND holder = %s"
_RENEW = "UPDATE spend_leases SET expires_at = now() + make_interval(secs => %s) WHERE holder = %s"
_DROP_EMPTY = "DELETE FROM spend_leases WHERE holder = %s AND amount <= 0"
_DROP_EXPIRED = "DELETE FROM spend_leases WHERE expires_at < now() - interval '1 hour'"


@dataclass(frozen=True)
class Limit:
    """One budget period or credit balance that a request is checked against."""

    key: str
    # "budget" or "credit".
    kind: str
    label: str
    budget_id: int | None = None
    period_start: datetime | None = None
    scope_type: str = ""
    scope_id: int = 0

    @property
    def error_code(self) -> str:
        return "budget_exceeded" if self.kind == "budget" else "insufficient_credits"


@dataclass
class LeaseState:
    # Mirror of this worker's row in spend_leases.
    leased: Decimal = ZERO
    # Maximum costs of requests admitted and still running.
    reserved: Decimal = ZERO
    # Real costs of finished requests whose usage rows are not yet written.
    settled: Decimal = ZERO
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def available(self) -> Decimal:
        return self.leased - self.reserved - self.settled


@dataclass
class Reservation:
    limits: tuple[Limit, ...]
    amount: Decimal
    settled: bool = False


def describe_scope(scope_type: str, scope_id: int, name: str | None, *details: str) -> str:
    """Return how a limit message names a scope, such as "project 'Grant X' (id 2, $0.25)".

    Without a name (the scope's row was deleted) the id alone names it.
    """
    facts = list(details)
    if name is None:
        scope = f"{scope_type} {scope_id}"
    else:
        scope = f"{scope_type} {name!r}"
        facts.insert(0, f"id {scope_id}")
    if not facts:
        return scope
    return f"{scope} ({', '.join(facts)})"


def scopes_of(identity: KeyIdentity) -> list[tuple[str, int]]:
    scopes = [("key", identity.key_id), ("team", identity.team_id)]
    if identity.project_id is not None:
        scopes.append(("project", identity.project_id))
    scopes.append(("organization", identity.organization_id))
    return scopes


class SpendGuard:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        chunk_max: Decimal = Decimal(5),
        chunk_fraction: Decimal = Decimal("0.1"),
        lease_ttl: float = 60.0,
        refresh_interval: float = 2.0,
        idle_return: float = 10.0,
    ) -> None:
        self._pool = pool
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._chunk_max = chunk_max
        self._chunk_fraction = chunk_fraction
        self._lease_ttl = lease_ttl
        self._refresh_interval = refresh_interval
        self._idle_return = idle_return
        self._budgets: dict[tuple[str, int], list[tuple[int, str, Decimal]]] = {}
        self._metered: set[tuple[str, int]] = set()
        # Names of the scopes that have a budget or a credit balance.
        self._scope_names: dict[tuple[str, int], str | None] = {}
        self._zones: dict[int, str] = {}
        self._thresholds: dict[int, tuple[Decimal, tuple[Decimal, ...]]] = {}
        self._leases: dict[str, LeaseState] = {}
        # Limits per key, valid from the latest start to the earliest end of
        # their periods; emptied whenever the budgets are reloaded.
        self._limits_cache: dict[tuple[int, ...], tuple[list[Limit], datetime, datetime]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded_at = float("-inf")
        self._refresh_lock = asyncio.Lock()
        # Reservations made and not yet settled, for the metrics gauge.
        self.open_reservations = 0

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._maintain(), name="spend-leases")

    async def stop(self) -> None:
        """Stop maintenance and hand back every unused lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._return_idle(force=True)

    async def refresh(self) -> None:
        async with self._refresh_lock:
            await self._load()

    async def _load(self) -> None:
        async with self._pool.connection(timeout=5.0) as conn:
            budget_rows = await (await conn.execute(_LOAD_BUDGETS)).fetchall()
            metered_rows = await (await conn.execute(_LOAD_METERED)).fetchall()
            zone_rows = await (await conn.execute(_LOAD_ZONES)).fetchall()
        budgets: dict[tuple[str, int], list[tuple[int, str, Decimal]]] = {}
        thresholds: dict[int, tuple[Decimal, tuple[Decimal, ...]]] = {}
        scope_names: dict[tuple[str, int], str | None] = {}
        for budget_id, scope_type, scope_id, period, limit, alert_at, name in budget_rows:
            budgets.setdefault((scope_type, scope_id), []).append((budget_id, period, limit))
            thresholds[budget_id] = (limit, tuple(alert_at or ()))
            scope_names[(scope_type, scope_id)] = name
        for scope_type, scope_id, name in metered_rows:
            scope_names[(scope_type, scope_id)] = name
        self._budgets = budgets
        self._thresholds = thresholds
        self._metered = {(scope_type, scope_id) for scope_type, scope_id, _ in metered_rows}
        self._scope_names = scope_names
        self._zones = dict(zone_rows)
        self._limits_cache = {}
        self._loaded_at = time.monotonic()

    def budget_limit_and_thresholds(
        self, budget_id: int
    ) -> tuple[Decimal | None, tuple[Decimal, ...]]:
        """Return a budget's limit and alert thresholds, as last loaded."""
        limit, thresholds = self._thresholds.get(budget_id, (None, ()))
        return limit, thresholds

    def limits_for(self, identity: KeyIdentity, now: datetime | None = None) -> list[Limit]:
        """Return the limits that apply to a key, from memory."""
        now = now or datetime.now(UTC)
        cache_key = (
            identity.key_id,
            identity.team_id,
            identity.project_id or 0,
            identity.organization_id,
        )
        cached = self._limits_cache.get(cache_key)
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        zone = self._zones.get(identity.organization_id, "UTC")
        limits: list[Limit] = []
        valid_from, valid_until = LIFETIME_START, datetime.max.replace(tzinfo=UTC)
        for scope_type, scope_id in scopes_of(identity):
            name = self._scope_names.get((scope_type, scope_id))
            for budget_id, period, amount in self._budgets.get((scope_type, scope_id), ()):
                start, end = period_bounds(period, now, zone)
                valid_from, valid_until = max(valid_from, start), min(valid_until, end)
                scope = describe_scope(scope_type, scope_id, name, f"${amount:f}")
                label = f"{period} budget of {scope}"
                limits.append(
                    Limit(budget_limit_key(budget_id, start), "budget", label, budget_id, start,
                          scope_type, scope_id)
                )  # fmt: skip
            if (scope_type, scope_id) in self._metered:
                label = f"credit balance of {describe_scope(scope_type, scope_id, name)}"
                limits.append(
                    Limit(credit_limit_key(scope_type, scope_id), "credit", label,
                          scope_type=scope_type, scope_id=scope_id)
                )  # fmt: skip
        limits.sort(key=lambda limit: limit.key)
        self._limits_cache[cache_key] = (limits, valid_from, valid_until)
        return limits

    async def reserve(self, identity: KeyIdentity, max_cost: Callable[[], Decimal]) -> Reservation:
        """Reserve `max_cost()` against every limit of the key, or raise 402 naming one.

        `max_cost` is called only when the key has a limit, because pricing
        the largest possible call takes time that a key without one would waste.
        """
        if time.monotonic() - self._loaded_at > self._refresh_interval:
            try:
                await reload_once(self._refresh_lock, self.refresh)
            except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
                logger.warning("budget settings not reloaded (%s); using the last ones", exc)
        limits = self.limits_for(identity)
        if not limits:
            self.open_reservations += 1
            return Reservation((), Decimal(0))
        amount = max_cost()
        used_at = time.monotonic()
        taken: list[Limit] = []
        try:
            for limit in limits:
                state = self._leases.get(limit.key)
                if state is None:
                    # Built only when missing: a LeaseState holds an asyncio.Lock.
                    state = self._leases[limit.key] = LeaseState()
                if state.available < amount:
                    async with state.lock:
                        if state.available < amount:
                            await self._grow_or_fail(limit, state, amount - state.available)
                if state.available < amount:
                    raise InsufficientCreditsError(
                        f"request needs up to ${amount:f} but the {limit.label} "
                        "has not enough left; GET /v1/key shows what is left and when "
                        "it resets",
                        code=limit.error_code,
                    )
                state.reserved += amount
                state.last_used = used_at
                taken.append(limit)
        except BaseException:
            for limit in taken:
                self._leases[limit.key].reserved -= amount
            raise
        self.open_reservations += 1
        return Reservation(tuple(limits), amount)

    def settle(self, reservation: Reservation, cost: Decimal) -> None:
        """Turn a reservation into the call's real cost; safe to call once per call."""
        if reservation.settled:
            return
        reservation.settled = True
        self.open_reservations -= 1
        if cost > reservation.amount and reservation.limits:
            logger.warning(
                "call cost $%s exceeded its reservation of $%s", cost, reservation.amount
            )
        for limit in reservation.limits:
            state = self._leases[limit.key]
            state.reserved -= reservation.amount
            state.settled += cost

    def committed(self, charges: dict[str, Decimal]) -> None:
        """Apply costs the recorder has written: they leave the lease and `settled`."""
        for key, cost in charges.items():
            state = self._leases.get(key)
            if state is not None:
                state.leased -= cost
                state.settled -= cost

    async def _grow_or_fail(self, limit: Limit, state: LeaseState, shortfall: Decimal) -> None:
        try:
            await self._grow(limit, state, shortfall)
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            # Fail closed: with the database away, only what is already
            # leased in memory can be spent.
            logger.warning("cannot lease more of %s: %s", limit.key, exc)
            raise ServiceUnavailableError(
                f"the {limit.label} cannot be checked because the gateway's database is "
                "unavailable; retry shortly",
                code="budget_unavailable",
            ) from exc

    async def _grow(self, limit: Limit, state: LeaseState, shortfall: Decimal) -> None:
        async with self._pool.connection(timeout=5.0) as conn, conn.transaction():
            if limit.kind == "budget":
                await conn.execute(_ENSURE_SPEND, (limit.budget_id, limit.period_start))
                row = await (
                    await conn.execute(_LOCK_BUDGET, (limit.period_start, limit.budget_id))
                ).fetchone()
            else:
                row = await (
                    await conn.execute(_LOCK_CREDIT, (limit.scope_type, limit.scope_id))
                ).fetchone()
            if row is None:
                return
            others, mine = await (
                await conn.execute(_LEASES, (self.holder, self.holder, limit.key))
            ).fetchone()  # type: ignore[misc]
            left = row[0] - others - mine
            if left <= 0:
                return
            want = max(shortfall, min(left * self._chunk_fraction, self._chunk_max))
            # Rounded down to the NUMERIC(20, 10) scale of spend_leases, so the
            # amount in memory equals the amount Postgres stores.
            grant = min(want, left).quantize(MONEY_QUANTUM, rounding=ROUND_DOWN)
            if grant <= 0:
                return
            await conn.execute(_GROW_LEASE, (limit.key, self.holder, grant, self._lease_ttl))
        state.leased += grant
        logger.debug("leased $%s more of %s", grant, limit.key)

    async def _maintain(self) -> None:
        renew_every = self._lease_ttl / 3
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(max(min(self._refresh_interval, renew_every), 0.2))
            try:
                await self.refresh()
                if time.monotonic() - last_renew >= renew_every:
                    async with self._pool.connection() as conn:
                        await conn.execute(_RENEW, (self._lease_ttl, self.holder))
                        await conn.execute(_DROP_EXPIRED)
                    last_renew = time.monotonic()
                await self._return_idle()
            except Exception:
                logger.exception("spend lease maintenance failed; retrying")

    async def _return_idle(self, force: bool = False) -> None:
        """Hand back leases that no request has used for a while."""
        now = time.monotonic()
        returns: list[tuple[str, Decimal]] = []
        for key, state in list(self._leases.items()):
            idle = now - state.last_used > self._idle_return
            if (force or idle) and state.reserved == 0 and state.settled == 0:
                if state.leased > 0:
                    returns.append((key, state.leased))
                if not state.lock.locked():
                    del self._leases[key]
        if not returns:
            return
        async with self._pool.connection() as conn, conn.transaction():
            for key, amount in sorted(returns):
                await conn.execute(_SHRINK_LEASE, (amount, key, self.holder))
            await conn.execute(_DROP_EMPTY, (self.holder,))


def charge_keys(limits: Iterable[Limit]) -> list[str]:
    return [limit.key for limit in limits]
