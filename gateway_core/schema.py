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
    # One row per call. The table is partitioned by UTC month of created_at
    # (migration 0016), so its key must contain created_at; usage_request_ids
    # keeps request ids unique across all months.
    Column("request_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), primary_key=True),
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
    # The chat session and prompt template the call used, if any.
    Column("session_id", String(40)),
    Column("template_name", String(100)),
    Column("template_version", Integer),
    postgresql_partition_by="RANGE (created_at)",
)

# The request id of every usage row ever written, detached months included;
# the recorder inserts here first, so a replayed row is written only once.
usage_request_ids = Table(
    "usage_request_ids",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
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

HEALTH_RULE_KINDS = ("error_rate", "p95_latency", "circuit_open", "spool_rows")

# Conditions on the proxy's health that alert an organization's channels.
health_alert_rules = Table(
    "health_alert_rules",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(100), nullable=False),
    Column("kind", String(32), nullable=False),
    # Only calls to this provider count; required for circuit_open.
    Column("provider", String(64)),
    # A fraction for error_rate, milliseconds for p95_latency, rows for
    # spool_rows; unused by circuit_open.
    Column("threshold", Numeric(20, 6), nullable=False),
    Column("window_seconds", Integer, nullable=False),
    # Fewer calls than this in the window never fire error_rate or p95_latency.
    Column("min_requests", Integer, nullable=False),
    # Seconds after a message during which a new incident of the rule sends none.
    Column("cooldown_seconds", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default="true"),
    Column("updated_by", String(100)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "kind IN ('error_rate', 'p95_latency', 'circuit_open', 'spool_rows')",
        name="ck_health_alert_rules_kind",
    ),
    CheckConstraint("threshold >= 0", name="ck_health_alert_rules_threshold"),
    CheckConstraint("window_seconds > 0", name="ck_health_alert_rules_window"),
    CheckConstraint("min_requests >= 0", name="ck_health_alert_rules_min_requests"),
    CheckConstraint("cooldown_seconds >= 0", name="ck_health_alert_rules_cooldown"),
)

