"""Reloading settings that many requests find stale at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def reload_once(lock: asyncio.Lock, reload: Callable[[], Awaitable[None]]) -> None:
    """Await `reload`, which takes `lock` while it runs, unless another task is running it.

    A request that finds a reload in flight waits for its result instead of
    sending the same queries again, so one expiry costs one reload however
    many requests are in flight.
    """
    if lock.locked():
        async with lock:
            return
    await reload()
