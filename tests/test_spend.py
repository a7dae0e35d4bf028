"""Budgets and credits hold under concurrency, across workers and processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from gateway_core import budgets, directory, keys, model_routes, providers
from gateway_core.limits_admin import set_rate_limits
from proxy.spend import describe_scope
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json, usage_row

# Output at $1,000 per million tokens: $0.001 a token. With max_tokens=10 a
# call reserves $0.01; the fake upstream's answer "fake answer: ping" is 3
# tokens, so it costs $0.003.
MAX_TOKENS = 10
RESERVE = Decimal("0.01")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def start_proxy(database_url: str, log: Path, workers: int = 1) -> ProxyProcess:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_UPSTREAM_MAX_RETRIES="0",
    )
    return ProxyProcess(env, log, workers=workers)


def setup_key(engine: Engine, upstream: FakeOpenAI) -> tuple[str, int, int]:
    with engine.begin() as conn:
        team = directory.create_team(conn, "lab")
        providers.upsert_provider(conn, name="fake", base_url=upstream.base_url)
        model_routes.set_price_override(conn, "fake/any", {"input": "0", "output": "1000"})
        issued = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k")
    return issued.secret, team.id, team.organization_id


async def burst(
    base_urls: list[str], key: str, count: int, model: str = "fake/any"
) -> list[httpx.Response]:
    body = {**CHAT, "model": model, "max_tokens": MAX_TOKENS}
    body["messages"] = [{"role": "user", "content": "ping"}]
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        calls = [
            client.post(base_urls[i % len(base_urls)] + "/v1/chat/completions", json=body,
                        headers=headers)
            for i in range(count)
        ]  # fmt: skip
        return await asyncio.gather(*calls)


def check_invariant(
    engine: Engine, responses: list[httpx.Response], limit: Decimal, code: str
) -> Decimal:
    admitted = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code != 200]
    assert admitted, "no request was admitted"
    for response in rejected:
        assert response.status_code == 402, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert "budget" in error["message"] or "credit" in error["message"]
    rows = [usage_row(engine, r.headers["x-request-id"]) for r in responses]
    assert len({row["request_id"] for row in rows}) == len(responses)
    spent = sum((row["cost_usd"] for row in rows), Decimal(0))
    assert spent <= limit
    assert all(row["cost_usd"] == Decimal("0.003") for row in rows if row["status_code"] == 200)
    return spent


def leases_left(engine: Engine) -> Decimal:
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(sum(amount), 0) FROM spend_leases")).scalar_one()


def test_budget_holds_under_200_concurrent(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, team_id, _ = setup_key(engine, upstream)
    limit = Decimal("0.20")
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="team", scope_id=team_id, period="monthly", limit_usd=limit
        )
    proxy = start_proxy(database_url, tmp_path / "proxy.log")
    try:
        responses = asyncio.run(burst([proxy.base_url], key, 200))
        spent = check_invariant(engine, responses, limit, "budget_exceeded")
        with engine.connect() as conn:
            settled = conn.execute(text("SELECT spent FROM budget_spend")).scalar_one()
        assert settled == spent
        statuses = {r.status_code for r in responses}
        assert statuses == {200, 402}
    finally:
        proxy.stop()
    assert leases_left(engine) == 0


def test_budget_holds_across_workers_and_hosts(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, team_id, _ = setup_key(engine, upstream)
    limit = Decimal("0.20")
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="team", scope_id=team_id, period="daily", limit_usd=limit
        )
    first = start_proxy(database_url, tmp_path / "a.log", workers=4)
    second = start_proxy(database_url, tmp_path / "b.log", workers=2)
    try:
        responses = asyncio.run(burst([first.base_url, second.base_url], key, 200))
        spent = check_invariant(engine, responses, limit, "budget_exceeded")
        with engine.connect() as conn:
            settled = conn.execute(text("SELECT spent FROM budget_spend")).scalar_one()
            holders = conn.execute(text("SELECT count(DISTINCT holder) FROM spend_leases"))
        assert settled == spent
        assert holders.scalar_one() >= 1
    finally:
        first.stop()
        second.stop()
    assert leases_left(engine) == 0


def test_credit_balance_cannot_go_negative(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, _, organization_id = setup_key(engine, upstream)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_entries (scope_type, scope_id, amount, kind, reference) "
                "VALUES ('organization', :id, 0.05, 'grant', 'test-grant')"
            ),
            {"id": organization_id},
        )
    proxy = start_proxy(database_url, tmp_path / "proxy.log", workers=2)
    try:
        responses = asyncio.run(burst([proxy.base_url], key, 60))
        spent = check_invariant(engine, responses, Decimal("0.05"), "insufficient_credits")
    finally:
        proxy.stop()
    with engine.connect() as conn:
        balance = conn.execute(text("SELECT balance FROM credit_balances")).scalar_one()
        ledger_sum = conn.execute(text("SELECT sum(amount) FROM ledger_entries")).scalar_one()
        charges = conn.execute(
            text("SELECT count(*), -sum(amount) FROM ledger_entries WHERE kind = 'usage'")
        ).one()
    assert balance == ledger_sum == Decimal("0.05") - spent
    assert balance >= 0
    assert charges[1] == spent
    assert charges[0] == sum(1 for r in responses if r.status_code == 200)


def test_tightest_limit_is_named(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, team_id, _ = setup_key(engine, upstream)
    with engine.begin() as conn:
        key_id = conn.execute(text("SELECT id FROM api_keys")).scalar_one()
        budgets.set_budget(
            conn, scope_type="key", scope_id=key_id, period="lifetime", limit_usd="5"
        )
        budgets.set_budget(
            conn, scope_type="team", scope_id=team_id, period="weekly", limit_usd="0.005"
        )
    proxy = start_proxy(database_url, tmp_path / "proxy.log")
    try:
        body = {**CHAT, "model": "fake/any", "max_tokens": MAX_TOKENS}
        response = post_json(proxy.base_url, "/v1/chat/completions", body, key)
    finally:
        proxy.stop()
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert f"weekly budget of team 'lab' (id {team_id}, $0.005" in error["message"]
    assert "request needs up to $0.01" in error["message"]


def test_credit_balance_is_named(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, _, organization_id = setup_key(engine, upstream)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_entries (scope_type, scope_id, amount, kind, reference) "
                "VALUES ('organization', :id, 0.005, 'grant', 'small-grant')"
            ),
            {"id": organization_id},
        )
    proxy = start_proxy(database_url, tmp_path / "proxy.log")
    try:
        body = {**CHAT, "model": "fake/any", "max_tokens": MAX_TOKENS}
        response = post_json(proxy.base_url, "/v1/chat/completions", body, key)
    finally:
        proxy.stop()
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    expected = f"the credit balance of organization 'Default' (id {organization_id}) has"
    assert expected in error["message"]


@pytest.mark.parametrize(
    ("name", "details", "expected"),
    [
        ("Grant X", ("$0.25",), "project 'Grant X' (id 2, $0.25)"),
        ("Grant X", (), "project 'Grant X' (id 2)"),
        ("O'Brien lab", ("$1",), 'project "O\'Brien lab" (id 2, $1)'),
        # The project's row was deleted after its budget was loaded.
        (None, ("$0.25",), "project 2 ($0.25)"),
        (None, (), "project 2"),
    ],
)
def test_describe_scope(name: str | None, details: tuple[str, ...], expected: str) -> None:
    assert describe_scope("project", 2, name, *details) == expected


def test_key_endpoint_reports_limits(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, team_id, organization_id = setup_key(engine, upstream)
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="team", scope_id=team_id, period="monthly", limit_usd="1.5"
        )
        conn.execute(
            text(
                "INSERT INTO ledger_entries (scope_type, scope_id, amount, kind, reference) "
                "VALUES ('organization', :id, 2, 'grant', 'g')"
            ),
            {"id": organization_id},
        )
    proxy = start_proxy(database_url, tmp_path / "proxy.log")
    try:
        body = {**CHAT, "model": "fake/any", "max_tokens": MAX_TOKENS}
        assert post_json(proxy.base_url, "/v1/chat/completions", body, key).status_code == 200
        response = httpx.get(proxy.base_url + "/v1/key", headers={"authorization": f"Bearer {key}"})
        missing = httpx.get(proxy.base_url + "/v1/key")
    finally:
        proxy.stop()
    assert missing.status_code == 401
    data = response.json()["data"]
    assert data["team"] == "lab"
    [budget] = data["budgets"]
    assert budget["limit_usd"] == "1.5"
    assert budget["period"] == "monthly"
    assert budget["resets_at"] is not None
    assert Decimal(budget["spent_usd"]) + Decimal(budget["reserved_usd"]) <= Decimal("1.5")
    [credit] = data["credits"]
    assert credit["scope"] == "organization"
    assert Decimal(credit["balance_usd"]) <= Decimal(2)


def test_rate_limit_headers_and_429(
    database_url: str, engine: Engine, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    key, team_id, _ = setup_key(engine, upstream)
    with engine.begin() as conn:
        key_id = conn.execute(text("SELECT id FROM api_keys")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO rate_limits (scope_type, scope_id, requests_per_minute, "
                "tokens_per_minute) VALUES ('key', :id, 3, 100000)"
            ),
            {"id": key_id},
        )
        budgets.set_budget(conn, scope_type="team", scope_id=team_id, period="daily", limit_usd="1")
    proxy = start_proxy(database_url, tmp_path / "proxy.log")
    try:
        body = {**CHAT, "model": "fake/any", "max_tokens": MAX_TOKENS}
        # Minute windows follow the clock, so the four calls must not
        # straddle a minute boundary.
        seconds_left = 60 - time.time() % 60
        if seconds_left < 20:
            time.sleep(seconds_left + 0.1)
        responses = [post_json(proxy.base_url, "/v1/chat/completions", body, key) for _ in range(4)]
    finally:
        proxy.stop()
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    first, last = responses[0], responses[3]
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert "x-ratelimit-reset-requests" in first.headers
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(last.headers["retry-after"]) >= 1
    assert last.headers["x-ratelimit-remaining-requests"] == "0"
    assert last.json()["error"]["code"] == "rate_limit_exceeded"
    rejected = usage_row(engine, last.headers["x-request-id"])
    assert rejected["status_code"] == 429
    with engine.connect() as conn:
        spent = conn.execute(text("SELECT spent FROM budget_spend")).scalar_one()
    # The rejected call reserved budget first and handed it all back.
    assert spent == Decimal("0.009")
    assert leases_left(engine) == 0


def test_concurrency_limit_across_hosts(database_url: str, engine: Engine, tmp_path: Path) -> None:
    # Without REDIS_URL the workers share concurrency slots through Postgres.
    fake = FakeOpenAI(hang_seconds=1.5).start()
    try:
        key, _, _ = setup_key(engine, fake)
        with engine.begin() as conn:
            key_id = conn.execute(text("SELECT max(id) FROM api_keys")).scalar_one()
            set_rate_limits(conn, "admin", scope_type="key", scope_id=key_id, max_concurrent=2)
        # Two hosts, one of them with two workers; calls alternate between hosts.
        first = start_proxy(database_url, tmp_path / "a.log", workers=2)
        second = start_proxy(database_url, tmp_path / "b.log")
        try:
            base_urls = [first.base_url, second.base_url]
            responses = asyncio.run(burst(base_urls, key, 10, model="fake/hang"))
        finally:
            first.stop()
            second.stop()
    finally:
        fake.stop()
    statuses = [r.status_code for r in responses]
    assert 1 <= statuses.count(200) <= 2, statuses
    assert statuses.count(429) == len(responses) - statuses.count(200), statuses
    rejected = next(r for r in responses if r.status_code == 429)
    assert "2 concurrent requests" in rejected.json()["error"]["message"]
    assert rejected.headers["retry-after"]
    with engine.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM rate_limit_slot_leases")).scalar_one()
    assert held == 0
