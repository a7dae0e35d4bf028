"""apply ledger entries to balances once per statement

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-04

The recorder inserts a batch's usage charges in one statement. A row-level
trigger upserted the account's cached balance once per entry; a
statement-level trigger over the inserted rows upserts it once per account
and statement, in the same transaction, so the cached balance still equals
the sum of the account's entries.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE FUNCTION ledger_apply_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credit_balances (scope_type, scope_id, balance, updated_at)
    SELECT scope_type, scope_id, sum(amount), now()
    FROM new_ledger_entries
    GROUP BY scope_type, scope_id
    -- One order for every writer, so concurrent statements cannot deadlock.
    ORDER BY scope_type, scope_id
    ON CONFLICT (scope_type, scope_id) DO UPDATE
    SET balance = credit_balances.balance + EXCLUDED.balance, updated_at = now();
    RETURN NULL;
END $$;

DROP TRIGGER ledger_entries_balance ON ledger_entries;
CREATE TRIGGER ledger_entries_balance AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_entries();
"""

DOWNGRADE = """
DROP TRIGGER ledger_entries_balance ON ledger_entries;
CREATE TRIGGER ledger_entries_balance AFTER INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_entry();
DROP FUNCTION ledger_apply_entries();
"""


def upgrade() -> None:
    # CREATE TRIGGER and DROP TRIGGER lock ledger_entries, so no insert
    # runs between the two triggers.
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
