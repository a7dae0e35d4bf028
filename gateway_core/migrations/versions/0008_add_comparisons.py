"""add model comparison runs, cells and ratings

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-07 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=20, scale=10)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "comparison_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("models", postgresql.ARRAY(sa.String(length=200)), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("temperature", sa.Numeric(precision=4, scale=2), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column(
            "checks", postgresql.ARRAY(sa.String(length=16)), server_default="{}", nullable=False
        ),
        sa.Column("source_run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('interactive', 'batch')", name="ck_comparison_runs_kind"),
        sa.CheckConstraint(
            "status IN ('running', 'cancelled', 'completed')", name="ck_comparison_runs_status"
        ),
        sa.ForeignKeyConstraint(["source_run_id"], ["comparison_runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "comparison_prompts",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("expected", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["comparison_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "position"),
    )
    op.create_table(
        "comparison_cells",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("tokens_per_second", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("cost_usd", MONEY, nullable=True),
        sa.Column("exact_match", sa.Boolean(), nullable=True),
        sa.Column("contains_match", sa.Boolean(), nullable=True),
        sa.Column("regex_match", sa.Boolean(), nullable=True),
        sa.Column("json_valid", sa.Boolean(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["run_id"], ["comparison_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "position", "model", name="uq_comparison_cells_run_cell"),
    )
    op.create_table(
        "comparison_ratings",
        sa.Column("cell_id", sa.BigInteger(), nullable=False),
        sa.Column("rated_by", sa.String(length=100), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column(
            "rated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name="ck_comparison_ratings_rating"),
        sa.ForeignKeyConstraint(["cell_id"], ["comparison_cells.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("cell_id", "rated_by"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("comparison_ratings")
    op.drop_table("comparison_cells")
    op.drop_table("comparison_prompts")
    op.drop_table("comparison_runs")
