"""Anthropic, Gemini and Azure adapters against fake upstreams over real sockets."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from gateway_core.errors import GatewayError, NotFoundError, UpstreamError
from gateway_core.pricing import TokenUsage, parse_openai_usage
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.azure import AZURE_API_VERSION, AzureOpenAIProvider
from proxy.providers.base import Provider, UpstreamRequest
from proxy.providers.gemini import GeminiProvider
from proxy.sse import ServerSentEvent
from proxy.upstream_http import Timeouts, UpstreamClient, create_session
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_azure import FakeAzure
from tests.support.fake_gemini import SIGNATURE, FakeGemini

ANTHROPIC_KEY = "sk-ant-fake-0123456789"
GEMINI_KEY = "AIzaFakeGeminiKey0123456789"
AZURE_KEY = "azure-fake-key-0123456789"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    upstream = FakeAnthropic(ANTHROPIC_KEY).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def fake_gemini() -> Iterator[FakeGemini]:
    upstream = FakeGemini(GEMINI_KEY).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[FakeAzure]:
    upstream = FakeAzure(AZURE_KEY).start()
    yield upstream
    upstream.stop()


def run(scenario: Callable[[UpstreamClient], Awaitable[Any]]) -> Any:
    """Run `scenario` on a fresh event loop with a client like the proxy's."""

    async def main() -> Any:
        async with create_session() as session:
            return await scenario(UpstreamClient(session, Timeouts(connect=10, read=10)))

    return asyncio.run(main())


def chat_request(model: str, text: str = "hello there", **fields: Any) -> UpstreamRequest:
    body = {"model": f"provider/{model}", "messages": [{"role": "user", "content": text}]}
    return UpstreamRequest("req_test", model, {**body, **fields})


def messages_request(model: str, text: str = "hello there") -> UpstreamRequest:
    body = {
        "model": f"provider/{model}",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": text}],
    }
    return UpstreamRequest("req_test", model, body)


def request_for(endpoint: str, model: str, text: str = "hello there") -> UpstreamRequest:
    """Return a request in the endpoint's format: OpenAI chat or Anthropic Messages."""
    if endpoint == "messages":
        return messages_request(model, text)
    return chat_request(model, text)


async def collect(provider: Provider, endpoint: str, request: UpstreamRequest) -> list[Any]:
    """Open a stream and return its events, or the events and the error that ended it."""
    stream = await provider.open_stream(endpoint, request)
    events: list[ServerSentEvent] = []
    try:
        async for event in stream:
            events.append(event)
    except GatewayError as error:
        return [events, error]
    finally:
        await stream.aclose()
    return [events, None]


def chunks_of(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    assert events[-1].data == b"[DONE]"
    for event in events:
        assert event.raw == b"data: " + (event.data or b"") + b"\n\n"
    return [orjson.loads(event.data) for event in events[:-1] if event.data]


def stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


def stream_arguments(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        call["function"].get("arguments") or ""
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    )


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        choice["finish_reason"]
        for chunk in chunks
        for choice in chunk["choices"]
        if choice.get("finish_reason")
    ]


# Anthropic.

ANTHROPIC_USAGE = TokenUsage(
    prompt_tokens=28, completion_tokens=4, cached_tokens=5, cache_write_tokens=3
)


def anthropic(fake: FakeAnthropic, client: UpstreamClient, key: str = ANTHROPIC_KEY) -> Provider:
    return AnthropicProvider("claude", fake.base_url, key, client)


