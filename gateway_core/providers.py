"""Upstream provider configuration stored in Postgres."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert

from gateway_core import secret_box
from gateway_core.errors import InvalidRequestError
from gateway_core.schema import alert_channels, providers

PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Adapter kinds the proxy supports; see proxy/providers/__init__.py.
PROVIDER_KINDS = frozenset({"openai-compatible", "anthropic", "gemini", "azure-openai"})
# Names served inside the proxy, which cannot be configured.
BUILT_IN = frozenset({"sandbox"})


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key_env: str | None
    enabled: bool = True


def upsert_provider(
    conn: Connection,
    *,
    name: str,
    base_url: str,
    api_key_env: str | None = None,
    kind: str = "openai-compatible",
    api_version: str | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    total_timeout: float | None = None,
    max_retries: int | None = None,
    api_key: str | None = None,
    encryption_key: bytes | None = None,
) -> None:
    """Add or replace a provider; timeouts are seconds, None keeps the proxy default.

    A given `api_key` is stored encrypted under `encryption_key`, never in
    plain text; `api_key_env` names an environment variable instead.
    """
    if not PROVIDER_NAME.match(name) or name in BUILT_IN:
        raise InvalidRequestError(
            f"invalid provider name {name!r}: use lowercase letters, digits, - and _, "
            "and not a built-in name"
        )
    if not base_url.startswith(("http://", "https://")):
        raise InvalidRequestError(f"base URL must start with http:// or https://: {base_url!r}")
    if kind not in PROVIDER_KINDS:
        raise InvalidRequestError(
            f"unknown provider kind {kind!r}; use one of {', '.join(sorted(PROVIDER_KINDS))}"
        )
    for label, value in (
        ("connect_timeout", connect_timeout),
        ("read_timeout", read_timeout),
        ("total_timeout", total_timeout),
    ):
        if value is not None and not 0 < value <= 3600:
            raise InvalidRequestError(f"{label} must be between 0 and 3600 seconds")
    if max_retries is not None and not 0 <= max_retries <= 10:
        raise InvalidRequestError("max_retries must be between 0 and 10")
    encrypted = None
    if api_key:
        if encryption_key is None:
            raise InvalidRequestError("an encryption key is needed to store a provider key")
        encrypted = secret_box.encrypt(encryption_key, api_key)
    values = {
        "api_key_encrypted": encrypted,
        "kind": kind,
        "base_url": base_url.rstrip("/"),
        "api_key_env": api_key_env,
        "api_version": api_version,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "total_timeout": total_timeout,
        "max_retries": max_retries,
        "enabled": True,
    }
    statement = insert(providers).values(name=name, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=[providers.c.name], set_=values))


def rotate_secrets(conn: Connection, key: bytes, old_keys: tuple[bytes, ...]) -> int:
    """Re-encrypt stored provider keys and webhook secrets under `key`; return the count."""
    count = 0
    for table, column in (
        (providers, providers.c.api_key_encrypted),
        (alert_channels, alert_channels.c.secret_encrypted),
    ):
        rows = conn.execute(select(table.c.id, column).where(column.is_not(None))).all()
        for row_id, token in rows:
            rotated = secret_box.rotate(key, token, old_keys)
            conn.execute(update(table).where(table.c.id == row_id).values({column.name: rotated}))
            count += 1
    return count


def list_providers(conn: Connection) -> list[ProviderConfig]:
    rows = conn.execute(
        select(
            providers.c.name,
            providers.c.kind,
            providers.c.base_url,
            providers.c.api_key_env,
            providers.c.enabled,
        ).order_by(providers.c.name)
    )
    return [ProviderConfig(*row) for row in rows]
