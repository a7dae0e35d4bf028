"""Helpers for tests that talk to a running proxy and read its usage rows."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy import Engine, select

from gateway_core.schema import usage_events

CHAT = {"model": "sandbox/echo", "messages": [{"role": "user", "content": "hi"}]}


def usage_row(engine: Engine, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """Wait for the recorder to write the call's row and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(
                select(usage_events).where(usage_events.c.request_id == request_id)
            ).all()
        if rows:
            assert len(rows) == 1
            return dict(rows[0]._mapping)
        time.sleep(0.02)
    raise AssertionError(f"no usage row for {request_id}")


def post_json(
    base_url: str, path: str, body: Any, key: str | None, timeout: float = 30
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        headers["content-type"] = "application/json"
        return httpx.post(base_url + path, content=body, headers=headers, timeout=timeout)
    return httpx.post(base_url + path, json=body, headers=headers, timeout=timeout)
