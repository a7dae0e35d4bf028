"""Retries, fallbacks, circuit breaker, aliases, pricing and the other endpoints."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from sqlalchemy import Engine

from gateway_core import directory, keys, model_routes, providers
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json, usage_row


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI(hang_seconds=5).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_UPSTREAM_READ_TIMEOUT="1",
        GATEWAYZ_UPSTREAM_MAX_RETRIES="2",
        GATEWAYZ_CIRCUIT_FAILURES="3",
        GATEWAYZ_CIRCUIT_COOLDOWN="1",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("routing") / "proxy.log")
    yield process
    process.stop()


def closed_port() -> int:
    """Return a port on 127.0.0.1 with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def key(engine: Engine, fake_upstream: FakeOpenAI) -> str:
    fake_upstream.calls.clear()
    with engine.begin() as conn:
        team = directory.create_team(conn, "routing")
        # Separate provider names keep one test's circuit state from another's.
        for name in ("fake", "flaky", "junk"):
            providers.upsert_provider(conn, name=name, base_url=fake_upstream.base_url)
        providers.upsert_provider(
            conn, name="quick", base_url=fake_upstream.base_url, max_retries=0
        )
        for name in ("down", "broken"):
            providers.upsert_provider(
                conn, name=name, base_url=f"http://127.0.0.1:{closed_port()}/v1"
            )
        return keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret


def chat(proxy: ProxyProcess, key: str, model: str, **extra: object) -> httpx.Response:
    return post_json(proxy.base_url, "/v1/chat/completions", {**CHAT, "model": model, **extra}, key)


