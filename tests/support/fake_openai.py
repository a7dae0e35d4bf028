"""A fake OpenAI-compatible upstream served by uvicorn on 127.0.0.1.

The requested model selects the behaviour:
- any name: a normal answer that repeats the last user message,
- `fail-500`, `fail-400`, `fail-429`: that status with an OpenAI error body,
- `bad-json`: status 200 with a body that is not JSON,
- `hang`: waits `hang_seconds` before answering,
- `slow-stream`: streams one chunk every 50 ms for `slow_chunks` chunks,
- `flaky-N`: fails with 500 on the first N calls for that model, then answers,
- `limited-S`: answers 429 with `Retry-After: S` once, then answers,
- `usage-cached`: reports 1,000 prompt tokens of which 400 cached, and
  200 completion tokens of which 50 reasoning.
A request with `tools` is answered with a call to the first tool.
Every request body it receives is kept in `requests` for assertions.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeOpenAI:
    def __init__(self, hang_seconds: float = 30.0, slow_chunks: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hang_seconds = hang_seconds
        self.slow_chunks = slow_chunks
        self.streams_closed_early = 0
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.calls: dict[str, int] = {}
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/images/generations", self.images, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _receive(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.calls[body["model"]] = self.calls.get(body["model"], 0) + 1
        return body

    def _scripted_failure(self, model: str) -> Response | None:
        calls = self.calls[model]
        if model.startswith("flaky-") and calls <= int(model.removeprefix("flaky-")):
            error = {"message": f"flaky failure {calls}", "type": "x", "code": "fake"}
            return JSONResponse({"error": error}, status_code=500)
        if model.startswith("limited-") and calls == 1:
            error = {"message": "slow down", "type": "rate_limit", "code": "fake"}
            headers = {"retry-after": model.removeprefix("limited-")}
            return JSONResponse({"error": error}, status_code=429, headers=headers)
        return None

    async def completions(self, request: Request) -> Response:
        body = await self._receive(request)
        usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        choice = {"index": 0, "text": "fake text", "finish_reason": "stop"}
        return JSONResponse(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = await self._receive(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.5, -0.25, float(i)]}
            for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def images(self, request: Request) -> Response:
        body = await self._receive(request)
        data = [{"b64_json": "aW1hZ2U="} for _ in range(body.get("n", 1))]
        return JSONResponse({"created": 1, "data": data})

    async def responses(self, request: Request) -> Response:
        body = await self._receive(request)
        usage = {
            "input_tokens": 7,
            "output_tokens": 3,
            "total_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        output = [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "fake response"}],
            }
        ]
        response = {
            "id": "resp_fake",
            "object": "response",
            "status": "completed",
            "model": body["model"],
            "output": output,
            "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(response)

        async def events():
            yield (
                b"event: response.created\ndata: "
                + json.dumps(
                    {"type": "response.created", "response": {**response, "usage": None}}
                ).encode()
                + b"\n\n"
            )
            yield (
                b"event: response.output_text.delta\ndata: "
                + json.dumps(
                    {"type": "response.output_text.delta", "delta": "fake response"}
                ).encode()
                + b"\n\n"
            )
            yield (
                b"event: response.completed\ndata: "
                + json.dumps({"type": "response.completed", "response": response}).encode()
                + b"\n\n"
            )

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat(self, request: Request) -> Response:
        body = await self._receive(request)
        model = body["model"]
        scripted = self._scripted_failure(model)
        if scripted is not None:
            return scripted
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            error = {"message": f"fake upstream failure {status}", "type": "x", "code": "fake"}
            return JSONResponse({"error": error}, status_code=status)
        if model == "bad-json":
            return Response(b"this is not json{", media_type="application/json")
        if model == "hang":
            await asyncio.sleep(self.hang_seconds)
        text = "fake answer: " + last_user_text(body)
        words = text.split()
        usage = {
            "prompt_tokens": 11,
            "completion_tokens": len(words),
            "total_tokens": 11 + len(words),
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        if model == "usage-cached":
            usage = {
                "prompt_tokens": 1000,
                "completion_tokens": 200,
                "total_tokens": 1200,
                "prompt_tokens_details": {"cached_tokens": 400},
                "completion_tokens_details": {"reasoning_tokens": 50},
            }
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish_reason = "stop"
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": '{"city": "Paris"}'},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish_reason = "tool_calls"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if model == "slow-stream":
            words = ["w"] * self.slow_chunks
        return StreamingResponse(
            self._stream(model, words, usage if include_usage else None),
            media_type="text/event-stream",
        )

    async def _stream(self, model: str, words: list[str], usage: dict[str, Any] | None):
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1}
        base["model"] = model
        completed = False
        try:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            yield sse({**base, "choices": [first]})
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word}
                yield sse({**base, "choices": [{"index": 0, "delta": delta}]})
                if model == "slow-stream":
                    await asyncio.sleep(0.05)
            yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if usage is not None:
                yield sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
            completed = True
        finally:
            if not completed:
                self.streams_closed_early += 1


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""
