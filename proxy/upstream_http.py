"""HTTP calls to providers, over one shared aiohttp connection pool.

Provider adapters call `UpstreamClient.post` for a whole response and
`UpstreamClient.open` for a streamed one, and catch `TransportError`.
aiohttp is used directly because a pass-through built on httpx over
aiohttp's transport spent about twice the CPU time per request of one built
on aiohttp alone (bench/cpu_per_request.py), and the proxy's added latency
is mostly that CPU time.

Exceptions::

    TransportError          the request failed on the network
    ├── ConnectError        no connection to the provider could be made
    └── TimeoutException    a connect or read deadline passed
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

logger = logging.getLogger("gatewayz.providers")

# Connections to all providers together, and kept-alive connections per host.
MAX_CONNECTIONS = 1000
KEEPALIVE_SECONDS = 30.0


class TransportError(Exception):
    """A provider request failed on the network: nothing usable was received."""


class ConnectError(TransportError):
    """No connection to the provider could be made (refused, unreachable, DNS)."""


class TimeoutException(TransportError):
    """A connect or read deadline passed."""


def translate(exc: BaseException) -> TransportError:
    """Map an aiohttp or asyncio exception onto the `TransportError` tree."""
    # aiohttp's timeouts (ServerTimeoutError and its subclasses) are also TimeoutError.
    if isinstance(exc, TimeoutError):
        return TimeoutException(str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(str(exc))
    return TransportError(str(exc) or type(exc).__name__)


NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds for one provider's requests."""

    # Waiting for a pooled connection plus opening a new one.
    connect: float
    # Maximum wait for the next bytes of a response, first byte included.
    read: float

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, connect=self.connect, sock_connect=self.connect, sock_read=self.read
        )


class Response:
    """A provider's response: status and headers, and the body whole or as a stream."""

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
        raw: aiohttp.ClientResponse | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(headers or {}))
        self.content = content
        self._raw = raw
        if raw is not None:
            self.headers = raw.headers

    async def aread(self) -> bytes:
        """Read the rest of a streamed body and return it."""
        if self._raw is not None:
            try:
                self.content = await self._raw.read()
            except NETWORK_ERRORS as exc:
                raise translate(exc) from exc
        return self.content

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """Yield the body's bytes as they arrive from the network."""
        if self._raw is None:
            if self.content:
                yield self.content
            return
        try:
            async for chunk in self._raw.content.iter_any():
                yield chunk
        except NETWORK_ERRORS as exc:
            raise translate(exc) from exc

    async def aclose(self) -> None:
        """Give the connection back to the pool, or close it if the body is unread.

        Safe to call more than once. Closing an unfinished stream closes its
        connection, which cancels the request at the provider at once.
        """
        raw = self._raw
        if raw is None:
            return
        if raw.content.at_eof():
            raw.release()
        else:
            raw.close()


class UpstreamClient:
    """One provider's view of the shared pool, with that provider's timeouts."""

    def __init__(self, session: aiohttp.ClientSession, timeouts: Timeouts) -> None:
        self._session = session
        self.timeouts = timeouts
        self._timeout = timeouts.client_timeout()

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """POST `content` and return the response with its whole body read."""
        try:
            async with self._session.post(
                url, data=content, headers=headers, params=params, timeout=self._timeout
            ) as raw:
                body = await raw.read()
                return Response(raw.status, raw.headers, body)
        except NETWORK_ERRORS as exc:
            raise translate(exc) from exc

    async def open(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """POST `content` and return once the status and headers arrived.

        The caller reads the body with `aiter_raw` or `aread` and must call
        `aclose`.
        """
        try:
            raw = await self._session.post(
                url, data=content, headers=headers, params=params, timeout=self._timeout
            )
        except NETWORK_ERRORS as exc:
            raise translate(exc) from exc
        return Response(raw.status, raw=raw)


def create_session() -> aiohttp.ClientSession:
    """Create the pool shared by every provider; call from inside the event loop."""
    connector = aiohttp.TCPConnector(
        limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
    )
    # Provider URLs are used as configured; cookies would leak between keys.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        raise_for_status=False,
    )
