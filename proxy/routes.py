"""OpenAI-compatible endpoints: chat completions and the model list."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway_core.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from gateway_core.pricing import TokenUsage, format_usd, parse_openai_usage
from proxy.auth import bearer_token
from proxy.context import CallContext, KeyIdentity
from proxy.gateway import Gateway
from proxy.providers import Route
from proxy.providers.base import EventStream, UpstreamRequest
from proxy.providers.sandbox import SANDBOX_MODELS
from proxy.responses import EventStreamResponse, JSONResponse, error_response
from proxy.tokens import estimate_tokens, prompt_characters

logger = logging.getLogger("gatewayz.proxy")


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


async def authenticate(request: Request, gateway: Gateway) -> KeyIdentity:
    token = bearer_token(request.headers.get("authorization"), request.headers.get("x-api-key"))
    return await gateway.verifier.verify(token)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is larger than the {limit} byte limit")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLargeError(f"request body is larger than the {limit} byte limit")
    except ClientDisconnect as exc:
        raise InvalidRequestError("client disconnected while sending the body") from exc
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return payload


def validate_chat(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("missing required field 'model'", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "'messages' must be a non-empty array of message objects", param="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(
                f"messages[{index}] must be an object with a 'role'", param=f"messages[{index}]"
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be true or false", param="stream")
    return model


async def chat_completions(request: Request) -> Response:
    gateway = gateway_of(request)
    ctx = CallContext(endpoint="chat.completions")
    streaming = False
    try:
        ctx.identity = await authenticate(request, gateway)
        body = await read_json_object(request, gateway.settings.max_body_bytes)
        ctx.model = validate_chat(body)
        ctx.stream = body.get("stream", False)
        route = await gateway.registry.resolve(ctx.model, ctx.identity)
        ctx.provider = route.provider.name
        await gateway.recorder.wait_for_capacity()
        upstream = UpstreamRequest(ctx.request_id, route.upstream_model, body)
        ctx.attempts = 1
        if ctx.stream:
            stream = await route.provider.open_chat_stream(upstream)
            streaming = True
            return EventStreamResponse(
                relay_stream(gateway, ctx, route, stream, body),
                headers=response_headers(ctx, route),
            )
        result = await route.provider.chat(upstream)
        ctx.usage = parse_openai_usage(result.body.get("usage"))
        ctx.cost = gateway.cost(route, ctx.usage)
        ctx.mark_first_token()
        ctx.finish(result.status_code)
        headers = response_headers(ctx, route)
        headers["x-gatewayz-cost-usd"] = format_usd(ctx.cost)
        return JSONResponse(result.body, status_code=result.status_code, headers=headers)
    except GatewayError as error:
        ctx.finish(error.status_code, error.error_type)
        log_failure(ctx, error)
        return error_response(error, ctx.request_id)
    except Exception:
        ctx.finish(500, "server_error")
        logger.exception("request %s failed with an internal error", ctx.request_id)
        error = GatewayError("internal error in the gateway; the request id identifies it")
        return error_response(error, ctx.request_id)
    finally:
        if not streaming:
            gateway.recorder.record(ctx.usage_row())


def response_headers(ctx: CallContext, route: Route) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id, "x-gatewayz-provider": route.provider.name}
    if route.provider.synthetic:
        headers["x-gatewayz-sandbox"] = "true"
    return headers


def log_failure(ctx: CallContext, error: GatewayError) -> None:
    key_id = ctx.identity.key_id if ctx.identity else None
    logger.info(
        "request %s key %s model %s failed: %d %s",
        ctx.request_id,
        key_id,
        ctx.model,
        error.status_code,
        error.code or error.error_type,
    )


async def relay_stream(
    gateway: Gateway,
    ctx: CallContext,
    route: Route,
    stream: EventStream,
    body: dict[str, Any],
) -> AsyncIterator[bytes]:
    """Forward upstream events, capture usage, and record the call once."""
    options = body.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    completion_characters = 0
    usage_seen = False
    finished = False
    events = aiter(stream)
    try:
        async for event in events:
            if event.data is None or event.data == b"[DONE]":
                yield event.raw
                continue
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                yield event.raw
                continue
            if not isinstance(chunk, dict):
                yield event.raw
                continue
            usage = chunk.get("usage")
            if usage:
                ctx.usage = parse_openai_usage(usage)
                usage_seen = True
            choices = chunk.get("choices")
            if usage and not choices and not client_wants_usage:
                continue
            if choices:
                completion_characters += delta_characters(choices)
                if completion_characters:
                    ctx.mark_first_token()
            yield event.raw
        finished = True
        ctx.finish(200)
    except GatewayError as error:
        ctx.partial = True
        ctx.finish(error.status_code, error.error_type)
        log_failure(ctx, error)
        yield b"data: " + orjson.dumps(error.to_body()) + b"\n\n"
    finally:
        if ctx.finished_at is None:
            # The client went away before the stream ended.
            ctx.partial = True
            ctx.finish(499, "client_disconnected")
        if not usage_seen:
            ctx.usage = estimated_usage(body, completion_characters)
        try:
            await events.aclose()
        finally:
            await stream.aclose()
            ctx.cost = gateway.cost(route, ctx.usage)
            gateway.recorder.record(ctx.usage_row())
            if not finished:
                logger.info("request %s stream ended early; recorded as partial", ctx.request_id)


def delta_characters(choices: list[Any]) -> int:
    total = 0
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        content = delta.get("content")
        if isinstance(content, str):
            total += len(content)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                total += len(function["arguments"])
    return total


def estimated_usage(body: dict[str, Any], completion_characters: int) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=estimate_tokens(prompt_characters(body.get("messages"))),
        completion_tokens=estimate_tokens(completion_characters),
    )


def model_object(model_id: str, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by}


def visible_models(gateway: Gateway, identity: KeyIdentity) -> list[dict[str, Any]]:
    models = [model_object(f"sandbox/{name}", "sandbox") for name in SANDBOX_MODELS]
    configured = gateway.registry.configured()
    for entry in gateway.catalog.all():
        if entry.provider == "sandbox":
            continue
        if identity.is_test or entry.provider in configured:
            models.append(model_object(entry.id, entry.provider))
    return models


async def list_models(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        identity = await authenticate(request, gateway)
    except GatewayError as error:
        return error_response(error, "")
    return JSONResponse({"object": "list", "data": visible_models(gateway, identity)})


async def retrieve_model(request: Request) -> Response:
    gateway = gateway_of(request)
    model_id = request.path_params["model_id"]
    try:
        identity = await authenticate(request, gateway)
        for model in visible_models(gateway, identity):
            if model["id"] == model_id:
                return JSONResponse(model)
        raise NotFoundError(f"model {model_id!r} not found", code="model_not_found")
    except GatewayError as error:
        return error_response(error, "")
