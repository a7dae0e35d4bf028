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
from sqlalchemy.dialects.postgresql import CIDR, JSONB

metadata = MetaData()

# NUMERIC(20, 10): up to ten billion dollars with ten decimal places, so a
# per-token price times a token count is stored without rounding.
Money = Numeric(20, 10, asdecimal=True)

organizations = Table(
    "organizations",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    # IANA zone that daily, weekly and monthly budget periods align to.
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

projects = Table(
    "projects",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("team_id", BigInteger, ForeignKey("teams.id", ondelete="RESTRICT"), nullable=False),
    Column("name", String(200), nullable=False),
    # Shown in research usage reports.
    Column("principal_investigator", String(200)),
    Column("cost_centre", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("team_id", "name", name="uq_projects_team_name"),
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
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="RESTRICT")),
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
    # Restrictions; NULL means no restriction of that kind.
    Column("expires_at", DateTime(timezone=True)),
    # Model ids, aliases or glob patterns such as "anthropic/*".
    Column("allowed_models", ARRAY(Text)),
    Column("allowed_endpoints", ARRAY(Text)),
    Column("allowed_ips", ARRAY(CIDR)),
    Column("allowed_referrers", ARRAY(Text)),
    Column("tags", ARRAY(Text), nullable=False, server_default="{}"),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    # The key this one replaced by rotation.
    Column("rotated_from", BigInteger),
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
    # The provider's API key encrypted with gateway_core.secret_box; used
    # when set, instead of api_key_env.
    Column("api_key_encrypted", Text),
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
    Column("project_id", BigInteger),
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
    # The key's tags and metadata at the time of the call.
    Column("key_tags", ARRAY(Text), nullable=False, server_default="{}"),
    Column("key_metadata", JSONB, nullable=False, server_default="{}"),
)

Index("ix_usage_events_created_at", usage_events.c.created_at)
Index("ix_usage_events_team_created", usage_events.c.team_id, usage_events.c.created_at)
Index("ix_usage_events_key_created", usage_events.c.api_key_id, usage_events.c.created_at)


# Scopes that budgets, credit balances and rate limits apply to.
SCOPE_TYPES = ("organization", "team", "project", "key")
_SCOPE_CHECK = "scope_type IN ('organization', 'team', 'project', 'key')"

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("scope_type", String(16), nullable=False),
    Column("scope_id", BigInteger, nullable=False),
    # Positive adds credit (grant, purchase, refund of a charge, trial);
    # negative removes it (usage charge, reversal of a purchase).
    Column("amount", Money, nullable=False),
    Column("kind", String(16), nullable=False),
    # Request id, payment id or operator reference; unique per account and
    # kind, so a replayed write is rejected instead of counted twice.
    Column("reference", String(200), nullable=False),
    Column("reason", Text),
    Column("actor", String(100)),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_SCOPE_CHECK, name="ck_ledger_scope"),
    CheckConstraint(
        "kind IN ('grant', 'purchase', 'usage', 'refund', 'trial', 'adjustment', 'expiry')",
        name="ck_ledger_kind",
    ),
    UniqueConstraint("scope_type", "scope_id", "kind", "reference", name="uq_ledger_reference"),
)

