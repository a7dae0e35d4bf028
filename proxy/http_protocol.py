"""uvicorn's httptools protocol with limits on how a request arrives.

uvicorn 0.54 over httptools accepts a request head of any size. It also
arms no timer before the first request on a connection, because its
keep-alive timeout starts only after a response. So a client that trickles
its headers keeps a connection open forever. This protocol adds three limits from
`ConnectionLimits`: the head's size (431), the time to receive the head
(408) and the time to receive the body (408). Start the proxy with
`--http proxy.http_protocol:GuardedHttpToolsProtocol` to use it.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway_core.config import ConnectionLimits

logger = logging.getLogger("gatewayz.proxy")

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@functools.cache
def connection_limits() -> ConnectionLimits:
    return ConnectionLimits.from_env()


def error_bytes(status: int, message: str, code: str) -> bytes:
    """Render a complete HTTP/1.1 error response in OpenAI's error shape."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    body = orjson.dumps({"error": error})
    head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])
    head += b"content-type: application/json\r\n"
    head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds the request head's size and read times."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.limits = connection_limits()
        # True while the parser waits for the rest of a request head.
        self.reading_head = True
        # Bytes of the current head received in earlier reads.
        self.head_bytes = 0
        self.heads_completed = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads_before = self.heads_completed
        super().data_received(data)
        if self.heads_completed != heads_before:
            # A head ended in this read; the rest of the read may be body or
            # the start of a pipelined request, which is not counted.
            return
        if not self.reading_head or self.transport.is_closing():
            return
        # Every read that ends with the head still incomplete is all head,
        # so the head is bounded by the limit plus one read.
        self.head_bytes += len(data)
        if self.head_bytes > self.limits.max_head_bytes:
            message = (
                f"request line and headers are larger than the "
                f"{self.limits.max_head_bytes} byte limit"
            )
            self._reject(431, message, "headers_too_large")

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.heads_completed += 1
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().on_headers_complete()
        # Cancelled by on_message_complete, which for a request without a
        # body runs in the same read.
        self.body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        self.reading_head = True
        self.head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.reading_head and not self.transport.is_closing():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.reading_head:
            return
        if self.head_bytes == 0:
            # An idle connection between requests: close it without a response.
            self.transport.close()
            return
        message = f"request headers were not received within {self.limits.head_timeout} seconds"
        self._reject(408, message, "request_timeout")

    def _body_timed_out(self) -> None:
        self.body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            logger.info("closing connection from %s: request body timed out", self._peer())
            self.transport.close()
            return
        message = f"request body was not received within {self.limits.body_timeout} seconds"
        self._reject(408, message, "request_timeout")

    def _reject(self, status: int, message: str, code: str) -> None:
        """Send an error response and close the connection.

        A request still running gets `http.disconnect` from `receive`.
        """
        logger.info("rejected connection from %s with %d: %s", self._peer(), status, message)
        self._cancel_timers()
        self.transport.write(error_bytes(status, message, code))
        self.transport.close()

    def _peer(self) -> str:
        if self.client is None:
            return "unknown"
        host, port = self.client
        return f"{host}:{port}"
