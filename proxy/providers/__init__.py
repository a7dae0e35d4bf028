"""Provider registry: adapters, model aliases, fallbacks and price overrides.

The registry reloads the `providers`, `model_routes` and
`model_price_overrides` tables every `refresh_interval` seconds, and at once
when a request names a provider or alias it does not know yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway_core.catalog import Catalog, ModelEntry, ModelPrices
from gateway_core.errors import NotFoundError
from gateway_core.secret_box import SecretBoxError
from proxy.context import KeyIdentity
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.azure import AzureOpenAIProvider
from proxy.providers.base import Provider
from proxy.providers.gemini import GeminiProvider
from proxy.providers.openai_compatible import OpenAICompatibleProvider
from proxy.providers.sandbox import SANDBOX_MODELS, SandboxProvider
from proxy.reloading import reload_once
from proxy.upstream_http import Timeouts, UpstreamClient

logger = logging.getLogger("gatewayz.providers")

_LOAD_PROVIDERS = (
    "SELECT name, kind, base_url, api_key_env, api_version, connect_timeout, read_timeout, "
    "total_timeout, max_retries, api_key_encrypted FROM providers WHERE enabled"
)
_LOAD_ROUTES = "SELECT name, target, fallbacks FROM model_routes"
_LOAD_PRICES = (
    "SELECT model_id, input, cached_input, cache_write, output, reasoning_output "
    "FROM model_price_overrides"
)


@dataclass(frozen=True)
class ProviderSpec:
    """One row of the providers table, with its API key read from the environment."""

    name: str
    kind: str
    base_url: str
    api_key: str | None
    api_version: str | None
    connect_timeout: float | None
    read_timeout: float | None
    total_timeout: float | None
    max_retries: int | None


AdapterFactory = Callable[[ProviderSpec, UpstreamClient], Provider]


ADAPTERS: dict[str, AdapterFactory] = {
    "openai-compatible": lambda spec, client: OpenAICompatibleProvider(
        spec.name, spec.base_url, spec.api_key, client
    ),
    "anthropic": lambda spec, client: AnthropicProvider(
        spec.name, spec.base_url, spec.api_key, client
    ),
    "gemini": lambda spec, client: GeminiProvider(spec.name, spec.base_url, spec.api_key, client),
    "azure-openai": lambda spec, client: AzureOpenAIProvider(
        spec.name, spec.base_url, spec.api_key, client, spec.api_version
    ),
}


@dataclass(frozen=True)
class Route:
    model_id: str
    provider: Provider
    upstream_model: str
    entry: ModelEntry | None


def model_not_found(model: str, reason: str) -> NotFoundError:
    return NotFoundError(
        f"model {model!r} not found: {reason}; GET /v1/models lists the models this key can use",
        code="model_not_found",
        param="model",
    )


class ProviderRegistry:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        session: aiohttp.ClientSession,
        default_timeouts: Timeouts,
        catalog: Catalog,
        refresh_interval: float = 2.0,
        decrypt: Callable[[str], str] | None = None,
    ) -> None:
        self._pool = pool
        self._session = session
        self._default_timeouts = default_timeouts
        self.catalog = catalog
        self._refresh_interval = refresh_interval
        self._decrypt = decrypt
        self.sandbox = SandboxProvider()
        self._providers: dict[str, Provider] = {"sandbox": self.sandbox}
        self._specs: dict[str, ProviderSpec] = {}
        self._routes: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        self._prices: dict[str, ModelPrices] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="registry-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self._refresh_interval, 0.5))
            try:
                await self.refresh()
            except Exception:
                logger.exception("reloading providers failed; keeping the previous ones")

    async def refresh(self) -> None:
        async with self._lock:
            async with self._pool.connection(timeout=5.0) as conn:
                provider_rows = await (await conn.execute(_LOAD_PROVIDERS)).fetchall()
                route_rows = await (await conn.execute(_LOAD_ROUTES)).fetchall()
                price_rows = await (await conn.execute(_LOAD_PRICES)).fetchall()
            self._apply_providers(provider_rows)
            self._routes = {
                name: (target, tuple(fallbacks or ())) for name, target, fallbacks in route_rows
            }
            self._prices = {
                row[0]: ModelPrices(
                    input=row[1],
                    cached_input=row[2],
                    cache_write=row[3],
                    output=row[4],
                    reasoning_output=row[5],
                )
                for row in price_rows
            }
            self._loaded_at = time.monotonic()

    def _apply_providers(self, rows: list[Any]) -> None:
        providers: dict[str, Provider] = {"sandbox": self.sandbox}
        specs: dict[str, ProviderSpec] = {}
        for row in rows:
            name, kind, base_url, api_key_env, api_version, connect, read, total, retries = row[:9]
            api_key = self._provider_key(name, api_key_env, row[9])
            spec = ProviderSpec(
                name,
                kind,
                base_url,
                api_key,
                api_version,
                float(connect) if connect is not None else None,
                float(read) if read is not None else None,
                float(total) if total is not None else None,
                retries,
            )
            specs[name] = spec
            if self._specs.get(name) == spec:
                providers[name] = self._providers[name]
                continue
            factory = ADAPTERS.get(kind)
            if factory is None:
                logger.error("provider %s has unknown kind %r; skipped", name, kind)
                continue
            if api_key_env and not api_key:
                logger.warning("provider %s: environment variable %s is empty", name, api_key_env)
            provider = factory(spec, self._client_for(spec))
            provider.max_retries = spec.max_retries
            provider.total_timeout = spec.total_timeout
            providers[name] = provider
        self._providers = providers
        self._specs = specs

    def _provider_key(
        self, name: str, api_key_env: str | None, encrypted: str | None
    ) -> str | None:
        if encrypted and self._decrypt is not None:
            try:
                return self._decrypt(encrypted)
            except SecretBoxError:
                logger.error(
                    "provider %s: stored API key does not decrypt with the configured "
                    "encryption keys; set GATEWAYZ_OLD_ENCRYPTION_KEYS or store it again",
                    name,
                )
                return None
        return os.environ.get(api_key_env) if api_key_env else None

    def _client_for(self, spec: ProviderSpec) -> UpstreamClient:
        # Clients share one session, and so one connection pool; each
        # carries its provider's timeouts.
        default = self._default_timeouts
        timeouts = Timeouts(
            connect=spec.connect_timeout or default.connect,
            read=spec.read_timeout or default.read,
        )
        return UpstreamClient(self._session, timeouts)

    def configured(self) -> frozenset[str]:
        return frozenset(self._providers)

    def aliases(self) -> dict[str, str]:
        return {name: target for name, (target, _) in self._routes.items() if target}

    def prices_for(self, model_id: str, entry: ModelEntry | None) -> ModelPrices | None:
        override = self._prices.get(model_id)
        if override is not None:
            return override
        return entry.prices if entry is not None else None

    async def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at > self._refresh_interval:
            try:
                await reload_once(self._lock, self.refresh)
            except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
                # Providers, aliases and prices keep their last loaded values.
                self._loaded_at = time.monotonic()
                logger.warning("provider settings not reloaded (%s); using the last ones", exc)

    async def resolve_all(
        self, model: str, identity: KeyIdentity, extra_models: list[str] | None = None
    ) -> list[Route]:
        """Return the routes to try in order: the model, then its fallbacks."""
        await self._refresh_if_stale()
        names = [model, *(extra_models or [])]
        routes: list[Route] = []
        seen: set[str] = set()
        index = 0
        while index < len(names):
            name = names[index]
            index += 1
            if "/" not in name and name not in self._routes:
                await self._refresh_if_stale()
            target, fallbacks = self._routes.get(name, (None, ()))
            model_id = target or name
            if model_id in seen:
                continue
            seen.add(model_id)
            routes.append(await self.resolve(model_id, identity, requested=name))
            names.extend(fallbacks)
            if target is not None:
                names.extend(self._routes.get(target, (None, ()))[1])
        return routes

    async def resolve(self, model_id: str, identity: KeyIdentity, requested: str) -> Route:
        provider_name, slash, upstream_model = model_id.partition("/")
        if not slash or not upstream_model:
            raise model_not_found(requested, "ids look like 'provider/model' or name an alias")
        entry = self.catalog.get(model_id)
        if provider_name == "sandbox":
            if upstream_model not in SANDBOX_MODELS:
                names = ", ".join(f"sandbox/{name}" for name in SANDBOX_MODELS)
                raise model_not_found(requested, f"sandbox models are {names}")
            return Route(model_id, self.sandbox, upstream_model, entry)
        provider = self._providers.get(provider_name)
        if provider is None:
            await self._refresh_if_stale()
            provider = self._providers.get(provider_name)
        if identity.is_test:
            if provider is None and entry is None:
                raise model_not_found(requested, f"provider {provider_name!r} is not configured")
            # Test keys never reach a paid provider: the sandbox echoes instead.
            return Route(model_id, self.sandbox, "echo", entry)
        if provider is None:
            raise model_not_found(requested, f"provider {provider_name!r} is not configured")
        upstream = entry.upstream_model if entry is not None else upstream_model
        return Route(model_id, provider, upstream, entry)

    def cost_prices(self, route: Route) -> ModelPrices | None:
        if route.provider.synthetic:
            # Sandbox calls are free unless an admin prices a sandbox model,
            # which rehearses budgets without a paid provider. A test key's call
            # to another model goes to the sandbox and stays free.
            if route.model_id.startswith("sandbox/"):
                return self._prices.get(route.model_id)
            return None
        return self.prices_for(route.model_id, route.entry)
