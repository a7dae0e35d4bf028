"""add billing: Stripe payments, plans, coupons, referrals and sign-up settings

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=20, scale=10)
STRIPE_ID = sa.String(length=255)


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=nullable
    )


def _organization_id(primary_key: bool = False) -> sa.Column:
    return sa.Column(
        "organization_id",
        sa.BigInteger(),
        sa.ForeignKey("organizations.id"),
        primary_key=primary_key,
        nullable=False,
    )


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "billing_accounts",
        _organization_id(primary_key=True),
        sa.Column("stripe_customer_id", STRIPE_ID, nullable=True, unique=True),
        sa.Column("live_keys_allowed", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("live_keys_approved_by", sa.String(length=100), nullable=True),
        sa.Column(
            "referred_by_organization_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id"),
            nullable=True,
        ),
        sa.Column("referral_credited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_paid_at", sa.DateTime(timezone=True), nullable=True),
        _timestamp("created_at"),
    )
    op.create_table(
        "organization_members",
        _organization_id(primary_key=True),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id"), primary_key=True),
        _timestamp("created_at"),
    )
    op.create_index("ix_organization_members_user", "organization_members", ["user_id"])
    op.create_table(
        "payments",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        _organization_id(),
        sa.Column("stripe_session_id", STRIPE_ID, nullable=False, unique=True),
        sa.Column("stripe_payment_intent_id", STRIPE_ID, nullable=True, unique=True),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("credited", MONEY, nullable=True),
        sa.Column("reversed", MONEY, server_default="0", nullable=False),
        sa.Column("refunded_cents", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("receipt_email", sa.String(length=320), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        _timestamp("created_at"),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'paid', 'failed', 'expired')", name="ck_payments_status"
        ),
        sa.CheckConstraint("amount > 0", name="ck_payments_amount"),
    )
    op.create_index("ix_payments_organization_id", "payments", ["organization_id"])
    op.create_table(
        "stripe_events",
        sa.Column("id", STRIPE_ID, primary_key=True),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        _timestamp("received_at"),
    )
    op.create_table(
        "billing_plans",
        sa.Column("stripe_price_id", STRIPE_ID, primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("monthly_allowance", MONEY, nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint("monthly_allowance >= 0", name="ck_billing_plans_allowance"),
    )
    op.create_table(
        "billing_subscriptions",
        _organization_id(primary_key=True),
        sa.Column("stripe_subscription_id", STRIPE_ID, nullable=False, unique=True),
        sa.Column("stripe_price_id", STRIPE_ID, nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("grace_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        _timestamp("updated_at"),
    )
    op.create_table(
        "billing_invoices",
        sa.Column("stripe_invoice_id", STRIPE_ID, primary_key=True),
        _organization_id(),
        sa.Column("stripe_subscription_id", STRIPE_ID, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_due", MONEY, nullable=False),
        sa.Column("amount_paid", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("hosted_invoice_url", sa.Text(), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("allowance", MONEY, nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "status IN ('paid', 'payment_failed')", name="ck_billing_invoices_status"
        ),
    )
    op.create_index("ix_billing_invoices_organization_id", "billing_invoices", ["organization_id"])
    op.create_table(
        "coupons",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("code", sa.String(length=64), nullable=False, unique=True),
        sa.Column("credit", MONEY, nullable=False),
        sa.Column("max_redemptions", sa.Integer(), nullable=True),
        sa.Column("redemptions", sa.Integer(), server_default="0", nullable=False),
        _timestamp("valid_from"),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint("credit > 0", name="ck_coupons_credit"),
        sa.CheckConstraint("max_redemptions IS NULL OR max_redemptions > 0", name="ck_coupons_max"),
        sa.CheckConstraint(
            "max_redemptions IS NULL OR redemptions <= max_redemptions",
            name="ck_coupons_redemptions",
        ),
        sa.CheckConstraint(
            "valid_until IS NULL OR valid_until > valid_from", name="ck_coupons_validity"
        ),
    )
    op.create_table(
        "coupon_redemptions",
        sa.Column("coupon_id", sa.BigInteger(), sa.ForeignKey("coupons.id"), primary_key=True),
        _organization_id(primary_key=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        _timestamp("redeemed_at"),
    )
    op.create_table(
        "referral_codes",
        sa.Column("code", sa.String(length=32), primary_key=True),
        sa.Column(
            "organization_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id"),
            nullable=False,
            unique=True,
        ),
        _timestamp("created_at"),
    )
    op.create_table(
        "self_service_settings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("signup_enabled", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("trial_credit", MONEY, server_default="10", nullable=False),
        sa.Column("trial_days", sa.Integer(), server_default="14", nullable=False),
        sa.Column("referral_credit", MONEY, server_default="10", nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint("id = 1", name="ck_self_service_settings_single_row"),
        sa.CheckConstraint("trial_credit >= 0", name="ck_self_service_settings_trial_credit"),
        sa.CheckConstraint("trial_days > 0", name="ck_self_service_settings_trial_days"),
        sa.CheckConstraint("referral_credit >= 0", name="ck_self_service_settings_referral_credit"),
    )
    op.execute("INSERT INTO self_service_settings (id) VALUES (1)")


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("self_service_settings")
    op.drop_table("referral_codes")
    op.drop_table("coupon_redemptions")
    op.drop_table("coupons")
    op.drop_index("ix_billing_invoices_organization_id", table_name="billing_invoices")
    op.drop_table("billing_invoices")
    op.drop_table("billing_subscriptions")
    op.drop_table("billing_plans")
    op.drop_table("stripe_events")
    op.drop_index("ix_payments_organization_id", table_name="payments")
    op.drop_table("payments")
    op.drop_index("ix_organization_members_user", table_name="organization_members")
    op.drop_table("organization_members")
    op.drop_table("billing_accounts")