def test_retries_transient_500(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    response = chat(proxy, key, "fake/flaky-2")
    assert response.status_code == 200
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["attempts"] == 3
    assert row["provider"] == "fake"
    assert row["status_code"] == 200


def test_configured_fallback_serves(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_fallbacks(conn, "flaky/flaky-9", ["sandbox/echo"])
    response = chat(proxy, key, "flaky/flaky-9")
    assert response.status_code == 200
    assert response.headers["x-gatewayz-provider"] == "sandbox"
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["attempts"] == 4
    assert row["provider"] == "sandbox"
    assert row["model"] == "sandbox/echo"


def test_request_models_list_falls_back(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    response = chat(proxy, key, "down/model", models=["sandbox/reverse"])
    assert response.status_code == 200
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["provider"] == "sandbox"
    assert row["attempts"] == 4


def test_client_error_not_retried(
    proxy: ProxyProcess, key: str, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    response = chat(proxy, key, "fake/fail-400", models=["sandbox/echo"])
    assert response.status_code == 400
    assert fake_upstream.calls["fail-400"] == 1
    assert usage_row(engine, response.headers["x-request-id"])["attempts"] == 1


def test_malformed_json_retried_then_502(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    response = chat(proxy, key, "junk/bad-json")
    assert response.status_code == 502
    assert usage_row(engine, response.headers["x-request-id"])["attempts"] == 3


def test_hang_times_out_once(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    started = time.monotonic()
    response = chat(proxy, key, "quick/hang")
    assert response.status_code == 504
    assert time.monotonic() - started < 4
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["attempts"] == 1
    assert row["error_type"] == "timeout_error"


def test_retry_after_honoured(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    started = time.monotonic()
    response = chat(proxy, key, "fake/limited-1")
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0
    assert usage_row(engine, response.headers["x-request-id"])["attempts"] == 2


def test_long_retry_after_passed_to_client(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    response = chat(proxy, key, "fake/limited-30")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert usage_row(engine, response.headers["x-request-id"])["attempts"] == 1


def test_circuit_opens_then_half_opens(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    first = chat(proxy, key, "broken/model")
    assert first.status_code == 502
    assert usage_row(engine, first.headers["x-request-id"])["attempts"] == 3
    skipped = chat(proxy, key, "broken/model")
    assert skipped.status_code == 503
    assert skipped.json()["error"]["code"] == "provider_unavailable"
    assert usage_row(engine, skipped.headers["x-request-id"])["attempts"] == 0
    time.sleep(1.1)
    trial = chat(proxy, key, "broken/model")
    assert trial.status_code == 502
    assert usage_row(engine, trial.headers["x-request-id"])["attempts"] == 1


def test_alias_resolves_and_is_listed(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_alias(conn, "fast", "sandbox/echo")
    response = chat(proxy, key, "fast")
    assert response.status_code == 200
    assert usage_row(engine, response.headers["x-request-id"])["model"] == "sandbox/echo"
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key)
    assert "fast" in [model.id for model in client.models.list()]


def test_cost_with_cached_and_reasoning(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_price_override(
            conn,
            "fake/usage-cached",
            {"input": "2.50", "cached_input": "1.25", "output": "10", "reasoning_output": "12"},
        )
    # 600 uncached x 2.50 + 400 cached x 1.25 + 150 output x 10 + 50 reasoning x 12,
    # per million tokens.
    expected = Decimal("0.0015") + Decimal("0.0005") + Decimal("0.0015") + Decimal("0.0006")
    response = chat(proxy, key, "fake/usage-cached")
    assert response.headers["x-gatewayz-cost-usd"] == "0.0041000000"
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["cost_usd"] == expected
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (400, 50)


def test_streamed_cost_matches(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_price_override(conn, "fake/any", {"input": "3", "output": "15"})
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key)
    with client.chat.completions.with_streaming_response.create(
        model="fake/any", messages=[{"role": "user", "content": "x y"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        list(response.parse())
    row = usage_row(engine, request_id)
    # 11 prompt tokens x 3 + 4 completion tokens x 15, per million.
    assert row["cost_usd"] == Decimal("0.000093")


def test_client_disconnect_records_partial(
    proxy: ProxyProcess, key: str, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    closed_before = fake_upstream.streams_closed_early
    body = {**CHAT, "model": "fake/slow-stream", "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", proxy.base_url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(8)]
    assert any(line.startswith("data: ") for line in received)
    row = usage_row(engine, request_id)
    assert row["partial"] is True
    assert row["status_code"] == 499
    assert row["completion_tokens"] >= 1
    deadline = time.monotonic() + 3
    while fake_upstream.streams_closed_early == closed_before:
        assert time.monotonic() < deadline, "upstream stream was not closed"
        time.sleep(0.02)


def test_other_endpoints(proxy: ProxyProcess, key: str, engine: Engine) -> None:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)
    embedding = client.embeddings.with_raw_response.create(model="fake/emb", input=["a", "b"])
    assert len(embedding.parse().data) == 2
    assert usage_row(engine, embedding.headers["x-request-id"])["prompt_tokens"] == 6
    completion = client.completions.with_raw_response.create(model="fake/old", prompt="hi")
    assert completion.parse().choices[0].text == "fake text"
    assert usage_row(engine, completion.headers["x-request-id"])["completion_tokens"] == 2
    image = client.images.with_raw_response.generate(model="fake/img", prompt="a cat", n=2)
    assert len(image.parse().data) == 2
    assert usage_row(engine, image.headers["x-request-id"])["endpoint"] == "images"
    response = client.responses.with_raw_response.create(model="fake/r", input="hello")
    assert response.parse().output_text == "fake response"
    row = usage_row(engine, response.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 3)
    with client.responses.with_streaming_response.create(
        model="fake/r", input="hello", stream=True
    ) as streamed:
        request_id = streamed.headers["x-request-id"]
        kinds = [event.type for event in streamed.parse()]
    assert kinds[-1] == "response.completed"
    assert usage_row(engine, request_id)["completion_tokens"] == 3


def test_sandbox_rejects_unsupported_endpoint(proxy: ProxyProcess, key: str) -> None:
    response = post_json(
        proxy.base_url, "/v1/embeddings", {"model": "sandbox/echo", "input": "x"}, key
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "endpoint_not_supported"


def test_async_sdk_with_tools(proxy: ProxyProcess, key: str) -> None:
    async def run() -> openai.types.chat.ChatCompletion:
        client = openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=key)
        tool = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
        try:
            return await client.chat.completions.create(
                model="fake/tools", messages=[{"role": "user", "content": "w?"}], tools=[tool]
            )
        finally:
            await client.close()

    completion = asyncio.run(run())
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}'
    assert completion.choices[0].finish_reason == "tool_calls"
