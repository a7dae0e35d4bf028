"""add login attempts and team memberships

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "attempted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("session_key", sa.String(64), nullable=False),
        sa.Column("client_address", sa.String(64)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'rejected')", name="ck_login_attempts_outcome"
        ),
    )
    op.create_index(
        "ix_login_attempts_username_time", "login_attempts", ["username", "attempted_at"]
    )
    op.create_index(
        "ix_login_attempts_session_time", "login_attempts", ["session_key", "attempted_at"]
    )
    op.create_index("ix_login_attempts_attempted_at", "login_attempts", ["attempted_at"])
    op.create_table(
        "team_members",
        sa.Column(
            "user_id",
            sa.BigInteger(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "team_id",
            sa.BigInteger(),
            sa.ForeignKey("teams.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("role", sa.String(16), nullable=False, server_default="member"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("role IN ('admin', 'member')", name="ck_team_members_role"),
    )
    op.create_index("ix_team_members_team", "team_members", ["team_id"])


def downgrade() -> None:
    op.drop_index("ix_team_members_team", table_name="team_members")
    op.drop_table("team_members")
    op.drop_index("ix_login_attempts_attempted_at", table_name="login_attempts")
    op.drop_index("ix_login_attempts_session_time", table_name="login_attempts")
    op.drop_index("ix_login_attempts_username_time", table_name="login_attempts")
    op.drop_table("login_attempts")
