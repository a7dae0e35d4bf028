"""A fake Gemini API (v1beta generateContent) served by uvicorn on 127.0.0.1.

Like the real API it returns 400 INVALID_ARGUMENT when the `x-goog-api-key`
header is missing or wrong, and `:streamGenerateContent` sends server-sent
events only with `?alt=sse` (a JSON array otherwise). The model selects the
behaviour:
- any name: a text response that repeats the last user text,
- `tool-call`: a `functionCall` to `get_weather` with {"city": "Paris"} and
  the thought signature `SIGNATURE`,
- `blocked`: no candidates and `promptFeedback.blockReason` SAFETY,
- `fail-400`, `fail-429`, `fail-503`: that status with a Google error body,
  429 with a RetryInfo delay of 27 seconds,
- `stream-error`: a stream that sends text, then an INTERNAL error object.
`:batchEmbedContents` returns, for each text, the vector [length of the
text, 0.5] cut or zero-padded to `outputDimensionality`, and no usage.
Usage is 12 prompt tokens (2 of them cached), 4 thought tokens and one
candidate token per word. Every request target (raw path and query), header set and body is kept.
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

SIGNATURE = "c2lnbmF0dXJlLWZvci10ZXN0cw=="
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


class FakeGemini:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.urls: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1beta"
        routes = [Route("/v1beta/models/{target:path}", self.generate, methods=["POST"])]
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeGemini:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Gemini upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        # The raw target, as sent: percent-encoding and query string intact.
        raw_query = request.scope["query_string"].decode()
        self.urls.append(
            request.scope["raw_path"].decode() + ("?" + raw_query if raw_query else "")
        )
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model, _, method = request.path_params["target"].partition(":")
        if request.headers.get("x-goog-api-key") != self.api_key:
            return error_response(400, "API key not valid. Please pass a valid API key.")
        if model.startswith("fail-"):
            return error_response(int(model.removeprefix("fail-")), f"fake failure of {model}")
        if method == "batchEmbedContents":
            return JSONResponse(embeddings(body))
        chunks = response_chunks(model, body)
        if method == "generateContent":
            return JSONResponse(merge(chunks))
        if method != "streamGenerateContent":
            return error_response(404, f"method {method} not found")
        if request.query_params.get("alt") != "sse":
            return JSONResponse(chunks)
        return StreamingResponse(stream(model, chunks), media_type="text/event-stream")


def error_response(status: int, message: str) -> JSONResponse:
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS_NAMES[status]}
    if status == 429:
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}
        error["details"] = [retry]
    return JSONResponse({"error": error}, status_code=status)


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """Return one embedding per request: [text length, 0.5], or that many zeros too."""
    results = []
    for item in body["requests"]:
        values = [float(len(item["content"]["parts"][0]["text"])), 0.5]
        size = item.get("outputDimensionality", 2)
        results.append({"values": (values + [0.0] * size)[:size]})
    return {"embeddings": results}


def usage(words: int) -> dict[str, int]:
    return {
        "promptTokenCount": 12,
        "cachedContentTokenCount": 2,
        "candidatesTokenCount": words,
        "thoughtsTokenCount": 4,
        "totalTokenCount": 16 + words,
    }


def response_chunks(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the stream responses for a request. A non-stream call merges them."""
    base = {"modelVersion": model, "responseId": "fake-response-1"}
    if model == "blocked":
        feedback = {"blockReason": "SAFETY"}
        return [{**base, "promptFeedback": feedback, "usageMetadata": usage(0)}]
    if model == "tool-call":
        call = {"name": "get_weather", "args": {"city": "Paris"}}
        part = {"functionCall": call, "thoughtSignature": SIGNATURE}
        candidate = {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}
        return [{**base, "candidates": [{**candidate, "index": 0}], "usageMetadata": usage(5)}]
    words = ("fake answer: " + last_user_text(body)).split(" ")
    chunks = []
    for i, word in enumerate(words):
        text = word if i == 0 else " " + word
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
        if i == len(words) - 1:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        chunks.append({**base, "candidates": [candidate], "usageMetadata": usage(i + 1)})
    return chunks


def merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(chunks[-1])
    if "candidates" in merged:
        parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
        text = "".join(part.get("text", "") for part in parts)
        if text:
            parts = [{"text": text}]
        candidate = {**merged["candidates"][0], "content": {"role": "model", "parts": parts}}
        merged["candidates"] = [candidate]
    return merged


def last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents", [])):
        if content.get("role") == "user":
            texts = [part["text"] for part in content["parts"] if "text" in part]
            if texts:
                return " ".join(texts)
    return ""


async def stream(model: str, chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for i, chunk in enumerate(chunks):
        # Gemini ends each event with CRLF CRLF.
        yield b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"
        if model == "stream-error" and i == 1:
            error = {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}
            yield b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"
            return
