"""Any server that speaks OpenAI's chat completions API.

OpenAI itself, OpenRouter, Ollama, vLLM, Groq, Together and others: a base
URL plus an optional API key, read from the environment variable named in
the provider's configuration.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway_core.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from proxy.providers.base import EventStream, Provider, UpstreamRequest, UpstreamResponse
from proxy.sse import ServerSentEvent, SSEParser

logger = logging.getLogger("gatewayz.providers")

# Upstream statuses passed to the client unchanged; they describe the
# request (bad parameters, unknown model, rate limited), not the gateway.
_CLIENT_STATUSES = frozenset({400, 404, 409, 413, 422, 429})


class OpenAICompatibleProvider(Provider):
    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient,
    ) -> None:
        self.name = name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._client = client
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def _payload(self, request: UpstreamRequest, stream: bool) -> bytes:
        body = dict(request.body)
        body["model"] = request.upstream_model
        body.pop("models", None)
        if stream:
            body["stream"] = True
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    async def chat(self, request: UpstreamRequest) -> UpstreamResponse:
        try:
            response = await self._client.post(
                self._url,
                content=self._payload(request, stream=False),
                headers=self._headers,
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"provider {self.name!r} timed out") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(f"provider {self.name!r} could not be reached: {exc}") from exc
        if response.status_code >= 400:
            raise upstream_error(self.name, response.status_code, response.content)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name!r} returned invalid JSON") from exc
        if not isinstance(body, dict):
            raise UpstreamError(f"provider {self.name!r} returned a non-object JSON body")
        return UpstreamResponse(response.status_code, body)

    async def open_chat_stream(self, request: UpstreamRequest) -> EventStream:
        http_request = self._client.build_request(
            "POST",
            self._url,
            content=self._payload(request, stream=True),
            headers=self._headers,
        )
        try:
            response = await self._client.send(http_request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"provider {self.name!r} timed out") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(f"provider {self.name!r} could not be reached: {exc}") from exc
        if response.status_code >= 400:
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            raise upstream_error(self.name, response.status_code, content)
        return _HTTPEventStream(self.name, response)


class _HTTPEventStream(EventStream):
    def __init__(self, provider: str, response: httpx.Response) -> None:
        self._provider = provider
        self._response = response

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        parser = SSEParser()
        try:
            async for chunk in self._response.aiter_raw():
                for event in parser.feed(chunk):
                    yield event
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"provider {self._provider!r} stream timed out") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(f"provider {self._provider!r} stream failed: {exc}") from exc
        last = parser.flush()
        if last is not None:
            yield last

    async def aclose(self) -> None:
        await self._response.aclose()


def upstream_error(provider: str, status: int, content: bytes) -> GatewayError:
    """Turn an upstream error response into the error the client receives."""
    message = f"provider {provider!r} returned HTTP {status}"
    code: str | None = None
    try:
        payload: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        detail = payload["error"]
        if detail.get("message"):
            message = f"{message}: {detail['message']}"
        code = detail.get("code") if isinstance(detail.get("code"), str) else None
    elif isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = f"{message}: {payload['error']}"
    if status in _CLIENT_STATUSES:
        error = UpstreamError(message, code=code or "upstream_error", status_code=status)
        error.error_type = "rate_limit_error" if status == 429 else "invalid_request_error"
        return error
    if status in (408, 504):
        return UpstreamTimeoutError(message, code="upstream_timeout")
    return UpstreamError(message, code="upstream_error")
