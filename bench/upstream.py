"""A fast fake OpenAI-compatible upstream for the proxy benchmark.

`POST /v1/chat/completions` responds at once with a fixed completion and
its usage. With `"stream": true` it sends server-sent events instead: a role
chunk, `BENCH_STREAM_CHUNKS` content chunks (default 20) each in its own
write, a final chunk, a usage chunk when `stream_options.include_usage` is
true, and `data: [DONE]`. `GET /health` returns 200 for readiness checks.

It is a raw ASGI app with every response prebuilt, so that its own cost
stays small next to the proxies it feeds. Run it with:

    BENCH_STREAM_CHUNKS=20 python -m uvicorn bench.upstream:create_app --factory --port 9000
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

CHUNKS_ENV = "BENCH_STREAM_CHUNKS"
DEFAULT_CHUNKS = 20
MODEL = "bench-model"
PROMPT_TOKENS = 12
CREATED = 1_700_000_000

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def completion_body(chunks: int) -> bytes:
    """Build the non-streaming response body: `chunks` words and their usage."""
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(["word"] * chunks)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(chunks),
    }
    return orjson.dumps(body)


def usage(completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def stream_events(chunks: int) -> tuple[list[bytes], bytes]:
    """Build the stream as (events before usage, usage event), each one SSE event."""

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    events = [event([choice({"role": "assistant", "content": ""})])]
    for index in range(chunks):
        events.append(event([choice({"content": "word" if index == 0 else " word"})]))
    events.append(event([choice({}, "stop")]))
    return events, event([], usage=usage(chunks))


class FakeUpstream:
    """The ASGI app; `chunks` sets the number of content chunks per stream."""

    def __init__(self, chunks: int = DEFAULT_CHUNKS) -> None:
        if chunks < 0:
            raise ValueError(f"chunks must be 0 or more, got {chunks}")
        self.completion = completion_body(chunks)
        self.events, self.usage_event = stream_events(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health" and method == "GET":
            await respond(send, 200, b"ok", [(b"content-type", b"text/plain")])
            return
        if path != "/v1/chat/completions" or method != "POST":
            await respond(send, 404, b'{"error": {"message": "not found"}}', _JSON_HEADERS)
            return
        try:
            request = orjson.loads(await read_body(receive))
        except orjson.JSONDecodeError:
            await respond(send, 400, b'{"error": {"message": "invalid JSON"}}', _JSON_HEADERS)
            return
        if not isinstance(request, dict) or request.get("stream") is not True:
            await respond(send, 200, self.completion, _JSON_HEADERS)
            return
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        await self.send_stream(send, include_usage)

    async def send_stream(self, send: Send, include_usage: bool) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if include_usage:
            await send({"type": "http.response.body", "body": self.usage_event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app() -> FakeUpstream:
    """Build the app with the chunk count from `BENCH_STREAM_CHUNKS`."""
    raw = os.environ.get(CHUNKS_ENV, str(DEFAULT_CHUNKS))
    try:
        chunks = int(raw)
    except ValueError as exc:
        raise ValueError(f"{CHUNKS_ENV} must be a whole number, got {raw!r}") from exc
    return FakeUpstream(chunks)
