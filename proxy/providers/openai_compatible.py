"""Any server that speaks OpenAI's chat completions API.

OpenAI itself, OpenRouter, Ollama, vLLM, Groq, Together and others: a base
URL plus an optional API key, read from the environment variable named in
the provider's configuration.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway_core.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from proxy.providers.base import (
    ENDPOINT_PATHS,
    EventStream,
    Provider,
    UpstreamRequest,
    UpstreamResponse,
)
from proxy.sse import ServerSentEvent, SSEParser
from proxy.upstream_http import (
    ConnectError,
    Response,
    TimeoutException,
    TransportError,
    UpstreamClient,
)

logger = logging.getLogger("gatewayz.providers")

# Upstream statuses passed to the client unchanged; they describe the
# request (bad parameters, unknown model, rate limited), not the gateway.
_CLIENT_STATUSES = frozenset({400, 404, 409, 413, 422, 429})


class OpenAICompatibleProvider(Provider):
    endpoints = frozenset({"chat", "completions", "embeddings", "images", "responses"})

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
    ) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self._client = client
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def _url(self, endpoint: str) -> str:
        if not self.supports(endpoint):
            raise self.unsupported(endpoint)
        return self._base_url + ENDPOINT_PATHS[endpoint]

    def _payload(self, endpoint: str, request: UpstreamRequest, stream: bool) -> bytes:
        body = dict(request.body)
        body["model"] = request.upstream_model
        body.pop("models", None)
        if stream:
            body["stream"] = True
            if endpoint in ("chat", "completions"):
                # Ask for the usage chunk so every stream can be priced.
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True
                body["stream_options"] = options
        return orjson.dumps(body)

    async def send(self, endpoint: str, request: UpstreamRequest) -> UpstreamResponse:
        url = self._url(endpoint)
        try:
            response = await self._client.post(
                url,
                content=self._payload(endpoint, request, stream=False),
                headers=self._headers,
            )
        except TransportError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            raise upstream_error(self.name, response, response.content)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name!r} returned invalid JSON") from exc
        if not isinstance(body, dict):
            raise UpstreamError(f"provider {self.name!r} returned a non-object JSON body")
        return UpstreamResponse(response.status_code, body)

    async def open_stream(self, endpoint: str, request: UpstreamRequest) -> EventStream:
        content = self._payload(endpoint, request, stream=True)
        try:
            response = await self._client.open(
                self._url(endpoint), content=content, headers=self._headers
            )
        except TransportError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            raise upstream_error(self.name, response, content)
        return _HTTPEventStream(self.name, response)


class _HTTPEventStream(EventStream):
    def __init__(self, provider: str, response: Response) -> None:
        self._provider = provider
        self._response = response

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[ServerSentEvent]]:
        parser = SSEParser()
        try:
            async for chunk in self._response.aiter_raw():
                events = list(parser.feed(chunk))
                if events:
                    yield events
        except TransportError as exc:
            raise transport_error(self._provider, exc) from exc
        last = parser.flush()
        if last is not None:
            yield [last]

    async def aclose(self) -> None:
        await self._response.aclose()


def transport_error(provider: str, exc: TransportError) -> GatewayError:
    """Map a network failure to 504 (timed out) or 502 (could not connect or read)."""
    # The detail (host, port, OS error) is logged but not sent to clients,
    # which need not learn where providers live.
    logger.warning("provider %s: %s: %s", provider, type(exc).__name__, exc)
    if isinstance(exc, TimeoutException):
        return UpstreamTimeoutError(f"provider {provider!r} timed out", code="upstream_timeout")
    reason = "connection refused" if isinstance(exc, ConnectError) else "network error"
    return UpstreamError(f"provider {provider!r} could not be reached ({reason})")


def parse_retry_after(value: str | None) -> float | None:
    """Read a Retry-After header given in seconds; HTTP dates are ignored."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86_400 else None


def upstream_error(provider: str, response: Response, content: bytes) -> GatewayError:
    """Turn an upstream error response into the error the client receives."""
    status = response.status_code
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
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    headers = {"retry-after": response.headers["retry-after"]} if retry_after is not None else {}
    if status in _CLIENT_STATUSES:
        return UpstreamError(
            message,
            code=code or "upstream_error",
            status_code=status,
            retry_after=retry_after,
            headers=headers,
            error_type="rate_limit_error" if status == 429 else "invalid_request_error",
        )
    if status in (408, 504):
        return UpstreamTimeoutError(message, code="upstream_timeout", retry_after=retry_after)
    return UpstreamError(message, code="upstream_error", retry_after=retry_after)
