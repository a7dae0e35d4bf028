"""Rate limits per API key, project, team and organization.

Each scope may have four limits in the `rate_limits` table, NULL meaning no
limit: requests per minute, tokens per minute, requests per day and
concurrent requests in flight. Minute and day limits count in fixed windows
aligned to the Unix epoch, so day windows are UTC days. Hosts that share a
backend must keep their clocks in sync (NTP), because window boundaries come
from each host's clock.

`RateLimiter.acquire` checks every limit of every scope of a request and
consumes from all of them only if all pass, so a request rejected by one
limit consumes nothing from the others. The counts live in one of three
backends behind `RateLimitBackend`:

- `RedisBackend`: one Lua script per acquire does every check and every
  increment atomically, in one round trip. Shared by all workers and hosts.
- `PostgresBackend`: a worker claims a block of a window's capacity with one
  upsert and serves requests from that block in memory until it runs out.
  Concurrency slots are leased one at a time and kept while in use.
  Blocks still unused when a window ends are lost, so the workers together
  may admit slightly fewer requests than the limit, never more.
- `LocalBackend`: in-process counters. `RateLimiter` falls back to it while
  the shared backend is unreachable, so limits then apply per process.

Response headers follow OpenAI's: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` describe
the requests limit (per minute or per day) with the fewest requests
remaining, and the `-tokens` headers describe the tokens-per-minute limit
with the fewest tokens remaining. Reset times are Go duration strings as
OpenAI sends them ("20ms", "9s", "6m0s", "23h59m0s"), rounded up to whole
seconds from one second on. A 429 also carries `retry-after` in whole
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import redis.asyncio as redis
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway_core.errors import RateLimitError
from proxy.slot_leases import SlotLeases

logger = logging.getLogger("gatewayz.ratelimit")

# (scope_type, scope_id), as in the rate_limits table: ("key", 12).
Scope = tuple[str, int]

# Seconds after which a concurrency slot whose request never released it
# (the worker died or forgot) is dropped. A request that really runs longer
# loses its slot early, so concurrency is then under-counted.
DEFAULT_MAX_REQUEST_SECONDS = 900.0


@dataclass(frozen=True)
class RateLimitConfig:
    """Limits of one scope, from one row of `rate_limits`. None means no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    requests_per_day: int | None = None
    max_concurrent: int | None = None


class RateLimitLookup(Protocol):
    def get(self, scope_type: str, scope_id: int) -> RateLimitConfig | None: ...


@dataclass(frozen=True)
class WindowKind:
    """A counted limit: its `rate_limits` column, unit and window length."""

    name: str
    unit: str
    seconds: int
    label: str


REQUESTS_PER_MINUTE = WindowKind("requests_per_minute", "requests", 60, "requests per minute")
TOKENS_PER_MINUTE = WindowKind("tokens_per_minute", "tokens", 60, "tokens per minute")
REQUESTS_PER_DAY = WindowKind("requests_per_day", "requests", 86_400, "requests per day")
WINDOW_KINDS = (REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, REQUESTS_PER_DAY)
# WindowCheck objects and plans kept for reuse per limiter; each cache is
# emptied when full.
_WINDOW_CACHE_SIZE = 10_000
_PLAN_CACHE_SIZE = 10_000
# Token estimates whose windows one plan keeps.
_PLAN_TOKEN_SIZES = 64


