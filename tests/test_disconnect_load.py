"""Many streaming clients that disconnect mid-stream: nothing is left behind.

After the load, the proxy's /metrics gauges (calls in flight, asyncio
tasks, open spend reservations, open rate limit tickets) must return to
their values from before it. So must its TCP connections to the fake
upstream, counted with psutil. Every cut call has exactly one usage row,
marked partial.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from gateway_core import directory, keys, model_routes, providers
from gateway_core.budgets import set_budget
from gateway_core.limits_admin import set_rate_limits
from gateway_core.schema import usage_events
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json

CLIENTS = 50
WAVES = 2
CHUNKS_READ = 3
GAUGES = (
    "gatewayz_inflight_requests",
    "gatewayz_asyncio_tasks",
    "gatewayz_open_reservations",
    "gatewayz_open_rate_limit_tickets",
)


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI(slow_chunks=400).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("disconnect") / "proxy.log")
    yield process
    process.stop()


@pytest.fixture
def key(engine: Engine, fake_upstream: FakeOpenAI) -> str:
    """A key whose team has a budget, a price and rate limits, so every check runs."""
    with engine.begin() as conn:
        providers.upsert_provider(conn, name="fake", base_url=fake_upstream.base_url)
        model_routes.set_price_override(conn, "fake/slow-stream", {"input": "1", "output": "2"})
        team = directory.create_team(conn, "disconnect")
        set_budget(
            conn, scope_type="team", scope_id=team.id, period="monthly", limit_usd=Decimal(1000)
        )
        set_rate_limits(
            conn,
            "owner",
            scope_type="team",
            scope_id=team.id,
            requests_per_minute=100_000,
            max_concurrent=1000,
        )
        return keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret


def gauges(proxy: ProxyProcess) -> dict[str, float]:
    text = httpx.get(proxy.base_url + "/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in GAUGES:
                values[sample.name] = sample.value
    assert set(values) == set(GAUGES), f"missing gauges: {set(GAUGES) - set(values)}"
    return values


def upstream_connections(proxy: ProxyProcess, upstream: FakeOpenAI) -> int:
    """Count the proxy's established TCP connections to the fake upstream."""
    connections = psutil.Process(proxy.process.pid).net_connections(kind="tcp")
    return sum(
        1
        for conn in connections
        if conn.raddr and conn.raddr.port == upstream.port and conn.status == "ESTABLISHED"
    )


Stream = tuple[httpx.Response, AsyncIterator[str]]


async def open_streams(proxy: ProxyProcess, key: str, count: int) -> list[Stream]:
    """Start `count` streaming calls and read a few chunks of each; leave them open.

    Each line iterator is returned with its response, because a line
    iterator that is garbage-collected closes the connection.
    """
    client = httpx.AsyncClient(
        base_url=proxy.base_url,
        timeout=30,
        limits=httpx.Limits(max_connections=count, max_keepalive_connections=0),
    )
    body = {**CHAT, "model": "fake/slow-stream", "stream": True}
    headers = {"authorization": f"Bearer {key}"}

    async def start() -> Stream:
        request = client.build_request("POST", "/v1/chat/completions", json=body, headers=headers)
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        lines = response.aiter_lines()
        received = 0
        while received < CHUNKS_READ:
            if (await anext(lines)).startswith("data: "):
                received += 1
        return response, lines

    return list(await asyncio.gather(*(start() for _ in range(count))))


async def close_streams(streams: list[Stream]) -> None:
    for response, lines in streams:
        await lines.aclose()  # type: ignore[attr-defined]
        await response.aclose()


def wait_until(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()  # type: ignore[operator]
        if result is True:
            return
        assert time.monotonic() < deadline, result
        time.sleep(0.1)


def test_disconnects_leak_nothing(
    proxy: ProxyProcess, key: str, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    # Warm-up: the upstream pool, the key cache, the budget lease and the limits.
    for _ in range(3):
        response = post_json(
            proxy.base_url, "/v1/chat/completions", {**CHAT, "model": "fake/x"}, key
        )
        assert response.status_code == 200
    wait_until(lambda: gauges(proxy)["gatewayz_open_rate_limit_tickets"] == 0 or "warm-up")
    baseline = gauges(proxy)
    baseline_connections = upstream_connections(proxy, fake_upstream)
    closed_before = fake_upstream.streams_closed_early
    request_ids: list[str] = []

    for _ in range(WAVES):
        loop = asyncio.new_event_loop()
        try:
            streams = loop.run_until_complete(open_streams(proxy, key, CLIENTS))
            request_ids += [response.headers["x-request-id"] for response, _ in streams]
            during = gauges(proxy)
            assert during["gatewayz_inflight_requests"] == CLIENTS
            assert during["gatewayz_open_reservations"] == CLIENTS
            assert during["gatewayz_open_rate_limit_tickets"] == CLIENTS
            assert during["gatewayz_asyncio_tasks"] > baseline["gatewayz_asyncio_tasks"]
            assert upstream_connections(proxy, fake_upstream) >= CLIENTS
            loop.run_until_complete(close_streams(streams))
        finally:
            loop.close()

        def settled() -> bool | str:
            now = gauges(proxy)
            for name in GAUGES:
                if now[name] > baseline[name]:
                    return f"{name} is {now[name]}, was {baseline[name]} before the load"
            connections = upstream_connections(proxy, fake_upstream)
            if connections > baseline_connections:
                return f"{connections} upstream connections, {baseline_connections} before"
            return True

        wait_until(settled)

    expected_closed = closed_before + WAVES * CLIENTS
    wait_until(lambda: fake_upstream.streams_closed_early == expected_closed or "upstream open")
    assert len(set(request_ids)) == WAVES * CLIENTS
    query = select(
        usage_events.c.request_id, usage_events.c.partial, usage_events.c.status_code
    ).where(usage_events.c.request_id.in_(request_ids))

    def rows_written() -> bool | str:
        with engine.connect() as conn:
            count = len(conn.execute(query).all())
        return count >= WAVES * CLIENTS or f"{count} usage rows written"

    wait_until(rows_written)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    assert len(rows) == WAVES * CLIENTS
    assert len({row.request_id for row in rows}) == WAVES * CLIENTS
    assert all(row.partial for row in rows)
    assert {row.status_code for row in rows} == {499}
