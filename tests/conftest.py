"""Fixtures shared by the suite: a real Postgres database per test run.

The database server comes from TEST_DATABASE_URL (default: the local server
on 127.0.0.1:5432 with trust auth). Each run creates its own database,
migrates it with Alembic and drops it at the end.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from gateway_core.config import Settings
from gateway_core.db import get_engine, migrate
from gateway_core.schema import metadata

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_SECRET = "test-secret-" + "x" * 40


def _with_database(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


# A full API key or a provider key in a log line is a leak, whatever the test.
SECRET_IN_LOG = re.compile(r"gw_(?:live|test|admin)_[A-Za-z0-9_-]{40,}|sk-[A-Za-z0-9-]{16,}")


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_logs() -> Iterator[None]:
    """After the whole run, scan every proxy log for API keys and provider keys."""
    yield
    from tests.support.processes import ProxyProcess

    leaks = []
    for path in ProxyProcess.log_paths:
        if path.exists():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if SECRET_IN_LOG.search(line):
                    leaks.append(f"{path}:{number}")
    assert leaks == [], f"secrets printed in logs: {leaks[:10]}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"gatewayz_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(SERVER_URL, name)
    migrate(url)
    yield url
    get_engine(url).dispose()
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def outside_tmp_path() -> Iterator[Path]:
    """A temporary folder outside pytest's base folder.

    The embedded Postgres runs as another user, which needs access to its
    data folder's parents; pytest keeps its base folder private (mode 0700)
    and resets that mode whenever another pytest run starts.
    """
    path = Path(tempfile.mkdtemp(prefix="gatewayz-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret=TEST_SECRET.encode())


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The migrated database, emptied before each test."""
    engine = get_engine(database_url)
    tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    # A running proxy reads these tables in the background, so TRUNCATE can
    # lose a deadlock against it; it is retried.
    for attempt in range(10):
        try:
            with engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            break
        except OperationalError:
            if attempt == 9:
                raise
            time.sleep(0.1)
    yield engine


@pytest.fixture
def server_env(database_url: str) -> dict[str, str]:
    """Environment for a proxy or app process started by a test."""
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url, GATEWAYZ_SECRET=TEST_SECRET)
    return env


def random_suffix() -> str:
    return secrets.token_hex(4)
