"""store provider API keys encrypted

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-04

Branches from 0010 so it does not depend on migrations written alongside
it; `migrate()` upgrades every head.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("providers", sa.Column("api_key_encrypted", sa.Text()))


def downgrade() -> None:
    op.drop_column("providers", "api_key_encrypted")
