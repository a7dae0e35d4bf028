"""Rate limiter: every backend, counting shared between limiters, Redis outages."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
import redis
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, text

from gateway_core.errors import RateLimitError
from proxy.ratelimit import (
    LocalBackend,
    PostgresBackend,
    RateLimitBackend,
    RateLimitConfig,
    RateLimitConfigCache,
    RateLimiter,
    RateLimitTicket,
    RedisBackend,
    Scope,
    format_reset,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
# One hour into a UTC day, so T0 starts both a minute and an hour.
T0 = float(1_800_000_000 // 86_400 * 86_400 + 3600)
KEY: Scope = ("key", 12)
TEAM: Scope = ("team", 3)
MAX_REQUEST_SECONDS = 30.0


class StaticLimits:
    def __init__(self, configs: dict[Scope, RateLimitConfig]) -> None:
        self.configs = configs

    def get(self, scope_type: str, scope_id: int) -> RateLimitConfig | None:
        return self.configs.get((scope_type, scope_id))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """Return a port on 127.0.0.1 with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"gatewayz-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(prefix)


class BackendFactory:
    """Opens backends of one kind that share their counts with each other."""

    def __init__(self, kind: str, redis_prefix: str, database_url: str | None) -> None:
        self.kind = kind
        self.redis_prefix = redis_prefix
        self.database_url = database_url
        self._local = LocalBackend(MAX_REQUEST_SECONDS)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RateLimitBackend]:
        if self.kind == "local":
            # Local counts are shared by using the same instance.
            yield self._local
        elif self.kind == "redis":
            backend = RedisBackend(
                REDIS_URL, self.redis_prefix, max_request_seconds=MAX_REQUEST_SECONDS
            )
            try:
                yield backend
            finally:
                await backend.close()
        else:
            assert self.database_url is not None
            pool = AsyncConnectionPool(self.database_url, min_size=1, max_size=4, open=False)
            await pool.open(wait=True, timeout=10)
            try:
                yield PostgresBackend(pool, max_request_seconds=MAX_REQUEST_SECONDS)
            finally:
                await pool.close()

    @asynccontextmanager
    async def limiter(self, configs: dict[Scope, RateLimitConfig]) -> AsyncIterator[RateLimiter]:
        async with self.open() as backend:
            yield RateLimiter(StaticLimits(configs), backend, clock=FakeClock(T0))


@pytest.fixture(params=["local", "redis", "postgres"])
def backends(request: pytest.FixtureRequest, redis_prefix: str) -> BackendFactory:
    database_url = None
    if request.param == "postgres":
        request.getfixturevalue("engine")
        database_url = request.getfixturevalue("database_url")
    return BackendFactory(request.param, redis_prefix, database_url)


@pytest.fixture(params=["redis", "postgres"])
def shared_backends(request: pytest.FixtureRequest, redis_prefix: str) -> BackendFactory:
    database_url = None
    if request.param == "postgres":
        request.getfixturevalue("engine")
        database_url = request.getfixturevalue("database_url")
    return BackendFactory(request.param, redis_prefix, database_url)


async def try_acquire(
    limiter: RateLimiter, scopes: list[Scope], tokens: int, now: float
) -> RateLimitTicket | None:
    try:
        return await limiter.acquire(scopes, tokens, now=now)
    except RateLimitError:
        return None


async def rejection(
    limiter: RateLimiter, scopes: list[Scope], tokens: int, now: float
) -> RateLimitError:
    with pytest.raises(RateLimitError) as caught:
        await limiter.acquire(scopes, tokens, now=now)
    return caught.value


def test_format_reset_matches_openai() -> None:
    assert format_reset(0.02) == "20ms"
    assert format_reset(0.5) == "500ms"
    assert format_reset(9) == "9s"
    assert format_reset(8.2) == "9s"
    assert format_reset(360) == "6m0s"
    assert format_reset(59.2) == "1m0s"
    assert format_reset(86_340) == "23h59m0s"
    assert format_reset(0) == "0s"


