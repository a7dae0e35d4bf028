"""OpenAI-compatible endpoints and the model list.

Every call endpoint runs the same steps (see `handle_call`): authenticate,
read and validate the body, resolve the model and its fallbacks, dispatch
with retries, relay the answer, and record exactly one usage row.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway_core.catalog import ModelEntry
from gateway_core.errors import (
    ClientClosedRequestError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
)
from gateway_core.pricing import (
    TokenUsage,
    format_usd,
    parse_anthropic_usage,
    parse_openai_usage,
)
from proxy.admission import output_limit
from proxy.auth import bearer_token
from proxy.chat_history import prepare_chat
from proxy.context import CallContext, KeyIdentity
from proxy.gateway import Gateway
from proxy.key_policy import check_access, client_address, referrer_host
from proxy.providers import Route
from proxy.providers.base import EventStream, UpstreamRequest
from proxy.providers.sandbox import SANDBOX_MODELS
from proxy.responses import EventStreamResponse, JSONResponse, error_response
from proxy.routing import Plan, dispatch
from proxy.spend import scopes_of
from proxy.streaming import UsageTracker, relay
from proxy.translate.anthropic import (
    ChatToMessagesStream,
    chat_response_to_message,
    messages_to_chat_request,
)

logger = logging.getLogger("gatewayz.proxy")

COST_HEADER = "x-gatewayz-cost-usd"
READ_ENDPOINTS = frozenset({"models", "key"})
# Client headers passed on to providers that understand them.
FORWARDED_HEADERS = ("anthropic-beta", "anthropic-version", "openai-beta")


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


async def authenticate(
    request: Request, gateway: Gateway, ctx: CallContext | None = None
) -> KeyIdentity:
    token = bearer_token(request.headers.get("authorization"), request.headers.get("x-api-key"))
    try:
        identity = await gateway.verifier.verify(token)
    except PermissionDeniedError as error:
        # A revoked key is still known: its rejected calls are recorded against it.
        if ctx is not None and isinstance(error.identity, KeyIdentity):
            ctx.identity = error.identity
        raise
    if ctx is not None:
        ctx.identity = identity
    policy = identity.policy
    # The address and referrer are only worked out for keys restricted by them.
    address = referrer = None
    if policy.allowed_networks is not None:
        peer = request.client.host if request.client else None
        forwarded_for = request.headers.get("x-forwarded-for")
        address = client_address(peer, forwarded_for, gateway.settings.trusted_proxies)
    if policy.allowed_referrers is not None:
        referrer = referrer_host(request.headers.get("referer"), request.headers.get("origin"))
    check_access(
        policy,
        identity.key_id,
        # Reading the model list or the key's own limits is always allowed.
        endpoint=ctx.endpoint if ctx is not None and ctx.endpoint not in READ_ENDPOINTS else None,
        address=address,
        referrer=referrer,
    )
    return identity


async def read_json_object(request: Request, limit: int) -> tuple[dict[str, Any], int]:
    """Return the body parsed as a JSON object, and its size in bytes."""
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
        raise ClientClosedRequestError("client disconnected while sending the body") from exc
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return payload, len(body)


def require(body: dict[str, Any], field: str, check: Callable[[Any], bool], what: str) -> None:
    if field not in body:
        raise InvalidRequestError(f"missing required field '{field}'", param=field)
    if not check(body[field]):
        raise InvalidRequestError(f"'{field}' must be {what}", param=field)


# Numeric request fields and their allowed ranges, as the OpenAI API checks them.
NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "max_tokens": (1, 10_000_000),
    "max_completion_tokens": (1, 10_000_000),
    "max_output_tokens": (1, 10_000_000),
    "n": (1, 128),
    "top_logprobs": (0, 20),
}
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_common(body: dict[str, Any]) -> None:
    require(
        body,
        "model",
        lambda v: isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable(),
        "a model id string of printable characters",
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be true or false", param="stream")
    models = body.get("models")
    if models is not None and not (
        isinstance(models, list)
        and len(models) <= 10
        and all(isinstance(m, str) and m and m.isprintable() for m in models)
    ):
        raise InvalidRequestError("'models' must be an array of up to 10 model ids", param="models")
    for field, (low, high) in NUMERIC_RANGES.items():
        value = body.get(field)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not low <= value <= high
        ):
            raise InvalidRequestError(
                f"'{field}' must be a number from {low} to {high}, got {value!r}", param=field
            )
    for field, (low, high) in INTEGER_RANGES.items():
        value = body.get(field)
        if value is None:
            continue
        if not is_integer(value) or not low <= value <= high:
            raise InvalidRequestError(
                f"'{field}' must be an integer from {low} to {high}, got {value!r}", param=field
            )


def allowed_routes(identity: KeyIdentity, requested: str, routes: list[Route]) -> list[Route]:
    """Drop routes the key may not use; reject the call if the requested model is one."""
    policy = identity.policy
    if policy.allowed_models is None:
        return routes
    if not policy.allows_model(requested, routes[0].model_id):
        raise PermissionDeniedError(
            f"API key {identity.key_id} may not use model {requested!r}; it is limited to "
            + ", ".join(policy.allowed_models),
            code="model_not_allowed",
            param="model",
        )
    return [routes[0]] + [r for r in routes[1:] if policy.allows_model(r.model_id)]


def check_output_limit(body: dict[str, Any], routes: list[Route]) -> None:
    """Reject an output limit above what the model can produce, as providers do."""
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(field)
        if value is None:
            continue
        for route in routes:
            entry = route.entry
            if entry is not None and entry.max_output_tokens and value > entry.max_output_tokens:
                raise InvalidRequestError(
                    f"'{field}' is too large: {value}; {route.model_id} supports at most "
                    f"{entry.max_output_tokens} output tokens",
                    param=field,
                )


def validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if "messages" not in body:
        raise InvalidRequestError("missing required field 'messages'", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "'messages' must be a non-empty array of message objects", param="messages"
        )
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{param} must be an object", param=param)
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise InvalidRequestError(
                f"{param}.role must be one of {', '.join(sorted(MESSAGE_ROLES))}, "
                f"got {message.get('role')!r}",
                param=f"{param}.role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(
                f"{param}.content must be a string or an array of content parts",
                param=f"{param}.content",
            )
        if isinstance(content, list) and not all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
        ):
            raise InvalidRequestError(
                f"{param}.content parts must be objects with a 'type'", param=f"{param}.content"
            )


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


def validate_messages(body: dict[str, Any]) -> None:
    validate_chat(body)
    require(
        body,
        "max_tokens",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a positive integer",
    )


def openai_error_event(error: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(error.to_body()) + b"\n\n"


def anthropic_error_body(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error.error_type, "message": error.message}}


def anthropic_error_event(error: GatewayError) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(anthropic_error_body(error)) + b"\n\n"


def anthropic_error_response(error: GatewayError, request_id: str) -> Response:
    headers = {"x-request-id": request_id, "request-id": request_id, **error.headers}
    return JSONResponse(anthropic_error_body(error), status_code=error.status_code, headers=headers)


@dataclass(frozen=True)
class Endpoint:
    """How one API's calls are validated, routed, answered and priced."""

    name: str
    validate: Callable[[dict[str, Any]], None]
    error_response: Callable[[GatewayError, str], Response] = error_response
    error_event: Callable[[GatewayError], bytes] = openai_error_event

    def plan(self, body: dict[str, Any]) -> Plan:
        return lambda route: (self.name, body)

    def answer(self, endpoint: str, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def usage(self, endpoint: str, body: dict[str, Any]) -> TokenUsage:
        return parse_openai_usage(body.get("usage"))

    def relay(
        self, gateway: Gateway, ctx: CallContext, route: Route, endpoint: str,
        stream: EventStream, body: dict[str, Any],
    ) -> AsyncIterator[bytes]:  # fmt: skip
        tracker = UsageTracker(endpoint, body)
        tracker.keep_text = ctx.log_bodies
        return relay(ctx, route, stream, tracker, gateway.finish_call, self.error_event)


class MessagesEndpoint(Endpoint):
    """Anthropic's Messages API: native where the provider has it, else translated."""

    def plan(self, body: dict[str, Any]) -> Plan:
        translated: list[dict[str, Any]] = []

        def choose(route: Route) -> tuple[str, dict[str, Any]]:
            if route.provider.supports("messages"):
                return "messages", body
            if not translated:
                translated.append(messages_to_chat_request(body))
            return "chat", translated[0]

        return choose

    def answer(self, endpoint: str, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        if endpoint == "messages":
            return body
        return chat_response_to_message(body, route.model_id)

    def usage(self, endpoint: str, body: dict[str, Any]) -> TokenUsage:
        if endpoint == "messages":
            return parse_anthropic_usage(body.get("usage"))
        return parse_openai_usage(body.get("usage"))

    def relay(
        self, gateway: Gateway, ctx: CallContext, route: Route, endpoint: str,
        stream: EventStream, body: dict[str, Any],
    ) -> AsyncIterator[bytes]:  # fmt: skip
        if endpoint == "messages":
            return super().relay(gateway, ctx, route, endpoint, stream, body)
        tracker = UsageTracker("chat", body)
        tracker.keep_text = ctx.log_bodies
        translator = ChatToMessagesStream(route.model_id)
        return relay(ctx, route, stream, tracker, gateway.finish_call, self.error_event, translator)


ENDPOINTS = {
    "chat": Endpoint("chat", validate_chat),
    "completions": Endpoint("completions", validate_completions),
    "embeddings": Endpoint("embeddings", validate_embeddings),
    "images": Endpoint("images", validate_images),
    "responses": Endpoint("responses", validate_responses),
    "messages": MessagesEndpoint(
        "messages", validate_messages, anthropic_error_response, anthropic_error_event
    ),
}


async def handle_call(request: Request, api: Endpoint) -> Response:
    gateway = gateway_of(request)
    ctx = CallContext(endpoint=api.name)
    streaming = False
    gateway.calls_in_flight += 1
    try:
        ctx.identity = await authenticate(request, gateway, ctx)
        body, size = await read_json_object(request, gateway.settings.max_body_bytes)
        preparation = None
        if api.name == "chat":
            preparation = await prepare_chat(gateway, ctx, body, request.headers)
            if preparation is not None:
                body, size = preparation.body, preparation.size
        validate_common(body)
        api.validate(body)
        ctx.model = body["model"]
        ctx.stream = body.get("stream", False)
        routes = await gateway.registry.resolve_all(body["model"], ctx.identity, body.get("models"))
        routes = allowed_routes(ctx.identity, body["model"], routes)
        if await gateway.privacy.logs_bodies(ctx.identity):
            ctx.log_bodies = True
            ctx.request_body = body
        check_output_limit(body, routes)
        await gateway.recorder.wait_for_capacity()
        ctx.reservation = await gateway.spend.reserve(
            ctx.identity, lambda: max(gateway.max_cost(route, body, size) for route in routes)
        )
        ctx.rate_ticket = await gateway.limiter.acquire(
            scopes_of(ctx.identity), estimated_tokens(body, size, routes[0].entry)
        )
        ctx.rate_headers = ctx.rate_ticket.headers()
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
        plan = api.plan(body)
        route, result = await dispatch(
            ctx,
            routes,
            plan,
            UpstreamRequest(ctx.request_id, "", body, headers),
            stream=ctx.stream,
            breaker=gateway.breaker,
            policy=gateway.retry_policy,
        )
        endpoint, _ = plan(route)
        if isinstance(result, EventStream):
            streaming = True
            source = api.relay(gateway, ctx, route, endpoint, result, body)
            extra_headers: dict[str, str] = {}
            if preparation is not None:
                source, extra_headers = preparation.wrap_stream(ctx, source), preparation.headers
            return EventStreamResponse(source, headers=response_headers(ctx, route) | extra_headers)
        answer = api.answer(endpoint, route, result.body)
        response = complete(
            gateway, ctx, route, result.status_code, answer, api.usage(endpoint, result.body)
        )
        if preparation is not None:
            await preparation.finish(ctx, answer)
            response.headers.update(preparation.headers)
        return response
    except RateLimitError as error:
        if ctx.reservation is not None:
            # Rejected by a rate limit: the reservation is handed back whole.
            gateway.spend.settle(ctx.reservation, Decimal(0))
            ctx.reservation = None
        return failed(ctx, error, api)
    except GatewayError as error:
        return failed(ctx, error, api)
    except Exception:
        logger.exception("request %s failed with an internal error", ctx.request_id)
        return failed(ctx, GatewayError("internal error in the gateway"), api)
    finally:
        if not streaming:
            gateway.record(ctx)
            gateway.calls_in_flight -= 1


def complete(
    gateway: Gateway,
    ctx: CallContext,
    route: Route,
    status_code: int,
    body: dict[str, Any],
    usage: TokenUsage,
) -> Response:
    ctx.usage = usage
    ctx.cost = gateway.cost(route, usage, body)
    if ctx.log_bodies:
        ctx.response_body = body
    ctx.mark_first_token()
    ctx.finish(status_code)
    headers = response_headers(ctx, route)
    headers[COST_HEADER] = format_usd(ctx.cost)
    return JSONResponse(body, status_code=status_code, headers=headers)


def failed(ctx: CallContext, error: GatewayError, api: Endpoint) -> Response:
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
    response = api.error_response(error, ctx.request_id)
    for name, value in ctx.rate_headers.items():
        response.headers.setdefault(name, value)
    return response


def response_headers(ctx: CallContext, route: Route) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id, "x-gatewayz-provider": route.provider.name}
    headers.update(ctx.rate_headers)
    if route.provider.synthetic:
        headers["x-gatewayz-sandbox"] = "true"
    return headers


def estimated_tokens(body: dict[str, Any], size: int, entry: ModelEntry | None) -> int:
    """Return the tokens a call is counted for against tokens-per-minute limits.

    Like OpenAI's limiter, the prompt estimate plus the requested output limit;
    the count is corrected to the real usage when the call ends.
    """
    return size // 4 + output_limit(body, entry)


def call_handler(api: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        return await handle_call(request, api)

    handler.__name__ = f"{api.name}_handler"
    return handler


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
    if identity.policy.allowed_models is not None:
        models = [m for m in models if identity.policy.allows_model(m["id"])]
    return models


async def handle_read(
    request: Request,
    endpoint: str,
    build: Callable[[Gateway, KeyIdentity], Awaitable[Any]],
) -> Response:
    """Run a read-only endpoint for an authenticated key and record it like any call."""
    gateway = gateway_of(request)
    ctx = CallContext(endpoint=endpoint)
    try:
        ctx.identity = await authenticate(request, gateway, ctx)
        payload = await build(gateway, ctx.identity)
        ctx.finish(200)
        return JSONResponse(payload, headers={"x-request-id": ctx.request_id})
    except GatewayError as error:
        return failed(ctx, error, ENDPOINTS["chat"])
    except Exception:
        logger.exception("request %s failed with an internal error", ctx.request_id)
        return failed(ctx, GatewayError("internal error in the gateway"), ENDPOINTS["chat"])
    finally:
        gateway.record(ctx)


async def list_models(request: Request) -> Response:
    async def build(gateway: Gateway, identity: KeyIdentity) -> dict[str, Any]:
        return {"object": "list", "data": visible_models(gateway, identity)}

    return await handle_read(request, "models", build)


async def retrieve_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]

    async def build(gateway: Gateway, identity: KeyIdentity) -> dict[str, Any]:
        for model in visible_models(gateway, identity):
            if model["id"] == model_id:
                return model
        raise NotFoundError(f"model {model_id!r} not found", code="model_not_found")

    return await handle_read(request, "models", build)
