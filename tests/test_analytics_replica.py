"""The analytics pages read GATEWAYZ_ANALYTICS_DATABASE_URL, the other pages DATABASE_URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine, insert

from gateway_core.config import Settings
from gateway_core.db import get_engine, migrate
from gateway_core.schema import usage_events
from tests.conftest import SERVER_URL, TEST_SECRET, _with_database
from tests.test_app_pages import (  # noqa: F401 (app_env and cookies are fixtures)
    add_user,
    app_env,
    cookies,
    open_page,
    sign_in,
    start_app,
)


@pytest.fixture
def replica_url() -> Iterator[str]:
    """A second migrated database, standing in for a read replica with other rows."""
    name = f"gatewayz_replica_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(SERVER_URL, name)
    migrate(url)
    yield url
    get_engine(url).dispose()
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_analytics_url_defaults_to_database_url() -> None:
    env = {"DATABASE_URL": "postgresql://db.internal/gatewayz", "GATEWAYZ_SECRET": TEST_SECRET}
    assert Settings.from_env(env).analytics_database_url == "postgresql://db.internal/gatewayz"
    replica = "postgresql://replica.internal/gatewayz"
    settings = Settings.from_env({**env, "GATEWAYZ_ANALYTICS_DATABASE_URL": replica})
    assert settings.analytics_database_url == replica
    assert settings.database_url == "postgresql://db.internal/gatewayz"


@pytest.mark.usefixtures("cookies")
def test_usage_page_reads_replica(
    engine: Engine, replica_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAYZ_ANALYTICS_DATABASE_URL", replica_url)
    with get_engine(replica_url).begin() as conn:
        conn.execute(
            insert(usage_events).values(
                request_id="req_on_replica",
                created_at=datetime.now(UTC),
                endpoint="chat.completions",
                model="openai/gpt-4o-mini",
                provider="openai",
                status_code=200,
                latency_ms=120,
            )
        )
    # Signing in reads users from the primary, where alice exists and the
    # replica stand-in has no users at all.
    add_user(engine, "alice", "owner")
    at = open_page(sign_in(start_app(), "alice"), "pages/usage.py")

    tables = [element.value for element in at.dataframe]
    request_ids = [set(table["request_id"]) for table in tables if "request_id" in table]
    assert request_ids == [{"req_on_replica"}]
