"""The proxy's long-lived dependencies, created once per worker process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

import httpx
from httpx_aiohttp import AiohttpTransport
from psycopg_pool import AsyncConnectionPool

from gateway_core.catalog import Catalog, load_catalog
from gateway_core.config import Settings, libpq_url
from gateway_core.pricing import TokenUsage, compute_cost
from proxy.auth import KeyVerifier
from proxy.providers import ProviderRegistry, Route
from proxy.recorder import UsageRecorder

logger = logging.getLogger("gatewayz.proxy")


@dataclass
class Gateway:
    settings: Settings
    pool: AsyncConnectionPool
    client: httpx.AsyncClient
    verifier: KeyVerifier
    registry: ProviderRegistry
    recorder: UsageRecorder
    catalog: Catalog

    @classmethod
    async def start(cls, settings: Settings) -> Gateway:
        conninfo = libpq_url(settings.database_url)
        pool = AsyncConnectionPool(conninfo, min_size=1, max_size=10, open=False)
        await pool.open(wait=True, timeout=30)
        timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=settings.upstream_read_timeout,
            write=settings.upstream_read_timeout,
            pool=settings.upstream_connect_timeout,
        )
        # The aiohttp transport keeps httpx's API but measured several times
        # the throughput of httpx's own transport under concurrency.
        transport = AiohttpTransport(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        )
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
        catalog = load_catalog()
        verifier = KeyVerifier(pool, settings.secret, ttl=settings.key_cache_ttl)
        verifier.start_listener(conninfo)
        registry = ProviderRegistry(
            pool, client, catalog, refresh_interval=settings.provider_refresh_interval
        )
        await registry.refresh()
        recorder = UsageRecorder(
            pool,
            batch_size=settings.recorder_batch_size,
            flush_interval=settings.recorder_flush_interval,
            max_pending=settings.recorder_queue_size,
        )
        recorder.start()
        logger.info("proxy worker started with providers: %s", ", ".join(registry.configured()))
        return cls(settings, pool, client, verifier, registry, recorder, catalog)

    async def stop(self) -> None:
        await self.verifier.stop_listener()
        await self.recorder.close()
        await self.client.aclose()
        await self.pool.close()
        logger.info("proxy worker stopped")

    def cost(self, route: Route, usage: TokenUsage) -> Decimal:
        if route.provider.synthetic or route.entry is None:
            # NOTE: a model missing from the catalog is not priced (cost 0);
            # add it to data/models.json to bill it.
            return Decimal(0)
        return compute_cost(route.entry.prices, usage)
