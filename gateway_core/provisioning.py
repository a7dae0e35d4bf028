"""One-call provisioning: organizations with trial credit, keys with their limits."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from sqlalchemy import Connection, insert, select

from gateway_core import budgets, keys, ledger
from gateway_core.directory import ensure_organization
from gateway_core.errors import InvalidRequestError
from gateway_core.schema import organizations, rate_limits

DEFAULT_TRIAL_USD = Decimal(10)
DEFAULT_TRIAL_DAYS = 14


def parse_trial_usd(text: str) -> Decimal:
    """Parse the trial credit field: a dollar amount of zero or more, blank meaning zero."""
    try:
        amount = Decimal(text.strip() or "0")
    except InvalidOperation:
        raise InvalidRequestError(
            f"trial credit {text!r} is not a dollar amount. Write it like 10.00, or 0 for none.",
            param="trial_usd",
        ) from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequestError(
            f"trial credit must be zero or more dollars, got {text!r}", param="trial_usd"
        )
    return amount


def create_organization(
    conn: Connection,
    name: str,
    *,
    timezone: str = "UTC",
    trial_usd: Decimal = DEFAULT_TRIAL_USD,
    trial_days: int = DEFAULT_TRIAL_DAYS,
    actor: str | None = None,
) -> int:
    """Create an organization; grant trial credit when `trial_usd` is positive.

    A trial grant makes the organization credit-metered: its calls are then
    limited by its ledger balance.
    """
    name = name.strip()
    if not name:
        raise InvalidRequestError("organization name must not be empty", param="name")
    budgets.zone(timezone)
    exists = conn.execute(
        select(organizations.c.id).where(organizations.c.name == name)
    ).scalar_one_or_none()
    if exists is not None:
        raise InvalidRequestError(f"organization {name!r} already exists", param="name")
    organization_id = ensure_organization(conn, name)
    conn.execute(
        organizations.update()
        .where(organizations.c.id == organization_id)
        .values(timezone=timezone)
    )
    if trial_usd > 0:
        ledger.grant_trial(conn, organization_id, amount=trial_usd, days=trial_days, actor=actor)
    return organization_id


def issue_key(
    conn: Connection,
    secret: bytes,
    *,
    team_id: int,
    name: str,
    project_id: int | None = None,
    mode: str = "live",
    requests_per_minute: int | None = None,
    requests_per_day: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent: int | None = None,
    credit_limit: Decimal | None = None,
    created_by: str | None = None,
) -> keys.IssuedKey:
    """Create a key with its rate limits and a lifetime spending limit in one transaction.

    `credit_limit` (USD) becomes a lifetime budget on the key.
    """
    issued = keys.create_key(
        conn,
        secret,
        team_id=team_id,
        name=name,
        mode=mode,
        created_by=created_by,
        project_id=project_id,
    )
    limits = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "requests_per_day": requests_per_day,
        "max_concurrent": max_concurrent,
    }
    for field, value in limits.items():
        if value is not None and value < 1:
            raise InvalidRequestError(f"{field} must be a positive integer", param=field)
    if any(value is not None for value in limits.values()):
        conn.execute(insert(rate_limits).values(scope_type="key", scope_id=issued.id, **limits))
    if credit_limit is not None:
        budgets.set_budget(
            conn,
            scope_type="key",
            scope_id=issued.id,
            period="lifetime",
            limit_usd=credit_limit,
            actor=created_by,
        )
    return issued
