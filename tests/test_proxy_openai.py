"""The OpenAI SDK against a running proxy, with usage rows checked in Postgres."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import Engine, text

from gateway_core import directory, keys, model_routes, providers
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json, usage_row

PROVIDER_KEY = "sk-fake-provider-secret-0123456789"


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI(hang_seconds=5).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    import os

    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_UPSTREAM_READ_TIMEOUT="1",
        GATEWAYZ_UPSTREAM_MAX_RETRIES="0",
        GATEWAYZ_CIRCUIT_FAILURES="1000",
        GATEWAYZ_MAX_BODY_BYTES=str(64 * 1024),
        GATEWAYZ_ACCESS_LOG="json",
        FAKE_PROVIDER_KEY=PROVIDER_KEY,
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("proxy") / "proxy.log")
    yield process
    process.stop()


@pytest.fixture
def live_key(engine: Engine, fake_upstream: FakeOpenAI) -> keys.IssuedKey:
    with engine.begin() as conn:
        team = directory.create_team(conn, "research")
        providers.upsert_provider(
            conn, name="fake", base_url=fake_upstream.base_url, api_key_env="FAKE_PROVIDER_KEY"
        )
        return keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="ci")


@pytest.fixture
def client(proxy: ProxyProcess, live_key: keys.IssuedKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=live_key.secret, max_retries=0)


def test_sandbox_chat_non_streaming(client: openai.OpenAI, engine: Engine, live_key) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="sandbox/echo", messages=[{"role": "user", "content": "hello there gateway"}]
    )
    completion = raw.parse()
    answer = completion.choices[0].message.content
    assert "sandbox" in answer
    assert answer.endswith("hello there gateway")
    assert raw.headers["x-gatewayz-cost-usd"] == "0.0000000000"
    row = usage_row(engine, raw.headers["x-request-id"])
    assert row["model"] == "sandbox/echo"
    assert row["provider"] == "sandbox"
    assert row["status_code"] == 200
    assert row["api_key_id"] == live_key.id
    assert row["team_id"] == live_key.team_id
    assert row["prompt_tokens"] == completion.usage.prompt_tokens == 6
    assert row["completion_tokens"] == completion.usage.completion_tokens
    assert row["cost_usd"] == Decimal(0)
    assert row["stream"] is False
    assert row["latency_ms"] >= 0


def test_sandbox_billed_with_override(client: openai.OpenAI, engine: Engine) -> None:
    with engine.begin() as conn:
        # $0.001 an input token and $0.002 an output token.
        model_routes.set_price_override(conn, "sandbox/lorem", {"input": "1000", "output": "2000"})
    raw = client.chat.completions.with_raw_response.create(
        model="sandbox/lorem", messages=[{"role": "user", "content": "price me"}], max_tokens=4
    )
    usage = raw.parse().usage
    expected = usage.prompt_tokens * Decimal("0.001") + usage.completion_tokens * Decimal("0.002")
    assert expected > 0
    assert Decimal(raw.headers["x-gatewayz-cost-usd"]) == expected
    assert usage_row(engine, raw.headers["x-request-id"])["cost_usd"] == expected

    unpriced = client.chat.completions.with_raw_response.create(
        model="sandbox/echo", messages=[{"role": "user", "content": "still free"}]
    )
    assert Decimal(unpriced.headers["x-gatewayz-cost-usd"]) == 0


def test_sandbox_chat_streaming(client: openai.OpenAI, engine: Engine) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="sandbox/reverse",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text_out.endswith("three two one")
    assert all(chunk.usage is None for chunk in chunks)
    row = usage_row(engine, request_id)
    assert row["stream"] is True
    assert row["partial"] is False
    assert row["status_code"] == 200
    assert row["prompt_tokens"] == 6
    assert row["completion_tokens"] == len(text_out.split())
    assert row["ttft_ms"] is not None


def test_models_list_contains_sandbox(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "sandbox/echo" in ids
    assert client.models.retrieve("sandbox/echo").owned_by == "sandbox"


def test_upstream_non_streaming(
    client: openai.OpenAI, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake/any-model", messages=[{"role": "user", "content": "ping"}]
    )
    assert raw.parse().choices[0].message.content == "fake answer: ping"
    assert fake_upstream.requests[-1]["model"] == "any-model"
    assert fake_upstream.headers[-1]["authorization"] == f"Bearer {PROVIDER_KEY}"
    row = usage_row(engine, raw.headers["x-request-id"])
    assert row["provider"] == "fake"
    assert row["model"] == "fake/any-model"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)
    assert row["attempts"] == 1


def test_upstream_streaming_strips_usage_chunk(
    client: openai.OpenAI, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="fake/any-model", messages=[{"role": "user", "content": "a b c"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert fake_upstream.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(chunk.usage is None for chunk in chunks)
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text_out == "fake answer: a b c"
    row = usage_row(engine, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 5)
    assert row["partial"] is False


def test_upstream_streaming_keeps_requested_usage(client: openai.OpenAI, engine: Engine) -> None:
    stream = client.chat.completions.create(
        model="fake/any-model",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usages) == 1
    assert usages[0].completion_tokens == 3


def post_chat(proxy: ProxyProcess, body: Any, key: str | None) -> httpx.Response:
    return post_json(proxy.base_url, "/v1/chat/completions", body, key)


@pytest.mark.parametrize(
    ("case", "status", "error_type"),
    [
        ("missing_key", 401, "authentication_error"),
        ("unknown_key", 401, "authentication_error"),
        ("unknown_model", 404, "not_found_error"),
        ("unknown_sandbox_model", 404, "not_found_error"),
        ("invalid_json", 400, "invalid_request_error"),
        ("missing_messages", 400, "invalid_request_error"),
        ("missing_model", 400, "invalid_request_error"),
        ("body_too_large", 413, "invalid_request_error"),
        ("upstream_500", 502, "upstream_error"),
        ("upstream_bad_json", 502, "upstream_error"),
        ("upstream_400", 400, "invalid_request_error"),
        ("upstream_429", 429, "rate_limit_error"),
        ("upstream_timeout", 504, "timeout_error"),
    ],
)
def test_error_statuses_are_recorded(
    proxy: ProxyProcess,
    live_key: keys.IssuedKey,
    engine: Engine,
    case: str,
    status: int,
    error_type: str,
) -> None:
    key: str | None = live_key.secret
    body: Any = dict(CHAT)
    if case == "missing_key":
        key = None
    elif case == "unknown_key":
        key = "gw_live_" + "A" * 43
    elif case == "unknown_model":
        body["model"] = "nowhere/model"
    elif case == "unknown_sandbox_model":
        body["model"] = "sandbox/no-such-model"
    elif case == "invalid_json":
        body = b'{"model": "sandbox/echo", "messages": ['
    elif case == "missing_messages":
        body = {"model": "sandbox/echo"}
    elif case == "missing_model":
        body = {"messages": CHAT["messages"]}
    elif case == "body_too_large":
        body = {**CHAT, "padding": "x" * (128 * 1024)}
    else:
        body["model"] = {
            "upstream_500": "fake/fail-500",
            "upstream_bad_json": "fake/bad-json",
            "upstream_400": "fake/fail-400",
            "upstream_429": "fake/fail-429",
            "upstream_timeout": "fake/hang",
        }[case]
    response = post_chat(proxy, body, key)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["status_code"] == status
    assert row["error_type"] == error_type
    assert row["cost_usd"] == Decimal(0)


def test_upstream_error_keeps_provider_message(
    proxy: ProxyProcess, live_key: keys.IssuedKey
) -> None:
    response = post_chat(proxy, {**CHAT, "model": "fake/fail-400"}, live_key.secret)
    assert "fake upstream failure 400" in response.json()["error"]["message"]


def test_revoked_key_rejected_at_once(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    assert post_chat(proxy, CHAT, live_key.secret).status_code == 200
    with engine.begin() as conn:
        assert keys.revoke_key(conn, live_key.id) is True
    deadline = time.monotonic() + 1.0
    while True:
        response = post_chat(proxy, CHAT, live_key.secret)
        if response.status_code == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "api_key_revoked"
    usage_row(engine, response.headers["x-request-id"])


def test_plain_key_stored_nowhere(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    assert post_chat(proxy, CHAT, live_key.secret).status_code == 200
    post_chat(proxy, {**CHAT, "model": "fake/fail-500"}, live_key.secret)
    with engine.connect() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        for table in list(tables):
            dump = conn.execute(
                text(f"SELECT coalesce(string_agg(t::text, '\n'), '') FROM \"{table}\" t")
            ).scalar_one()
            assert live_key.secret not in dump, table
            assert live_key.secret[8:] not in dump, table
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix, last4 FROM api_keys")).one()
    assert len(stored.key_hash) == 32
    assert live_key.secret.startswith(stored.prefix)
    assert live_key.secret.endswith(stored.last4)
    logs = proxy.logs()
    assert live_key.secret not in logs
    assert PROVIDER_KEY not in logs


def test_cli_key_lifecycle(
    server_env: dict[str, str], engine: Engine, proxy: ProxyProcess, tmp_path: Path
) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway_core", *args],
            env=server_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("teams", "create", "ops").returncode == 0
    created = cli("keys", "create", "--team", "ops", "--test")
    assert created.returncode == 0, created.stderr
    plain = created.stdout.strip().splitlines()[-1]
    assert plain.startswith("gw_test_")
    assert len(plain) >= len("gw_test_") + 43
    listed = cli("keys", "list").stdout
    assert plain not in listed
    assert plain[-4:] in listed
    assert post_chat(proxy, {**CHAT, "model": "openai/gpt-4o-mini"}, plain).status_code == 200
    key_id = listed.split()[0]
    assert cli("keys", "revoke", key_id).returncode == 0
    deadline = time.monotonic() + 1.0
    while post_chat(proxy, CHAT, plain).status_code != 403:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    missing = cli("keys", "create", "--team", "nope")
    assert missing.returncode == 1
    assert "no team named 'nope'" in missing.stderr
    for command in (["teams", "create"], ["keys", "create"], ["keys", "revoke"]):
        helped = cli(*command, "--help")
        assert helped.returncode == 0
        assert "usage:" in helped.stdout


def test_abandoned_sandbox_stream_is_partial(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    body = {**CHAT, "model": "sandbox/lorem", "max_tokens": 4096, "stream": True}
    headers = {"authorization": f"Bearer {live_key.secret}"}
    with httpx.stream(
        "POST", proxy.base_url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_raw())
    row = usage_row(engine, request_id)
    assert row["partial"] is True
    assert row["status_code"] == 499
    assert row["completion_tokens"] < 4096


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("max_tokens", "10"),
        ("max_tokens", 10**9),
        ("max_tokens", 5000),
        ("temperature", "hot"),
        ("temperature", 100),
        ("n", 0),
        ("model", "sandbox/echo\u0000"),
        ("messages", [{"role": "wizard", "content": "x"}]),
        ("messages", [{"role": "user", "content": 5}]),
        ("messages", "hello"),
    ],
)
def test_invalid_fields_rejected(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine, field: str, value: Any
) -> None:
    response = post_chat(proxy, {**CHAT, field: value}, live_key.secret)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(field)
    usage_row(engine, response.headers["x-request-id"])


def test_nul_in_model_does_not_block_recording(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    bad = post_chat(proxy, {**CHAT, "models": ["x/\u0000"]}, live_key.secret)
    assert bad.status_code == 400
    fine = post_chat(proxy, {**CHAT, "model": "nowhere/\u00e9" + "y" * 150}, live_key.secret)
    assert fine.status_code == 404
    assert usage_row(engine, fine.headers["x-request-id"])["status_code"] == 404
    ok = post_chat(proxy, CHAT, live_key.secret)
    assert usage_row(engine, ok.headers["x-request-id"])["status_code"] == 200


def test_every_response_has_request_id_and_row(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    headers = {"authorization": f"Bearer {live_key.secret}"}
    calls = [
        httpx.get(proxy.base_url + "/v1/models", headers=headers),
        httpx.get(proxy.base_url + "/v1/models/sandbox/echo", headers=headers),
        httpx.get(proxy.base_url + "/v1/models"),
        httpx.get(proxy.base_url + "/v1/nope"),
        httpx.get(proxy.base_url + "/v1/chat/completions", headers=headers),
        httpx.get(proxy.base_url + "/v1/key", headers=headers),
    ]
    assert [call.status_code for call in calls] == [200, 200, 401, 404, 405, 200]
    for call in calls:
        request_id = call.headers["x-request-id"]
        assert request_id.startswith("req_")
        assert usage_row(engine, request_id)["status_code"] == call.status_code
        if call.status_code >= 400:
            assert call.json()["error"]["message"]


def test_revoked_key_call_recorded_against_key(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    with engine.begin() as conn:
        keys.revoke_key(conn, live_key.id)
    deadline = time.monotonic() + 1.0
    response = post_chat(proxy, CHAT, live_key.secret)
    while response.status_code != 403 and time.monotonic() < deadline:
        response = post_chat(proxy, CHAT, live_key.secret)
    assert response.status_code == 403
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["api_key_id"] == live_key.id
    assert row["team_id"] == live_key.team_id


def test_authorization_without_bearer_explained(proxy: ProxyProcess, live_key) -> None:
    response = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json=CHAT,
        headers={"authorization": live_key.secret},
    )
    assert response.status_code == 401
    assert "Bearer" in response.json()["error"]["message"]


def test_health_metrics_and_access_log(
    proxy: ProxyProcess, live_key: keys.IssuedKey, engine: Engine
) -> None:
    import json

    ready = httpx.get(proxy.base_url + "/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["postgres"] == "ok"
    response = post_chat(proxy, CHAT, live_key.secret)
    request_id = response.headers["x-request-id"]
    usage_row(engine, request_id)
    metrics = httpx.get(proxy.base_url + "/metrics").text
    line = 'gatewayz_requests_total{endpoint="chat",provider="sandbox",status_class="2xx"}'
    assert line in metrics
    assert "gatewayz_request_duration_seconds_bucket" in metrics
    assert "gatewayz_recorder_queue_rows" in metrics
    assert live_key.secret not in metrics
    logged = []
    for text_line in proxy.logs().splitlines():
        start = text_line.find("{")
        if "gatewayz.access" in text_line and start >= 0:
            logged.append(json.loads(text_line[start:]))
    mine = [entry for entry in logged if entry["request_id"] == request_id]
    assert len(mine) == 1
    assert mine[0]["status"] == 200
    assert mine[0]["key_id"] == live_key.id
    assert mine[0]["model"] == "sandbox/echo"
