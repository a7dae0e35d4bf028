"""HTTP endpoints for chat sessions and prompt templates.

Sessions: POST and GET /v1/sessions, GET, PATCH and DELETE
/v1/sessions/{id}, GET /v1/sessions/{id}/messages. Templates: POST and GET
/v1/templates, GET /v1/templates/{name} (newest, or `?version=N`).
Both belong to the calling key's organization: another organization's key
gets 404. Lists use OpenAI's envelope (`object`, `data`, `first_id`,
`last_id`, `has_more`) and page with `limit` and `after`. Every call is
recorded as a usage row with endpoint `sessions` or `templates`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway_core import sessions
from gateway_core.errors import GatewayError, InvalidRequestError
from gateway_core.prompt_templates import check_template_name
from proxy import session_store
from proxy.context import CallContext, KeyIdentity
from proxy.gateway import Gateway
from proxy.responses import JSONResponse
from proxy.routes import ENDPOINTS, authenticate, failed, gateway_of, read_json_object

logger = logging.getLogger("gatewayz.proxy")

TEMPLATE_FIELDS = frozenset({"name", "content", "description"})
MAX_MESSAGES_PAGE = 1000

Build = Callable[[Gateway, CallContext, KeyIdentity], Awaitable[dict[str, Any]]]


async def handle_resource(request: Request, endpoint: str, build: Build) -> Response:
    """Run one session or template call for an authenticated key and record it."""
    gateway = gateway_of(request)
    ctx = CallContext(endpoint=endpoint)
    try:
        ctx.identity = await authenticate(request, gateway, ctx)
        payload = await build(gateway, ctx, ctx.identity)
        ctx.finish(200)
        return JSONResponse(payload, headers={"x-request-id": ctx.request_id})
    except GatewayError as error:
        return failed(ctx, error, ENDPOINTS["chat"])
    except Exception:
        logger.exception("request %s failed with an internal error", ctx.request_id)
        return failed(ctx, GatewayError("internal error in the gateway"), ENDPOINTS["chat"])
    finally:
        gateway.record(ctx)


def query_text(request: Request, name: str, limit: int) -> str | None:
    value = request.query_params.get(name)
    if value is not None and (len(value) > limit or "\x00" in value):
        raise InvalidRequestError(
            f"'{name}' must be at most {limit} characters without NUL", param=name
        )
    return value or None


def query_integer(request: Request, name: str, minimum: int) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value.isdigit() or int(value) < minimum:
        raise InvalidRequestError(
            f"'{name}' must be an integer of at least {minimum}, got {value!r}", param=name
        )
    return int(value)


async def create_session(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        body, _ = await read_json_object(request, gateway.settings.max_body_bytes)
        session = await session_store.create_session(
            gateway.pool, identity, sessions.session_fields(body)
        )
        ctx.session_id = session.id
        logger.info(
            "request %s key %d created session %s", ctx.request_id, identity.key_id, session.id
        )
        return session.to_api()

    return await handle_resource(request, "sessions", build)


async def list_sessions(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        limit = sessions.page_limit(request.query_params.get("limit"))
        after = query_text(request, "after", 40)
        query = query_text(request, "q", sessions.MAX_QUERY)
        found, has_more = await session_store.list_sessions(
            gateway.pool, identity.organization_id, limit=limit, after=after, query=query
        )
        return sessions.list_envelope([session.to_api() for session in found], has_more)

    return await handle_resource(request, "sessions", build)


async def retrieve_session(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        session = await session_store.get_session(
            gateway.pool, identity.organization_id, request.path_params["session_id"]
        )
        ctx.session_id = session.id
        return session.to_api()

    return await handle_resource(request, "sessions", build)


async def update_session(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        session_id = sessions.check_session_id(request.path_params["session_id"])
        body, _ = await read_json_object(request, gateway.settings.max_body_bytes)
        fields = sessions.session_fields(body)
        session = await session_store.update_session(
            gateway.pool, identity.organization_id, session_id, fields
        )
        ctx.session_id = session.id
        return session.to_api()

    return await handle_resource(request, "sessions", build)


async def delete_session(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        session_id = sessions.check_session_id(request.path_params["session_id"])
        await session_store.delete_session(gateway.pool, identity.organization_id, session_id)
        ctx.session_id = session_id
        logger.info(
            "request %s key %d deleted session %s", ctx.request_id, identity.key_id, session_id
        )
        return {"id": session_id, "object": "chat.session.deleted", "deleted": True}

    return await handle_resource(request, "sessions", build)


async def list_session_messages(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        limit = sessions.page_limit(
            request.query_params.get("limit"), default=100, maximum=MAX_MESSAGES_PAGE
        )
        after = query_integer(request, "after", 0) or 0
        session = await session_store.get_session(
            gateway.pool, identity.organization_id, request.path_params["session_id"]
        )
        ctx.session_id = session.id
        found = await session_store.list_messages(
            gateway.pool, session.id, after=after, limit=limit + 1
        )
        data = [message.to_api(session.id) for message in found[:limit]]
        return sessions.list_envelope(data, len(found) > limit)

    return await handle_resource(request, "sessions", build)


async def create_template(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        body, _ = await read_json_object(request, gateway.settings.max_body_bytes)
        unknown = sorted(set(body) - TEMPLATE_FIELDS)
        if unknown:
            raise InvalidRequestError(
                f"unknown field(s) {', '.join(map(repr, unknown))}; a template has "
                "name, content and description",
                param=unknown[0],
            )
        template = await session_store.create_template_version(gateway.pool, identity, body)
        ctx.template_name, ctx.template_version = template.name, template.version
        logger.info(
            "request %s key %d created template %s version %d",
            ctx.request_id,
            identity.key_id,
            template.name,
            template.version,
        )
        return template.to_api()

    return await handle_resource(request, "templates", build)


async def list_templates(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        limit = sessions.page_limit(request.query_params.get("limit"))
        after = query_text(request, "after", 100)
        found, has_more = await session_store.list_templates(
            gateway.pool, identity.organization_id, after=after, limit=limit
        )
        return sessions.list_envelope([template.to_api() for template in found], has_more)

    return await handle_resource(request, "templates", build)


async def retrieve_template(request: Request) -> Response:
    async def build(gateway: Gateway, ctx: CallContext, identity: KeyIdentity) -> dict[str, Any]:
        name = check_template_name(request.path_params["name"])
        version = query_integer(request, "version", 1)
        template = await session_store.get_template(
            gateway.pool, identity.organization_id, name, version
        )
        ctx.template_name, ctx.template_version = template.name, template.version
        return template.to_api()

    return await handle_resource(request, "templates", build)


ROUTES = [
    Route("/v1/sessions", create_session, methods=["POST"]),
    Route("/v1/sessions", list_sessions, methods=["GET"]),
    Route("/v1/sessions/{session_id}", retrieve_session, methods=["GET"]),
    Route("/v1/sessions/{session_id}", update_session, methods=["PATCH"]),
    Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
    Route("/v1/sessions/{session_id}/messages", list_session_messages, methods=["GET"]),
    Route("/v1/templates", create_template, methods=["POST"]),
    Route("/v1/templates", list_templates, methods=["GET"]),
    Route("/v1/templates/{name}", retrieve_template, methods=["GET"]),
]
