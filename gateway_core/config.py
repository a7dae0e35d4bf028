"""Settings read from the environment, in this one place.

Every setting has a default that works on a developer machine, so a fresh
checkout runs with no configuration. Secrets are never given defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"


class ConfigError(RuntimeError):
    """A required setting is missing or invalid."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    # Server secret for HMAC-SHA256 of API keys; at least 32 bytes.
    secret: bytes = field(repr=False)
    redis_url: str | None = None
    # Key for encrypting provider keys and webhook secrets at rest; defaults
    # to the server secret. Older keys still decrypt until `secrets rotate`.
    encryption_key: bytes = field(default=b"", repr=False)
    old_encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8000
    app_port: int = 8501
    max_body_bytes: int = 4 * 1024 * 1024
    # Seconds a verified key stays cached in a proxy worker; revocations
    # also arrive by LISTEN/NOTIFY, so this bounds the delay if one is missed.
    key_cache_ttl: float = 1.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 120.0
    upstream_max_retries: int = 2
    # Consecutive provider failures that open its circuit, and for how long.
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0
    # Seconds before an unknown provider name triggers a reload of the
    # providers table, so providers added at run time are picked up.
    provider_refresh_interval: float = 2.0
    # Largest chunk of a budget or credit balance, in USD, that one proxy
    # worker leases from Postgres at a time.
    lease_chunk_usd: Decimal = Decimal(5)
    # Usage rows Postgres rejects are appended here (JSON lines) instead of lost.
    dead_letter_path: Path = DATA_DIR / "spool" / "rejected-usage.jsonl"
    # Usage rows wait here (JSON lines, fsynced) while Postgres is unreachable.
    spool_dir: Path = DATA_DIR / "spool"
    log_level: str = "INFO"
    # Networks of reverse proxies whose X-Forwarded-For header is believed.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    # One JSON line per call on the gatewayz.access logger.
    access_log: bool = False
    recorder_batch_size: int = 500
    recorder_flush_interval: float = 0.05
    recorder_queue_size: int = 10_000
    # Seconds between evaluations of the health alert rules in each worker.
    health_interval: float = 15.0
    # Database the app's analytics pages read, such as a streaming read
    # replica of the primary; empty means database_url.
    analytics_database_url: str = ""

    def __post_init__(self) -> None:
        if not self.encryption_key:
            object.__setattr__(self, "encryption_key", self.secret)
        if not self.analytics_database_url:
            object.__setattr__(self, "analytics_database_url", self.database_url)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        database_url = env.get("DATABASE_URL")
        if not database_url:
            raise ConfigError(
                "DATABASE_URL is not set; start the stack with `make run`, "
                "which sets it, or export a postgresql:// URL"
            )
        secret = env.get("GATEWAYZ_SECRET", "")
        if len(secret) < 32:
            raise ConfigError(
                "GATEWAYZ_SECRET is missing or shorter than 32 characters; "
                "`make run` generates one in data/gatewayz.env"
            )
        return cls(
            database_url=database_url,
            secret=secret.encode(),
            redis_url=env.get("REDIS_URL") or None,
            encryption_key=(env.get("GATEWAYZ_ENCRYPTION_KEY") or secret).encode(),
            old_encryption_keys=tuple(
                part.strip().encode()
                for part in env.get("GATEWAYZ_OLD_ENCRYPTION_KEYS", "").split(",")
                if part.strip()
            ),
            proxy_host=env.get("GATEWAYZ_PROXY_HOST", "127.0.0.1"),
            proxy_port=int(env.get("GATEWAYZ_PROXY_PORT", "8000")),
            app_port=int(env.get("GATEWAYZ_APP_PORT", "8501")),
            max_body_bytes=int(env.get("GATEWAYZ_MAX_BODY_BYTES", str(4 << 20))),
            key_cache_ttl=float(env.get("GATEWAYZ_KEY_CACHE_TTL", "1.0")),
            upstream_connect_timeout=float(env.get("GATEWAYZ_UPSTREAM_CONNECT_TIMEOUT", "5")),
            upstream_read_timeout=float(env.get("GATEWAYZ_UPSTREAM_READ_TIMEOUT", "120")),
            upstream_max_retries=int(env.get("GATEWAYZ_UPSTREAM_MAX_RETRIES", "2")),
            dead_letter_path=Path(
                env.get("GATEWAYZ_DEAD_LETTER_PATH")
                or Path(env.get("GATEWAYZ_DATA_DIR") or DATA_DIR) / "spool" / "rejected-usage.jsonl"
            ),
            spool_dir=Path(
                env.get("GATEWAYZ_SPOOL_DIR")
                or Path(env.get("GATEWAYZ_DATA_DIR") or DATA_DIR) / "spool"
            ),
            log_level=env.get("GATEWAYZ_LOG_LEVEL", "INFO").upper(),
            trusted_proxies=parse_trusted_proxies(env.get("GATEWAYZ_TRUSTED_PROXIES", "")),
            access_log=env.get("GATEWAYZ_ACCESS_LOG", "").lower() in ("1", "true", "json"),
            lease_chunk_usd=Decimal(env.get("GATEWAYZ_LEASE_CHUNK_USD", "5")),
            circuit_failures=int(env.get("GATEWAYZ_CIRCUIT_FAILURES", "5")),
            circuit_cooldown=float(env.get("GATEWAYZ_CIRCUIT_COOLDOWN", "30")),
            provider_refresh_interval=float(env.get("GATEWAYZ_PROVIDER_REFRESH_INTERVAL", "2")),
            health_interval=float(env.get("GATEWAYZ_HEALTH_INTERVAL", "15")),
            analytics_database_url=env.get("GATEWAYZ_ANALYTICS_DATABASE_URL", ""),
        )


@dataclass(frozen=True)
class ConnectionLimits:
    """Limits on how a client sends a request, applied by the proxy's HTTP protocol."""

    # Bytes of request line and headers; a larger head gets 431.
    max_head_bytes: int = 64 * 1024
    # Seconds from connection open, or from the end of the previous response,
    # to the end of the request headers; a slower head gets 408.
    head_timeout: float = 20.0
    # Seconds from the end of the headers to the end of the body. A slower
    # body gets 408, or the connection is closed if a response has started.
    body_timeout: float = 60.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ConnectionLimits:
        env = os.environ if environ is None else environ
        return cls(
            max_head_bytes=int(env.get("GATEWAYZ_MAX_HEADER_BYTES", str(64 * 1024))),
            head_timeout=float(env.get("GATEWAYZ_HEADER_TIMEOUT", "20")),
            body_timeout=float(env.get("GATEWAYZ_BODY_TIMEOUT", "60")),
        )


def parse_trusted_proxies(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ip_network(part.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"GATEWAYZ_TRUSTED_PROXIES has an invalid network {part.strip()!r}"
                ) from exc
    return tuple(networks)


def sqlalchemy_url(database_url: str) -> str:
    """Return the URL with the psycopg 3 driver named, as SQLAlchemy needs."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {database_url!r}")


def libpq_url(database_url: str) -> str:
    """Return the URL in the form libpq (psycopg, DuckDB) accepts."""
    if database_url.startswith("postgresql+psycopg://"):
        return "postgresql://" + database_url[len("postgresql+psycopg://") :]
    return database_url
