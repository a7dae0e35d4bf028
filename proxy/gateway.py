"""The proxy's long-lived dependencies, created once per worker process."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from psycopg_pool import AsyncConnectionPool

from gateway_core import email_outbox, secret_box
from gateway_core.catalog import Catalog, ModelEntry, load_catalog
from gateway_core.config import Settings, libpq_url
from gateway_core.db import get_engine
from gateway_core.email_outbox import OutboxSender
from gateway_core.pricing import TokenUsage, compute_cost
from proxy.admission import max_cost
from proxy.auth import KeyVerifier
from proxy.budget_alerts import BudgetAlerter
from proxy.context import CallContext
from proxy.health_monitor import HealthMonitor
from proxy.metrics import observe
from proxy.partitions import PartitionKeeper
from proxy.privacy_cache import PrivacyCache
from proxy.providers import ProviderRegistry, Route
from proxy.ratelimit import RateLimitConfigCache, RateLimiter, create_backend
from proxy.recorder import UsageRecorder
from proxy.routing import CircuitBreaker, RetryPolicy
from proxy.spend import SpendGuard
from proxy.spool import Spool
from proxy.upstream_http import Timeouts, create_session

logger = logging.getLogger("gatewayz.proxy")


@dataclass
class Gateway:
    settings: Settings
    pool: AsyncConnectionPool
    # Connection pool shared by every provider (proxy/upstream_http.py).
    session: aiohttp.ClientSession
    verifier: KeyVerifier
    registry: ProviderRegistry
    recorder: UsageRecorder
    catalog: Catalog
    breaker: CircuitBreaker
    retry_policy: RetryPolicy
    spend: SpendGuard
    limiter: RateLimiter
    rate_limit_config: RateLimitConfigCache
    alerter: BudgetAlerter
    privacy: PrivacyCache
    partitions: PartitionKeeper
    health: HealthMonitor
    # Delivers queued emails; None when GATEWAYZ_SMTP_HOST is unset.
    email_sender: OutboxSender | None = None
    # Release calls still running, kept so they are not garbage-collected.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Calls in `handle_call` whose usage row is not yet recorded.
    calls_in_flight: int = 0

    @classmethod
    async def start(cls, settings: Settings) -> Gateway:
        conninfo = libpq_url(settings.database_url)
        pool = AsyncConnectionPool(conninfo, min_size=1, max_size=10, open=False)
        await pool.open(wait=True, timeout=30)
        timeouts = Timeouts(
            connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout
        )
        session = create_session()
        catalog = load_catalog()
        verifier = KeyVerifier(pool, settings.secret, ttl=settings.key_cache_ttl)
        verifier.start_listener(conninfo)
        registry = ProviderRegistry(
            pool,
            session,
            timeouts,
            catalog,
            refresh_interval=settings.provider_refresh_interval,
            decrypt=lambda token: secret_box.decrypt(
                settings.encryption_key, token, settings.old_encryption_keys
            ),
        )
        await registry.refresh()
        registry.start()
        spend = SpendGuard(
            pool,
            chunk_max=settings.lease_chunk_usd,
            refresh_interval=settings.provider_refresh_interval,
        )
        await spend.start()
        email_sender = await asyncio.to_thread(
            email_outbox.start_sender, get_engine(settings.database_url)
        )
        alerter = BudgetAlerter(settings, spend, email_sender)
        recorder = UsageRecorder(
            pool,
            spend=spend,
            on_budget_spend=alerter.on_budget_spend,
            dead_letter=settings.dead_letter_path,
            # One spool folder per database, so rows never replay into another.
            spool=Spool(settings.spool_dir / database_digest(settings.database_url)),
            batch_size=settings.recorder_batch_size,
            flush_interval=settings.recorder_flush_interval,
            max_pending=settings.recorder_queue_size,
        )
        recorder.start()
        rate_limit_config = RateLimitConfigCache(
            pool, refresh_interval=max(settings.provider_refresh_interval, 0.5)
        )
        await rate_limit_config.refresh()
        rate_limit_config.start()
        limiter = RateLimiter(rate_limit_config, create_backend(settings.redis_url, pool))
        partitions = PartitionKeeper(pool)
        partitions.start()
        breaker = CircuitBreaker(settings.circuit_failures, settings.circuit_cooldown)
        health = HealthMonitor(settings, breaker, recorder.spooled_rows)
        health.start()
        logger.info("proxy worker started with providers: %s", ", ".join(registry.configured()))
        return cls(
            settings,
            pool,
            session,
            verifier,
            registry,
            recorder,
            catalog,
            breaker,
            RetryPolicy(max_retries=settings.upstream_max_retries),
            spend,
            limiter,
            rate_limit_config,
            alerter,
            PrivacyCache(pool, refresh_interval=settings.provider_refresh_interval),
            partitions,
            health,
            email_sender,
        )

    async def readiness(self) -> dict[str, str]:
        """Check Postgres and, when configured, Redis; return each one's state."""
        checks: dict[str, str] = {}
        try:
            async with self.pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"unavailable: {type(exc).__name__}"
        if self.settings.redis_url:
            checks["redis"] = "degraded to per-process limits" if self.limiter.degraded else "ok"
        if self.recorder.database_down:
            checks["recorder"] = "spooling to disk"
        return checks

    async def stop(self) -> None:
        await self.verifier.stop_listener()
        await self.registry.stop()
        await self.partitions.stop()
        await self.health.stop()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        await self.rate_limit_config.stop()
        await self.limiter.close()
        await self.recorder.close()
        await self.alerter.close()
        if self.email_sender is not None:
            await asyncio.to_thread(self.email_sender.stop)
        await self.spend.stop()
        await self.session.close()
        await self.pool.close()
        logger.info("proxy worker stopped")

    def cost(self, route: Route, usage: TokenUsage, body: dict[str, Any] | None = None) -> Decimal:
        prices = self.registry.cost_prices(route)
        if prices is not None and route.entry is not None and not usage.total_tokens:
            image_cost = per_image_cost(route.entry, body)
            if image_cost is not None:
                return image_cost
        if prices is None:
            # NOTE: a model with no catalog entry and no admin override is
            # not priced (cost 0); add a price override to bill it.
            return Decimal(0)
        return compute_cost(prices, usage)

    def max_cost(self, route: Route, body: dict[str, Any], size: int) -> Decimal:
        """Return what a call on this route may cost at most, for its reservation."""
        return max_cost(self.registry.cost_prices(route), route.entry, body, size)

    def finish_call(self, ctx: CallContext, route: Route, usage: TokenUsage) -> None:
        """Price and record a streamed call once its stream has ended."""
        ctx.usage = usage
        ctx.cost = self.cost(route, usage)
        self.record(ctx)
        self.calls_in_flight -= 1

    def record(self, ctx: CallContext) -> None:
        """Settle the call's reservation and limits and queue its usage row; once per call."""
        if ctx.rate_ticket is not None:
            ticket, ctx.rate_ticket = ctx.rate_ticket, None
            tokens = ctx.usage.total_tokens
            if not self.limiter.release_in_memory(ticket, tokens):
                task = asyncio.create_task(self.limiter.release(ticket, tokens))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
        observe(ctx, self.settings.access_log)
        row = ctx.usage_row()
        if ctx.log_bodies and ctx.identity is not None and ctx.request_body is not None:
            organization_id = ctx.identity.organization_id
            row["_body"] = {
                "request": self.privacy.redact(organization_id, ctx.request_body),
                "response": self.privacy.redact(organization_id, ctx.response_body),
            }
        if ctx.reservation is not None:
            self.spend.settle(ctx.reservation, ctx.cost)
            row["_limits"] = ctx.reservation.limits
        self.recorder.record(row)


def database_digest(database_url: str) -> str:
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


def per_image_cost(entry: ModelEntry, body: dict[str, Any] | None) -> Decimal | None:
    """Price an image response that reports no tokens, from its per-image prices."""
    if not entry.prices_per_image or not isinstance(body, dict):
        return None
    images = body.get("data")
    count = len(images) if isinstance(images, list) else 0
    quality = str(body.get("quality") or "medium")
    size = str(body.get("size") or "1024x1024")
    for label in (f"{quality}/{size}", size, quality, "standard"):
        if label in entry.prices_per_image:
            return entry.prices_per_image[label] * count
    return None
