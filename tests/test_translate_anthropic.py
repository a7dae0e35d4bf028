"""Anthropic Messages <-> OpenAI chat translation, with hand-written expected values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway_core.errors import InvalidRequestError, UpstreamError
from gateway_core.pricing import TokenUsage, parse_anthropic_usage, parse_openai_usage
from proxy.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_response_to_message,
    chat_to_messages_request,
    message_to_chat_response,
    messages_to_chat_request,
)

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}

ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 300,
    "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 40,
    "stop_sequences": ["END"],
    "metadata": {"user_id": "user-7"},
    "tools": [
        {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
}


def decode_events(events: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Split `event: NAME\\ndata: JSON\\n\\n` byte strings into (name, data) pairs."""
    decoded = []
    for raw in events:
        assert raw.endswith(b"\n\n")
        name_line, data_line = raw.decode().strip("\n").split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        decoded.append((name_line.removeprefix("event: "), json.loads(data_line[6:])))
    return decoded


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict:
    """Build an OpenAI stream chunk with one choice, or none when delta is None."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": choices, **extra}


# Anthropic request -> OpenAI chat request.


def test_messages_request_to_chat() -> None:
    chat = messages_to_chat_request(ANTHROPIC_REQUEST)
    assert chat == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "user-7",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": WEATHER_SCHEMA,
                    "description": "Weather now",
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "Be brief.\n\nUse metric."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C, sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
    }


def test_messages_request_stream_asks_usage() -> None:
    chat = messages_to_chat_request({**ANTHROPIC_REQUEST, "stream": True})
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_messages_tool_choice_to_chat(tool_choice: dict[str, Any], expected: Any) -> None:
    chat = messages_to_chat_request({**ANTHROPIC_REQUEST, "tool_choice": tool_choice})
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_messages_system_string_and_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    chat = messages_to_chat_request(body)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


def test_messages_server_tool_rejected() -> None:
    body = {**ANTHROPIC_REQUEST, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    with pytest.raises(InvalidRequestError) as caught:
        messages_to_chat_request(body)
    assert caught.value.param == "tools[0]"
    assert "web_search_20250305" in caught.value.message


def test_messages_tool_result_image_rejected() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [result]}]}
    with pytest.raises(InvalidRequestError) as caught:
        messages_to_chat_request(body)
    assert caught.value.param == "messages[0].content[0].content[0]"


# OpenAI chat completion -> Anthropic message.


def test_chat_response_to_message_text() -> None:
    completion = {
        "id": "chatcmpl-42",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "total_tokens": 107,
            "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 10},
        },
    }
    assert chat_response_to_message(completion, "openai/gpt-4o") == {
        "id": "chatcmpl-42",
        "type": "message",
        "role": "assistant",
        "model": "openai/gpt-4o",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 60,
            "output_tokens": 7,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 30,
        },
    }


def test_chat_response_to_message_tool_use() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    completion = {
        "id": "chatcmpl-43",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9},
    }
    message = chat_response_to_message(completion, "m")
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 5
    assert message["usage"]["output_tokens"] == 9


@pytest.mark.parametrize(
    ("choice", "stop_reason", "stop_sequence"),
    [
        ({"finish_reason": "stop"}, "end_turn", None),
        ({"finish_reason": "length"}, "max_tokens", None),
        ({"finish_reason": "content_filter"}, "refusal", None),
        ({"finish_reason": "tool_calls"}, "tool_use", None),
        ({"finish_reason": "stop", "stop_reason": "END"}, "stop_sequence", "END"),
        ({"finish_reason": "stop", "stop_reason": 128009}, "end_turn", None),
        ({"finish_reason": None}, "end_turn", None),
    ],
)
def test_chat_stop_reasons(choice: dict[str, Any], stop_reason: str, stop_sequence: Any) -> None:
    completion = {"choices": [{"index": 0, "message": {"content": "x"}, **choice}]}
    message = chat_response_to_message(completion, "m")
    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] == stop_sequence


def test_chat_refusal_to_message() -> None:
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    completion = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    translated = chat_response_to_message(completion, "m")
    assert translated["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert translated["stop_reason"] == "refusal"


def test_chat_invalid_tool_arguments() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    completion = {"choices": [{"index": 0, "message": {"tool_calls": [call]}}]}
    with pytest.raises(UpstreamError):
        chat_response_to_message(completion, "m")


# OpenAI chunks -> Anthropic events.


def test_chat_stream_to_events() -> None:
    stream = ChatToMessagesStream("openai/gpt-4o")
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me"}),
        chunk({"content": " check."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        chunk(
            None,
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 20},
            },
        ),
    ]
    raw: list[bytes] = []
    for item in chunks:
        raw += stream.feed(item)
    raw += stream.finish()
    assert stream.finish() == []
    assert decode_events(raw) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "chatcmpl-9",
                    "type": "message",
                    "role": "assistant",
                    "model": "openai/gpt-4o",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Let me"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " check."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ' "Paris"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_time",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {
                    "input_tokens": 30,
                    "output_tokens": 12,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 20,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_chat_stream_length_stop() -> None:
    stream = ChatToMessagesStream("m", message_id="msg_given")
    raw = stream.feed(chunk({"content": "cut"}))
    raw += stream.feed(chunk({}, "length"))
    raw += stream.finish()
    events = decode_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["id"] == "msg_given"
    assert events[4][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[4][1]["usage"]["output_tokens"] == 0


def test_chat_stream_empty_finish() -> None:
    events = decode_events(ChatToMessagesStream("m").finish())
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"]["stop_reason"] == "end_turn"


# OpenAI chat request -> Anthropic request.


def test_chat_request_to_messages() -> None:
    body = {
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24 C"},
        ],
        "temperature": 0.5,
        "stop": "END",
        "user": "user-7",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather now",
                    "parameters": WEATHER_SCHEMA,
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 3,
    }
    assert chat_to_messages_request(body) == {
        "model": "anthropic/claude-sonnet-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "Be brief.\n\nUse metric.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/jpeg",
                            "data": "/9j/4AAQ",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "24 C"},
                ],
            },
        ],
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "user-7"},
        "tools": [
            {"name": "get_weather", "input_schema": WEATHER_SCHEMA, "description": "Weather now"}
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    assert DEFAULT_MAX_TOKENS == 4096


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200, "max_tokens": 100}, 200),
        ({}, 4096),
    ],
)
def test_chat_request_max_tokens(fields: dict[str, Any], expected: int) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    assert chat_to_messages_request(body)["max_tokens"] == expected


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_chat_tool_choice_to_messages(tool_choice: Any, expected: dict[str, Any]) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": tool_choice,
    }
    assert chat_to_messages_request(body)["tool_choice"] == expected


def test_chat_request_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    request = chat_to_messages_request(body)
    assert request["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_chat_request_rejects_n() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}
    with pytest.raises(InvalidRequestError) as caught:
        chat_to_messages_request(body)
    assert caught.value.param == "n"


def test_chat_request_bad_arguments() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    body = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [call]}]}
    with pytest.raises(InvalidRequestError) as caught:
        chat_to_messages_request(body)
    assert caught.value.param == "messages[0].tool_calls[0].function.arguments"


def test_tool_use_round_trip() -> None:
    original = [message for message in ANTHROPIC_REQUEST["messages"]]
    chat = messages_to_chat_request(ANTHROPIC_REQUEST)
    back = chat_to_messages_request(chat)
    assert back["system"] == "Be brief.\n\nUse metric."
    assert back["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert back["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER_SCHEMA, "description": "Weather now"}
    ]
    # Thinking blocks have no OpenAI form, so only they are lost.
    assistant = dict(original[1])
    assistant["content"] = [block for block in assistant["content"] if block["type"] != "thinking"]
    assert back["messages"] == [original[0], assistant, original[2]]


# Anthropic message -> OpenAI chat completion.


def test_message_to_chat_response() -> None:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 3,
            "output_tokens": 9,
        },
    }
    completion = message_to_chat_response(message, "claude-sonnet-4-5")
    assert isinstance(completion.pop("created"), int)
    assert completion == {
        "id": "msg_01",
        "object": "chat.completion",
        "model": "claude-sonnet-4-5",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 28,
            "completion_tokens": 9,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 3},
        },
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_message_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    message = {
        "id": "msg_1",
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": stop_reason,
    }
    completion = message_to_chat_response(message, "m")
    assert completion["choices"][0]["finish_reason"] == finish_reason


def test_usage_conversion_agrees() -> None:
    anthropic = {
        "input_tokens": 20,
        "cache_read_input_tokens": 5,
        "cache_creation_input_tokens": 3,
        "output_tokens": 9,
    }
    completion = message_to_chat_response({"content": [], "usage": anthropic}, "m")
    assert parse_openai_usage(completion["usage"]) == parse_anthropic_usage(anthropic)
    openai = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 10},
    }
    message = chat_response_to_message({"choices": [], "usage": openai}, "m")
    assert parse_anthropic_usage(message["usage"]) == parse_openai_usage(openai)


# Anthropic events -> OpenAI chunks.

ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 20,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 3,
                "output_tokens": 1,
            },
        },
    },
    {"type": "ping"},
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "hm"},
    },
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": "Checking."},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
    },
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 31},
    },
    {"type": "message_stop"},
]


def test_messages_stream_to_chunks() -> None:
    stream = MessagesToChatStream("claude-sonnet-4-5")
    chunks: list[dict[str, Any]] = []
    for data in ANTHROPIC_EVENTS:
        assert not stream.done
        chunks += stream.feed(data)
    assert stream.done
    for item in chunks:
        assert item["id"] == "msg_01"
        assert item["object"] == "chat.completion.chunk"
        assert item["model"] == "claude-sonnet-4-5"
    assert [item["choices"] for item in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Checking."}, "finish_reason": None}],
        [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ],
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]},
                "finish_reason": None,
            }
        ],
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]},
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        [],
    ]
    assert "usage" not in chunks[-2]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 28,
        "completion_tokens": 31,
        "total_tokens": 59,
        "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 3},
    }
    assert parse_openai_usage(chunks[-1]["usage"]) == TokenUsage(
        prompt_tokens=28, completion_tokens=31, cached_tokens=5, cache_write_tokens=3
    )


def test_messages_stream_delta_input_usage() -> None:
    # message_delta may repeat the input counts. They are cumulative, so they win.
    stream = MessagesToChatStream("m")
    stream.feed({"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 0}}})
    stream.feed(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"input_tokens": 40, "output_tokens": 6, "cache_read_input_tokens": None},
        }
    )
    last = stream.feed({"type": "message_stop"})[-1]
    assert last["usage"]["prompt_tokens"] == 40
    assert last["usage"]["completion_tokens"] == 6


def test_messages_stream_error_event() -> None:
    stream = MessagesToChatStream("m")
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(ValueError):
        stream.feed(error)