def test_rpm_enforced_at_boundary(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(requests_per_minute=5)}
        async with backends.limiter(configs) as limiter:
            remaining = []
            for _ in range(5):
                ticket = await limiter.acquire([KEY, TEAM], 0, now=T0 + 1)
                remaining.append(ticket.headers()["x-ratelimit-remaining-requests"])
                assert ticket.headers()["x-ratelimit-limit-requests"] == "5"
                assert ticket.headers()["x-ratelimit-reset-requests"] == "59s"
            assert remaining == ["4", "3", "2", "1", "0"]

            error = await rejection(limiter, [KEY, TEAM], 0, T0 + 1)
            assert error.status_code == 429
            assert error.code == "rate_limit_exceeded"
            assert "rate limit exceeded: key 12 allows 5 requests per minute" in error.message
            assert error.headers["retry-after"] == "59"
            assert error.headers["x-ratelimit-limit-requests"] == "5"
            assert error.headers["x-ratelimit-remaining-requests"] == "0"
            assert error.headers["x-ratelimit-reset-requests"] == "59s"
            assert "x-ratelimit-limit-tokens" not in error.headers

    asyncio.run(run())


def test_rejection_consumes_nothing_elsewhere(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {
            KEY: RateLimitConfig(requests_per_day=3),
            TEAM: RateLimitConfig(requests_per_minute=2),
        }
        async with backends.limiter(configs) as limiter:
            await limiter.acquire([KEY, TEAM], 0, now=T0)
            await limiter.acquire([KEY, TEAM], 0, now=T0)
            for _ in range(3):
                error = await rejection(limiter, [KEY, TEAM], 0, T0 + 10)
                assert "team 3 allows 2 requests per minute" in error.message

            # The three rejected requests took nothing from the key's day,
            # so one request of the three per day is still left.
            await limiter.acquire([KEY, TEAM], 0, now=T0 + 60)
            error = await rejection(limiter, [KEY, TEAM], 0, T0 + 61)
            assert "key 12 allows 3 requests per day" in error.message
            assert error.headers["retry-after"] == str(86_400 - 3600 - 61)

    asyncio.run(run())


def test_tpm_release_corrects_tokens(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(tokens_per_minute=1000)}
        async with backends.limiter(configs) as limiter:
            first = await limiter.acquire([KEY], 400, now=T0)
            assert first.headers()["x-ratelimit-remaining-tokens"] == "600"
            assert first.headers()["x-ratelimit-reset-tokens"] == "1m0s"
            await limiter.release(first, 100, now=T0 + 1)

            # 100 used plus 900 estimated fills the minute exactly.
            second = await limiter.acquire([KEY], 900, now=T0 + 2)
            error = await rejection(limiter, [KEY], 1, T0 + 3)
            assert "key 12 allows 1000 tokens per minute" in error.message
            assert "needs an estimated 1" in error.message
            assert error.headers["x-ratelimit-remaining-tokens"] == "0"
            assert error.headers["retry-after"] == "57"

            # A surplus estimate from an ended window is not credited to
            # the current one.
            third = await limiter.acquire([KEY], 600, now=T0 + 60)
            await limiter.release(second, 0, now=T0 + 61)
            error = await rejection(limiter, [KEY], 500, T0 + 62)
            assert "tokens per minute" in error.message
            await limiter.release(third, 600, now=T0 + 63)

            # An estimate above the limit can never pass.
            error = await rejection(limiter, [KEY], 5000, T0 + 120)
            assert "needs an estimated 5000" in error.message

    asyncio.run(run())


def test_tpm_overage_charged_to_window(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(tokens_per_minute=1000)}
        async with backends.limiter(configs) as first, backends.limiter(configs) as second:
            ticket = await first.acquire([KEY], 100, now=T0)
            await first.release(ticket, 700, now=T0 + 1)
            # 700 tokens are used, so 400 more do not fit in the window.
            error = await rejection(second, [KEY], 400, T0 + 2)
            assert "tokens per minute" in error.message
            assert await try_acquire(second, [KEY], 300, T0 + 2) is not None

    asyncio.run(run())


def test_concurrency_slots_released(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(max_concurrent=2)}
        async with backends.limiter(configs) as limiter:
            first = await limiter.acquire([KEY], 0, now=T0)
            second = await limiter.acquire([KEY], 0, now=T0)
            error = await rejection(limiter, [KEY], 0, T0)
            assert "key 12 allows 2 concurrent requests" in error.message
            assert error.headers["retry-after"] == "1"

            await limiter.release(first, 0, now=T0 + 1)
            # A second release of the same ticket frees nothing more.
            await limiter.release(first, 0, now=T0 + 1)
            third = await limiter.acquire([KEY], 0, now=T0 + 1)
            assert await try_acquire(limiter, [KEY], 0, T0 + 1) is None

            await limiter.release(second, 0, now=T0 + 2)
            await limiter.release(third, 0, now=T0 + 2)
            for _ in range(2):
                await limiter.acquire([KEY], 0, now=T0 + 3)
            assert await try_acquire(limiter, [KEY], 0, T0 + 3) is None

    asyncio.run(run())


def test_unreleased_slots_expire(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(max_concurrent=2)}
        async with backends.limiter(configs) as dead, backends.limiter(configs) as alive:
            # `dead` is a worker that exits without releasing its slots.
            await dead.acquire([KEY], 0, now=T0)
            await dead.acquire([KEY], 0, now=T0)
            assert await try_acquire(alive, [KEY], 0, T0 + 1) is None
            later = T0 + MAX_REQUEST_SECONDS + 1
            assert await try_acquire(dead, [KEY], 0, later) is not None
            assert await try_acquire(alive, [KEY], 0, later) is not None

    asyncio.run(run())


def test_window_rollover_with_clock(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(requests_per_minute=3)}
        async with backends.limiter(configs) as limiter:
            # Without `now`, acquire reads the injected clock, which is at T0.
            await limiter.acquire([KEY], 0)
            for _ in range(2):
                await limiter.acquire([KEY], 0, now=T0 + 59)
            error = await rejection(limiter, [KEY], 0, T0 + 59.5)
            assert error.headers["retry-after"] == "1"
            assert error.headers["x-ratelimit-reset-requests"] == "500ms"

            for _ in range(3):
                await limiter.acquire([KEY], 0, now=T0 + 60)
            assert await try_acquire(limiter, [KEY], 0, T0 + 119) is None

    asyncio.run(run())


def test_rpd_enforced_and_rolls_over(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(requests_per_day=3)}
        async with backends.limiter(configs) as limiter:
            for offset in (0, 600, 7200):
                ticket = await limiter.acquire([KEY], 0, now=T0 + offset)
                assert ticket.headers()["x-ratelimit-limit-requests"] == "3"
            error = await rejection(limiter, [KEY], 0, T0 + 7300)
            assert "key 12 allows 3 requests per day" in error.message
            seconds_left = 86_400 - 3600 - 7300
            assert error.headers["retry-after"] == str(seconds_left)
            assert error.headers["x-ratelimit-reset-requests"] == format_reset(seconds_left)

            next_day = T0 - 3600 + 86_400
            await limiter.acquire([KEY], 0, now=next_day)

    asyncio.run(run())


def test_headers_report_tightest_limits(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {
            KEY: RateLimitConfig(requests_per_minute=10, tokens_per_minute=1000),
            TEAM: RateLimitConfig(requests_per_minute=5, tokens_per_minute=10_000),
        }
        async with backends.limiter(configs) as limiter:
            headers = (await limiter.acquire([KEY, TEAM], 100, now=T0)).headers()
            assert headers["x-ratelimit-limit-requests"] == "5"
            assert headers["x-ratelimit-remaining-requests"] == "4"
            assert headers["x-ratelimit-reset-requests"] == "1m0s"
            assert headers["x-ratelimit-limit-tokens"] == "1000"
            assert headers["x-ratelimit-remaining-tokens"] == "900"
            assert headers["x-ratelimit-reset-tokens"] == "1m0s"

    asyncio.run(run())


def test_changed_limit_applies_at_once(backends: BackendFactory) -> None:
    async def run() -> None:
        configs = {KEY: RateLimitConfig(requests_per_minute=2)}
        async with backends.limiter(configs) as limiter:
            await limiter.acquire([KEY], 0, now=T0)
            await limiter.acquire([KEY], 0, now=T0)
            error = await rejection(limiter, [KEY], 0, T0 + 1)
            assert "allows 2 requests per minute" in error.message

            # A reloaded limit takes effect within the same minute.
            configs[KEY] = RateLimitConfig(requests_per_minute=3)
            ticket = await limiter.acquire([KEY], 0, now=T0 + 2)
            assert ticket.headers()["x-ratelimit-limit-requests"] == "3"
            assert ticket.headers()["x-ratelimit-remaining-requests"] == "0"
            del configs[KEY]
            assert (await limiter.acquire([KEY], 0, now=T0 + 3)).headers() == {}

    asyncio.run(run())


def test_unlimited_scopes_pass(backends: BackendFactory) -> None:
    async def run() -> None:
        async with backends.limiter({}) as limiter:
            ticket = await limiter.acquire([KEY, TEAM], 10**9, now=T0)
            assert ticket.headers() == {}
            await limiter.release(ticket, 10**9, now=T0)

    asyncio.run(run())


def test_two_limiters_never_exceed_limit(shared_backends: BackendFactory) -> None:
    async def run() -> list[int]:
        configs = {KEY: RateLimitConfig(requests_per_minute=30)}
        async with shared_backends.limiter(configs) as a, shared_backends.limiter(configs) as b:
            attempts = [try_acquire(limiter, [KEY], 0, T0) for limiter in (a, b) for _ in range(50)]
            results = await asyncio.gather(*attempts)
        return [
            sum(ticket is not None for ticket in results[i * 50 : (i + 1) * 50]) for i in (0, 1)
        ]

    admitted = asyncio.run(run())
    assert sum(admitted) <= 30
    # Each limiter has more requests than capacity, so it spends every block
    # it claims and the total reaches the limit.
    assert sum(admitted) == 30


def test_postgres_claims_never_exceed_limit(engine: Engine, database_url: str) -> None:
    factory = BackendFactory("postgres", "unused", database_url)

    async def run() -> int:
        configs = {
            KEY: RateLimitConfig(requests_per_minute=30, tokens_per_minute=3000),
            TEAM: RateLimitConfig(requests_per_minute=1000),
        }
        async with factory.limiter(configs) as a, factory.limiter(configs) as b:
            attempts = [
                try_acquire(limiter, [KEY, TEAM], 10, T0 + 5)
                for limiter in (a, b)
                for _ in range(50)
            ]
            results = await asyncio.gather(*attempts)
        return sum(ticket is not None for ticket in results)

    assert asyncio.run(run()) == 30
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT scope_type, limit_name, used FROM rate_limit_windows")
        ).all()
    claimed = {(scope_type, limit_name): used for scope_type, limit_name, used in rows}
    assert claimed[("key", "requests_per_minute")] == 30
    assert claimed[("key", "tokens_per_minute")] <= 3000
    assert claimed[("team", "requests_per_minute")] <= 1000


def admit_in_child(
    barrier: Any, results: Any, redis_url: str, prefix: str, now: float, attempts: int
) -> None:
    """Run `attempts` concurrent acquires against Redis and report how many passed."""

    async def run() -> int:
        limits = StaticLimits({KEY: RateLimitConfig(requests_per_minute=50)})
        limiter = RateLimiter(limits, RedisBackend(redis_url, prefix))
        try:
            barrier.wait(timeout=60)
            tickets = await asyncio.gather(
                *(try_acquire(limiter, [KEY], 0, now) for _ in range(attempts))
            )
            if limiter.degraded:
                raise RuntimeError("the limiter fell back to local limits")
        finally:
            await limiter.close()
        return sum(ticket is not None for ticket in tickets)

    try:
        results.put(asyncio.run(run()))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(repr(exc))


def test_redis_shared_across_processes(redis_prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    children = [
        context.Process(
            target=admit_in_child, args=(barrier, results, REDIS_URL, redis_prefix, T0, 40)
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        admitted = [results.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
                child.join(timeout=10)
    assert all(isinstance(count, int) for count in admitted), admitted
    # 80 concurrent requests from two processes against 50 per minute.
    assert sum(admitted) == 50


def test_redis_outage_degrades_to_local(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gatewayz.ratelimit")

    async def run() -> None:
        backend = RedisBackend(f"redis://127.0.0.1:{closed_port()}/0", redis_prefix, timeout=0.5)
        clock = FakeClock(T0)
        limits = StaticLimits({KEY: RateLimitConfig(requests_per_minute=3, max_concurrent=5)})
        limiter = RateLimiter(limits, backend, clock=clock, retry_interval=5.0)
        try:
            # Each acquire is more than the retry interval after the last,
            # so each one probes Redis again.
            for offset in (1, 7, 13):
                clock.now = T0 + offset
                ticket = await limiter.acquire([KEY], 0)
                assert limiter.degraded
                await limiter.release(ticket, 0)
            clock.now = T0 + 19
            error = await rejection(limiter, [KEY], 0, clock.now)
            assert "key 12 allows 3 requests per minute" in error.message
        finally:
            await limiter.close()

    asyncio.run(run())
    warnings = [r for r in caplog.records if r.name == "gatewayz.ratelimit"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "limits apply per process" in warnings[0].getMessage()


class TcpForwarder:
    """Forwards a loopback port to the test Redis, so a test can cut it off."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def test_redis_recovers_after_outage(redis_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatewayz.ratelimit")
    counter = f"{{{redis_prefix}}}:ratelimit:key:12:requests_per_minute:{int(T0)}"

    async def run() -> list[Any]:
        forwarder = TcpForwarder()
        await forwarder.start()
        backend = RedisBackend(f"redis://127.0.0.1:{forwarder.port}/0", redis_prefix)
        clock = FakeClock(T0)
        limits = StaticLimits({KEY: RateLimitConfig(requests_per_minute=100)})
        limiter = RateLimiter(limits, backend, clock=clock, retry_interval=5.0)
        direct = redis.Redis.from_url(REDIS_URL)
        counts = []
        try:
            await limiter.acquire([KEY], 0)
            counts.append(direct.get(counter))

            await forwarder.stop()
            clock.now = T0 + 1
            await limiter.acquire([KEY], 0)
            assert limiter.degraded
            counts.append(direct.get(counter))

            await forwarder.start()
            # Within the retry interval the limiter stays on local counts.
            clock.now = T0 + 3
            await limiter.acquire([KEY], 0)
            assert limiter.degraded
            clock.now = T0 + 7
            await limiter.acquire([KEY], 0)
            assert not limiter.degraded
            counts.append(direct.get(counter))
        finally:
            direct.close()
            await limiter.close()
            await forwarder.stop()
        return counts

    assert asyncio.run(run()) == [b"1", b"1", b"2"]
    messages = [r.getMessage() for r in caplog.records if r.name == "gatewayz.ratelimit"]
    assert len(messages) == 2
    assert "limits apply per process" in messages[0]
    assert "available again after 1 failed attempts" in messages[1]


def test_config_cache_loads_rows(engine: Engine, database_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO rate_limits (scope_type, scope_id, requests_per_minute, "
                "tokens_per_minute, requests_per_day, max_concurrent) VALUES "
                "('key', 12, 60, 1000, NULL, 4), ('team', 3, NULL, NULL, NULL, NULL)"
            )
        )

    async def run() -> None:
        pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
        await pool.open(wait=True, timeout=10)
        cache = RateLimitConfigCache(pool, refresh_interval=0.05)
        try:
            await cache.refresh()
            assert cache.get("key", 12) == RateLimitConfig(60, 1000, None, 4)
            # A row with every limit NULL limits nothing.
            assert cache.get("team", 3) is None
            assert cache.get("key", 13) is None

            cache.start()
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                await conn.execute(
                    "UPDATE rate_limits SET requests_per_minute = 5 WHERE scope_id = 12"
                )
                await conn.commit()
            for _ in range(100):
                config = cache.get("key", 12)
                if config is not None and config.requests_per_minute == 5:
                    break
                await asyncio.sleep(0.02)
            config = cache.get("key", 12)
            assert config is not None
            assert config.requests_per_minute == 5
        finally:
            await cache.stop()
            await pool.close()

    asyncio.run(run())
