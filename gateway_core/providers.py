"""Upstream provider configuration stored in Postgres."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from gateway_core.errors import InvalidRequestError
from gateway_core.schema import providers

PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
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
) -> None:
    if not PROVIDER_NAME.match(name) or name in BUILT_IN:
        raise InvalidRequestError(
            f"invalid provider name {name!r}: use lowercase letters, digits, - and _, "
            "and not a built-in name"
        )
    if not base_url.startswith(("http://", "https://")):
        raise InvalidRequestError(f"base URL must start with http:// or https://: {base_url!r}")
    statement = insert(providers).values(
        name=name, kind=kind, base_url=base_url.rstrip("/"), api_key_env=api_key_env
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[providers.c.name],
            set_={
                "kind": statement.excluded.kind,
                "base_url": statement.excluded.base_url,
                "api_key_env": statement.excluded.api_key_env,
                "enabled": True,
            },
        )
    )


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
