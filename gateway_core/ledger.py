"""Credit ledger: append-only entries and the balances they add up to.

Every change to an account's credit is one row in `ledger_entries`. A
trigger (migration 0003) adds each new row's amount to `credit_balances` in
the same transaction and rejects UPDATE and DELETE, so a balance always
equals the sum of its account's entries and mistakes are corrected with a
new entry. An account is a (scope_type, scope_id) pair.

A reference (request id, payment id, operator reference) is unique per
account and kind, so a replayed write is a no-op instead of a double charge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert

from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import (
    SCOPE_TYPES,
    api_keys,
    credit_balances,
    ledger_entries,
    organizations,
    projects,
    teams,
)

KINDS = ("grant", "purchase", "usage", "refund", "trial", "adjustment", "expiry")
# Kinds whose sign is fixed. Purchase, refund and adjustment entries may
# have either sign, because a purchase reversal or a correction removes credit.
CREDIT_KINDS = ("grant", "trial")
DEBIT_KINDS = ("usage", "expiry")
# Only these kinds may expire, and expire_credits removes what is left.
EXPIRING_KINDS = ("grant", "trial")
TRIAL_REFERENCE = "trial"
MAX_REFERENCE_LENGTH = 200
# NUMERIC(20, 10) in the schema: ten integer and ten fractional digits.
AMOUNT_PLACES = 10
MAX_ABS_AMOUNT = Decimal(10) ** 10


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    scope_type: str
    scope_id: int
    amount: Decimal
    kind: str
    reference: str
    reason: str | None
    actor: str | None
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class BalanceMismatch:
    """An account whose cached balance differs from the sum of its entries."""

    scope_type: str
    scope_id: int
    # None when the account has entries but no credit_balances row.
    cached: Decimal | None
    entries_sum: Decimal


def parse_amount(value: str) -> Decimal:
    """Parse a dollar amount typed by a person, such as "12.50"."""
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise InvalidRequestError(
            f"amount {value!r} is not a decimal number; write it like 12.50", param="amount"
        ) from None
    return validate_amount(amount)


def validate_amount(amount: object) -> Decimal:
    """Return `amount` if it is a finite, non-zero Decimal that fits NUMERIC(20, 10)."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise InvalidRequestError(
            f"amount must be a Decimal or an int, not {type(amount).__name__}; "
            "floats are rejected because they cannot hold cents exactly",
            param="amount",
        )
    amount = Decimal(amount)
    if not amount.is_finite():
        raise InvalidRequestError(f"amount must be finite, got {amount}", param="amount")
    if amount == 0:
        raise InvalidRequestError("amount must not be zero", param="amount")
    if abs(amount) >= MAX_ABS_AMOUNT:
        raise InvalidRequestError(
            f"amount {amount} is too large; it must be below {MAX_ABS_AMOUNT:f} dollars",
            param="amount",
        )
    # The magnitude check above keeps this within the 28 digits of the
    # default decimal context, so quantize cannot raise.
    if amount != amount.quantize(Decimal(1).scaleb(-AMOUNT_PLACES)):
        raise InvalidRequestError(
            f"amount {amount} has more than {AMOUNT_PLACES} decimal places", param="amount"
        )
    return amount


def _validate_scope(scope_type: str, scope_id: int) -> None:
    if scope_type not in SCOPE_TYPES:
        raise InvalidRequestError(
            f"unknown scope type {scope_type!r}; expected one of {', '.join(SCOPE_TYPES)}",
            param="scope_type",
        )
    if isinstance(scope_id, bool) or not isinstance(scope_id, int) or scope_id <= 0:
        raise InvalidRequestError(
            f"scope id must be a positive integer, got {scope_id!r}", param="scope_id"
        )


def _validate_entry(
    kind: str, amount: Decimal, reference: str, expires_at: datetime | None
) -> None:
    if kind not in KINDS:
        raise InvalidRequestError(
            f"unknown ledger entry kind {kind!r}; expected one of {', '.join(KINDS)}",
            param="kind",
        )
    if kind in CREDIT_KINDS and amount < 0:
        raise InvalidRequestError(f"a {kind} entry must add credit, got {amount}", param="amount")
    if kind in DEBIT_KINDS and amount > 0:
        raise InvalidRequestError(
            f"a {kind} entry must remove credit, got {amount}", param="amount"
        )
    if not reference or not reference.strip():
        raise InvalidRequestError("reference must not be empty", param="reference")
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise InvalidRequestError(
            f"reference is longer than {MAX_REFERENCE_LENGTH} characters", param="reference"
        )
    if expires_at is not None:
        if kind not in EXPIRING_KINDS:
            raise InvalidRequestError(
                f"only {' and '.join(EXPIRING_KINDS)} entries can expire, not {kind}",
                param="expires_at",
            )
        if expires_at.tzinfo is None:
            raise InvalidRequestError(
                "expires_at must be timezone-aware, e.g. datetime.now(UTC)", param="expires_at"
            )