# One row per time a rule's condition held; at most one open row per rule.
health_incidents = Table(
    "health_incidents",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column(
        "rule_id",
        BigInteger,
        ForeignKey("health_alert_rules.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    # Last time any proxy worker saw the condition hold.
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    # Set when the incident's message was sent; NULL when a cool-down held it back.
    Column("notified_at", DateTime(timezone=True)),
    Column("value", Numeric(20, 6), nullable=False),
    # host:pid of the worker that opened the incident.
    Column("source", String(200), nullable=False),
)
Index(
    "uq_health_incidents_open",
    health_incidents.c.rule_id,
    unique=True,
    postgresql_where=health_incidents.c.resolved_at.is_(None),
)
Index("ix_health_incidents_rule_opened", health_incidents.c.rule_id, health_incidents.c.opened_at)

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

rate_limit_slot_leases = Table(
    "rate_limit_slot_leases",
    metadata,
    # Concurrency slots of a scope leased by one proxy process (`holder`).
    # A live process keeps extending `expires_at`; expired rows count for nothing.
    Column("scope_type", String(16), primary_key=True),
    Column("scope_id", BigInteger, primary_key=True),
    Column("holder", String(200), primary_key=True),
    Column("slots", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(_SCOPE_CHECK, name="ck_rate_limit_slot_leases_scope"),
    CheckConstraint("slots >= 0", name="ck_rate_limit_slot_leases_slots"),
)

Index("ix_rate_limit_windows_window_end", rate_limit_windows.c.window_end)


def _usage_rollup(name: str) -> Table:
    """Define a rollup of usage_events per time bucket and dimensions.

    A statement-level trigger on usage_events (migration 0005) adds every
    inserted row in the same transaction. Buckets start at whole UTC hours or
    UTC midnights. NULL dimensions (no key, no project, no model) group
    together, because the unique constraint treats NULLs as equal.
    """
    return Table(
        name,
        metadata,
        Column("bucket_start", DateTime(timezone=True), nullable=False),
        Column("organization_id", BigInteger),
        Column("team_id", BigInteger),
        Column("project_id", BigInteger),
        Column("api_key_id", BigInteger),
        Column("model", String(200)),
        Column("provider", String(64)),
        Column("requests", BigInteger, nullable=False, server_default="0"),
        # Calls that returned HTTP status 400 or higher.
        Column("errors", BigInteger, nullable=False, server_default="0"),
        # Calls that needed more than one upstream attempt: a retry or a fallback.
        Column("retried", BigInteger, nullable=False, server_default="0"),
        Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
        Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
        Column("cached_tokens", BigInteger, nullable=False, server_default="0"),
        Column("cache_write_tokens", BigInteger, nullable=False, server_default="0"),
        Column("reasoning_tokens", BigInteger, nullable=False, server_default="0"),
        Column("cost_usd", Money, nullable=False, server_default="0"),
        Column("latency_ms_sum", BigInteger, nullable=False, server_default="0"),
        Column("latency_count", BigInteger, nullable=False, server_default="0"),
        # Time to first token is recorded for streamed calls only.
        Column("ttft_ms_sum", BigInteger, nullable=False, server_default="0"),
        Column("ttft_count", BigInteger, nullable=False, server_default="0"),
        UniqueConstraint(
            "bucket_start",
            "organization_id",
            "team_id",
            "project_id",
            "api_key_id",
            "model",
            "provider",
            name=f"uq_{name}_bucket_dimensions",
            postgresql_nulls_not_distinct=True,
        ),
    )


usage_hourly = _usage_rollup("usage_hourly")
usage_daily = _usage_rollup("usage_daily")

Index("ix_usage_hourly_team_bucket", usage_hourly.c.team_id, usage_hourly.c.bucket_start)
Index("ix_usage_hourly_project_bucket", usage_hourly.c.project_id, usage_hourly.c.bucket_start)
Index("ix_usage_daily_team_bucket", usage_daily.c.team_id, usage_daily.c.bucket_start)


def _latency_histogram(name: str) -> Table:
    """Successful calls per UTC hour or day and dimensions, counted in latency buckets.

    The bucket positions of the count arrays are described in
    gateway_core.latency_histogram. Keys are not a dimension.
    """
    return Table(
        name,
        metadata,
        Column("bucket_start", DateTime(timezone=True), nullable=False),
        Column("organization_id", BigInteger),
        Column("team_id", BigInteger),
        Column("project_id", BigInteger),
        Column("model", String(200)),
        Column("provider", String(64)),
        Column("latency_counts", ARRAY(BigInteger), nullable=False, server_default="{}"),
        # Time to first token is recorded for streamed calls only.
        Column("ttft_counts", ARRAY(BigInteger), nullable=False, server_default="{}"),
        UniqueConstraint(
            "bucket_start",
            "organization_id",
            "team_id",
            "project_id",
            "model",
            "provider",
            name=f"uq_{name}_bucket_dimensions",
            postgresql_nulls_not_distinct=True,
        ),
    )


# Migration 0021.
usage_latency_hourly = _latency_histogram("usage_latency_hourly")
usage_latency_daily = _latency_histogram("usage_latency_daily")

Index(
    "ix_usage_latency_hourly_team_bucket",
    usage_latency_hourly.c.team_id,
    usage_latency_hourly.c.bucket_start,
)
Index(
    "ix_usage_latency_daily_team_bucket",
    usage_latency_daily.c.team_id,
    usage_latency_daily.c.bucket_start,
)


# Billing with Stripe (migration 0006). Stripe object ids are opaque
# strings, stored in up to 255 characters.
STRIPE_ID = String(255)

billing_accounts = Table(
    "billing_accounts",
    metadata,
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), primary_key=True),
    Column("stripe_customer_id", STRIPE_ID, unique=True),
    # Self-service organizations start with False, and their first paid
    # top-up or an admin's approval sets it. Organizations without a row
    # here were created by an operator and may create live keys.
    Column("live_keys_allowed", Boolean, nullable=False, server_default="true"),
    Column("live_keys_approved_by", String(100)),
    Column("referred_by_organization_id", BigInteger, ForeignKey("organizations.id")),
    Column("referral_credited_at", DateTime(timezone=True)),
    Column("first_paid_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

organization_members = Table(
    "organization_members",
    metadata,
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), primary_key=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

Index("ix_organization_members_user", organization_members.c.user_id)

payments = Table(
    "payments",
    metadata,
    # One Stripe Checkout Session for a credit top-up.
    Column("id", BigInteger, Identity(), primary_key=True),
    Column(
        "organization_id", BigInteger, ForeignKey("organizations.id"), nullable=False, index=True
    ),
    Column("stripe_session_id", STRIPE_ID, nullable=False, unique=True),
    Column("stripe_payment_intent_id", STRIPE_ID, unique=True),
    # The top-up that was requested, in USD.
    Column("amount", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    # Credit added, from the session's line items as Stripe reports them.
    Column("credited", Money),
    # Credit removed again because the charge was refunded.
    Column("reversed", Money, nullable=False, server_default="0"),
    # The charge's cumulative amount_refunded in cents, as last applied.
    Column("refunded_cents", BigInteger, nullable=False, server_default="0"),
    Column("receipt_email", String(320)),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("paid_at", DateTime(timezone=True)),
    CheckConstraint(
        "status IN ('pending', 'paid', 'failed', 'expired')", name="ck_payments_status"
    ),
    CheckConstraint("amount > 0", name="ck_payments_amount"),
)

stripe_events = Table(
    "stripe_events",
    metadata,
    # Every webhook event processed, so a redelivered event is skipped.
    Column("id", STRIPE_ID, primary_key=True),
    Column("type", String(100), nullable=False),
    # Stripe's `created` time of the event.
    Column("created", DateTime(timezone=True), nullable=False),
    # What handling the event did: processed or ignored.
    Column("outcome", String(16), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

billing_plans = Table(
    "billing_plans",
    metadata,
    # A Stripe recurring price and the credit allowance it includes per period.
    Column("stripe_price_id", STRIPE_ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("monthly_allowance", Money, nullable=False),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("monthly_allowance >= 0", name="ck_billing_plans_allowance"),
)

billing_subscriptions = Table(
    "billing_subscriptions",
    metadata,
    # The organization's plan as the latest applied Stripe event describes it.
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), primary_key=True),
    Column("stripe_subscription_id", STRIPE_ID, nullable=False, unique=True),
    Column("stripe_price_id", STRIPE_ID),
    # Stripe's subscription status: active, past_due, canceled, unpaid, ...
    Column("status", String(32), nullable=False),
    Column("current_period_end", DateTime(timezone=True)),
    Column("cancel_at_period_end", Boolean, nullable=False, server_default="false"),
    # Set when a payment fails. The plan is still served until then.
    Column("grace_until", DateTime(timezone=True)),
    # `created` time of the Stripe event last applied, so an older event
    # that arrives late does not overwrite a newer state.
    Column("last_event_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

billing_invoices = Table(
    "billing_invoices",
    metadata,
    Column("stripe_invoice_id", STRIPE_ID, primary_key=True),
    Column(
        "organization_id", BigInteger, ForeignKey("organizations.id"), nullable=False, index=True
    ),
    Column("stripe_subscription_id", STRIPE_ID),
    Column("status", String(16), nullable=False),
    Column("amount_due", Money, nullable=False),
    Column("amount_paid", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("hosted_invoice_url", Text),
    Column("period_end", DateTime(timezone=True)),
    # Plan allowance granted for this invoice. NULL until it is paid.
    Column("allowance", Money),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('paid', 'payment_failed')", name="ck_billing_invoices_status"),
)

coupons = Table(
    "coupons",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # Stored upper-case, so codes are matched case-insensitively.
    Column("code", String(64), nullable=False, unique=True),
    Column("credit", Money, nullable=False),
    # NULL means no limit.
    Column("max_redemptions", Integer),
    Column("redemptions", Integer, nullable=False, server_default="0"),
    Column("valid_from", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("valid_until", DateTime(timezone=True)),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("credit > 0", name="ck_coupons_credit"),
    CheckConstraint("max_redemptions IS NULL OR max_redemptions > 0", name="ck_coupons_max"),
    CheckConstraint(
        "max_redemptions IS NULL OR redemptions <= max_redemptions", name="ck_coupons_redemptions"
    ),
    CheckConstraint("valid_until IS NULL OR valid_until > valid_from", name="ck_coupons_validity"),
)

coupon_redemptions = Table(
    "coupon_redemptions",
    metadata,
    # The primary key allows each organization one redemption per coupon.
    Column("coupon_id", BigInteger, ForeignKey("coupons.id"), primary_key=True),
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), primary_key=True),
    Column("actor", String(100)),
    Column("redeemed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

referral_codes = Table(
    "referral_codes",
    metadata,
    Column("code", String(32), primary_key=True),
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id"),
        nullable=False,
        unique=True,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

self_service_settings = Table(
    "self_service_settings",
    metadata,
    # Exactly one row (id 1), written by migration 0006 and changed by admins.
    Column("id", Integer, primary_key=True),
    Column("signup_enabled", Boolean, nullable=False, server_default="false"),
    Column("trial_credit", Money, nullable=False, server_default="10"),
    Column("trial_days", Integer, nullable=False, server_default="14"),
    # Credit given to both organizations after the referred one's first paid top-up.
    Column("referral_credit", Money, nullable=False, server_default="10"),
    # An organization whose balance falls below this gets one low-balance email.
    Column("low_balance_threshold", Money, nullable=False, server_default="5"),
    Column("updated_by", String(100)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("id = 1", name="ck_self_service_settings_single_row"),
    CheckConstraint("trial_credit >= 0", name="ck_self_service_settings_trial_credit"),
    CheckConstraint("trial_days > 0", name="ck_self_service_settings_trial_days"),
    CheckConstraint("referral_credit >= 0", name="ck_self_service_settings_referral_credit"),
    CheckConstraint("low_balance_threshold >= 0", name="ck_self_service_settings_low_balance"),
)

# Transactional emails, rendered when their event commits and delivered by
# gateway_core.email_outbox with retries.
email_outbox = Table(
    "email_outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("recipient", String(320), nullable=False),
    Column("template", String(40), nullable=False),
    Column("subject", Text, nullable=False),
    Column("text_body", Text, nullable=False),
    Column("html_body", Text, nullable=False),
    # Names the event an email belongs to, so a repeated event queues it once.
    Column("dedupe_key", String(200), unique=True),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('pending', 'sent', 'failed')", name="ck_email_outbox_status"),
)

Index(
    "ix_email_outbox_due",
    email_outbox.c.next_attempt_at,
    postgresql_where=email_outbox.c.status == "pending",
)

# A row means the organization was sent a low-balance email and its balance
# has stayed below the threshold since. The row is deleted when the balance
# rises to the threshold again, so the next fall sends one more email.
low_balance_notices = Table(
    "low_balance_notices",
    metadata,
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("notified_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

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

admin_keys = Table(
    "admin_keys",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", String(200), nullable=False),
    # HMAC-SHA256 of the full admin key under the server secret.
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    # "gw_admin_" and the next four characters, shown to recognise a key.
    Column("prefix", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("role IN ('owner', 'admin', 'billing', 'viewer')", name="ck_admin_keys_role"),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    # One row per sign-in with a username and password (migration 0011).
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("attempted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # As submitted, lowercased the way streamlit-authenticator compares it.
    Column("username", String(200), nullable=False),
    # Random id of the browser session, kept in its Streamlit session state.
    Column("session_key", String(64), nullable=False),
    # NULL when Streamlit reports none, as for connections from localhost.
    Column("client_address", String(64)),
    # "rejected" is an attempt refused by the rate limit without checking the password.
    Column("outcome", String(16), nullable=False),
    CheckConstraint(
        "outcome IN ('success', 'failure', 'rejected')", name="ck_login_attempts_outcome"
    ),
)
Index("ix_login_attempts_username_time", login_attempts.c.username, login_attempts.c.attempted_at)
Index("ix_login_attempts_session_time", login_attempts.c.session_key, login_attempts.c.attempted_at)
Index("ix_login_attempts_attempted_at", login_attempts.c.attempted_at)

team_members = Table(
    "team_members",
    metadata,
    # The teams a user belongs to. A team_admin user manages only teams
    # where this row's role is "admin".
    Column("user_id", BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("team_id", BigInteger, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False, server_default="member"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("role IN ('admin', 'member')", name="ck_team_members_role"),
)
Index("ix_team_members_team", team_members.c.team_id)


# Model comparisons: each run sends every prompt to every model through the
# proxy. The API key that paid for a run is never stored.
comparison_runs = Table(
    "comparison_runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # "interactive" for one prompt typed in the app, "batch" for a prompt file.
    Column("kind", String(16), nullable=False),
    # "running" also covers a run whose app process stopped mid-way.
    Column("status", String(16), nullable=False, server_default="running"),
    Column("models", ARRAY(String(200)), nullable=False),
    Column("system_prompt", Text),
    Column("temperature", Numeric(4, 2, asdecimal=False)),
    Column("max_tokens", Integer),
    # Checks run on every prompt that has an expected answer.
    Column("checks", ARRAY(String(16)), nullable=False, server_default="{}"),
    # The run that this one repeats, for a re-run from history.
    Column("source_run_id", BigInteger, ForeignKey("comparison_runs.id", ondelete="SET NULL")),
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("kind IN ('interactive', 'batch')", name="ck_comparison_runs_kind"),
    CheckConstraint(
        "status IN ('running', 'cancelled', 'completed')", name="ck_comparison_runs_status"
    ),
)

comparison_prompts = Table(
    "comparison_prompts",
    metadata,
    Column(
        "run_id",
        BigInteger,
        ForeignKey("comparison_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # 0-based row of the prompt within its run.
    Column("position", Integer, primary_key=True),
    Column("prompt", Text, nullable=False),
    Column("expected", Text),
)

comparison_cells = Table(
    "comparison_cells",
    metadata,
    # The result of one prompt on one model; a run is resumed by sending only
    # the prompt and model pairs that have no row here.
    Column("id", BigInteger, Identity(), primary_key=True),
    Column(
        "run_id", BigInteger, ForeignKey("comparison_runs.id", ondelete="CASCADE"), nullable=False
    ),
    Column("position", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("answer", Text),
    Column("error", Text),
    # The proxy's x-request-id, which keys the call's usage_events row.
    Column("request_id", String(64)),
    Column("ttft_ms", Integer),
    Column("latency_ms", Integer),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("tokens_per_second", Numeric(12, 2, asdecimal=False)),
    Column("cost_usd", Money),
    # Check outcomes; NULL when the check was not run.
    Column("exact_match", Boolean),
    Column("contains_match", Boolean),
    Column("regex_match", Boolean),
    Column("json_valid", Boolean),
    Column("passed", Boolean),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("run_id", "position", "model", name="uq_comparison_cells_run_cell"),
)

comparison_ratings = Table(
    "comparison_ratings",
    metadata,
    Column(
        "cell_id",
        BigInteger,
        ForeignKey("comparison_cells.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("rated_by", String(100), primary_key=True),
    Column("rating", Integer, nullable=False),
    Column("note", Text),
    Column("rated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("rating BETWEEN 1 AND 5", name="ck_comparison_ratings_rating"),
)


chat_sessions = Table(
    "chat_sessions",
    metadata,
    # "sess_" followed by 32 hex digits; the id API clients use.
    Column("id", String(40), primary_key=True),
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), nullable=False),
    # Team and key that created the session; every key of the organization can use it.
    Column("team_id", BigInteger),
    Column("api_key_id", BigInteger),
    Column("title", String(200)),
    # Model used when a call that names the session sends no model.
    Column("model", String(200)),
    # Sent as the first message of every call that names the session.
    Column("system_prompt", Text),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    # Messages stored so far. Appending raises it in the same transaction as
    # the insert, and the row lock of that UPDATE orders concurrent appends.
    Column("message_count", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

Index(
    "ix_chat_sessions_organization_created",
    chat_sessions.c.organization_id,
    chat_sessions.c.created_at,
)

chat_session_messages = Table(
    "chat_session_messages",
    metadata,
    Column(
        "session_id",
        String(40),
        ForeignKey("chat_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Position in the conversation: 1, 2, 3, ... with no gaps.
    Column("seq", Integer, primary_key=True),
    Column("role", String(16), nullable=False),
    # The message as sent to the model: role, content, name, tool_calls, tool_call_id.
    Column("message", JSONB, nullable=False),
    # Text of the content and tool call arguments, for search.
    Column("content_text", Text, nullable=False, server_default=""),
    # The call that added the message.
    Column("request_id", String(64)),
    # An answer cut short because the client disconnected mid-stream.
    Column("partial", Boolean, nullable=False, server_default="false"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

prompt_templates = Table(
    "prompt_templates",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("organization_id", BigInteger, ForeignKey("organizations.id"), nullable=False),
    Column("name", String(100), nullable=False),
    # 1, 2, 3, ... per name. A version is never changed: a trigger rejects
    # UPDATE, and an edit inserts the next version.
    Column("version", Integer, nullable=False),
    # A string (rendered as one user message) or an array of
    # {"role", "content"} messages, with {{name}} placeholders.
    Column("content", JSONB, nullable=False),
    # Placeholder names in order of first appearance.
    Column("variables", ARRAY(String(100)), nullable=False, server_default="{}"),
    Column("description", Text),
    # "api_key:<id>" or the app user's username.
    Column("created_by", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("organization_id", "name", "version", name="uq_prompt_templates_version"),
)

# Session totals on the app's sessions page sum usage rows by session.
Index(
    "ix_usage_events_session",
    usage_events.c.session_id,
    postgresql_where=usage_events.c.session_id.isnot(None),
)
