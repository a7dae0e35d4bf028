"""Database engines and migrations."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine

from gateway_core.config import PROJECT_ROOT, sqlalchemy_url
from gateway_core.usage_partitions import ensure_partitions


@functools.cache
def get_engine(database_url: str) -> Engine:
    """Return one pooled synchronous engine per URL for the app and commands."""
    return create_engine(sqlalchemy_url(database_url), pool_pre_ping=True)


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def migrate(database_url: str) -> None:
    """Apply every Alembic migration not yet applied, then create the coming usage partitions."""
    command.upgrade(alembic_config(database_url), "heads")
    with get_engine(database_url).begin() as conn:
        ensure_partitions(conn)