def test_anthropic_chat_text(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("claude-test", "hello there")
    result = run(lambda client: anthropic(fake_anthropic, client).send("chat", request))
    assert result.status_code == 200
    message = result.body["choices"][0]["message"]
    assert message["content"] == "fake answer: hello there"
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert parse_openai_usage(result.body["usage"]) == ANTHROPIC_USAGE
    sent = fake_anthropic.requests[-1]
    assert sent["model"] == "claude-test"
    assert sent["max_tokens"] == 4096
    assert "stream" not in sent
    headers = fake_anthropic.headers[-1]
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


def test_anthropic_chat_max_tokens(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("claude-test", "one two three four", max_tokens=3)
    result = run(lambda client: anthropic(fake_anthropic, client).send("chat", request))
    assert result.body["choices"][0]["message"]["content"] == "fake answer: one"
    assert result.body["choices"][0]["finish_reason"] == "length"


def test_anthropic_chat_tool_call(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("tool-call", "weather?", tools=[WEATHER_TOOL], tool_choice="auto")
    result = run(lambda client: anthropic(fake_anthropic, client).send("chat", request))
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_fake01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    sent = fake_anthropic.requests[-1]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "auto"}


def test_anthropic_chat_stream(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("claude-test", "stream me")
    events, error = run(lambda client: collect(anthropic(fake_anthropic, client), "chat", request))
    assert error is None
    chunks = chunks_of(events)
    assert stream_text(chunks) == "fake answer: stream me"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert parse_openai_usage(chunks[-1]["usage"]) == TokenUsage(
        prompt_tokens=28, completion_tokens=4, cached_tokens=5, cache_write_tokens=3
    )
    assert fake_anthropic.requests[-1]["stream"] is True


def test_anthropic_chat_stream_tool_call(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("tool-call", "weather?", stream=True, tools=[WEATHER_TOOL])
    events, error = run(lambda client: collect(anthropic(fake_anthropic, client), "chat", request))
    assert error is None
    chunks = chunks_of(events)
    assert stream_text(chunks) == "Let me check."
    assert stream_arguments(chunks) == '{"city": "Paris"}'
    starts = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
        if "id" in call
    ]
    assert starts == [
        {
            "index": 0,
            "id": "toolu_fake01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    assert finish_reasons(chunks) == ["tool_calls"]


def test_anthropic_messages_native(fake_anthropic: FakeAnthropic) -> None:
    body = {
        "model": "anthropic/claude-test",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "native"}],
    }
    request = UpstreamRequest(
        "req_native", "claude-test", body, headers={"anthropic-beta": "context-1m-2025-08-07"}
    )
    result = run(lambda client: anthropic(fake_anthropic, client).send("messages", request))
    assert result.body["type"] == "message"
    assert result.body["content"] == [{"type": "text", "text": "fake answer: native"}]
    assert result.body["usage"]["cache_read_input_tokens"] == 5
    assert fake_anthropic.requests[-1] == {**body, "model": "claude-test"}
    assert fake_anthropic.headers[-1]["anthropic-beta"] == "context-1m-2025-08-07"
    assert body["model"] == "anthropic/claude-test"


def test_anthropic_messages_native_stream(fake_anthropic: FakeAnthropic) -> None:
    request = messages_request("claude-test", "a b")
    events, error = run(
        lambda client: collect(anthropic(fake_anthropic, client), "messages", request)
    )
    assert error is None
    assert [event.event for event in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for event in events:
        assert event.raw.startswith(b"event: " + (event.event or "").encode() + b"\ndata: ")
    assert fake_anthropic.requests[-1]["stream"] is True


def test_anthropic_no_beta_header(fake_anthropic: FakeAnthropic) -> None:
    run(lambda client: anthropic(fake_anthropic, client).send("chat", chat_request("claude-test")))
    assert "anthropic-beta" not in fake_anthropic.headers[-1]


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fail-400", 400, "invalid_request_error"),
        ("fail-429", 429, "rate_limit_error"),
        ("fail-500", 502, "api_error"),
        ("fail-529", 503, "overloaded_error"),
    ],
)
def test_anthropic_error_mapping(
    fake_anthropic: FakeAnthropic, model: str, status: int, code: str
) -> None:
    for endpoint in ("chat", "messages"):
        request = request_for(endpoint, model)
        with pytest.raises(UpstreamError) as caught:
            run(lambda client, e=endpoint, r=request: anthropic(fake_anthropic, client).send(e, r))
        assert caught.value.status_code == status
        assert caught.value.code == code
        assert f"fake failure {model.removeprefix('fail-')}" in caught.value.message
        with pytest.raises(UpstreamError) as streamed:
            run(
                lambda client, e=endpoint, r=request: collect(
                    anthropic(fake_anthropic, client), e, r
                )
            )
        assert streamed.value.status_code == status


def test_anthropic_rate_limit_retry_after(fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(UpstreamError) as caught:
        run(lambda client: anthropic(fake_anthropic, client).send("chat", chat_request("fail-429")))
    assert caught.value.headers == {"retry-after": "7"}
    assert caught.value.retry_after == 7.0
    assert caught.value.error_type == "rate_limit_error"


def test_anthropic_bad_key_is_502(fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(UpstreamError) as caught:
        run(
            lambda client: anthropic(fake_anthropic, client, "wrong").send(
                "chat", chat_request("m")
            )
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "authentication_error"
    assert "wrong" not in caught.value.message


def test_anthropic_first_event_error(fake_anthropic: FakeAnthropic) -> None:
    for endpoint in ("chat", "messages"):
        request = request_for(endpoint, "stream-first-error")
        with pytest.raises(UpstreamError) as caught:
            run(
                lambda client, e=endpoint, r=request: collect(
                    anthropic(fake_anthropic, client), e, r
                )
            )
        assert caught.value.status_code == 503
        assert caught.value.code == "overloaded_error"


def test_anthropic_mid_stream_error(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("stream-error", "some words")
    events, error = run(lambda client: collect(anthropic(fake_anthropic, client), "chat", request))
    assert isinstance(error, UpstreamError)
    assert error.status_code == 503
    assert "Overloaded" in error.message
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events
        for choice in orjson.loads(event.data)["choices"]
    )
    assert text == "fake answer: some words"
    native_request = messages_request("stream-error", "some words")
    native, native_error = run(
        lambda client: collect(anthropic(fake_anthropic, client), "messages", native_request)
    )
    assert native_error is None
    assert native[-1].event == "error"


def test_anthropic_stream_cut_short(fake_anthropic: FakeAnthropic) -> None:
    request = chat_request("stream-cut")
    events, error = run(lambda client: collect(anthropic(fake_anthropic, client), "chat", request))
    assert isinstance(error, UpstreamError)
    assert "message_stop" in error.message
    assert events
    assert all(event.data != b"[DONE]" for event in events)


def test_anthropic_unsupported_endpoint(fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(NotFoundError):
        run(lambda client: anthropic(fake_anthropic, client).send("embeddings", chat_request("m")))


def test_anthropic_base_url_with_v1(fake_anthropic: FakeAnthropic) -> None:
    def provider(client: UpstreamClient) -> Provider:
        return AnthropicProvider("claude", fake_anthropic.base_url + "/v1/", ANTHROPIC_KEY, client)

    result = run(lambda client: provider(client).send("chat", chat_request("claude-test")))
    assert result.status_code == 200


# Gemini.


def gemini(fake: FakeGemini, client: UpstreamClient, key: str = GEMINI_KEY) -> Provider:
    return GeminiProvider("gemini", fake.base_url, key, client)


def assert_key_not_in_urls(fake: FakeGemini) -> None:
    assert fake.urls
    for url in fake.urls:
        assert GEMINI_KEY not in url
        assert "key=" not in url


def test_gemini_chat_text(fake_gemini: FakeGemini) -> None:
    request = chat_request(
        "gemini-test",
        "hi there",
        temperature=0.3,
        top_p=0.8,
        max_tokens=64,
        stop="END",
        response_format={"type": "json_object"},
    )
    request.body["messages"].insert(0, {"role": "system", "content": "Be brief."})

    result = run(lambda client: gemini(fake_gemini, client).send("chat", request))
    choice = result.body["choices"][0]
    assert choice["message"]["content"] == "fake answer: hi there"
    assert choice["finish_reason"] == "stop"
    assert result.body["model"] == "gemini-test"
    assert parse_openai_usage(result.body["usage"]) == TokenUsage(
        prompt_tokens=12, completion_tokens=8, cached_tokens=2, reasoning_tokens=4
    )

    assert fake_gemini.urls[-1].endswith("/v1beta/models/gemini-test:generateContent")
    assert fake_gemini.headers[-1]["x-goog-api-key"] == GEMINI_KEY
    assert fake_gemini.requests[-1] == {
        "contents": [{"role": "user", "parts": [{"text": "hi there"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.3,
            "topP": 0.8,
            "maxOutputTokens": 64,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
        },
    }
    assert_key_not_in_urls(fake_gemini)


def test_gemini_chat_stream(fake_gemini: FakeGemini) -> None:
    request = chat_request("gemini-test", "a b", stream=True)
    events, error = run(lambda client: collect(gemini(fake_gemini, client), "chat", request))
    assert error is None
    chunks = chunks_of(events)
    assert stream_text(chunks) == "fake answer: a b"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert parse_openai_usage(chunks[-1]["usage"]) == TokenUsage(
        prompt_tokens=12, completion_tokens=8, cached_tokens=2, reasoning_tokens=4
    )
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-fake-response-1"}
    assert fake_gemini.urls[-1].endswith(":streamGenerateContent?alt=sse")
    assert_key_not_in_urls(fake_gemini)


def test_gemini_tool_call_round_trip(fake_gemini: FakeGemini) -> None:
    request = chat_request("tool-call", "weather?", tools=[WEATHER_TOOL], tool_choice="required")
    result = run(lambda client: gemini(fake_gemini, client).send("chat", request))
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert call["id"].endswith("__sig__" + SIGNATURE)
    sent = fake_gemini.requests[-1]
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    follow_up = chat_request("gemini-test", "weather?")
    follow_up.body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 18}'},
    ]
    run(lambda client: gemini(fake_gemini, client).send("chat", follow_up))
    assert fake_gemini.requests[-1]["contents"] == [
        {"role": "user", "parts": [{"text": "weather?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SIGNATURE,
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}],
        },
    ]


def test_gemini_stream_tool_call(fake_gemini: FakeGemini) -> None:
    request = chat_request("tool-call", "weather?", tools=[WEATHER_TOOL])
    events, error = run(lambda client: collect(gemini(fake_gemini, client), "chat", request))
    assert error is None
    chunks = chunks_of(events)
    assert stream_arguments(chunks) == '{"city":"Paris"}'
    assert finish_reasons(chunks) == ["tool_calls"]
    calls = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    assert [call["index"] for call in calls] == [0]
    assert calls[0]["type"] == "function"


def test_gemini_blocked_prompt(fake_gemini: FakeGemini) -> None:
    result = run(lambda client: gemini(fake_gemini, client).send("chat", chat_request("blocked")))
    assert result.body["choices"][0]["finish_reason"] == "content_filter"
    events, error = run(
        lambda client: collect(gemini(fake_gemini, client), "chat", chat_request("blocked"))
    )
    assert error is None
    assert finish_reasons(chunks_of(events)) == ["content_filter"]


def test_gemini_unknown_tool_call_id(fake_gemini: FakeGemini) -> None:
    request = chat_request("gemini-test")
    request.body["messages"].append({"role": "tool", "tool_call_id": "nope", "content": "x"})
    with pytest.raises(GatewayError) as caught:
        run(lambda client: gemini(fake_gemini, client).send("chat", request))
    assert caught.value.status_code == 400
    assert caught.value.param == "messages[1].tool_call_id"


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fail-400", 400, "INVALID_ARGUMENT"),
        ("fail-429", 429, "RESOURCE_EXHAUSTED"),
        ("fail-503", 503, "UNAVAILABLE"),
    ],
)
def test_gemini_error_mapping(fake_gemini: FakeGemini, model: str, status: int, code: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        run(lambda client: gemini(fake_gemini, client).send("chat", chat_request(model)))
    assert caught.value.status_code == status
    assert caught.value.code == code
    assert f"fake failure of {model}" in caught.value.message
    with pytest.raises(UpstreamError) as streamed:
        run(lambda client: collect(gemini(fake_gemini, client), "chat", chat_request(model)))
    assert streamed.value.status_code == status


def test_gemini_retry_after(fake_gemini: FakeGemini) -> None:
    with pytest.raises(UpstreamError) as caught:
        run(lambda client: gemini(fake_gemini, client).send("chat", chat_request("fail-429")))
    assert caught.value.headers == {"retry-after": "27"}
    assert caught.value.retry_after == 27.0


def test_gemini_bad_key(fake_gemini: FakeGemini) -> None:
    with pytest.raises(UpstreamError) as caught:
        run(lambda client: gemini(fake_gemini, client, "wrong-key").send("chat", chat_request("m")))
    assert caught.value.status_code == 400
    assert "API key not valid" in caught.value.message
    assert "wrong-key" not in caught.value.message
    assert_key_not_in_urls(fake_gemini)


def test_gemini_mid_stream_error(fake_gemini: FakeGemini) -> None:
    request = chat_request("stream-error", "one two three")
    events, error = run(lambda client: collect(gemini(fake_gemini, client), "chat", request))
    assert isinstance(error, UpstreamError)
    assert error.status_code == 502
    assert "Internal error encountered." in error.message
    assert stream_text([orjson.loads(event.data) for event in events]) == "fake answer:"


def test_gemini_model_name_quoted(fake_gemini: FakeGemini) -> None:
    request = chat_request("../../files/x")
    run(lambda client: gemini(fake_gemini, client).send("chat", request))
    assert fake_gemini.urls[-1].endswith("/v1beta/models/..%2F..%2Ffiles%2Fx:generateContent")


def test_gemini_embeddings(fake_gemini: FakeGemini) -> None:
    body = {"model": "google/embed", "input": ["abcd", "abcdefgh"], "dimensions": 3}
    request = UpstreamRequest("req_e", "gemini-embedding-001", body)
    result = run(lambda client: gemini(fake_gemini, client).send("embeddings", request))
    assert result.body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [4.0, 0.5, 0.0]},
            {"object": "embedding", "index": 1, "embedding": [8.0, 0.5, 0.0]},
        ],
        "model": "gemini-embedding-001",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert fake_gemini.urls[-1].endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert fake_gemini.requests[-1] == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "outputDimensionality": 3,
                "content": {"parts": [{"text": "abcd"}]},
            },
            {
                "model": "models/gemini-embedding-001",
                "outputDimensionality": 3,
                "content": {"parts": [{"text": "abcdefgh"}]},
            },
        ]
    }
    assert_key_not_in_urls(fake_gemini)


def test_gemini_embeddings_base64(fake_gemini: FakeGemini) -> None:
    body = {"model": "google/embed", "input": "abc", "encoding_format": "base64"}
    request = UpstreamRequest("req_e", "gemini-embedding-001", body)
    result = run(lambda client: gemini(fake_gemini, client).send("embeddings", request))
    encoded = result.body["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (3.0, 0.5)
    assert result.body["usage"]["prompt_tokens"] == 1


def test_gemini_embeddings_token_arrays(fake_gemini: FakeGemini) -> None:
    request = UpstreamRequest("req_e", "e", {"model": "google/e", "input": [[1, 2, 3]]})
    with pytest.raises(GatewayError) as caught:
        run(lambda client: gemini(fake_gemini, client).send("embeddings", request))
    assert caught.value.status_code == 400
    assert caught.value.param == "input"


# Azure OpenAI.


def azure(fake: FakeAzure, client: UpstreamClient, **kwargs: Any) -> Provider:
    key = kwargs.pop("key", AZURE_KEY)
    return AzureOpenAIProvider("azure", fake.base_url, key, client, **kwargs)


def test_azure_chat_url_and_header(fake_azure: FakeAzure) -> None:
    request = chat_request("my-gpt4o", "hello azure")
    result = run(lambda client: azure(fake_azure, client).send("chat", request))
    assert result.body["choices"][0]["message"]["content"] == "fake answer: hello azure"
    assert parse_openai_usage(result.body["usage"]) == TokenUsage(
        prompt_tokens=9, completion_tokens=4
    )
    assert fake_azure.paths[-1] == "/openai/deployments/my-gpt4o/chat/completions"
    assert fake_azure.queries[-1] == f"api-version={AZURE_API_VERSION}"
    assert AZURE_API_VERSION == "2024-10-21"
    headers = fake_azure.headers[-1]
    assert headers["api-key"] == AZURE_KEY
    assert "authorization" not in headers


def test_azure_stream_with_usage(fake_azure: FakeAzure) -> None:
    request = chat_request("my-gpt4o", "streamed", stream=True)
    events, error = run(lambda client: collect(azure(fake_azure, client), "chat", request))
    assert error is None
    chunks = [orjson.loads(event.data) for event in events if event.data != b"[DONE]"]
    assert events[-1].data == b"[DONE]"
    assert "prompt_filter_results" in chunks[0]
    assert stream_text(chunks) == "fake answer: streamed"
    assert chunks[-1]["usage"]["prompt_tokens"] == 9
    assert fake_azure.requests[-1]["stream_options"] == {"include_usage": True}


def test_azure_embeddings_and_version(fake_azure: FakeAzure) -> None:
    body = {"model": "azure/embed", "input": "vector me"}
    request = UpstreamRequest("req_e", "text-embedding-3-small", body)
    result = run(
        lambda client: azure(fake_azure, client, api_version="2025-01-01-preview").send(
            "embeddings", request
        )
    )
    assert result.body["data"][0]["embedding"] == [0.25, -0.5]
    assert fake_azure.paths[-1] == "/openai/deployments/text-embedding-3-small/embeddings"
    assert fake_azure.queries[-1] == "api-version=2025-01-01-preview"


def test_azure_concurrent_deployments(fake_azure: FakeAzure) -> None:
    async def scenario(client: UpstreamClient) -> None:
        provider = azure(fake_azure, client)
        names = [f"deployment-{i}" for i in range(8)]
        await asyncio.gather(*(provider.send("chat", chat_request(name)) for name in names))

    before = len(fake_azure.paths)
    run(scenario)
    paths = sorted(fake_azure.paths[before:])
    assert paths == sorted(f"/openai/deployments/deployment-{i}/chat/completions" for i in range(8))


def test_azure_errors(fake_azure: FakeAzure) -> None:
    with pytest.raises(UpstreamError) as limited:
        run(lambda client: azure(fake_azure, client).send("chat", chat_request("fail-429")))
    assert limited.value.status_code == 429
    with pytest.raises(UpstreamError) as denied:
        run(lambda client: azure(fake_azure, client, key="wrong").send("chat", chat_request("d")))
    assert denied.value.status_code == 502
    assert "Access denied" in denied.value.message
    with pytest.raises(NotFoundError):
        run(lambda client: azure(fake_azure, client).send("responses", chat_request("d")))


def test_azure_deployment_quoted(fake_azure: FakeAzure) -> None:
    run(lambda client: azure(fake_azure, client).send("chat", chat_request("a/../b")))
    assert fake_azure.paths[-1] == "/openai/deployments/a%2F..%2Fb/chat/completions"
