"""Response helpers: JSON bodies, OpenAI-style errors and event streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway_core.errors import GatewayError

logger = logging.getLogger("gatewayz.proxy")

# Chunks sent between two turns given to other tasks. A source that reads
# the network waits on every read anyway, so one turn per chunk only adds
# a loop iteration to each event's latency.
_YIELD_EVERY = 16


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: GatewayError, request_id: str) -> JSONResponse:
    headers = {"x-request-id": request_id, **error.headers}
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=headers)


class EventStreamResponse:
    """Send server-sent events and close the source when the client leaves.

    The source generator is always closed with `aclose()`, whether the stream
    ended, the client disconnected, or sending failed, so its `finally`
    block (which closes the upstream and records usage) runs at once.
    """

    def __init__(self, source: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        self._source = source
        self._headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        self._headers += [(b"cache-control", b"no-cache")]
        self._headers += [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, pump):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        sent = 0
        async for chunk in self._source:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += 1
            if sent % _YIELD_EVERY == 0:
                # Sending to a closed connection does not raise under uvicorn,
                # so a source that never waits (the sandbox) gives the
                # disconnect watcher a turn here.
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