@dataclass(frozen=True)
class WindowCheck:
    """One limit of one scope in the window that contains the request."""

    scope: Scope
    kind: WindowKind
    limit: int
    # Requests (1) or estimated tokens that an admitted request consumes.
    amount: int
    # Unix seconds, a multiple of kind.seconds.
    window_start: int
    # Derived from the fields above once, because every check reads them
    # several times per request.
    window_end: int = field(init=False, repr=False, compare=False)
    # A request with no estimated tokens still needs one token of room, so
    # a window that is already full rejects it.
    need: int = field(init=False, repr=False, compare=False)
    key: tuple[str, int, str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_end", self.window_start + self.kind.seconds)
        object.__setattr__(self, "need", max(self.amount, 1))
        key = (self.scope[0], self.scope[1], self.kind.name, self.window_start)
        object.__setattr__(self, "key", key)


@dataclass(frozen=True)
class SlotCheck:
    """The concurrency limit of one scope."""

    scope: Scope
    limit: int


@dataclass
class _Plan:
    """The checks of one set of scopes with one set of limits, in one minute.

    Only the tokens-per-minute checks depend on the request, through its
    token estimate, so `by_tokens` keeps the finished checks per estimate.
    """

    # Per window: the check, or for a tokens check the (scope, limit,
    # window start) to build it from.
    templates: tuple[WindowCheck | tuple[Scope, int, int], ...]
    slots: tuple[SlotCheck, ...]
    slot_scopes: tuple[Scope, ...]
    by_tokens: dict[int, tuple[tuple[WindowCheck, ...], tuple[WindowCheck, ...]]] = field(
        default_factory=dict
    )


@dataclass
class AcquireOutcome:
    """Result of one backend acquire.

    `counts` has one entry per window check: the amount used after this
    request if it was admitted, else the amount used before it. `in_flight`
    has one entry per slot check, counted the same way.
    """

    counts: list[int]
    in_flight: list[int]
    rejected_window: int | None = None
    rejected_slot: int | None = None

    @property
    def admitted(self) -> bool:
        return self.rejected_window is None and self.rejected_slot is None


class BackendUnavailableError(Exception):
    """Error raised when the shared backend cannot be reached or returns an error."""


class RateLimitBackend(Protocol):
    async def acquire(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        ticket_id: str,
        now: float,
    ) -> AcquireOutcome: ...

    async def release(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> None:
        """Free the ticket's slots and add each delta to its window, never below zero."""

    def release_in_memory(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> bool:
        """Apply `release` in memory and return True.

        Return False, with nothing changed, when the release needs I/O.
        """

    async def close(self) -> None: ...


def first_rejected(windows: Sequence[WindowCheck], counts: Sequence[int]) -> int | None:
    for index, (window, used) in enumerate(zip(windows, counts, strict=True)):
        if used + window.need > window.limit:
            return index
    return None


class SlotTable:
    """Concurrency slots held in this process, by scope and ticket id."""

    def __init__(self, max_request_seconds: float) -> None:
        self._max_request_seconds = max_request_seconds
        self._holders: dict[Scope, dict[str, float]] = {}

    def in_flight(self, scope: Scope, now: float) -> int:
        holders = self._holders.get(scope)
        if not holders:
            return 0
        stale_before = now - self._max_request_seconds
        for ticket_id in [t for t, started in holders.items() if started <= stale_before]:
            del holders[ticket_id]
        return len(holders)

    def first_rejected(
        self, slots: Sequence[SlotCheck], now: float
    ) -> tuple[list[int], int | None]:
        in_flight = [self.in_flight(slot.scope, now) for slot in slots]
        for index, (slot, count) in enumerate(zip(slots, in_flight, strict=True)):
            if count >= slot.limit:
                return in_flight, index
        return in_flight, None

    def add(self, slots: Sequence[SlotCheck], ticket_id: str, now: float) -> None:
        for slot in slots:
            self._holders.setdefault(slot.scope, {})[ticket_id] = now

    def remove(self, slot_scopes: Sequence[Scope], ticket_id: str) -> None:
        for scope in slot_scopes:
            holders = self._holders.get(scope)
            if holders is not None:
                holders.pop(ticket_id, None)
                if not holders:
                    del self._holders[scope]


class LocalBackend:
    """In-process counters: limits apply to this process alone."""

    def __init__(self, max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS) -> None:
        # Window key -> (amount used, window end in Unix seconds).
        self._counters: dict[tuple[str, int, str, int], tuple[int, int]] = {}
        self._slots = SlotTable(max_request_seconds)
        self._next_prune = 0.0

    async def acquire(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        ticket_id: str,
        now: float,
    ) -> AcquireOutcome:
        # No await between the checks and the increments, so concurrent
        # requests in this event loop cannot interleave here.
        self._prune(now)
        counts = [self._counters.get(window.key, (0, 0))[0] for window in windows]
        rejected_window = first_rejected(windows, counts)
        in_flight, rejected_slot = self._slots.first_rejected(slots, now)
        if rejected_window is not None:
            return AcquireOutcome(counts, in_flight, rejected_window=rejected_window)
        if rejected_slot is not None:
            return AcquireOutcome(counts, in_flight, rejected_slot=rejected_slot)
        for index, window in enumerate(windows):
            counts[index] += window.amount
            self._counters[window.key] = (counts[index], window.window_end)
        self._slots.add(slots, ticket_id, now)
        return AcquireOutcome(counts, [count + 1 for count in in_flight])

    async def release(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> None:
        self.release_in_memory(ticket_id, slot_scopes, corrections, now)

    def release_in_memory(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> bool:
        self._slots.remove(slot_scopes, ticket_id)
        for window, delta in corrections:
            used, _ = self._counters.get(window.key, (0, window.window_end))
            self._counters[window.key] = (max(used + delta, 0), window.window_end)
        return True

    async def close(self) -> None:
        self._counters.clear()

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + 60
        ended = [key for key, (_, end) in self._counters.items() if end <= now]
        for key in ended:
            del self._counters[key]


# KEYS: one counter per window check, then one sorted set per slot check.
# ARGV: window count, slot count, ticket id, now, stale-before time, slot
# set TTL, then (limit, amount, TTL) per window, then the limit per slot.
# Returns {status, rejected index, counts..., in flight...}, status 0 when
# admitted, 1 when a window rejected, 2 when a slot limit rejected.
_ACQUIRE_LUA = """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local result = {0, 0}
for i = 1, n do
  local base = 6 + (i - 1) * 3
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  local need = math.max(tonumber(ARGV[base + 2]), 1)
  result[2 + i] = used
  if result[1] == 0 and used + need > tonumber(ARGV[base + 1]) then
    result[1] = 1
    result[2] = i
  end
end
for j = 1, m do
  local key = KEYS[n + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[5])
  local in_flight = redis.call('ZCARD', key)
  result[2 + n + j] = in_flight
  if result[1] == 0 and in_flight >= tonumber(ARGV[6 + n * 3 + j]) then
    result[1] = 2
    result[2] = j
  end
end
if result[1] ~= 0 then
  return result
end
for i = 1, n do
  local base = 6 + (i - 1) * 3
  result[2 + i] = redis.call('INCRBY', KEYS[i], ARGV[base + 2])
  redis.call('EXPIRE', KEYS[i], ARGV[base + 3])
end
for j = 1, m do
  redis.call('ZADD', KEYS[n + j], ARGV[4], ARGV[3])
  redis.call('EXPIRE', KEYS[n + j], ARGV[6])
  result[2 + n + j] = result[2 + n + j] + 1
end
return result
"""

# KEYS: the ticket's slot sets, then the token counters to correct.
# ARGV: slot count, ticket id, then (delta, TTL) per counter.
_RELEASE_LUA = """
local m = tonumber(ARGV[1])
for j = 1, m do
  redis.call('ZREM', KEYS[j], ARGV[2])
end
for i = m + 1, #KEYS do
  local base = 2 + (i - m - 1) * 2
  local delta = tonumber(ARGV[base + 1])
  if delta > 0 then
    redis.call('INCRBY', KEYS[i], delta)
    redis.call('EXPIRE', KEYS[i], ARGV[base + 2])
  elseif delta < 0 then
    local used = redis.call('GET', KEYS[i])
    if used then
      redis.call('SET', KEYS[i], math.max(tonumber(used) + delta, 0), 'KEEPTTL')
    end
  end
end
return 1
"""


class RedisBackend:
    """Counters in Redis, shared by every worker and host that uses the prefix.

    Keys share the hash tag `{prefix}`, so on Redis Cluster one script's
    keys are in one slot, and so on one shard.
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str = "gatewayz",
        *,
        max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
        timeout: float = 1.0,
    ) -> None:
        self._prefix = prefix
        self._max_request_seconds = max_request_seconds
        # One immediate retry reconnects a pooled connection that Redis
        # closed. A retried script that had already run counts the request
        # twice, which can only under-admit.
        self._client = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._acquire_script = self._client.register_script(_ACQUIRE_LUA)
        self._release_script = self._client.register_script(_RELEASE_LUA)

    def window_key(self, window: WindowCheck) -> str:
        scope_type, scope_id = window.scope
        return (
            f"{{{self._prefix}}}:ratelimit:{scope_type}:{scope_id}:"
            f"{window.kind.name}:{window.window_start}"
        )

    def slot_key(self, scope: Scope) -> str:
        return f"{{{self._prefix}}}:ratelimit:{scope[0]}:{scope[1]}:in_flight"

    async def acquire(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        ticket_id: str,
        now: float,
    ) -> AcquireOutcome:
        keys = [self.window_key(window) for window in windows]
        keys += [self.slot_key(slot.scope) for slot in slots]
        args: list[Any] = [
            len(windows),
            len(slots),
            ticket_id,
            repr(now),
            repr(now - self._max_request_seconds),
            math.ceil(self._max_request_seconds) + 60,
        ]
        for window in windows:
            args += [window.limit, window.amount, _counter_ttl(window, now)]
        args += [slot.limit for slot in slots]
        result = await self._run(self._acquire_script, keys, args)
        status, rejected = int(result[0]), int(result[1])
        counts = [int(value) for value in result[2 : 2 + len(windows)]]
        in_flight = [int(value) for value in result[2 + len(windows) :]]
        outcome = AcquireOutcome(counts, in_flight)
        if status == 1:
            outcome.rejected_window = rejected - 1
        elif status == 2:
            outcome.rejected_slot = rejected - 1
        return outcome

    async def release(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> None:
        keys = [self.slot_key(scope) for scope in slot_scopes]
        keys += [self.window_key(window) for window, _ in corrections]
        args: list[Any] = [len(slot_scopes), ticket_id]
        for window, delta in corrections:
            args += [delta, _counter_ttl(window, now)]
        await self._run(self._release_script, keys, args)

    def release_in_memory(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> bool:
        return False

    async def close(self) -> None:
        await self._client.aclose()

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        # Besides lost connections and timeouts, this covers error replies
        # such as OOM or READONLY, which would otherwise fail every request.
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis: {exc}") from exc


def _counter_ttl(window: WindowCheck, now: float) -> int:
    # The counter must outlive its window, and a minute of slack covers
    # clock differences between hosts.
    return max(math.ceil(window.window_end - now), 1) + 60


# Claims a block of a window's capacity. `granted` stores the size of this
# claim so that RETURNING can report it, because a grant may be smaller than
# the block when little capacity is left. The WHERE clause rejects a claim
# that would push `used` past the limit, so the sum of all grants in a
# window never exceeds the limit.
_CLAIM_SQL = """
INSERT INTO rate_limit_windows AS w
    (scope_type, scope_id, limit_name, window_start, window_end, used, granted)
VALUES (%(scope_type)s, %(scope_id)s, %(limit_name)s, %(window_start)s, %(window_end)s,
        %(first_grant)s, %(first_grant)s)
ON CONFLICT (scope_type, scope_id, limit_name, window_start) DO UPDATE
SET granted = LEAST(%(block)s::bigint, %(limit)s::bigint - w.used),
    used = w.used + LEAST(%(block)s::bigint, %(limit)s::bigint - w.used)
WHERE w.used + %(shortage)s::bigint <= %(limit)s::bigint
RETURNING w.used, w.granted
"""

# Adds tokens that a request used beyond its estimate and beyond this
# worker's block. The tokens are already spent, so no limit applies.
_OVERAGE_SQL = """
INSERT INTO rate_limit_windows AS w
    (scope_type, scope_id, limit_name, window_start, window_end, used, granted)
VALUES (%(scope_type)s, %(scope_id)s, %(limit_name)s, %(window_start)s, %(window_end)s,
        %(extra)s, 0)
ON CONFLICT (scope_type, scope_id, limit_name, window_start) DO UPDATE
SET used = w.used + %(extra)s::bigint
"""

_PRUNE_SQL = "DELETE FROM rate_limit_windows WHERE window_end < %s"


@dataclass
class _Lease:
    """Capacity this worker claimed in one window and has not used yet."""

    available: int
    # The window's shared `used` after this worker's latest claim. Other
    # workers may have claimed more since.
    shared_used: int
    window_end: int


class PostgresBackend:
    """Counters in Postgres, claimed in blocks and spent in memory.

    The remaining counts in its headers are estimates, because other workers
    may have claimed capacity since this worker's latest claim.

    Concurrency slots are leased from Postgres in the same spirit
    (proxy/slot_leases.py), so workers and hosts share concurrency limits.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        block_fraction: float = 0.05,
        max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
        timeout: float = 2.0,
    ) -> None:
        self._pool = pool
        self._block_fraction = block_fraction
        self._timeout = timeout
        self._leases: dict[tuple[str, int, str, int], _Lease] = {}
        self._locks: dict[tuple[str, int, str, int], asyncio.Lock] = {}
        self._slots = SlotTable(max_request_seconds)
        self._slot_leases = SlotLeases(pool, self._slots, timeout=timeout)
        self._next_prune = 0.0

    def block_size(self, limit: int) -> int:
        return max(1, math.ceil(limit * self._block_fraction))

    async def acquire(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        ticket_id: str,
        now: float,
    ) -> AcquireOutcome:
        # Requests served from the leases take no await, so they are atomic
        # in this event loop. A claim awaits, and other requests may spend
        # the new capacity meanwhile, so a few rounds are allowed.
        for _ in range(3):
            outcome = self._consume_from_leases(windows, slots, ticket_id, now)
            if outcome is not None:
                return outcome
            for index in self._slot_leases.short(slots, now):
                try:
                    claimed = await self._slot_leases.claim(slots[index], now)
                except (psycopg.OperationalError, PoolTimeout) as exc:
                    raise BackendUnavailableError(f"Postgres: {exc}") from exc
                if not claimed:
                    return self._slot_rejection(windows, slots, index, now)
            short = [window for window in windows if self._available(window) < window.need]
            exhausted = await self._claim(short, now)
            if exhausted is not None:
                return self._rejection(windows, slots, windows.index(exhausted), now)
        outcome = self._consume_from_leases(windows, slots, ticket_id, now)
        if outcome is not None:
            return outcome
        short_slots = self._slot_leases.short(slots, now)
        if short_slots:
            return self._slot_rejection(windows, slots, short_slots[0], now)
        short_index = next(i for i, w in enumerate(windows) if self._available(w) < w.need)
        return self._rejection(windows, slots, short_index, now)

    async def release(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> None:
        if self.release_in_memory(ticket_id, slot_scopes, corrections, now):
            return
        self._slots.remove(slot_scopes, ticket_id)
        for window, delta in corrections:
            lease = self._lease(window)
            if delta < 0:
                # The estimate was spent from this worker's block, so the
                # credit goes back to the block.
                lease.available -= delta
                continue
            spent_from_block = min(lease.available, delta)
            lease.available -= spent_from_block
            if delta > spent_from_block:
                await self._add_overage(window, delta - spent_from_block)

    def release_in_memory(
        self,
        ticket_id: str,
        slot_scopes: Sequence[Scope],
        corrections: Sequence[tuple[WindowCheck, int]],
        now: float,
    ) -> bool:
        # Only tokens used beyond the estimate and beyond this worker's
        # block need a write to Postgres.
        for window, delta in corrections:
            if delta > self._available(window):
                return False
        self._slots.remove(slot_scopes, ticket_id)
        for window, delta in corrections:
            self._lease(window).available -= delta
        return True

    async def close(self) -> None:
        await self._slot_leases.close()
        self._leases.clear()
        self._locks.clear()

    def _available(self, window: WindowCheck) -> int:
        lease = self._leases.get(window.key)
        return 0 if lease is None else lease.available

    def _lease(self, window: WindowCheck) -> _Lease:
        lease = self._leases.get(window.key)
        if lease is None:
            lease = _Lease(0, 0, window.window_end)
            self._leases[window.key] = lease
        return lease

    def _estimated_counts(self, windows: Sequence[WindowCheck]) -> list[int]:
        counts = []
        for window in windows:
            lease = self._leases.get(window.key)
            counts.append(0 if lease is None else max(lease.shared_used - lease.available, 0))
        return counts

    def _consume_from_leases(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        ticket_id: str,
        now: float,
    ) -> AcquireOutcome | None:
        """Admit or reject from memory; return None when a block must be claimed."""
        for index, window in enumerate(windows):
            if window.need > window.limit:
                return self._rejection(windows, slots, index, now)
        in_flight, rejected_slot = self._slots.first_rejected(slots, now)
        if rejected_slot is not None:
            counts = self._estimated_counts(windows)
            return AcquireOutcome(counts, in_flight, rejected_slot=rejected_slot)
        if slots and self._slot_leases.short(slots, now):
            return None
        leases = self._leases
        found = [leases.get(window.key) for window in windows]
        for window, lease in zip(windows, found, strict=True):
            if lease is None or lease.available < window.need:
                return None
        counts = []
        for window, lease in zip(windows, found, strict=True):
            lease.available -= window.amount  # type: ignore[union-attr]
            counts.append(max(lease.shared_used - lease.available, 0))  # type: ignore[union-attr]
        self._slots.add(slots, ticket_id, now)
        return AcquireOutcome(counts, [n + 1 for n in in_flight])

    def _rejection(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        index: int,
        now: float,
    ) -> AcquireOutcome:
        in_flight = [self._slots.in_flight(slot.scope, now) for slot in slots]
        return AcquireOutcome(self._estimated_counts(windows), in_flight, rejected_window=index)

    def _slot_rejection(
        self,
        windows: Sequence[WindowCheck],
        slots: Sequence[SlotCheck],
        index: int,
        now: float,
    ) -> AcquireOutcome:
        # Other processes hold the rest of the slots, so the scope is full.
        in_flight = [self._slots.in_flight(slot.scope, now) for slot in slots]
        in_flight[index] = slots[index].limit
        return AcquireOutcome(self._estimated_counts(windows), in_flight, rejected_slot=index)

    async def _claim(self, short: Sequence[WindowCheck], now: float) -> WindowCheck | None:
        """Claim blocks for the short windows; return the first window out of capacity."""
        ordered = sorted(short, key=lambda window: window.key)
        async with contextlib.AsyncExitStack() as stack:
            # Locks are taken in key order, so two requests cannot deadlock,
            # and at most one claim per window is in flight in this process.
            for window in ordered:
                await stack.enter_async_context(self._locks.setdefault(window.key, asyncio.Lock()))
            for window in ordered:
                if not await self._claim_window(window):
                    return window
        await self._prune(now)
        return None

    async def _claim_window(self, window: WindowCheck) -> bool:
        lease = self._lease(window)
        shortage = window.need - lease.available
        if shortage <= 0:
            return True
        block = max(self.block_size(window.limit), shortage)
        params = self._row_params(window) | {
            "first_grant": min(block, window.limit),
            "block": block,
            "limit": window.limit,
            "shortage": shortage,
        }
        row = await self._fetch_one(_CLAIM_SQL, params)
        if row is None:
            lease.shared_used = window.limit
            return False
        lease.shared_used, granted = int(row[0]), int(row[1])
        lease.available += granted
        return lease.available >= window.need

    async def _add_overage(self, window: WindowCheck, extra: int) -> None:
        await self._execute(_OVERAGE_SQL, self._row_params(window) | {"extra": extra})

    async def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + 300
        for key in [key for key, lease in self._leases.items() if lease.window_end <= now]:
            del self._leases[key]
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]
        # Rows of windows that ended over an hour ago are no longer read.
        await self._execute(_PRUNE_SQL, (datetime.fromtimestamp(now - 3600, UTC),))

    @staticmethod
    def _row_params(window: WindowCheck) -> dict[str, Any]:
        return {
            "scope_type": window.scope[0],
            "scope_id": window.scope[1],
            "limit_name": window.kind.name,
            "window_start": datetime.fromtimestamp(window.window_start, UTC),
            "window_end": datetime.fromtimestamp(window.window_end, UTC),
        }

    async def _fetch_one(self, query: str, params: dict[str, Any]) -> Any:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                return await (await conn.execute(query, params)).fetchone()
        except psycopg.OperationalError as exc:
            raise BackendUnavailableError(f"Postgres: {exc}") from exc

    async def _execute(self, query: str, params: dict[str, Any] | tuple[Any, ...]) -> None:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                await conn.execute(query, params)
        except psycopg.OperationalError as exc:
            raise BackendUnavailableError(f"Postgres: {exc}") from exc


@dataclass
class RateLimitTicket:
    """An admitted request's claim on its limits, handed back to `release`."""

    ticket_id: str
    estimated_tokens: int
    token_windows: tuple[WindowCheck, ...]
    slot_scopes: tuple[Scope, ...]
    # The backend that admitted the request; None when no limit applied.
    backend: RateLimitBackend | None
    limit_headers: dict[str, str] = field(default_factory=dict)
    released: bool = False

    def headers(self) -> dict[str, str]:
        return dict(self.limit_headers)


class _RepeatedWarning:
    """Warning log that writes at most once per interval and counts the repeats."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next_at = float("-inf")
        self._suppressed = 0

    def warn(self, now: float, message: str, *args: object) -> None:
        if now < self._next_at:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, self._suppressed)
        logger.warning(message, *args)
        self._next_at = now + self._interval
        self._suppressed = 0


class RateLimiter:
    """Checks and consumes the rate limits of a request's scopes.

    When `backend` raises BackendUnavailableError, requests are counted in
    `fallback` (per process) and the backend is tried again after
    `retry_interval` seconds. `clock` returns Unix seconds, and tests pass a
    fake one to roll windows over without sleeping.
    """

    def __init__(
        self,
        limits: RateLimitLookup,
        backend: RateLimitBackend,
        *,
        fallback: RateLimitBackend | None = None,
        clock: Callable[[], float] = time.time,
        retry_interval: float = 5.0,
        warning_interval: float = 60.0,
    ) -> None:
        self._limits = limits
        self._backend = backend
        self._fallback = fallback if fallback is not None else LocalBackend()
        self._clock = clock
        self._retry_interval = retry_interval
        self._retry_at: float | None = None
        self._failures = 0
        self._outage_warning = _RepeatedWarning(warning_interval)
        self._windows: dict[tuple[Scope, str, int, int, int], WindowCheck] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        # Tickets acquired and not yet released, for the metrics gauge.
        self.open_tickets = 0

    @property
    def degraded(self) -> bool:
        """Whether requests are counted per process because the backend failed."""
        return self._retry_at is not None

    async def acquire(
        self, scopes: list[Scope], estimated_tokens: int, now: float | None = None
    ) -> RateLimitTicket:
        """Admit a request against every limit of `scopes`, or raise RateLimitError."""
        now = self._clock() if now is None else now
        estimated_tokens = max(estimated_tokens, 0)
        plan = self._plan(scopes, now)
        windows, token_windows = self._windows_of(plan, estimated_tokens)
        slots = plan.slots
        # Ticket ids name concurrency slots, so only requests that take one need one.
        ticket_id = secrets.token_hex(12) if slots else ""
        if not windows and not slots:
            self.open_tickets += 1
            return RateLimitTicket(ticket_id, estimated_tokens, (), (), None)
        backend, outcome = await self._acquire(windows, slots, ticket_id, now)
        if not outcome.admitted:
            raise _rejection_error(windows, slots, outcome, now)
        self.open_tickets += 1
        return RateLimitTicket(
            ticket_id,
            estimated_tokens,
            token_windows,
            plan.slot_scopes,
            backend,
            limit_headers(windows, outcome.counts, now),
        )

    async def release(
        self, ticket: RateLimitTicket, actual_tokens: int, now: float | None = None
    ) -> None:
        """Free the ticket's concurrency slots and correct its token estimate.

        The difference between actual and estimated tokens is applied to the
        window the estimate was charged to. If that window has ended, extra
        tokens are charged to the current window and a surplus is dropped.
        Releasing a ticket twice does nothing.
        """
        now = self._clock() if now is None else now
        if self.release_in_memory(ticket, actual_tokens, now) or ticket.backend is None:
            return
        ticket.released = True
        self.open_tickets -= 1
        delta = max(actual_tokens, 0) - ticket.estimated_tokens
        corrections = token_corrections(ticket.token_windows, delta, now)
        try:
            await ticket.backend.release(ticket.ticket_id, ticket.slot_scopes, corrections, now)
        except BackendUnavailableError as exc:
            self._outage_warning.warn(
                now,
                "releasing rate limit ticket %s failed (%s); its concurrency slots "
                "expire on their own and its token correction is lost",
                ticket.ticket_id,
                exc,
            )

    def release_in_memory(
        self, ticket: RateLimitTicket, actual_tokens: int, now: float | None = None
    ) -> bool:
        """Release the ticket as `release` does if that needs no I/O, and return True.

        Return False, with the ticket still held, when `release` must be
        awaited. The proxy calls this first so that most calls end without
        a task for their release.
        """
        if ticket.released:
            return True
        backend = ticket.backend
        if backend is not None:
            now = self._clock() if now is None else now
            delta = max(actual_tokens, 0) - ticket.estimated_tokens
            corrections = token_corrections(ticket.token_windows, delta, now)
            if (corrections or ticket.slot_scopes) and not backend.release_in_memory(
                ticket.ticket_id, ticket.slot_scopes, corrections, now
            ):
                return False
        ticket.released = True
        self.open_tickets -= 1
        return True

    async def close(self) -> None:
        await self._backend.close()
        await self._fallback.close()

    def _plan(self, scopes: list[Scope], now: float) -> _Plan:
        """Return the checks of `scopes` in the minute of `now`, reusing an equal plan.

        The cache key contains the scopes' current configs, so a reloaded limit
        makes a new plan. Day windows start on minute boundaries too, so
        one plan never spans two days.
        """
        scope_keys = tuple(scopes)
        configs = tuple([self._limits.get(*scope) for scope in scope_keys])
        minute = int(now // 60)
        cache_key = (scope_keys, configs, minute)
        plan = self._plans.get(cache_key)
        if plan is not None:
            return plan
        templates: list[WindowCheck | tuple[Scope, int, int]] = []
        slots: list[SlotCheck] = []
        for scope, config in dict(zip(scope_keys, configs, strict=True)).items():
            if config is None:
                continue
            for kind in WINDOW_KINDS:
                limit = getattr(config, kind.name)
                if limit is None:
                    continue
                window_start = int(now // kind.seconds) * kind.seconds
                if kind is TOKENS_PER_MINUTE:
                    templates.append((scope, max(limit, 0), window_start))
                else:
                    templates.append(self._window(scope, kind, max(limit, 0), 1, window_start))
            if config.max_concurrent is not None:
                slots.append(SlotCheck(scope, max(config.max_concurrent, 0)))
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        plan = self._plans[cache_key] = _Plan(
            tuple(templates), tuple(slots), tuple(slot.scope for slot in slots)
        )
        return plan

    def _windows_of(
        self, plan: _Plan, estimated_tokens: int
    ) -> tuple[tuple[WindowCheck, ...], tuple[WindowCheck, ...]]:
        """Return the plan's checks for this token estimate, and its tokens checks."""
        found = plan.by_tokens.get(estimated_tokens)
        if found is not None:
            return found
        windows = tuple(
            [
                template
                if isinstance(template, WindowCheck)
                else self._window(
                    template[0], TOKENS_PER_MINUTE, template[1], estimated_tokens, template[2]
                )
                for template in plan.templates
            ]
        )
        token_windows = tuple(w for w in windows if w.kind is TOKENS_PER_MINUTE)
        if len(plan.by_tokens) >= _PLAN_TOKEN_SIZES:
            plan.by_tokens.clear()
        found = plan.by_tokens[estimated_tokens] = (windows, token_windows)
        return found

    def _window(
        self, scope: Scope, kind: WindowKind, limit: int, amount: int, window_start: int
    ) -> WindowCheck:
        """Return the WindowCheck for these values, reusing an equal one made earlier.

        WindowCheck is immutable, and requests of one scope mostly repeat the
        same checks within a window, so one object serves them all.
        """
        cache_key = (scope, kind.name, limit, amount, window_start)
        window = self._windows.get(cache_key)
        if window is None:
            if len(self._windows) >= _WINDOW_CACHE_SIZE:
                self._windows.clear()
            window = self._windows[cache_key] = WindowCheck(
                scope, kind, limit, amount, window_start
            )
        return window

    async def _acquire(
        self,
        windows: list[WindowCheck],
        slots: list[SlotCheck],
        ticket_id: str,
        now: float,
    ) -> tuple[RateLimitBackend, AcquireOutcome]:
        if self._retry_at is not None and now < self._retry_at:
            return self._fallback, await self._fallback.acquire(windows, slots, ticket_id, now)
        if self._retry_at is not None:
            # Requests that arrive while this one probes the backend use the
            # fallback, so an outage costs one probe per retry interval.
            self._retry_at = now + self._retry_interval
        try:
            outcome = await self._backend.acquire(windows, slots, ticket_id, now)
        except BackendUnavailableError as exc:
            self._failures += 1
            self._retry_at = now + self._retry_interval
            self._outage_warning.warn(
                now,
                "rate limit backend unavailable (%s); limits apply per process and "
                "the backend is retried every %.0f s",
                exc,
                self._retry_interval,
            )
            return self._fallback, await self._fallback.acquire(windows, slots, ticket_id, now)
        if self._retry_at is not None:
            logger.info(
                "rate limit backend available again after %d failed attempts", self._failures
            )
            self._retry_at = None
            self._failures = 0
        return self._backend, outcome


def token_corrections(
    token_windows: Sequence[WindowCheck], delta: int, now: float
) -> list[tuple[WindowCheck, int]]:
    corrections: list[tuple[WindowCheck, int]] = []
    if delta == 0:
        return corrections
    for window in token_windows:
        current_start = int(now // window.kind.seconds) * window.kind.seconds
        if current_start == window.window_start:
            corrections.append((window, delta))
        elif delta > 0:
            corrections.append((replace(window, window_start=current_start), delta))
    return corrections


def format_reset(seconds: float) -> str:
    """Format a duration the way OpenAI's x-ratelimit-reset headers do."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_HEADER_NAMES = tuple(
    (
        unit,
        (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}", f"x-ratelimit-reset-{unit}"),
    )
    for unit in ("requests", "tokens")
)


def limit_headers(
    windows: Sequence[WindowCheck],
    counts: Sequence[int],
    now: float,
    rejected: WindowCheck | None = None,
) -> dict[str, str]:
    """Build the x-ratelimit-* headers for the tightest requests and tokens limits.

    The rejected window, if given, is reported for its unit in place of the
    tightest one.
    """
    # Per unit: (limit - used, limit, window, used) of the window to report.
    chosen: dict[str, tuple[int, int, WindowCheck, int]] = {}
    for window, used in zip(windows, counts, strict=True):
        unit = window.kind.unit
        best = chosen.get(unit)
        if best is not None and best[2] is rejected:
            continue
        candidate = (window.limit - used, window.limit, window, used)
        if best is None or window is rejected or candidate[:2] < best[:2]:
            chosen[unit] = candidate
    headers: dict[str, str] = {}
    for unit, (limit_name, remaining_name, reset_name) in _HEADER_NAMES:
        if unit not in chosen:
            continue
        _, limit, window, used = chosen[unit]
        headers[limit_name] = str(limit)
        headers[remaining_name] = str(max(limit - used, 0))
        headers[reset_name] = format_reset(window.window_end - now)
    return headers


def _rejection_error(
    windows: Sequence[WindowCheck],
    slots: Sequence[SlotCheck],
    outcome: AcquireOutcome,
    now: float,
) -> RateLimitError:
    if outcome.rejected_window is not None:
        window = windows[outcome.rejected_window]
        scope_type, scope_id = window.scope
        retry_after = max(math.ceil(window.window_end - now), 1)
        message = f"rate limit exceeded: {scope_type} {scope_id} allows {window.limit} "
        message += window.kind.label
        if window.kind.unit == "tokens":
            message += f" and this request needs an estimated {window.amount}"
        message += f"; retry after {retry_after} s"
        headers = limit_headers(windows, outcome.counts, now, rejected=window)
    else:
        assert outcome.rejected_slot is not None
        slot = slots[outcome.rejected_slot]
        scope_type, scope_id = slot.scope
        retry_after = 1
        message = (
            f"rate limit exceeded: {scope_type} {scope_id} allows {slot.limit} concurrent "
            "requests; retry when one of them has finished"
        )
        headers = limit_headers(windows, outcome.counts, now)
    headers["retry-after"] = str(retry_after)
    return RateLimitError(message, code="rate_limit_exceeded", headers=headers)


_LOAD_LIMITS = (
    "SELECT scope_type, scope_id, requests_per_minute, tokens_per_minute, "
    "requests_per_day, max_concurrent FROM rate_limits"
)


class RateLimitConfigCache:
    """The `rate_limits` table in memory, reloaded every `refresh_interval` seconds.

    Call `refresh` once before serving, then `start` for background reloads.
    A failed reload keeps the previous limits.
    """

    def __init__(self, pool: AsyncConnectionPool, refresh_interval: float = 5.0) -> None:
        self._pool = pool
        self._refresh_interval = refresh_interval
        self._configs: dict[Scope, RateLimitConfig] = {}
        self._task: asyncio.Task[None] | None = None
        self._failure_warning = _RepeatedWarning(60.0)

    def get(self, scope_type: str, scope_id: int) -> RateLimitConfig | None:
        return self._configs.get((scope_type, scope_id))

    async def refresh(self) -> None:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_LOAD_LIMITS)).fetchall()
        configs: dict[Scope, RateLimitConfig] = {}
        for scope_type, scope_id, rpm, tpm, rpd, max_concurrent in rows:
            if rpm is None and tpm is None and rpd is None and max_concurrent is None:
                continue
            configs[(scope_type, int(scope_id))] = RateLimitConfig(rpm, tpm, rpd, max_concurrent)
        self._configs = configs

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="rate-limit-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
            except psycopg.Error as exc:
                self._failure_warning.warn(
                    time.monotonic(),
                    "reloading rate limits failed (%s); keeping the previous limits",
                    exc,
                )


def create_backend(
    redis_url: str | None, pool: AsyncConnectionPool, prefix: str = "gatewayz"
) -> RateLimitBackend:
    """Return RedisBackend when a Redis URL is configured, else PostgresBackend."""
    if redis_url:
        return RedisBackend(redis_url, prefix)
    return PostgresBackend(pool)
