"""Relaying upstream event streams to the client while capturing usage.

Each relay forwards events as received (byte for byte, except the usage
chunk the proxy asked for on the client's behalf), records the time to the
first token, and in its `finally` block closes the upstream and records the
call exactly once: completed, failed mid-stream, or cut short by the client
(then marked partial, with the tokens produced so far estimated if the
provider never reported usage).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import orjson

from gateway_core.errors import GatewayError
from gateway_core.pricing import TokenUsage, parse_anthropic_usage, parse_openai_usage
from proxy.context import CallContext
from proxy.providers import Route
from proxy.providers.base import EventStream
from proxy.sse import ServerSentEvent
from proxy.tokens import estimate_tokens, prompt_characters

logger = logging.getLogger("gatewayz.proxy")


class UsageTracker:
    """Reads usage and produced text out of one endpoint's stream events."""

    def __init__(self, endpoint: str, body: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.body = body
        self.usage: TokenUsage | None = None
        self.characters = 0
        options = body.get("stream_options")
        self.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        # Anthropic reports input tokens in message_start, output in message_delta.
        self._anthropic_usage: dict[str, Any] = {}
        # Type of an error event the upstream sent inside the stream, if any.
        self.error_type: str | None = None
        # Answer text, collected only when the call's body is to be stored.
        self.keep_text = False
        self.text_parts: list[str] = []

    def observe(self, event: dict[str, Any]) -> bool:
        """Update from one decoded event; return False to drop it from the client's stream."""
        error = event.get("error")
        if isinstance(error, dict) and (event.get("type") in (None, "error")):
            self.error_type = str(error.get("type") or "upstream_error")
        if self.endpoint == "messages":
            return self._observe_anthropic(event)
        if self.endpoint == "responses":
            return self._observe_responses(event)
        usage = event.get("usage")
        choices = event.get("choices")
        if usage:
            self.usage = parse_openai_usage(usage)
            if not choices and not self.client_wants_usage:
                return False
        if choices:
            self.characters += produced_characters(choices)
            if self.keep_text:
                self.text_parts.extend(delta_texts(choices))
        return True

    def _observe_anthropic(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._anthropic_usage.update(message.get("usage") or {})
        elif kind == "message_delta":
            self._anthropic_usage.update(event.get("usage") or {})
            self.usage = parse_anthropic_usage(self._anthropic_usage)
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            for field in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(field), str):
                    self.characters += len(delta[field])
            if self.keep_text and isinstance(delta.get("text"), str):
                self.text_parts.append(delta["text"])
        return True

    def _observe_responses(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self.characters += len(event["delta"])
            if self.keep_text:
                self.text_parts.append(event["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = event.get("response") or {}
            if response.get("usage"):
                self.usage = parse_openai_usage(response["usage"])
        return True

    def final_usage(self) -> TokenUsage:
        if self.usage is not None:
            return self.usage
        messages = self.body.get("messages")
        if messages is None:
            messages = [{"content": self.body.get("input") or self.body.get("prompt")}]
        return TokenUsage(
            prompt_tokens=estimate_tokens(prompt_characters(messages)),
            completion_tokens=estimate_tokens(self.characters),
        )


def delta_texts(choices: list[Any]) -> list[str]:
    texts = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            texts.append(delta["content"])
        elif isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return texts


def produced_characters(choices: list[Any]) -> int:
    total = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            total += len(choice["text"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        if isinstance(delta.get("content"), str):
            total += len(delta["content"])
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                total += len(function["arguments"])
    return total


class StreamTranslator(Protocol):
    """Turns decoded upstream events into the client's wire format."""

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...


def forward(
    event: ServerSentEvent,
    ctx: CallContext,
    tracker: UsageTracker,
    translator: StreamTranslator | None,
) -> bytes:
    """Return what one upstream event becomes in the client's stream (maybe nothing)."""
    data = event.data
    if data is None or data == b"[DONE]":
        if translator is None:
            return event.raw
        return b"".join(translator.finish()) if data == b"[DONE]" else b""
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event.raw if translator is None else b""
    if not isinstance(decoded, dict):
        return event.raw if translator is None else b""
    keep = tracker.observe(decoded)
    if tracker.characters:
        ctx.mark_first_token()
    if translator is not None:
        return b"".join(translator.feed(decoded))
    return event.raw if keep else b""


async def relay(
    ctx: CallContext,
    route: Route,
    stream: EventStream,
    tracker: UsageTracker,
    finish: Callable[[CallContext, Route, TokenUsage], None],
    error_event: Callable[[GatewayError], bytes],
    translator: StreamTranslator | None = None,
) -> AsyncIterator[bytes]:
    """Forward `stream` to the client; call `finish` once when it ends in any way.

    Events pass byte for byte unless a `translator` rewrites them into
    another wire format.
    """
    batches = stream.batches()
    try:
        async for batch in batches:
            out = bytearray()
            for event in batch:
                out += forward(event, ctx, tracker, translator)
            if out:
                yield bytes(out)
        if translator is not None:
            for chunk in translator.finish():
                yield chunk
        if tracker.error_type is not None:
            # The upstream reported a failure inside a stream that had
            # already started, so the client has its error event already.
            ctx.partial = True
            ctx.finish(502, tracker.error_type)
            logger.info("request %s: upstream sent an error event mid-stream", ctx.request_id)
        else:
            ctx.finish(200)
    except GatewayError as error:
        ctx.partial = True
        ctx.finish(error.status_code, error.error_type)
        logger.info(
            "request %s stream failed mid-way: %d %s",
            ctx.request_id,
            error.status_code,
            error.code or error.error_type,
        )
        yield error_event(error)
    finally:
        if ctx.finished_at is None:
            # The client went away before the stream ended.
            ctx.partial = True
            ctx.finish(499, "client_disconnected")
            logger.info("request %s: client disconnected mid-stream", ctx.request_id)
        try:
            await batches.aclose()  # type: ignore[attr-defined]
        finally:
            await stream.aclose()
            if ctx.log_bodies:
                ctx.response_body = {"content": "".join(tracker.text_parts), "stream": True}
            finish(ctx, route, tracker.final_usage())
