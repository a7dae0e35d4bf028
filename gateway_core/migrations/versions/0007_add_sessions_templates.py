"""add chat sessions and prompt templates

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REJECT_TEMPLATE_UPDATE = """
CREATE FUNCTION reject_prompt_template_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'prompt template versions are immutable: create a new version instead'
        USING ERRCODE = 'restrict_violation';
END;
$$
"""


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("usage_events", sa.Column("session_id", sa.String(length=40), nullable=True))
    op.add_column("usage_events", sa.Column("template_name", sa.String(length=100), nullable=True))
    op.add_column("usage_events", sa.Column("template_version", sa.Integer(), nullable=True))
    op.create_index(
        "ix_usage_events_session",
        "usage_events",
        ["session_id"],
        unique=False,
        postgresql_where=sa.text("session_id IS NOT NULL"),
    )
    op.create_table(
        "chat_sessions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=True),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("message_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_chat_sessions_organization_created",
        "chat_sessions",
        ["organization_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "chat_session_messages",
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("message", postgresql.JSONB(), nullable=False),
        sa.Column("content_text", sa.Text(), server_default="", nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("partial", sa.Boolean(), server_default="false", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["session_id"], ["chat_sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("session_id", "seq"),
    )
    op.create_table(
        "prompt_templates",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("organization_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", postgresql.JSONB(), nullable=False),
        sa.Column(
            "variables",
            postgresql.ARRAY(sa.String(length=100)),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "organization_id", "name", "version", name="uq_prompt_templates_version"
        ),
    )
    op.execute(REJECT_TEMPLATE_UPDATE)
    op.execute(
        "CREATE TRIGGER prompt_templates_immutable BEFORE UPDATE ON prompt_templates "
        "FOR EACH ROW EXECUTE FUNCTION reject_prompt_template_update()"
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP TRIGGER prompt_templates_immutable ON prompt_templates")
    op.execute("DROP FUNCTION reject_prompt_template_update()")
    op.drop_table("prompt_templates")
    op.drop_table("chat_session_messages")
    op.drop_index("ix_chat_sessions_organization_created", table_name="chat_sessions")
    op.drop_table("chat_sessions")
    op.drop_index("ix_usage_events_session", table_name="usage_events")
    op.drop_column("usage_events", "template_version")
    op.drop_column("usage_events", "template_name")
    op.drop_column("usage_events", "session_id")
