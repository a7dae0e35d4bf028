"""ASGI application factory for the proxy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway_core.config import Settings
from gateway_core.errors import GatewayError, InvalidRequestError, NotFoundError
from proxy import routes
from proxy.gateway import Gateway
from proxy.key_info import key_info
from proxy.providers.base import ENDPOINT_PATHS
from proxy.responses import JSONResponse, error_response


async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFoundError(f"no route for {request.method} {request.url.path}")
    else:
        error = InvalidRequestError(str(exc.detail), status_code=exc.status_code)
    return error_response(error, "")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

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
            Route("/health/live", health_live, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


logging.getLogger("gatewayz").addHandler(logging.NullHandler())
