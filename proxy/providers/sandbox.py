"""The built-in sandbox provider: deterministic, free and clearly synthetic.

It needs no network and no provider key. `gw_test_` keys are always served
by it. Calls cost nothing unless an admin sets a price override for a
sandbox model, which bills that model's calls like a paid one. Models:
- `sandbox/echo` repeats the last user message,
- `sandbox/reverse` repeats it with the word order reversed,
- `sandbox/lorem` answers with placeholder text of `max_tokens` words.

Token counts are an estimate that follows the input: one token per
whitespace-separated word plus 3 per message, and one per output word.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.providers.base import (
    EventStream,
    Provider,
    UpstreamRequest,
    UpstreamResponse,
)
from proxy.sse import ServerSentEvent

SANDBOX_MODELS = ("echo", "reverse", "lorem")
NOTICE = "[sandbox: synthetic answer, no model was called, no cost]"
_LOREM = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
    "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore",
    "magna", "aliqua",
)  # fmt: skip


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        return " ".join(str(part) for part in parts)
    return ""


def estimate_prompt_tokens(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        if isinstance(message, dict):
            total += 3 + len(message_text(message.get("content")).split())
    return total


def answer_words(model: str, body: dict[str, Any]) -> list[str]:
    messages = body.get("messages") or []
    last_user = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = message_text(message.get("content"))
            break
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if model == "lorem":
        count = limit if isinstance(limit, int) and limit > 0 else 16
        words = [_LOREM[i % len(_LOREM)] for i in range(count)]
    else:
        words = last_user.split()
        if model == "reverse":
            words.reverse()
        words = NOTICE.split() + words
    if isinstance(limit, int) and limit > 0:
        words = words[:limit]
    return words


class SandboxProvider(Provider):
    name = "sandbox"
    synthetic = True

    def _completion_id(self, request: UpstreamRequest) -> str:
        return "chatcmpl-sandbox-" + request.request_id.removeprefix("req_")

    def _usage(self, request: UpstreamRequest, words: list[str]) -> dict[str, int]:
        prompt = estimate_prompt_tokens(request.body.get("messages") or [])
        return {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
        }

    async def send(self, endpoint: str, request: UpstreamRequest) -> UpstreamResponse:
        if endpoint != "chat":
            raise self.unsupported(endpoint)
        words = answer_words(request.upstream_model, request.body)
        limit = request.body.get("max_completion_tokens") or request.body.get("max_tokens")
        finish = "length" if isinstance(limit, int) and len(words) >= limit else "stop"
        body = {
            "id": self._completion_id(request),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.body.get("model"),
            "system_fingerprint": "sandbox",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": self._usage(request, words),
        }
        return UpstreamResponse(200, body)

    async def open_stream(self, endpoint: str, request: UpstreamRequest) -> EventStream:
        if endpoint != "chat":
            raise self.unsupported(endpoint)
        return _SandboxStream(self, request)


class _SandboxStream(EventStream):
    def __init__(self, provider: SandboxProvider, request: UpstreamRequest) -> None:
        self._provider = provider
        self._request = request

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        request = self._request
        words = answer_words(request.upstream_model, request.body)
        base = {
            "id": self._provider._completion_id(request),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.body.get("model"),
            "system_fingerprint": "sandbox",
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]
        for delta in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            yield _event({**base, "choices": [choice]})
        final = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        yield _event({**base, "choices": [final]})
        yield _event({**base, "choices": [], "usage": self._provider._usage(request, words)})
        yield ServerSentEvent(b"data: [DONE]\n\n", None, b"[DONE]")

    async def aclose(self) -> None:
        return None


def _event(payload: dict[str, Any]) -> ServerSentEvent:
    data = orjson.dumps(payload)
    return ServerSentEvent(b"data: " + data + b"\n\n", None, data)
