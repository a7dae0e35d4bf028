"""add rate limit windows

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "rate_limit_windows",
        sa.Column("scope_type", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.BigInteger(), nullable=False),
        sa.Column("limit_name", sa.String(length=32), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("granted", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "scope_type IN ('organization', 'team', 'project', 'key')",
            name="ck_rate_limit_windows_scope",
        ),
        sa.CheckConstraint(
            "limit_name IN ('requests_per_minute', 'tokens_per_minute', 'requests_per_day')",
            name="ck_rate_limit_windows_limit_name",
        ),
        sa.PrimaryKeyConstraint("scope_type", "scope_id", "limit_name", "window_start"),
    )
    op.create_index(
        "ix_rate_limit_windows_window_end", "rate_limit_windows", ["window_end"], unique=False
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_rate_limit_windows_window_end", table_name="rate_limit_windows")
    op.drop_table("rate_limit_windows")
