"""add key policies and key tags on usage rows

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-04

This migration branches from 0004 so it does not depend on migrations
written alongside it; `migrate()` upgrades every head.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("api_keys", sa.Column("allowed_models", postgresql.ARRAY(sa.Text())))
    op.add_column("api_keys", sa.Column("allowed_endpoints", postgresql.ARRAY(sa.Text())))
    op.add_column("api_keys", sa.Column("allowed_ips", postgresql.ARRAY(postgresql.CIDR())))
    op.add_column("api_keys", sa.Column("allowed_referrers", postgresql.ARRAY(sa.Text())))
    op.add_column(
        "api_keys",
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
    )
    op.add_column(
        "api_keys",
        sa.Column("metadata", postgresql.JSONB(), server_default="{}", nullable=False),
    )
    op.add_column("api_keys", sa.Column("rotated_from", sa.BigInteger()))
    op.add_column(
        "usage_events",
        sa.Column("key_tags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
    )
    op.add_column(
        "usage_events",
        sa.Column("key_metadata", postgresql.JSONB(), server_default="{}", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("usage_events", "key_metadata")
    op.drop_column("usage_events", "key_tags")
    for column in (
        "rotated_from",
        "metadata",
        "tags",
        "allowed_referrers",
        "allowed_ips",
        "allowed_endpoints",
        "allowed_models",
        "expires_at",
    ):
        op.drop_column("api_keys", column)
