"""ASGI application factory for the proxy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from gateway_core.config import Settings
from gateway_core.errors import GatewayError, InvalidRequestError, NotFoundError
from proxy import admin_api, billing_webhook, routes, sessions
from proxy.context import CallContext
from proxy.gateway import Gateway
from proxy.key_info import key_info
from proxy.metrics import metrics_endpoint
from proxy.openapi import openapi_document
from proxy.providers.base import ENDPOINT_PATHS
from proxy.responses import JSONResponse, error_response


async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def health_ready(request: Request) -> Response:
    checks = await request.app.state.gateway.readiness()
    ready = checks.get("postgres") == "ok"
    status = "ready" if ready else "unavailable"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


async def http_error(request: Request, exc: Exception) -> Response:
    """Answer an unknown path or method in OpenAI's error shape, and record it."""
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFoundError(f"no route for {request.method} {request.url.path}")
    else:
        error = InvalidRequestError(
            f"{request.method} is not allowed on {request.url.path}", status_code=exc.status_code
        )
    ctx = CallContext(endpoint="unknown")
    ctx.finish(error.status_code, error.error_type)
    request.app.state.gateway.record(ctx)
    return error_response(error, ctx.request_id)


def configure_logging(level: str) -> None:
    """Send the proxy's own log lines to stderr, unless a handler is set up already."""
    logger = logging.getLogger("gatewayz")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.gateway = await Gateway.start(settings)
        try:
            yield
        finally:
            await app.state.gateway.stop()

    return Starlette(
        routes=[
            *(
                Route(f"/v1{ENDPOINT_PATHS[name]}", routes.call_handler(api), methods=["POST"])
                for name, api in routes.ENDPOINTS.items()
            ),
            Route("/v1/models", routes.list_models, methods=["GET"]),
            Route("/v1/key", key_info, methods=["GET"]),
            Route("/v1/models/{model_id:path}", routes.retrieve_model, methods=["GET"]),
            *sessions.ROUTES,
            Route("/health/live", health_live, methods=["GET"]),
            Route("/billing/stripe/webhook", billing_webhook.stripe_webhook, methods=["POST"]),
            Route("/health/ready", health_ready, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_document, methods=["GET"]),
            Mount("/admin", app=admin_api.create_admin_app(settings)),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
