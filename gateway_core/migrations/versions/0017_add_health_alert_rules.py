"""add health alert rules and their incidents

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "health_alert_rules",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "organization_id",
            sa.BigInteger(),
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("threshold", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("min_requests", sa.Integer(), nullable=False),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('error_rate', 'p95_latency', 'circuit_open', 'spool_rows')",
            name="ck_health_alert_rules_kind",
        ),
        sa.CheckConstraint("threshold >= 0", name="ck_health_alert_rules_threshold"),
        sa.CheckConstraint("window_seconds > 0", name="ck_health_alert_rules_window"),
        sa.CheckConstraint("min_requests >= 0", name="ck_health_alert_rules_min_requests"),
        sa.CheckConstraint("cooldown_seconds >= 0", name="ck_health_alert_rules_cooldown"),
    )
    op.create_table(
        "health_incidents",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "rule_id",
            sa.BigInteger(),
            sa.ForeignKey("health_alert_rules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("value", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
    )
    op.create_index(
        "uq_health_incidents_open",
        "health_incidents",
        ["rule_id"],
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_index("ix_health_incidents_rule_opened", "health_incidents", ["rule_id", "opened_at"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_health_incidents_rule_opened", table_name="health_incidents")
    op.drop_index("uq_health_incidents_open", table_name="health_incidents")
    op.drop_table("health_incidents")
    op.drop_table("health_alert_rules")
