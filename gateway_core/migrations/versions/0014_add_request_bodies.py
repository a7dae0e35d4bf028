"""add opt-in request body storage, redaction patterns and retention

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "privacy_settings",
        sa.Column("scope_type", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.BigInteger(), primary_key=True),
        sa.Column("log_bodies", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("retention_days", sa.Integer()),
        sa.CheckConstraint(
            "scope_type IN ('organization', 'team', 'project', 'key')",
            name="ck_privacy_settings_scope",
        ),
    )
    op.create_table(
        "redaction_patterns",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "organization_id", sa.BigInteger(), sa.ForeignKey("organizations.id"), nullable=False
        ),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
    )
    op.create_table(
        "request_bodies",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("organization_id", sa.BigInteger()),
        sa.Column("api_key_id", sa.BigInteger()),
        sa.Column("request", postgresql.JSONB(), nullable=False),
        sa.Column("response", postgresql.JSONB()),
    )
    op.create_index(
        "ix_request_bodies_org_created", "request_bodies", ["organization_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_request_bodies_org_created", table_name="request_bodies")
    op.drop_table("request_bodies")
    op.drop_table("redaction_patterns")
    op.drop_table("privacy_settings")
