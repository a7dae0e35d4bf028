"""Two proxy processes with two workers each against one database, as behind a load balancer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway_core import budgets, keys
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json
from tests.test_spend import burst, setup_key, start_proxy

CALLS = 120
LIMIT = Decimal("0.15")


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture
def proxies(database_url: str, tmp_path: Path) -> Iterator[list[ProxyProcess]]:
    started = [
        start_proxy(database_url, tmp_path / "host-a.log", workers=2),
        start_proxy(database_url, tmp_path / "host-b.log", workers=2),
    ]
    yield started
    for proxy in started:
        proxy.stop()


def count(engine: Engine, query: str, **params: object) -> int:
    with engine.connect() as conn:
        return conn.execute(text(query), params).scalar_one()


def test_traffic_through_both_written_once(
    engine: Engine, upstream: FakeOpenAI, proxies: list[ProxyProcess]
) -> None:
    key, team_id, _ = setup_key(engine, upstream)
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="team", scope_id=team_id, period="daily", limit_usd=LIMIT
        )
    responses = asyncio.run(burst([proxy.base_url for proxy in proxies], key, CALLS))
    request_ids = [response.headers["x-request-id"] for response in responses]
    statuses = {response.status_code for response in responses}
    assert statuses == {200, 402}
    assert len(set(request_ids)) == CALLS

    # Rows are written off the request path; wait until every call has one.
    deadline = time.monotonic() + 20
    while count(engine, "SELECT count(*) FROM usage_events") < CALLS:
        assert time.monotonic() < deadline, "usage rows missing after 20 s"
        time.sleep(0.1)
    time.sleep(0.5)
    assert count(engine, "SELECT count(*) FROM usage_events") == CALLS
    assert count(engine, "SELECT count(DISTINCT request_id) FROM usage_events") == CALLS
    assert count(engine, "SELECT count(*) FROM usage_request_ids") == CALLS
    written = count(
        engine,
        "SELECT count(*) FROM usage_events WHERE request_id = ANY(:ids)",
        ids=request_ids,
    )
    assert written == CALLS
    assert count(engine, "SELECT coalesce(sum(requests), 0) FROM usage_daily") == CALLS

    # The budget holds across both hosts, and what was settled is what the rows cost.
    with engine.connect() as conn:
        spent = conn.execute(text("SELECT sum(cost_usd) FROM usage_events")).scalar_one()
        settled = conn.execute(text("SELECT spent FROM budget_spend")).scalar_one()
    assert spent <= LIMIT
    assert settled == spent
    admitted = sum(1 for response in responses if response.status_code == 200)
    assert spent == Decimal("0.003") * admitted


def test_revocation_seen_by_both(
    engine: Engine, upstream: FakeOpenAI, proxies: list[ProxyProcess]
) -> None:
    key, _, _ = setup_key(engine, upstream)
    body = {**CHAT, "model": "fake/any"}
    served = 0
    for proxy in proxies:
        for _ in range(4):
            # Four calls per process reach both of its workers with high odds,
            # so each worker has the key cached before the revocation.
            assert post_json(proxy.base_url, "/v1/chat/completions", body, key).status_code == 200
            served += 1

    with engine.begin() as conn:
        key_id = conn.execute(text("SELECT id FROM api_keys")).scalar_one()
        assert keys.revoke_key(conn, key_id)
    revoked_at = time.monotonic()

    for proxy in proxies:
        statuses: list[object] = []
        while time.monotonic() - revoked_at < 5:
            response = post_json(proxy.base_url, "/v1/chat/completions", body, key)
            served += response.status_code == 200
            code = response.json()["error"]["code"] if response.status_code != 200 else None
            statuses.append(code or response.status_code)
            if statuses[-8:] == ["api_key_revoked"] * 8:
                break
            time.sleep(0.05)
        assert statuses[-8:] == ["api_key_revoked"] * 8, f"{proxy.base_url}: {statuses}"

    # Every served call has exactly one usage row.
    query = "SELECT count(*) FROM usage_events WHERE status_code = 200"
    deadline = time.monotonic() + 10
    while count(engine, query) < served and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    assert count(engine, query) == served