def add_entry(
    conn: Connection,
    *,
    scope_type: str,
    scope_id: int,
    amount: Decimal,
    kind: str,
    reference: str,
    reason: str | None = None,
    actor: str | None = None,
    expires_at: datetime | None = None,
) -> bool:
    """Append an entry; return False if the reference was already recorded.

    The duplicate check is the unique constraint on (account, kind,
    reference) with ON CONFLICT DO NOTHING, so two concurrent writers of
    the same reference write one row between them and neither raises.
    """
    _validate_scope(scope_type, scope_id)
    amount = validate_amount(amount)
    _validate_entry(kind, amount, reference, expires_at)
    return _insert_entry(
        conn,
        scope_type=scope_type,
        scope_id=scope_id,
        amount=amount,
        kind=kind,
        reference=reference,
        reason=reason,
        actor=actor,
        expires_at=expires_at,
    )


def _insert_entry(conn: Connection, **values: object) -> bool:
    statement = (
        insert(ledger_entries)
        .values(**values)
        .on_conflict_do_nothing(constraint="uq_ledger_reference")
        .returning(ledger_entries.c.id)
    )
    return conn.execute(statement).first() is not None


_SCOPE_TABLES = {
    "organization": organizations,
    "team": teams,
    "project": projects,
    "key": api_keys,
}


def account_exists(conn: Connection, scope_type: str, scope_id: int) -> bool:
    """Tell whether the organization, team, project or key of an account exists.

    add_entry does not check this, because ledger_entries has no foreign
    keys and usage writes should not pay for the lookup.
    """
    _validate_scope(scope_type, scope_id)
    table = _SCOPE_TABLES[scope_type]
    return conn.execute(select(table.c.id).where(table.c.id == scope_id)).first() is not None


def balance(conn: Connection, scope_type: str, scope_id: int) -> Decimal | None:
    """Return the account's balance, or None if it is not credit-metered."""
    _validate_scope(scope_type, scope_id)
    return conn.execute(
        select(credit_balances.c.balance).where(
            credit_balances.c.scope_type == scope_type,
            credit_balances.c.scope_id == scope_id,
        )
    ).scalar_one_or_none()


def history(
    conn: Connection, scope_type: str, scope_id: int, limit: int = 100
) -> list[LedgerEntry]:
    """Return the account's latest entries, newest first."""
    _validate_scope(scope_type, scope_id)
    if limit <= 0:
        raise InvalidRequestError(f"limit must be positive, got {limit}", param="limit")
    rows = conn.execute(
        select(*_ENTRY_COLUMNS)
        .where(ledger_entries.c.scope_type == scope_type, ledger_entries.c.scope_id == scope_id)
        .order_by(ledger_entries.c.id.desc())
        .limit(limit)
    )
    return [LedgerEntry(*row) for row in rows]


_ENTRY_COLUMNS = (
    ledger_entries.c.id,
    ledger_entries.c.scope_type,
    ledger_entries.c.scope_id,
    ledger_entries.c.amount,
    ledger_entries.c.kind,
    ledger_entries.c.reference,
    ledger_entries.c.reason,
    ledger_entries.c.actor,
    ledger_entries.c.expires_at,
    ledger_entries.c.created_at,
)

# One statement, so it reads one snapshot even while entries are added.
_MISMATCH_SQL = text("""
WITH sums AS (
    SELECT scope_type, scope_id, sum(amount) AS total
    FROM ledger_entries
    GROUP BY scope_type, scope_id
)
SELECT coalesce(b.scope_type, s.scope_type), coalesce(b.scope_id, s.scope_id),
       b.balance, coalesce(s.total, 0)
FROM credit_balances b
FULL OUTER JOIN sums s ON s.scope_type = b.scope_type AND s.scope_id = b.scope_id
WHERE b.balance IS DISTINCT FROM coalesce(s.total, 0)
ORDER BY 1, 2
""")


def verify_balances(conn: Connection) -> list[BalanceMismatch]:
    """Compare every cached balance with the sum of its account's entries."""
    return [BalanceMismatch(*row) for row in conn.execute(_MISMATCH_SQL)]


