"""The admin API: a FastAPI app that the proxy mounts at /admin.

Clients authenticate with `Authorization: Bearer gw_admin_...` (see
`gateway_core.admin_keys` for the roles). OpenAPI docs are served at
/admin/docs and the document at /admin/openapi.json. Every error, including
invalid JSON and unknown routes, has OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_core.config import Settings
from gateway_core.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from proxy import admin_key_routes, admin_routes
from proxy.admin_models import ErrorResponse

logger = logging.getLogger("gatewayz.admin")

# Admin request bodies are small JSON documents; larger ones are rejected
# before they are parsed, and before the admin key is checked.
MAX_BODY_BYTES = 1024 * 1024
# Validation problems listed in one error message; the rest are counted.
MAX_LISTED_PROBLEMS = 5


def error_json(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers)


class BodySizeLimit:
    """Read the whole request body, up to `max_bytes`, before the app runs; 413 beyond it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLargeError(
            f"request body is larger than {self.max_bytes} bytes", code="body_too_large"
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_json(too_large)(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await error_json(too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def _location(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(part) for part in loc[1:]] if loc and loc[0] in ("body", "query", "path") else []
    return ".".join(parts) or None


async def validation_error(request: Request, exc: Exception) -> Response:
    """Return 400 invalid_request_error for a request that failed schema validation."""
    assert isinstance(exc, RequestValidationError)
    problems = list(exc.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return error_json(
            InvalidRequestError("request body is not valid JSON", code="invalid_json")
        )
    described = []
    for problem in problems[:MAX_LISTED_PROBLEMS]:
        where = _location(tuple(problem.get("loc", ()))) or "request body"
        text = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
        described.append(f"{where}: {text}")
    if len(problems) > MAX_LISTED_PROBLEMS:
        described.append(f"and {len(problems) - MAX_LISTED_PROBLEMS} more")
    param = _location(tuple(problems[0].get("loc", ()))) if problems else None
    message = "invalid request: " + "; ".join(described)
    return error_json(InvalidRequestError(message, param=param, code="invalid_value"))


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_json(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Return an OpenAI-style 404 or 405 for an unknown admin path or method."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return error_json(NotFoundError(f"no admin route for {request.method} {path}"))
    if exc.status_code == 405:
        error = InvalidRequestError(
            f"{request.method} is not allowed on {path}", status_code=405, code="method_not_allowed"
        )
        return error_json(error)
    return error_json(InvalidRequestError(str(exc.detail), status_code=exc.status_code))


async def integrity_error(request: Request, exc: Exception) -> Response:
    """Return 409 for a write that a constraint rejected, such as a concurrent duplicate."""
    logger.info("admin write on %s rejected by a constraint: %s", request.url.path, exc)
    error = InvalidRequestError(
        "the change conflicts with existing data; reload and retry",
        status_code=409,
        code="conflict",
    )
    return error_json(error)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("admin request %s %s failed", request.method, request.url.path)
    return error_json(GatewayError("internal error in the admin API", code="internal_error"))


def create_admin_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Gatewayz admin API",
        summary="Organizations, teams, projects, API keys, budgets, rate limits and usage.",
        version="1",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # Listing 4XX here also replaces FastAPI's 422 validation schema,
        # because validation errors return 400 in this shape.
        responses={"4XX": {"model": ErrorResponse, "description": "OpenAI-style error"}},
        exception_handlers={
            RequestValidationError: validation_error,
            GatewayError: gateway_error,
            HTTPException: http_error,
            IntegrityError: integrity_error,
            Exception: unexpected_error,
        },
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.include_router(admin_routes.router)
    app.include_router(admin_key_routes.router)
    return app
