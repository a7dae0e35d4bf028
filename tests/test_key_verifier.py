"""KeyVerifier against real Postgres: one lookup per key however many requests wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine

from gateway_core import directory, keys
from gateway_core.errors import AuthenticationError, PermissionDeniedError
from proxy.auth import KeyVerifier
from tests.conftest import TEST_SECRET

CONCURRENT = 50


class CountingPool(AsyncConnectionPool):
    """A real pool that counts connection checkouts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkouts = 0

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        self.checkouts += 1
        async with super().connection(timeout=timeout) as conn:
            yield conn


def verify_concurrently(database_url: str, tokens: list[str]) -> tuple[list[Any], int]:
    async def run() -> tuple[list[Any], int]:
        async with CountingPool(database_url, min_size=1, max_size=4, open=False) as pool:
            await pool.open()
            verifier = KeyVerifier(pool, TEST_SECRET.encode())
            results = await asyncio.gather(
                *(verifier.verify(token) for token in tokens), return_exceptions=True
            )
            return results, pool.checkouts

    return asyncio.run(run())


def test_concurrent_verify_one_lookup(engine: Engine, database_url: str) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "verify")
        created = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k")
    results, checkouts = verify_concurrently(database_url, [created.secret] * CONCURRENT)
    assert checkouts == 1
    assert {result.key_id for result in results} == {created.id}


def test_concurrent_verify_shares_rejection(engine: Engine, database_url: str) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "verify")
        revoked = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="old")
        keys.revoke_key(conn, revoked.id)
    unknown = revoked.secret[:-4] + ("aaaa" if not revoked.secret.endswith("aaaa") else "bbbb")
    tokens = [revoked.secret] * CONCURRENT + [unknown] * CONCURRENT
    results, checkouts = verify_concurrently(database_url, tokens)
    assert checkouts == 2
    assert all(isinstance(r, PermissionDeniedError) for r in results[:CONCURRENT])
    assert all(isinstance(r, AuthenticationError) for r in results[CONCURRENT:])


@pytest.mark.parametrize("concurrent", [1, CONCURRENT])
def test_verify_after_lookup_uses_cache(engine: Engine, database_url: str, concurrent: int) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "verify")
        created = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k")

    async def run() -> int:
        async with CountingPool(database_url, min_size=1, max_size=4, open=False) as pool:
            await pool.open()
            verifier = KeyVerifier(pool, TEST_SECRET.encode(), ttl=60)
            await verifier.verify(created.secret)
            await asyncio.gather(*(verifier.verify(created.secret) for _ in range(concurrent)))
            return pool.checkouts

    assert asyncio.run(run()) == 1
