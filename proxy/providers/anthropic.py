"""Anthropic's Messages API, natively and behind the OpenAI chat format.

The `messages` endpoint passes Anthropic requests and events through
unchanged apart from the model name. The `chat` endpoint translates OpenAI
chat requests, responses and streams with `proxy.translate.anthropic`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from gateway_core.errors import GatewayError, UpstreamError
from proxy.providers.base import EventStream, Provider, UpstreamRequest, UpstreamResponse
from proxy.providers.openai_compatible import _HTTPEventStream, transport_error, upstream_error
from proxy.sse import ServerSentEvent
from proxy.translate.anthropic import (
    MessagesToChatStream,
    chat_to_messages_request,
    message_to_chat_response,
)
from proxy.upstream_http import Response, TransportError, UpstreamClient

logger = logging.getLogger("gatewayz.providers")

ANTHROPIC_VERSION = "2023-06-01"
# Status of each Anthropic error type, used for errors sent inside a stream.
_ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicProvider(Provider):
    endpoints = frozenset({"chat", "messages"})

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
    ) -> None:
        self.name = name
        # Accept both https://api.anthropic.com and https://api.anthropic.com/v1.
        self._url = base_url.rstrip("/").removesuffix("/v1") + "/v1/messages"
        self._client = client
        self._headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key

    def _request_headers(self, request: UpstreamRequest) -> dict[str, str]:
        headers = dict(self._headers)
        for key, value in request.headers.items():
            if key.lower() == "anthropic-beta":
                headers["anthropic-beta"] = value
        return headers

    def _payload(self, endpoint: str, request: UpstreamRequest, stream: bool) -> bytes:
        if not self.supports(endpoint):
            raise self.unsupported(endpoint)
        if endpoint == "messages":
            body = dict(request.body)
            # `models` is the gateway's own fallback list, not an Anthropic field.
            body.pop("models", None)
        else:
            body = chat_to_messages_request(request.body)
        body["model"] = request.upstream_model
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return orjson.dumps(body)

    async def send(self, endpoint: str, request: UpstreamRequest) -> UpstreamResponse:
        payload = self._payload(endpoint, request, stream=False)
        try:
            response = await self._client.post(
                self._url, content=payload, headers=self._request_headers(request)
            )
        except TransportError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            raise anthropic_error(self.name, response, response.content)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name!r} returned invalid JSON") from exc
        if not isinstance(body, dict):
            raise UpstreamError(f"provider {self.name!r} returned a non-object JSON body")
        if endpoint == "chat":
            body = message_to_chat_response(body, body.get("model") or request.upstream_model)
        return UpstreamResponse(response.status_code, body)

    async def open_stream(self, endpoint: str, request: UpstreamRequest) -> EventStream:
        content = self._payload(endpoint, request, stream=True)
        try:
            response = await self._client.open(
                self._url, content=content, headers=self._request_headers(request)
            )
        except TransportError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            raise anthropic_error(self.name, response, content)
        translator = MessagesToChatStream(request.upstream_model) if endpoint == "chat" else None
        stream = _AnthropicEventStream(self.name, _HTTPEventStream(self.name, response), translator)
        await stream.start()
        return stream


class _AnthropicEventStream(EventStream):
    """Anthropic events, unchanged or translated into OpenAI chunks.

    `start` reads up to the first event that carries data, so that an
    `error` event sent before any output is raised from `open_stream`.
    """

    def __init__(
        self,
        provider: str,
        upstream: EventStream,
        translator: MessagesToChatStream | None,
    ) -> None:
        self._provider = provider
        self._upstream = upstream
        self._events: AsyncGenerator[ServerSentEvent, None] = aiter(upstream)  # type: ignore[assignment]
        self._translator = translator
        self._read_ahead: list[ServerSentEvent] = []

    async def start(self) -> None:
        try:
            async for event in self._events:
                self._read_ahead.append(event)
                if event.data is None:
                    continue
                data = _decode(self._provider, event)
                if data.get("type") == "error":
                    raise _stream_error(self._provider, data)
                return
        except BaseException:
            # The caller never receives this stream, so it is closed here.
            await self.aclose()
            raise

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        for event in self._read_ahead:
            for out in self._handle(event):
                yield out
        self._read_ahead = []
        async for event in self._events:
            for out in self._handle(event):
                yield out
        if self._translator is not None:
            if not self._translator.done:
                raise UpstreamError(
                    f"provider {self._provider!r} closed the stream before message_stop"
                )
            yield ServerSentEvent(b"data: [DONE]\n\n", None, b"[DONE]")

    def _handle(self, event: ServerSentEvent) -> list[ServerSentEvent]:
        if self._translator is None:
            return [event]
        if event.data is None:
            return []
        data = _decode(self._provider, event)
        if data.get("type") == "error":
            raise _stream_error(self._provider, data)
        return [_chunk_event(chunk) for chunk in self._translator.feed(data)]

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._upstream.aclose()


def _decode(provider: str, event: ServerSentEvent) -> dict[str, Any]:
    try:
        data = orjson.loads(event.data or b"")
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"provider {provider!r} sent an event that is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamError(f"provider {provider!r} sent an event that is not a JSON object")
    return data


def _chunk_event(chunk: dict[str, Any]) -> ServerSentEvent:
    data = orjson.dumps(chunk)
    return ServerSentEvent(b"data: " + data + b"\n\n", None, data)


def _stream_error(provider: str, data: dict[str, Any]) -> GatewayError:
    detail = data.get("error") if isinstance(data.get("error"), dict) else {}
    status = _ERROR_STATUSES.get(detail.get("type"), 500)
    logger.info("provider %r sent a stream error: %s", provider, detail.get("type"))
    # The error arrived inside a 200 stream, so its type gives the status
    # that Anthropic sends with that error type on a plain response.
    return anthropic_error(provider, Response(status), orjson.dumps(data))


def anthropic_error(provider: str, response: Response, content: bytes) -> GatewayError:
    """Turn an Anthropic error (`{"type": "error", "error": {...}}`) into a gateway error.

    Statuses follow `upstream_error`, so 400, 404, 413 and 429 keep their
    status and Anthropic's message, while 401 and 403 (the provider key) and
    500 become 502. The Anthropic error type becomes the error code.
    """
    error = upstream_error(provider, response, content)
    try:
        payload: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error_type = payload["error"].get("type")
        if isinstance(error_type, str) and error.code in (None, "upstream_error"):
            error.code = error_type
    if response.status_code == 529:
        # 529 "overloaded" is sent as 503 rather than 502, because the
        # provider worked and reported a temporary lack of capacity, which is
        # what 503 means. Clients and SDKs retry 503 later, and a fallback can
        # tell it apart from a broken upstream (502).
        error.status_code = 503
        if getattr(error, "retry_after", None) is not None:
            error.headers["retry-after"] = response.headers["retry-after"]
    return error
