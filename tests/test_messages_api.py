"""The anthropic SDK against the proxy: native pass-through and translation."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anthropic
import pytest
from sqlalchemy import Engine

from gateway_core import directory, keys, providers
from tests.conftest import TEST_SECRET
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import usage_row

ANTHROPIC_KEY = "sk-ant-fake-0123456789abcdef"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeAnthropic, FakeOpenAI]]:
    claude = FakeAnthropic(ANTHROPIC_KEY).start()
    openai_like = FakeOpenAI().start()
    yield claude, openai_like
    claude.stop()
    openai_like.stop()


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_UPSTREAM_MAX_RETRIES="0",
        FAKE_ANTHROPIC_KEY=ANTHROPIC_KEY,
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("messages") / "proxy.log")
    yield process
    process.stop()


@pytest.fixture
def client(
    proxy: ProxyProcess, engine: Engine, upstreams: tuple[FakeAnthropic, FakeOpenAI]
) -> anthropic.Anthropic:
    claude, openai_like = upstreams
    with engine.begin() as conn:
        team = directory.create_team(conn, "messages")
        providers.upsert_provider(
            conn,
            name="claude",
            kind="anthropic",
            base_url=claude.base_url,
            api_key_env="FAKE_ANTHROPIC_KEY",
        )
        providers.upsert_provider(conn, name="compat", base_url=openai_like.base_url)
        key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret
    return anthropic.Anthropic(base_url=proxy.base_url, api_key=key, max_retries=0)


def test_native_messages(
    client: anthropic.Anthropic, engine: Engine, upstreams: tuple[FakeAnthropic, FakeOpenAI]
) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude/any",
        max_tokens=50,
        system="be brief",
        messages=[{"role": "user", "content": "hello claude"}],
        extra_headers={"anthropic-beta": "tools-2024-04-04"},
    )
    message = raw.parse()
    assert message.content[0].text.endswith("hello claude")
    assert upstreams[0].headers[-1]["x-api-key"] == ANTHROPIC_KEY
    assert upstreams[0].headers[-1]["anthropic-beta"] == "tools-2024-04-04"
    row = usage_row(engine, raw.headers["x-request-id"])
    assert row["endpoint"] == "messages"
    assert row["provider"] == "claude"
    # 20 uncached + 5 cache reads + 3 cache writes.
    assert row["prompt_tokens"] == 28
    assert row["cached_tokens"] == 5
    assert row["completion_tokens"] == message.usage.output_tokens


def test_native_messages_stream(client: anthropic.Anthropic, engine: Engine) -> None:
    with client.messages.stream(
        model="claude/any", max_tokens=50, messages=[{"role": "user", "content": "a b c"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text.endswith("a b c")
    row = usage_row(engine, request_id)
    assert row["stream"] is True
    assert row["completion_tokens"] == final.usage.output_tokens
    assert row["prompt_tokens"] == 28


def test_messages_translated_to_openai(client: anthropic.Anthropic, engine: Engine) -> None:
    raw = client.messages.with_raw_response.create(
        model="compat/any",
        max_tokens=20,
        system="sys",
        messages=[{"role": "user", "content": "ping"}],
    )
    message = raw.parse()
    assert message.content[0].text == "fake answer: ping"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 11
    row = usage_row(engine, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)


def test_messages_translated_stream_and_tools(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="compat/any", max_tokens=20, messages=[{"role": "user", "content": "x y"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "fake answer: x y"
    assert final.usage.output_tokens == 4
    tool = {
        "name": "get_weather",
        "description": "weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    message = client.messages.create(
        model="compat/tools",
        max_tokens=20,
        tools=[tool],
        messages=[{"role": "user", "content": "weather?"}],
    )
    assert message.stop_reason == "tool_use"
    call = [block for block in message.content if block.type == "tool_use"][0]
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}


def test_messages_on_sandbox(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="sandbox/echo", max_tokens=30, messages=[{"role": "user", "content": "hey"}]
    )
    assert "sandbox" in message.content[0].text


def test_messages_errors_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="nowhere/x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["type"] == "error"
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(
            model="claude/fail-429", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="claude/any", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )


def test_stream_error_after_first_byte_not_retried(
    client: anthropic.Anthropic, engine: Engine, upstreams: tuple[FakeAnthropic, FakeOpenAI]
) -> None:
    sent_before = len(upstreams[0].requests)
    with client.messages.with_streaming_response.create(
        model="claude/stream-error",
        max_tokens=20,
        messages=[{"role": "user", "content": "x"}],
        stream=True,
    ) as response:
        request_id = response.headers["x-request-id"]
        body = b"".join(response.iter_bytes())
    assert b"overloaded_error" in body
    assert len(upstreams[0].requests) == sent_before + 1
    row = usage_row(engine, request_id)
    assert row["attempts"] == 1
    assert row["partial"] is True
    assert row["status_code"] != 200
