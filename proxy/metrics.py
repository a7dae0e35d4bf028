"""Prometheus metrics and the per-request access log.

Labels are few and bounded (endpoint, provider, status class), never a key,
model id from a client, or request id. With `PROMETHEUS_MULTIPROC_DIR`
set (an empty folder, before the workers start), `/metrics` sums the
values of every uvicorn worker; without it, each worker reports its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

from proxy.context import CallContext

access_logger = logging.getLogger("gatewayz.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "gatewayz_requests_total", "Calls handled", ["endpoint", "provider", "status_class"]
)
LATENCY = Histogram(
    "gatewayz_request_duration_seconds",
    "Time from request to last byte",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
FIRST_TOKEN = Histogram(
    "gatewayz_time_to_first_token_seconds",
    "Time from request to the first answer token",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter("gatewayz_tokens_total", "Tokens billed", ["kind"])
# Float dollars, for dashboards only; the ledger and usage rows are exact.
COST = Counter("gatewayz_cost_usd_total", "Cost of calls in US dollars")
ATTEMPTS = Counter("gatewayz_upstream_attempts_total", "Upstream attempts", ["provider"])
QUEUE_DEPTH = Gauge(
    "gatewayz_recorder_queue_rows", "Usage rows waiting in memory", multiprocess_mode="livesum"
)
SPOOL_ROWS = Gauge(
    "gatewayz_spool_rows", "Usage rows spooled on disk for replay", multiprocess_mode="livesum"
)
CALLS_IN_FLIGHT = Gauge(
    "gatewayz_inflight_requests",
    "API calls started and not yet recorded",
    multiprocess_mode="livesum",
)
ASYNCIO_TASKS = Gauge(
    "gatewayz_asyncio_tasks", "asyncio tasks alive in the event loop", multiprocess_mode="livesum"
)
OPEN_RESERVATIONS = Gauge(
    "gatewayz_open_reservations",
    "Spend reservations made and not yet settled",
    multiprocess_mode="livesum",
)
OPEN_RATE_TICKETS = Gauge(
    "gatewayz_open_rate_limit_tickets",
    "Rate limit tickets (with their concurrency slots) not yet released",
    multiprocess_mode="livesum",
)


_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """Return `metric.labels(*labels)`, looked up once per label set.

    Labels have few values (endpoints, providers, status classes), so the
    cache stays small; prometheus_client's own lookup costs more per call.
    """
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def observe(ctx: CallContext, access_log: bool) -> None:
    """Count one finished call; called once per call when its row is recorded."""
    provider = ctx.provider or "none"
    child(REQUESTS, ctx.endpoint, provider, f"{ctx.status_code // 100}xx").inc()
    if ctx.finished_at is not None:
        child(LATENCY, ctx.endpoint).observe(ctx.finished_at - ctx.started)
    if ctx.first_token_at is not None:
        child(FIRST_TOKEN, ctx.endpoint).observe(ctx.first_token_at - ctx.started)
    if ctx.usage.prompt_tokens:
        child(TOKENS, "prompt").inc(ctx.usage.prompt_tokens)
    if ctx.usage.completion_tokens:
        child(TOKENS, "completion").inc(ctx.usage.completion_tokens)
    if ctx.cost:
        COST.inc(float(ctx.cost))
    if ctx.attempts:
        child(ATTEMPTS, provider).inc(ctx.attempts)
    if access_log and access_logger.isEnabledFor(logging.INFO):
        identity = ctx.identity
        line = {
            "request_id": ctx.request_id,
            "key_id": identity.key_id if identity else None,
            "team_id": identity.team_id if identity else None,
            "endpoint": ctx.endpoint,
            "model": ctx.model,
            "provider": ctx.provider,
            "status": ctx.status_code,
            "latency_ms": round(((ctx.finished_at or ctx.started) - ctx.started) * 1000),
            "attempts": ctx.attempts,
            "partial": ctx.partial,
        }
        access_logger.info(orjson.dumps(line).decode())


async def metrics_endpoint(request: Request) -> Response:
    gateway = request.app.state.gateway
    QUEUE_DEPTH.set(gateway.recorder.pending)
    SPOOL_ROWS.set(gateway.recorder.spooled_rows())
    CALLS_IN_FLIGHT.set(gateway.calls_in_flight)
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
    OPEN_RESERVATIONS.set(gateway.spend.open_reservations)
    OPEN_RATE_TICKETS.set(gateway.limiter.open_tickets)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
