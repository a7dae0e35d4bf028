"""add rate limit slot leases

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-04

Concurrency slots that proxy processes lease per scope when rate limits are
kept in Postgres, so a concurrency limit holds across workers and hosts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_slot_leases",
        sa.Column("scope_type", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "scope_type IN ('organization', 'team', 'project', 'key')",
            name="ck_rate_limit_slot_leases_scope",
        ),
        sa.CheckConstraint("slots >= 0", name="ck_rate_limit_slot_leases_slots"),
        sa.PrimaryKeyConstraint("scope_type", "scope_id", "holder"),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_slot_leases")
