"""The interface every upstream provider implements.

Requests and responses inside the proxy use the OpenAI wire format; an
adapter for a provider with another format translates at this boundary.
Adding a provider is adding one module with a `Provider` subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from proxy.sse import ServerSentEvent


@dataclass(frozen=True)
class UpstreamRequest:
    request_id: str
    # Model name as the provider expects it ("gpt-4o", not "openai/gpt-4o").
    upstream_model: str
    # Client body, already validated; the adapter must not mutate it.
    body: dict[str, Any]


@dataclass(frozen=True)
class UpstreamResponse:
    status_code: int
    body: dict[str, Any]


class EventStream(ABC):
    """An open upstream stream of OpenAI-format chat completion chunks."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[ServerSentEvent]: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Close the upstream connection; safe to call more than once."""


class Provider(ABC):
    name: str
    # True when answers are synthetic and free (the built-in sandbox).
    synthetic: bool = False

    @abstractmethod
    async def chat(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send a non-streaming chat completion; raise UpstreamError on failure."""

    @abstractmethod
    async def open_chat_stream(self, request: UpstreamRequest) -> EventStream:
        """Start a streaming chat completion.

        Errors the upstream reports before its first event are raised here,
        so the client still gets a proper status code.
        """
