"""Provider registry: maps the `provider/` part of a model id to an adapter."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import httpx
from psycopg_pool import AsyncConnectionPool

from gateway_core.catalog import Catalog, ModelEntry
from gateway_core.errors import NotFoundError
from proxy.context import KeyIdentity
from proxy.providers.base import Provider
from proxy.providers.openai_compatible import OpenAICompatibleProvider
from proxy.providers.sandbox import SANDBOX_MODELS, SandboxProvider

logger = logging.getLogger("gatewayz.providers")

_LOAD = "SELECT name, kind, base_url, api_key_env FROM providers WHERE enabled"
ADAPTERS = {"openai-compatible": OpenAICompatibleProvider}


@dataclass(frozen=True)
class Route:
    provider: Provider
    upstream_model: str
    entry: ModelEntry | None


class ProviderRegistry:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        client: httpx.AsyncClient,
        catalog: Catalog,
        refresh_interval: float = 2.0,
    ) -> None:
        self._pool = pool
        self._client = client
        self.catalog = catalog
        self._refresh_interval = refresh_interval
        self.sandbox = SandboxProvider()
        self._providers: dict[str, Provider] = {"sandbox": self.sandbox}
        self._loaded_at = float("-inf")

    async def refresh(self) -> None:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_LOAD)).fetchall()
        providers: dict[str, Provider] = {"sandbox": self.sandbox}
        for name, kind, base_url, api_key_env in rows:
            adapter = ADAPTERS.get(kind)
            if adapter is None:
                logger.error("provider %r has unknown kind %r; skipped", name, kind)
                continue
            api_key = os.environ.get(api_key_env) if api_key_env else None
            if api_key_env and not api_key:
                logger.warning("provider %r: environment variable %s is empty", name, api_key_env)
            providers[name] = adapter(name, base_url, api_key, self._client)
        self._providers = providers
        self._loaded_at = time.monotonic()

    async def get(self, name: str) -> Provider | None:
        provider = self._providers.get(name)
        if provider is None and time.monotonic() - self._loaded_at > self._refresh_interval:
            await self.refresh()
            provider = self._providers.get(name)
        return provider

    def configured(self) -> frozenset[str]:
        return frozenset(self._providers)

    async def resolve(self, model: str, identity: KeyIdentity) -> Route:
        """Find the provider for a model id such as `openai/gpt-4o-mini`."""
        provider_name, slash, upstream_model = model.partition("/")
        if not slash or not upstream_model:
            raise NotFoundError(
                f"model {model!r} not found: model ids look like 'provider/model', "
                "e.g. 'sandbox/echo'; GET /v1/models lists them",
                code="model_not_found",
                param="model",
            )
        entry = self.catalog.get(model)
        if provider_name == "sandbox":
            if upstream_model not in SANDBOX_MODELS:
                raise NotFoundError(
                    f"model {model!r} not found: sandbox models are "
                    + ", ".join(f"sandbox/{name}" for name in SANDBOX_MODELS),
                    code="model_not_found",
                    param="model",
                )
            return Route(self.sandbox, upstream_model, entry)
        provider = await self.get(provider_name)
        if provider is None and not (identity.is_test and entry is not None):
            raise NotFoundError(
                f"model {model!r} not found: provider {provider_name!r} is not configured",
                code="model_not_found",
                param="model",
            )
        if identity.is_test:
            # Test keys never reach a paid provider: the sandbox echoes instead.
            return Route(self.sandbox, "echo", entry)
        assert provider is not None
        return Route(provider, entry.upstream_model if entry else upstream_model, entry)
