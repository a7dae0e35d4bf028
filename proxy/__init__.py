"""The Gatewayz proxy: an ASGI app that authenticates, forwards and records.

Start it with `uvicorn proxy.app:create_app --factory --no-proxy-headers
--http proxy.http_protocol:GuardedHttpToolsProtocol` (see
`gateway_core.launcher.PROXY_SERVER_OPTIONS`).
"""
