"""Azure OpenAI: OpenAI's wire format on per-deployment URLs.

A call goes to `{base_url}/openai/deployments/{deployment}/{path}?api-version=...`
with the key in the `api-key` header. The deployment is the upstream model
name, so a catalog entry `azure/gpt-4o` routes to the deployment named
`gpt-4o` on the resource (base URL `https://RESOURCE.openai.azure.com`).
Bodies, streams and errors are OpenAI's, handled by the parent class.
"""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import quote

from proxy.providers.base import ENDPOINT_PATHS, EventStream, UpstreamRequest, UpstreamResponse
from proxy.providers.openai_compatible import OpenAICompatibleProvider
from proxy.upstream_http import UpstreamClient

# The latest generally available data-plane inference version when this was
# written. It supports `stream_options.include_usage`, which streamed usage needs.
AZURE_API_VERSION = "2024-10-21"

# Deployment of the call in progress. The parent class builds the URL from
# the endpoint alone, so `send` and `open_stream` set this for `_url`. Being
# a ContextVar, it keeps concurrent calls on one provider apart.
_deployment: ContextVar[str] = ContextVar("azure_deployment")


class AzureOpenAIProvider(OpenAICompatibleProvider):
    # The Responses API is not served under /openai/deployments/, so it is left out.
    endpoints = frozenset({"chat", "completions", "embeddings", "images"})

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
        api_version: str | None = None,
    ) -> None:
        super().__init__(name, base_url, None, client)
        self._api_version = api_version or AZURE_API_VERSION
        if api_key:
            self._headers["api-key"] = api_key

    def _url(self, endpoint: str) -> str:
        if not self.supports(endpoint):
            raise self.unsupported(endpoint)
        # Quoting keeps a client-chosen deployment name inside its path segment.
        deployment = quote(_deployment.get(), safe="")
        version = quote(self._api_version, safe="")
        path = ENDPOINT_PATHS[endpoint]
        return f"{self._base_url}/openai/deployments/{deployment}{path}?api-version={version}"

    async def send(self, endpoint: str, request: UpstreamRequest) -> UpstreamResponse:
        token = _deployment.set(request.upstream_model)
        try:
            return await super().send(endpoint, request)
        finally:
            _deployment.reset(token)

    async def open_stream(self, endpoint: str, request: UpstreamRequest) -> EventStream:
        token = _deployment.set(request.upstream_model)
        try:
            return await super().open_stream(endpoint, request)
        finally:
            _deployment.reset(token)
