"""Retries, fallbacks and a circuit breaker around provider calls.

A call tries each route in order (the requested model, then its fallbacks).
On one route it retries connect errors, timeouts, 429 and 5xx with
exponential backoff and full jitter, honouring the upstream's Retry-After.
Other client errors (400, 404, 413, 422) are final: a fallback would fail
the same way. A stream is retried only while it is being opened; once the
first event has reached the client, the proxy never retries it.

A provider whose calls fail `failure_threshold` times in a row is skipped
for `cooldown` seconds; then one trial call is let through, and its result
closes or reopens the circuit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway_core.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from proxy.context import CallContext
from proxy.providers import Route
from proxy.providers.base import EventStream, Provider, UpstreamRequest, UpstreamResponse

logger = logging.getLogger("gatewayz.routing")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Return seconds to wait before retry number `attempt` (0-based)."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(0, ceiling)


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def allows(self, provider: str) -> bool:
        until = self._open_until.get(provider)
        if until is None:
            return True
        if time.monotonic() >= until:
            # Half-open: let one call through; a failure reopens at once.
            del self._open_until[provider]
            self._failures[provider] = self.failure_threshold - 1
            return True
        return False

    def open_providers(self) -> frozenset[str]:
        now = time.monotonic()
        return frozenset(name for name, until in self._open_until.items() if now < until)

    def is_open(self, provider: str) -> bool:
        until = self._open_until.get(provider)
        return until is not None and time.monotonic() < until

    def record_success(self, provider: str) -> None:
        self._failures.pop(provider, None)

    def record_failure(self, provider: str) -> None:
        failures = self._failures.get(provider, 0) + 1
        self._failures[provider] = failures
        if failures >= self.failure_threshold:
            self._open_until[provider] = time.monotonic() + self.cooldown
            logger.warning(
                "circuit open for provider %s after %d failures; skipping it for %.0f s",
                provider,
                failures,
                self.cooldown,
            )


def is_retryable(error: GatewayError) -> bool:
    return isinstance(error, UpstreamTimeoutError) or (
        isinstance(error, UpstreamError) and error.status_code in RETRYABLE_STATUSES
    )


def counts_against_provider(error: GatewayError) -> bool:
    """Return True for failures that show the provider is unhealthy (not 429 or 4xx)."""
    return isinstance(error, UpstreamTimeoutError) or (
        isinstance(error, UpstreamError) and error.status_code >= 500
    )


# Chooses, for one route, the endpoint and body to send: a client's
# Anthropic Messages call goes natively to a provider that serves
# `messages`, and is translated to `chat` for the others.
Plan = Callable[[Route], tuple[str, dict[str, Any]]]


async def dispatch(
    ctx: CallContext,
    routes: list[Route],
    plan: Plan,
    request: UpstreamRequest,
    *,
    stream: bool,
    breaker: CircuitBreaker,
    policy: RetryPolicy,
) -> tuple[Route, UpstreamResponse | EventStream]:
    """Call each route in order until one responds; raise the last error if none does."""
    last_error: GatewayError | None = None
    for route in routes:
        provider = route.provider
        ctx.provider = provider.name
        ctx.model = route.model_id
        endpoint, body = plan(route)
        if not provider.supports(endpoint):
            last_error = provider.unsupported(endpoint)
            continue
        if not breaker.allows(provider.name):
            logger.info(
                "request %s skipped provider %s: circuit open", ctx.request_id, provider.name
            )
            last_error = UpstreamError(
                f"provider {provider.name!r} is failing and skipped for a cool-down",
                code="provider_unavailable",
                status_code=503,
            )
            continue
        routed = UpstreamRequest(request.request_id, route.upstream_model, body, request.headers)
        retries = provider.max_retries if provider.max_retries is not None else policy.max_retries
        for attempt in range(retries + 1):
            ctx.attempts += 1
            try:
                result = await _call(provider, endpoint, routed, stream)
            except GatewayError as error:
                last_error = error
                logger.info(
                    "request %s attempt %d on %s failed: %d %s",
                    ctx.request_id,
                    ctx.attempts,
                    provider.name,
                    error.status_code,
                    error.code or error.error_type,
                )
                if counts_against_provider(error):
                    breaker.record_failure(provider.name)
                if not is_retryable(error):
                    raise
                retry_after = getattr(error, "retry_after", None)
                if attempt == retries or breaker.is_open(provider.name):
                    break
                if retry_after is not None and retry_after > policy.max_delay:
                    # The upstream requests a longer wait than a client
                    # should sit through; try the next route instead.
                    break
                await asyncio.sleep(policy.delay(attempt, retry_after))
                continue
            breaker.record_success(provider.name)
            return route, result
    assert last_error is not None
    raise last_error


async def _call(
    provider: Provider, endpoint: str, request: UpstreamRequest, stream: bool
) -> UpstreamResponse | EventStream:
    call = provider.open_stream if stream else provider.send
    if provider.total_timeout is None:
        return await call(endpoint, request)
    try:
        async with asyncio.timeout(provider.total_timeout):
            return await call(endpoint, request)
    except TimeoutError as exc:
        raise UpstreamTimeoutError(
            f"provider {provider.name!r} timed out after {provider.total_timeout} s",
            code="upstream_timeout",
        ) from exc
