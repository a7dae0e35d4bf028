"""OpenAI-compatible endpoints and the model list.

Every call endpoint runs the same steps (see `handle_call`): authenticate,
read and validate the body, resolve the model and its fallbacks, dispatch
with retries, relay the answer, and record exactly one usage row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from proxy.providers.base import EventStream, UpstreamRequest, UpstreamResponse
from proxy.providers.sandbox import SANDBOX_MODELS
from proxy.responses import EventStreamResponse, JSONResponse, error_response
from proxy.routing import dispatch
from proxy.streaming import UsageTracker, relay

logger = logging.getLogger("gatewayz.proxy")

COST_HEADER = "x-gatewayz-cost-usd"
# Client headers passed on to providers that understand them.
FORWARDED_HEADERS = ("anthropic-beta", "anthropic-version", "openai-beta")


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


def require(body: dict[str, Any], field: str, check: Callable[[Any], bool], what: str) -> None:
    if field not in body:
        raise InvalidRequestError(f"missing required field '{field}'", param=field)
    if not check(body[field]):
        raise InvalidRequestError(f"'{field}' must be {what}", param=field)


def validate_common(body: dict[str, Any]) -> None:
    require(body, "model", lambda v: isinstance(v, str) and bool(v), "a model id string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be true or false", param="stream")
    models = body.get("models")
    if models is not None and not (
        isinstance(models, list) and all(isinstance(m, str) and m for m in models)
    ):
        raise InvalidRequestError("'models' must be an array of model ids", param="models")


def validate_chat(body: dict[str, Any]) -> None:
    def messages_ok(value: Any) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
        )

    require(body, "messages", messages_ok, "a non-empty array of objects with a 'role'")


def validate_completions(body: dict[str, Any]) -> None:
    require(body, "prompt", lambda v: isinstance(v, (str, list)), "a string or an array")


def validate_embeddings(body: dict[str, Any]) -> None:
    require(body, "input", lambda v: isinstance(v, (str, list)) and bool(v), "a string or array")
    if body.get("stream"):
        raise InvalidRequestError("embeddings cannot be streamed", param="stream")


def validate_images(body: dict[str, Any]) -> None:
    require(body, "prompt", lambda v: isinstance(v, str) and bool(v), "a non-empty string")
    if body.get("stream"):
        raise InvalidRequestError("image generation cannot be streamed here", param="stream")


def validate_responses(body: dict[str, Any]) -> None:
    require(body, "input", lambda v: isinstance(v, (str, list)), "a string or an array")


VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "chat": validate_chat,
    "completions": validate_completions,
    "embeddings": validate_embeddings,
    "images": validate_images,
    "responses": validate_responses,
}


def usage_of(endpoint: str, body: dict[str, Any]) -> TokenUsage:
    return parse_openai_usage(body.get("usage"))


def openai_error_event(error: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(error.to_body()) + b"\n\n"


async def handle_call(request: Request, endpoint: str) -> Response:
    gateway = gateway_of(request)
    ctx = CallContext(endpoint=endpoint)
    streaming = False
    try:
        ctx.identity = await authenticate(request, gateway)
        body = await read_json_object(request, gateway.settings.max_body_bytes)
        validate_common(body)
        VALIDATORS[endpoint](body)
        ctx.model = body["model"]
        ctx.stream = body.get("stream", False)
        routes = await gateway.registry.resolve_all(body["model"], ctx.identity, body.get("models"))
        await gateway.recorder.wait_for_capacity()
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
        upstream = UpstreamRequest(ctx.request_id, "", body, headers)
        route, result = await dispatch(
            ctx,
            routes,
            endpoint,
            upstream,
            stream=ctx.stream,
            breaker=gateway.breaker,
            policy=gateway.retry_policy,
        )
        if isinstance(result, EventStream):
            streaming = True
            source = relay(
                ctx,
                route,
                result,
                UsageTracker(endpoint, body),
                gateway.finish_call,
                openai_error_event,
            )
            return EventStreamResponse(source, headers=response_headers(ctx, route))
        return complete(gateway, ctx, route, result, usage_of(endpoint, result.body))
    except GatewayError as error:
        return failed(gateway, ctx, error)
    except Exception:
        logger.exception("request %s failed with an internal error", ctx.request_id)
        return failed(gateway, ctx, GatewayError("internal error in the gateway"))
    finally:
        if not streaming:
            gateway.recorder.record(ctx.usage_row())


def complete(
    gateway: Gateway,
    ctx: CallContext,
    route: Route,
    result: UpstreamResponse,
    usage: TokenUsage,
) -> Response:
    ctx.usage = usage
    ctx.cost = gateway.cost(route, usage, result.body)
    ctx.mark_first_token()
    ctx.finish(result.status_code)
    headers = response_headers(ctx, route)
    headers[COST_HEADER] = format_usd(ctx.cost)
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


def failed(gateway: Gateway, ctx: CallContext, error: GatewayError) -> Response:
    ctx.finish(error.status_code, error.error_type)
    key_id = ctx.identity.key_id if ctx.identity else None
    logger.info(
        "request %s key %s model %s failed after %d attempts: %d %s",
        ctx.request_id,
        key_id,
        ctx.model,
        ctx.attempts,
        error.status_code,
        error.code or error.error_type,
    )
    return error_response(error, ctx.request_id)


def response_headers(ctx: CallContext, route: Route) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id, "x-gatewayz-provider": route.provider.name}
    if route.provider.synthetic:
        headers["x-gatewayz-sandbox"] = "true"
    return headers


async def chat_completions(request: Request) -> Response:
    return await handle_call(request, "chat")


async def completions(request: Request) -> Response:
    return await handle_call(request, "completions")


async def embeddings(request: Request) -> Response:
    return await handle_call(request, "embeddings")


async def images_generations(request: Request) -> Response:
    return await handle_call(request, "images")


async def responses(request: Request) -> Response:
    return await handle_call(request, "responses")


def model_object(model_id: str, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by}


def visible_models(gateway: Gateway, identity: KeyIdentity) -> list[dict[str, Any]]:
    """Models this key can call: sandbox, configured providers' models and aliases."""
    models = [model_object(f"sandbox/{name}", "sandbox") for name in SANDBOX_MODELS]
    configured = gateway.registry.configured()
    for entry in gateway.catalog.all():
        if entry.provider == "sandbox":
            continue
        if identity.is_test or entry.provider in configured:
            models.append(model_object(entry.id, entry.provider))
    for alias, target in sorted(gateway.registry.aliases().items()):
        models.append(model_object(alias, target.partition("/")[0]))
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
