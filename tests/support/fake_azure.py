"""A fake Azure OpenAI resource served by uvicorn on 127.0.0.1.

It serves `/openai/deployments/{deployment}/chat/completions` and
`.../embeddings`. Like Azure it returns 401 without the right `api-key`
header and 404 without an `api-version` query parameter, returns the
deployment's model name rather than the requested one, and starts each
stream with a chunk of `prompt_filter_results` and no choices. The
deployment `fail-429` returns 429 with an OpenAI-style error body. Every
raw (still percent-encoded) path, query string, header set and body is
kept for assertions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fake_openai import free_port, last_user_text, sse

MODEL = "gpt-4o-2024-08-06"
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 4,
    "total_tokens": 13,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
_FILTER = {"hate": {"filtered": False, "severity": "safe"}}


class FakeAzure:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.paths: list[str] = []
        self.queries: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        routes = [Route("/openai/deployments/{rest:path}", self.dispatch, methods=["POST"])]
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeAzure:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Azure upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def dispatch(self, request: Request) -> Response:
        # The raw path keeps percent-encoding, so a deployment name with a
        # slash stays one segment here as it does on Azure.
        raw_path = request.scope["raw_path"].decode()
        self.paths.append(raw_path)
        self.queries.append(request.url.query)
        self.headers.append(dict(request.headers))
        self.requests.append(await request.json())
        deployment, _, operation = raw_path.removeprefix("/openai/deployments/").partition("/")
        if request.headers.get("api-key") != self.api_key:
            return error_response(401, "Access denied due to invalid subscription key.")
        if not request.query_params.get("api-version"):
            return error_response(404, "Resource not found")
        if unquote(deployment) == "fail-429":
            return error_response(429, "Rate limit of the deployment exceeded.")
        if operation == "chat/completions":
            return self.chat(self.requests[-1])
        if operation == "embeddings":
            return self.embeddings()
        return error_response(404, "Resource not found")

    def chat(self, body: dict[str, Any]) -> Response:
        text = "fake answer: " + last_user_text(body)
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "content_filter_results": _FILTER,
            }
            completion = {
                "id": "chatcmpl-azure",
                "object": "chat.completion",
                "created": 1,
                "model": MODEL,
                "choices": [choice],
                "usage": USAGE,
            }
            return JSONResponse(completion)
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        return StreamingResponse(stream(text, bool(include_usage)), media_type="text/event-stream")

    def embeddings(self) -> Response:
        data = [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        return JSONResponse({"object": "list", "data": data, "model": MODEL, "usage": usage})


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": str(status), "message": message}}, status_code=status)


async def stream(text: str, include_usage: bool) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    filters = [{"prompt_index": 0, "content_filter_results": _FILTER}]
    yield sse({**base, "model": "", "choices": [], "prompt_filter_results": filters})
    yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {"content": text}}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": USAGE})
    yield b"data: [DONE]\n\n"
