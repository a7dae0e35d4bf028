"""The Gatewayz proxy: an ASGI app that authenticates, forwards and records.

Start it with `uvicorn proxy.app:create_app --factory`.
"""
