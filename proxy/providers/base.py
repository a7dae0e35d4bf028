"""The interface every upstream provider implements.

An endpoint name selects the API: `chat`, `completions`, `embeddings`,
`images`, `responses` (OpenAI wire format) or `messages` (Anthropic's).
A provider lists the endpoints it serves in `endpoints`; an adapter for a
provider with another wire format translates `chat` at this boundary, so
the rest of the proxy sees OpenAI-format bodies and chunks. Adding a
provider is adding one module with a `Provider` subclass and registering
its kind in `proxy/providers/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway_core.errors import NotFoundError
from proxy.sse import ServerSentEvent

# Path of each endpoint below an OpenAI-style base URL such as .../v1.
ENDPOINT_PATHS = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "images": "/images/generations",
    "responses": "/responses",
    "messages": "/messages",
}


@dataclass(frozen=True)
class UpstreamRequest:
    request_id: str
    # Model name as the provider expects it ("gpt-4o", not "openai/gpt-4o").
    upstream_model: str
    # Client body, already validated; adapters must not mutate it.
    body: dict[str, Any]
    # Client headers an adapter may forward (for example `anthropic-beta`).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamResponse:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class EventStream(ABC):
    """An open upstream stream of server-sent events in the endpoint's format."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[ServerSentEvent]: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Close the upstream connection; safe to call more than once."""

    async def batches(self) -> AsyncIterator[list[ServerSentEvent]]:
        """Yield events grouped as they arrived, so each group is sent in one write.

        The default yields one event at a time; network-backed streams
        override it to yield every event of one read together.
        """
        async for event in self:
            yield [event]


class Provider(ABC):
    name: str
    # Endpoints this provider serves; others get a 404 naming the provider.
    endpoints: frozenset[str] = frozenset({"chat"})
    # True when answers are synthetic and free (the built-in sandbox).
    synthetic: bool = False
    # Retries on one route, and the deadline in seconds for a whole call
    # (for a stream: until it is open); None means the proxy's default.
    max_retries: int | None = None
    total_timeout: float | None = None

    def supports(self, endpoint: str) -> bool:
        return endpoint in self.endpoints

    def unsupported(self, endpoint: str) -> NotFoundError:
        return NotFoundError(
            f"provider {self.name!r} does not serve the {endpoint} endpoint",
            code="endpoint_not_supported",
        )

    @abstractmethod
    async def send(self, endpoint: str, request: UpstreamRequest) -> UpstreamResponse:
        """Make a non-streaming call; raise a GatewayError on failure."""

    @abstractmethod
    async def open_stream(self, endpoint: str, request: UpstreamRequest) -> EventStream:
        """Start a streaming call.

        Errors the upstream reports before its first event are raised here,
        so the client still gets a proper status code and the call can be
        retried or sent to a fallback.
        """
