"""Spending budgets and the periods they reset in.

A budget caps settled spend of one scope (organization, team, project or
key) per period: lifetime, or a calendar day, week (starting Monday) or
month in the organization's time zone. Each period's spend is its own row
in `budget_spend`, so a new period starts at zero without any job resetting
anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.postgresql import insert

from gateway_core.errors import InvalidRequestError
from gateway_core.schema import SCOPE_TYPES, budget_spend, budgets, spend_leases

PERIODS = ("lifetime", "daily", "weekly", "monthly")
DEFAULT_THRESHOLDS = (Decimal("0.5"), Decimal("0.8"), Decimal("1"))
LIFETIME_START = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Budget:
    id: int
    scope_type: str
    scope_id: int
    period: str
    limit_usd: Decimal
    alert_thresholds: tuple[Decimal, ...]

    def label(self) -> str:
        return f"{self.period} budget of {self.scope_type} {self.scope_id} (${self.limit_usd:f})"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidRequestError(f"unknown time zone {name!r}; use an IANA name") from exc


def period_bounds(period: str, at: datetime, timezone: str = "UTC") -> tuple[datetime, datetime]:
    """Return the start and end (UTC) of the period that contains `at`."""
    if period == "lifetime":
        return LIFETIME_START, datetime.max.replace(tzinfo=UTC)
    local = at.astimezone(zone(timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start = midnight
        end = start + timedelta(days=1)
    elif period == "weekly":
        start = midnight - timedelta(days=local.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = midnight.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise InvalidRequestError(f"period must be one of {', '.join(PERIODS)}; got {period!r}")
    # Re-attaching the zone after date arithmetic picks the right UTC offset
    # on days when daylight saving time starts or ends.
    tz = zone(timezone)
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    end = end.replace(tzinfo=None).replace(tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def check_scope(scope_type: str) -> None:
    if scope_type not in SCOPE_TYPES:
        raise InvalidRequestError(
            f"scope must be one of {', '.join(SCOPE_TYPES)}; got {scope_type!r}", param="scope"
        )


def set_budget(
    conn: Connection,
    *,
    scope_type: str,
    scope_id: int,
    period: str,
    limit_usd: Decimal | str,
    alert_thresholds: tuple[Decimal, ...] = DEFAULT_THRESHOLDS,
    actor: str | None = None,
) -> int:
    """Create or change the budget of a scope for a period; return its id."""
    check_scope(scope_type)
    if period not in PERIODS:
        raise InvalidRequestError(f"period must be one of {', '.join(PERIODS)}; got {period!r}")
    if isinstance(limit_usd, float):
        raise InvalidRequestError("limit_usd must be a Decimal or a decimal string, not a float")
    limit = Decimal(str(limit_usd))
    if not limit.is_finite() or limit < 0:
        raise InvalidRequestError(f"limit_usd must be a non-negative amount; got {limit_usd!r}")
    thresholds = sorted({Decimal(str(t)) for t in alert_thresholds})
    if any(not (0 < t <= 1) for t in thresholds):
        raise InvalidRequestError("alert thresholds must be fractions between 0 and 1")
    values = {"limit_usd": limit, "alert_thresholds": thresholds, "created_by": actor}
    statement = insert(budgets).values(
        scope_type=scope_type, scope_id=scope_id, period=period, **values
    )
    return conn.execute(
        statement.on_conflict_do_update(
            constraint="uq_budgets_scope_period", set_=values
        ).returning(budgets.c.id)
    ).scalar_one()


def remove_budget(conn: Connection, budget_id: int) -> bool:
    return conn.execute(delete(budgets).where(budgets.c.id == budget_id)).rowcount > 0


def list_budgets(
    conn: Connection, scope_type: str | None = None, scope_id: int | None = None
) -> list[Budget]:
    query = select(
        budgets.c.id,
        budgets.c.scope_type,
        budgets.c.scope_id,
        budgets.c.period,
        budgets.c.limit_usd,
        budgets.c.alert_thresholds,
    ).order_by(budgets.c.id)
    if scope_type is not None:
        query = query.where(budgets.c.scope_type == scope_type)
    if scope_id is not None:
        query = query.where(budgets.c.scope_id == scope_id)
    return [
        Budget(row.id, row.scope_type, row.scope_id, row.period, row.limit_usd,
               tuple(row.alert_thresholds))
        for row in conn.execute(query)
    ]  # fmt: skip


def budget_limit_key(budget_id: int, period_start: datetime) -> str:
    """Return the key that leases and reservations of one budget period share."""
    return f"budget:{budget_id}:{int(period_start.timestamp())}"


def credit_limit_key(scope_type: str, scope_id: int) -> str:
    return f"credit:{scope_type}:{scope_id}"


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime
    period_end: datetime
    spent: Decimal
    # Money leased to proxy workers for requests in flight or about to be.
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(self.budget.limit_usd - self.spent - self.reserved, Decimal(0))


def budget_status(
    conn: Connection, budget: Budget, timezone: str = "UTC", now: datetime | None = None
) -> BudgetStatus:
    start, end = period_bounds(budget.period, now or datetime.now(UTC), timezone)
    spent = conn.execute(
        select(budget_spend.c.spent).where(
            budget_spend.c.budget_id == budget.id, budget_spend.c.period_start == start
        )
    ).scalar_one_or_none()
    reserved = conn.execute(
        select(func.coalesce(func.sum(spend_leases.c.amount), 0)).where(
            spend_leases.c.limit_key == budget_limit_key(budget.id, start),
            spend_leases.c.expires_at > func.now(),
        )
    ).scalar_one()
    return BudgetStatus(budget, start, end, spent or Decimal(0), Decimal(reserved))