credit_balances = Table(
    "credit_balances",
    metadata,
    # Kept equal to the sum of ledger_entries per account by a trigger in
    # the same transaction; an account with a row here is credit-metered.
    Column("scope_type", String(16), primary_key=True),
    Column("scope_id", BigInteger, primary_key=True),
    Column("balance", Money, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

budgets = Table(
    "budgets",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("scope_type", String(16), nullable=False),
    Column("scope_id", BigInteger, nullable=False),
    Column("period", String(16), nullable=False),
    Column("limit_usd", Money, nullable=False),
    # Fractions of the limit at which alerts are sent, once per period each.
    Column(
        "alert_thresholds",
        ARRAY(Numeric(5, 4)),
        nullable=False,
        server_default="{0.5,0.8,1.0}",
    ),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_SCOPE_CHECK, name="ck_budgets_scope"),
    CheckConstraint(
        "period IN ('lifetime', 'daily', 'weekly', 'monthly')", name="ck_budgets_period"
    ),
    CheckConstraint("limit_usd >= 0", name="ck_budgets_limit"),
    UniqueConstraint("scope_type", "scope_id", "period", name="uq_budgets_scope_period"),
)

budget_spend = Table(
    "budget_spend",
    metadata,
    # Settled spend of one budget in one period; a new period is a new row,
    # so nothing needs resetting.
    Column("budget_id", BigInteger, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("spent", Money, nullable=False, server_default="0"),
)

spend_leases = Table(
    "spend_leases",
    metadata,
    # Money a proxy worker may spend against one limit without asking
    # Postgres again. The sum of live leases plus settled spend never
    # exceeds the limit.
    Column("limit_key", String(120), primary_key=True),
    Column("holder", String(120), primary_key=True),
    Column("amount", Money, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("scope_type", String(16), primary_key=True),
    Column("scope_id", BigInteger, primary_key=True),
    Column("requests_per_minute", Integer),
    Column("tokens_per_minute", Integer),
    Column("requests_per_day", Integer),
    Column("max_concurrent", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_SCOPE_CHECK, name="ck_rate_limits_scope"),
)

alert_channels = Table(
    "alert_channels",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    # An email address or a webhook URL.
    Column("target", Text, nullable=False),
    # Webhook signing secret, encrypted with gateway_core.secret_box.
    Column("secret_encrypted", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("kind IN ('email', 'webhook')", name="ck_alert_channels_kind"),
)

budget_alerts_sent = Table(
    "budget_alerts_sent",
    metadata,
    Column("budget_id", BigInteger, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("threshold", Numeric(5, 4), primary_key=True),
    Column("sent_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

rate_limit_windows = Table(
    "rate_limit_windows",
    metadata,
    # Capacity of one rate limit window that proxy workers have claimed in
    # blocks. A worker spends its block in memory, so `used` counts claimed
    # capacity, which is at least what requests consumed.
    Column("scope_type", String(16), primary_key=True),
    Column("scope_id", BigInteger, primary_key=True),
    Column("limit_name", String(32), primary_key=True),
    Column("window_start", DateTime(timezone=True), primary_key=True),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("used", BigInteger, nullable=False, server_default="0"),
    # Size of the latest claim, so the claiming upsert can return it.
    Column("granted", BigInteger, nullable=False, server_default="0"),
    CheckConstraint(_SCOPE_CHECK, name="ck_rate_limit_windows_scope"),
    CheckConstraint(
        "limit_name IN ('requests_per_minute', 'tokens_per_minute', 'requests_per_day')",
        name="ck_rate_limit_windows_limit_name",
    ),
)

Index("ix_rate_limit_windows_window_end", rate_limit_windows.c.window_end)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(100), nullable=False),
    Column("object_type", String(50), nullable=False),
    Column("object_id", String(200)),
    Column("before", JSONB),
    Column("after", JSONB),
    Column("client_address", String(64)),
    # SHA-256 chain: entry_hash covers this entry's fields and previous_hash.
    Column("previous_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
)
Index("ix_audit_log_created_at", audit_log.c.created_at)

privacy_settings = Table(
    "privacy_settings",
    metadata,
    Column("scope_type", String(16), primary_key=True),
    Column("scope_id", BigInteger, primary_key=True),
    # Store request and response bodies of this scope's calls (redacted).
    Column("log_bodies", Boolean, nullable=False, server_default="false"),
    # Days stored bodies are kept; read from the organization's row.
    Column("retention_days", Integer),
    CheckConstraint(_SCOPE_CHECK, name="ck_privacy_settings_scope"),
)

redaction_patterns = Table(
    "redaction_patterns",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), nullable=False),
    Column("name", String(100), nullable=False),
    # A Python regular expression; matches are replaced before storage.
    Column("pattern", Text, nullable=False),
)

request_bodies = Table(
    "request_bodies",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("organization_id", BigInteger),
    Column("api_key_id", BigInteger),
    Column("request", JSONB, nullable=False),
    Column("response", JSONB),
)
Index(
    "ix_request_bodies_org_created", request_bodies.c.organization_id, request_bodies.c.created_at
)
