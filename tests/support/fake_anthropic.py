"""A fake Anthropic Messages API served by uvicorn on 127.0.0.1.

Like the real API it rejects a request without the `x-api-key` header
(401), without `anthropic-version` (400) or without `max_tokens` (400).
The requested model selects the behaviour:
- any name: a text response that repeats the last user message, cut to
  `max_tokens` words with stop reason `max_tokens`,
- `tool-call`: the text "Let me check." and a `tool_use` block calling
  `get_weather` with {"city": "Paris"},
- `fail-400`, `fail-429`, `fail-500`, `fail-529`: that status with an
  Anthropic error body, 429 with `retry-after: 7`,
- `stream-error`: a stream that sends text, then an `overloaded_error` event,
- `stream-first-error`: a stream whose first event is an `overloaded_error`,
- `stream-cut`: a stream that ends before `message_stop`.
Usage is 20 uncached input tokens, 5 cache reads, 3 cache writes and one
output token per word. Bodies and headers received are kept for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fake_openai import free_port

USAGE = {"input_tokens": 20, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 3}
_ERROR_TYPES = {
    400: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
TOOL_INPUT_FRAGMENTS = ['{"city', '": "Par', 'is"}']


class FakeAnthropic:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeAnthropic:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Anthropic upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if request.headers.get("x-api-key") != self.api_key:
            return error_response(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error_response(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if not isinstance(body.get("max_tokens"), int):
            return error_response(400, "invalid_request_error", "max_tokens: Field required")
        model = body["model"]
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            headers = {"retry-after": "7"} if status == 429 else None
            return error_response(status, _ERROR_TYPES[status], f"fake failure {status}", headers)
        blocks, stop_reason = answer(body)
        if body.get("stream"):
            return StreamingResponse(
                stream_events(model, blocks, stop_reason), media_type="text/event-stream"
            )
        return JSONResponse(
            {
                "id": "msg_fake01",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {**USAGE, "output_tokens": output_tokens(blocks)},
            }
        )


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    if body["model"] == "tool-call":
        tool_use = {
            "type": "tool_use",
            "id": "toolu_fake01",
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        return [{"type": "text", "text": "Let me check."}, tool_use], "tool_use"
    words = ("fake answer: " + last_user_text(body)).split()
    stop_reason = "end_turn"
    if len(words) > body["max_tokens"]:
        words = words[: body["max_tokens"]]
        stop_reason = "max_tokens"
    return [{"type": "text", "text": " ".join(words)}], stop_reason


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [block["text"] for block in content if block.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


def output_tokens(blocks: list[dict[str, Any]]) -> int:
    return sum(
        len(block.get("text", "").split()) + 5 * (block["type"] == "tool_use") for block in blocks
    )


def event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def overloaded() -> bytes:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    return event("error", {"type": "error", "error": error})


async def stream_events(
    model: str, blocks: list[dict[str, Any]], stop_reason: str
) -> AsyncIterator[bytes]:
    if model == "stream-first-error":
        yield overloaded()
        return
    message = {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": 1},
    }
    yield event("message_start", {"type": "message_start", "message": message})
    yield event("ping", {"type": "ping"})
    for index, block in enumerate(blocks):
        for out in block_events(index, block):
            yield out
        if model == "stream-error":
            yield overloaded()
            return
    if model == "stream-cut":
        return
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    usage = {"output_tokens": output_tokens(blocks)}
    yield event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    yield event("message_stop", {"type": "message_stop"})


def block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    events = []
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        words = block["text"].split(" ")
        deltas = [
            {"type": "text_delta", "text": word if i == 0 else " " + word}
            for i, word in enumerate(words)
        ]
    else:
        start = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in TOOL_INPUT_FRAGMENTS]
    events.append(
        event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
    )
    for delta in deltas:
        events.append(
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
    events.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events
