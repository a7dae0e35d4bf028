"""A bare pass-through proxy, the baseline for the proxy overhead benchmark.

It uses the same stack as Gatewayz: Starlette, uvicorn, and the aiohttp
client pool and default timeouts of proxy/upstream_http.py.
`POST /v1/chat/completions` sends the request body unchanged to
`BENCH_UPSTREAM_URL` and relays the response, streamed chunk by chunk for
`text/event-stream` and read whole otherwise. It does no authentication,
parsing or accounting and logs only upstream failures, so the gap between
it and Gatewayz is the cost of Gatewayz's own work. Run it
with:

    BENCH_UPSTREAM_URL=http://127.0.0.1:9000/v1/chat/completions \
        python -m uvicorn bench.passthrough:create_app --factory --port 9001
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.upstream_http import Timeouts, TransportError, UpstreamClient, create_session

UPSTREAM_ENV = "BENCH_UPSTREAM_URL"

logger = logging.getLogger("gatewayz.bench.passthrough")


async def forward(request: Request) -> Response:
    client: UpstreamClient = request.app.state.client
    body = await request.body()
    headers = {"content-type": "application/json"}
    try:
        upstream = await client.open(request.app.state.upstream_url, content=body, headers=headers)
    except TransportError as exc:
        message = f"upstream request failed: {exc!r}"
        logger.warning(message)
        return JSONResponse({"error": {"message": message}}, status_code=502)
    content_type = upstream.headers.get("content-type", "application/json")
    if content_type.startswith("text/event-stream"):
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            media_type=content_type,
            background=BackgroundTask(upstream.aclose),
        )
    try:
        content = await upstream.aread()
    finally:
        await upstream.aclose()
    return Response(content, status_code=upstream.status_code, media_type=content_type)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    """Build the app that forwards to the URL in `BENCH_UPSTREAM_URL`."""
    upstream_url = os.environ.get(UPSTREAM_ENV)
    if not upstream_url:
        raise RuntimeError(
            f"{UPSTREAM_ENV} is not set; set it to the upstream's full chat completions URL"
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Same pool and default timeouts as a Gatewayz worker.
        timeouts = Timeouts(connect=5.0, read=120.0)
        async with create_session() as session:
            app.state.client = UpstreamClient(session, timeouts)
            app.state.upstream_url = upstream_url
            yield

    return Starlette(
        routes=[
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