def grant_trial(
    conn: Connection,
    organization_id: int,
    amount: Decimal = Decimal("10"),
    days: int = 14,
    actor: str | None = None,
) -> bool:
    """Give an organization trial credit that expires after `days` days.

    Returns False, writing nothing, if the organization already had a trial.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise InvalidRequestError(f"days must be a positive integer, got {days!r}", param="days")
    if not account_exists(conn, "organization", organization_id):
        raise NotFoundError(f"organization {organization_id} not found")
    return add_entry(
        conn,
        scope_type="organization",
        scope_id=organization_id,
        amount=amount,
        kind="trial",
        reference=TRIAL_REFERENCE,
        reason=f"trial credit for {days} days",
        actor=actor,
        expires_at=datetime.now(UTC) + timedelta(days=days),
    )


# Expiring entries past their time that have no expiry entry yet, grouped
# by account so each account is locked once.
_DUE_SQL = text("""
SELECT l.scope_type, l.scope_id, l.id
FROM ledger_entries l
WHERE l.kind IN ('grant', 'trial')
  AND l.expires_at <= :now
  AND NOT EXISTS (
      SELECT 1 FROM ledger_entries e
      WHERE e.scope_type = l.scope_type AND e.scope_id = l.scope_id
        AND e.kind = 'expiry' AND e.reference = l.id::text
  )
ORDER BY l.scope_type, l.scope_id, l.expires_at, l.id
""")


def expire_credits(conn: Connection, now: datetime | None = None) -> int:
    """Write an expiry entry for each grant or trial whose time has passed.

    Each expiry entry removes what is left of its grant (never more than
    the account's balance) and has the grant's id as reference, so running
    this again, or in two processes at once, writes nothing new. Returns
    the number of expiry entries written. An entry of amount 0 records a
    grant that was used up before it expired.

    Each account's balance row stays locked until the caller commits, so
    usage for those accounts waits during that time.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise InvalidRequestError("now must be timezone-aware", param="now")
    due: dict[tuple[str, int], list[int]] = {}
    for scope_type, scope_id, entry_id in conn.execute(_DUE_SQL, {"now": now}):
        due.setdefault((scope_type, scope_id), []).append(entry_id)
    written = 0
    # Every run locks accounts in the same sorted order, so two runs cannot
    # deadlock each other.
    for (scope_type, scope_id), entry_ids in sorted(due.items()):
        written += _expire_account(conn, scope_type, scope_id, entry_ids)
    return written


def _expire_account(conn: Connection, scope_type: str, scope_id: int, entry_ids: list[int]) -> int:
    # The lock makes debits for this account wait until the caller commits,
    # so none lands between computing what is left and writing the expiry.
    current = conn.execute(
        select(credit_balances.c.balance)
        .where(credit_balances.c.scope_type == scope_type, credit_balances.c.scope_id == scope_id)
        .with_for_update()
    ).scalar_one()
    entries = conn.execute(
        select(
            ledger_entries.c.id,
            ledger_entries.c.amount,
            ledger_entries.c.kind,
            ledger_entries.c.reference,
            ledger_entries.c.expires_at,
        )
        .where(ledger_entries.c.scope_type == scope_type, ledger_entries.c.scope_id == scope_id)
        .order_by(ledger_entries.c.id)
        .execution_options(yield_per=5000)
    )
    remainders = _replay_remainders(entries)
    written = 0
    for entry_id in entry_ids:
        left = max(Decimal(0), min(remainders.get(entry_id, Decimal(0)), current))
        inserted = _insert_entry(
            conn,
            scope_type=scope_type,
            scope_id=scope_id,
            amount=-left,
            kind="expiry",
            reference=str(entry_id),
            reason=f"expiry of ledger entry {entry_id}",
            actor="expire_credits",
        )
        if inserted:
            current -= left
            written += 1
    return written


@dataclass
class _CreditLot:
    entry_id: int
    remaining: Decimal
    expires_at: datetime | None

    def sort_key(self) -> tuple[bool, datetime, int]:
        return (
            self.expires_at is None,
            self.expires_at or datetime.max.replace(tzinfo=UTC),
            self.entry_id,
        )


def _replay_remainders(
    entries: Iterable[tuple[int, Decimal, str, str, datetime | None]],
) -> dict[int, Decimal]:
    """Return what is left of each credit entry that is not used up.

    Entries must come in id order. A debit uses the credit that expires
    soonest first and credit that never expires last. An expiry entry
    removes what is left of the entry its reference names. A debit larger
    than the credit available is owed, and the next credit pays it first.
    """
    lots: list[_CreditLot] = []
    owed = Decimal(0)
    for entry_id, amount, kind, reference, expires_at in entries:
        if amount > 0:
            repaid = min(owed, amount)
            owed -= repaid
            lots.append(_CreditLot(entry_id, amount - repaid, expires_at))
            continue
        debit = -amount
        if kind == "expiry":
            for lot in lots:
                if str(lot.entry_id) == reference:
                    used = min(debit, lot.remaining)
                    lot.remaining -= used
                    debit -= used
        for lot in sorted(lots, key=_CreditLot.sort_key):
            used = min(debit, lot.remaining)
            lot.remaining -= used
            debit -= used
        owed += debit
        lots = [lot for lot in lots if lot.remaining > 0]
    return {lot.entry_id: lot.remaining for lot in lots}
