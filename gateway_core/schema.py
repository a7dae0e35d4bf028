"""Postgres tables, as SQLAlchemy Core metadata.

Alembic migrations under gateway_core/migrations create these tables; this
module is what the code queries against. Money columns are NUMERIC in US
dollars and map to `Decimal`.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

metadata = MetaData()

# NUMERIC(20, 10): up to ten billion dollars with ten decimal places, so a
# per-token price times a token count is stored without rounding.
Money = Numeric(20, 10, asdecimal=True)

organizations = Table(
    "organizations",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

teams = Table(
    "teams",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("name", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("organization_id", "name", name="uq_teams_organization_name"),
)

users = Table(
    "users",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("email", String(320), nullable=False),
    # bcrypt hash; the plain password is never stored.
    Column("password_hash", String(100), nullable=False),
    Column("role", String(32), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default="false"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "role IN ('owner', 'admin', 'team_admin', 'researcher', 'viewer', 'billing')",
        name="ck_users_role",
    ),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("team_id", BigInteger, ForeignKey("teams.id", ondelete="RESTRICT"), nullable=False),
    Column("name", String(200), nullable=False),
    # HMAC-SHA256 of the full key under the server secret.
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    # What a person sees to recognise a key: "gw_live_AbC1" ... "xY9z".
    Column("prefix", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("mode IN ('live', 'test')", name="ck_api_keys_mode"),
)

providers = Table(
    "providers",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # The part of a model id before the slash: "openai" in "openai/gpt-4o".
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("base_url", Text, nullable=False),
    # Name of the environment variable that holds the provider's API key,
    # so the key itself never reaches the database.
    Column("api_key_env", String(128)),
    Column("enabled", Boolean, nullable=False, server_default="true"),
    # Azure OpenAI's api-version query parameter; unused by other kinds.
    Column("api_version", String(32)),
    # Per-provider limits in seconds; NULL means the proxy's default.
    Column("connect_timeout", Numeric(8, 3)),
    Column("read_timeout", Numeric(8, 3)),
    Column("total_timeout", Numeric(8, 3)),
    Column("max_retries", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

model_routes = Table(
    "model_routes",
    metadata,
    # A model id ("openai/gpt-4o") or an alias ("fast") that clients send.
    Column("name", String(200), primary_key=True),
    # For an alias, the model id it stands for; NULL for a plain model id.
    Column("target", String(200)),
    # Model ids tried in order when the target fails.
    Column("fallbacks", ARRAY(String(200)), nullable=False, server_default="{}"),
    Column("updated_by", String(100)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

model_price_overrides = Table(
    "model_price_overrides",
    metadata,
    Column("model_id", String(200), primary_key=True),
    # USD per million tokens; NULL falls back as in the catalog.
    Column("input", Money, nullable=False),
    Column("cached_input", Money),
    Column("cache_write", Money),
    Column("output", Money),
    Column("reasoning_output", Money),
    Column("updated_by", String(100)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

usage_events = Table(
    "usage_events",
    metadata,
    # One row per call; the request id makes a replayed write a no-op.
    Column("request_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("organization_id", BigInteger),
    Column("team_id", BigInteger),
    Column("api_key_id", BigInteger),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(200)),
    Column("provider", String(64)),
    Column("status_code", Integer, nullable=False),
    Column("error_type", String(64)),
    Column("stream", Boolean, nullable=False, server_default="false"),
    Column("partial", Boolean, nullable=False, server_default="false"),
    Column("prompt_tokens", Integer, nullable=False, server_default="0"),
    Column("completion_tokens", Integer, nullable=False, server_default="0"),
    Column("cached_tokens", Integer, nullable=False, server_default="0"),
    Column("cache_write_tokens", Integer, nullable=False, server_default="0"),
    Column("reasoning_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_usd", Money, nullable=False, server_default="0"),
    Column("latency_ms", Integer, nullable=False),
    Column("ttft_ms", Integer),
    Column("attempts", Integer, nullable=False, server_default="0"),
)

Index("ix_usage_events_created_at", usage_events.c.created_at)
Index("ix_usage_events_team_created", usage_events.c.team_id, usage_events.c.created_at)
Index("ix_usage_events_key_created", usage_events.c.api_key_id, usage_events.c.created_at)
