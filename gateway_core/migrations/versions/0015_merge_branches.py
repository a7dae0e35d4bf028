"""merge the migration branches into one head

Revision ID: 0015
Revises: 0007, 0008, 0012, 0014
Create Date: 2026-12-04

Several features were written side by side as branches; this revision
joins them so `alembic upgrade head` has one target again.
"""

from collections.abc import Sequence

revision: str = "0015"
down_revision: str | Sequence[str] | None = ("0007", "0008", "0012", "0014")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
