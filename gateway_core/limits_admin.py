"""Budgets, rate limits, alert channels and projects as the admin app changes them.

Every write function here checks the caller's role before it writes, so a
page that hides its forms is not the only guard. `burn_down` builds the data
for a budget's burn-down chart from `usage_events`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import Connection, DateTime, Row, Select, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.sql.elements import ColumnElement

from gateway_core import access, alerts, budgets, directory
from gateway_core.access import Actor
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.schema import (
    SCOPE_TYPES,
    api_keys,
    organizations,
    projects,
    rate_limits,
    teams,
    usage_events,
)
from gateway_core.schema import budgets as budget_table

# NOTE: team_admin users may not manage budgets even for their own teams,
# because the users table does not record which teams a user administers.
BUDGET_MANAGER_ROLES = frozenset({"owner", "admin", "billing"})
RATE_LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "requests_per_day",
    "max_concurrent",
)
# The rate_limits columns are Postgres INTEGER.
MAX_RATE_LIMIT = 2**31 - 1
# budgets.limit_usd is NUMERIC(20, 10), so ten digits on each side of the point.
LIMIT_DECIMAL_PLACES = 10
LIMIT_CEILING = Decimal(10) ** (20 - LIMIT_DECIMAL_PLACES)
# budgets.alert_thresholds is NUMERIC(5, 4), so a percentage has at most 2 decimal places.
THRESHOLD_DECIMAL_PLACES = 4
LIFETIME_FORECAST_DAYS = 30
MONEY_QUANTUM = Decimal(1).scaleb(-LIMIT_DECIMAL_PLACES)
BURN_DOWN_COLUMNS = ("time", "spent", "reserved", "remaining", "forecast")

# The usage_events column that contains each scope type's id.
_USAGE_SCOPE_COLUMNS = {
    "organization": usage_events.c.organization_id,
    "team": usage_events.c.team_id,
    "project": usage_events.c.project_id,
    "key": usage_events.c.api_key_id,
}


@dataclass(frozen=True)
class Scope:
    """An organization, team, project or API key that budgets and rate limits apply to."""

    scope_type: str
    scope_id: int
    # Team and project names include their parents: "Research / protein-folding".
    name: str
    organization_id: int
    organization_name: str
    # IANA zone of the organization, which budget periods follow.
    timezone: str


@dataclass(frozen=True)
class RateLimits:
    """One row of rate_limits. None means no limit."""

    scope_type: str
    scope_id: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_per_day: int | None
    max_concurrent: int | None
    updated_at: datetime


def can_manage_budgets(role: str) -> bool:
    """Return whether the role may change budgets, rate limits, alert channels and projects."""
    return role in BUDGET_MANAGER_ROLES


def require_budget_manager(role: str) -> None:
    if not can_manage_budgets(role):
        raise PermissionDeniedError(
            "only owners, admins and billing users can change budgets and limits, "
            f"not role {role!r}"
        )


def require_scope_manager(
    conn: Connection, principal: Actor | str, scope_type: str, scope_id: int
) -> None:
    """Raise PermissionDeniedError unless the principal may change this scope's budgets and limits.

    A bare role string is an installation-wide principal (see access.as_actor).
    """
    actor = access.as_actor(principal)
    require_budget_manager(actor.role)
    budgets.check_scope(scope_type)
    access.require_scope(conn, actor, scope_type, scope_id, "budgets.manage")


# Scopes


def _key_label(name: str, prefix: str, last4: str, revoked_at: datetime | None) -> str:
    label = f"{name} ({prefix}…{last4})"
    return f"{label}, revoked" if revoked_at is not None else label


def _scope_query(scope_type: str) -> Select:
    """Select id, name, organization id, organization name and time zone of one scope type.

    Key rows carry four more columns for the label: key name, prefix, last4 and revoked_at.
    """
    org = organizations.c
    if scope_type == "organization":
        return select(org.id, org.name, org.id, org.name, org.timezone)
    if scope_type == "team":
        return select(teams.c.id, teams.c.name, org.id, org.name, org.timezone).join(
            organizations, org.id == teams.c.organization_id
        )
    if scope_type == "project":
        return (
            select(
                projects.c.id,
                teams.c.name + " / " + projects.c.name,
                org.id,
                org.name,
                org.timezone,
            )
            .select_from(projects.join(teams, teams.c.id == projects.c.team_id))
            .join(organizations, org.id == teams.c.organization_id)
        )
    budgets.check_scope(scope_type)
    return (
        select(
            api_keys.c.id,
            teams.c.name,
            org.id,
            org.name,
            org.timezone,
            api_keys.c.name,
            api_keys.c.prefix,
            api_keys.c.last4,
            api_keys.c.revoked_at,
        )
        .select_from(api_keys.join(teams, teams.c.id == api_keys.c.team_id))
        .join(organizations, org.id == teams.c.organization_id)
    )


def _scopes_from(scope_type: str, rows: Iterable[Row]) -> list[Scope]:
    scopes = []
    for row in rows:
        name = row[1]
        if scope_type == "key":
            name = f"{row[1]} / {_key_label(*row[5:9])}"
        scopes.append(Scope(scope_type, row[0], name, row[2], row[3], row[4]))
    return scopes


def list_scopes(conn: Connection, actor: Actor | None = None) -> list[Scope]:
    """List every scope by type, then by name, or only those of the actor's organizations.

    With more than one organization listed, the names of teams, projects and
    keys start with their organization's name.
    """
    scopes = []
    for scope_type in SCOPE_TYPES:
        scopes += _scopes_from(scope_type, conn.execute(_scope_query(scope_type)))
    if actor is not None:
        scopes = [scope for scope in scopes if actor.may_see(scope.organization_id)]
    if len({scope.organization_id for scope in scopes}) > 1:
        scopes = [
            scope
            if scope.scope_type == "organization"
            else replace(scope, name=f"{scope.organization_name} / {scope.name}")
            for scope in scopes
        ]
    order = {scope_type: index for index, scope_type in enumerate(SCOPE_TYPES)}
    scopes.sort(key=lambda scope: (order[scope.scope_type], scope.name.casefold(), scope.scope_id))
    return scopes


def find_scope(conn: Connection, scope_type: str, scope_id: int) -> Scope:
    """Return one scope, or raise NotFoundError when it does not exist."""
    query = _scope_query(scope_type)
    rows = conn.execute(query.where(query.selected_columns[0] == scope_id))
    found = _scopes_from(scope_type, rows)
    if not found:
        raise NotFoundError(f"{scope_type} {scope_id} not found")
    return found[0]


# Budgets


def parse_limit_usd(text: str) -> Decimal:
    """Parse a budget limit typed in US dollars, such as "250" or "99.95"."""
    cleaned = text.strip().removeprefix("$").strip()
    if not cleaned:
        raise InvalidRequestError("enter a limit in USD, such as 250 or 99.95", param="limit_usd")
    try:
        limit = Decimal(cleaned)
    except InvalidOperation:
        raise InvalidRequestError(
            f"limit must be a decimal number of US dollars such as 99.95, got {text.strip()!r}",
            param="limit_usd",
        ) from None
    return check_limit_usd(limit)


def check_limit_usd(limit: Decimal) -> Decimal:
    """Reject a limit that is negative or that NUMERIC(20, 10) would round or could not store."""
    if not limit.is_finite() or limit < 0:
        raise InvalidRequestError(
            f"limit must be a non-negative amount of US dollars, got {limit}", param="limit_usd"
        )
    if limit.normalize().as_tuple().exponent < -LIMIT_DECIMAL_PLACES:
        raise InvalidRequestError(
            f"limit has more than {LIMIT_DECIMAL_PLACES} decimal places, got {limit}",
            param="limit_usd",
        )
    if limit >= LIMIT_CEILING:
        raise InvalidRequestError(
            f"limit must be less than {LIMIT_CEILING:f} USD, got {limit}", param="limit_usd"
        )
    return limit


def parse_alert_thresholds(text: str) -> tuple[Decimal, ...]:
    """Parse comma-separated percentages of the limit ("50, 80, 100") into ascending fractions.

    Blank text means no alerts.
    """
    percentages = []
    for part in text.replace("%", "").split(","):
        if not part.strip():
            continue
        try:
            percentages.append(Decimal(part.strip()))
        except InvalidOperation:
            raise InvalidRequestError(
                f"invalid alert threshold {part.strip()!r}: enter percentages separated by commas, "
                "such as 50, 80, 100",
                param="alert_thresholds",
            ) from None
    fractions = set()
    for percent in percentages:
        if not percent.is_finite() or not 0 < percent <= 100:
            raise InvalidRequestError(
                f"each alert threshold must be above 0 and at most 100 percent, got {percent}",
                param="alert_thresholds",
            )
        fraction = (percent / 100).normalize()
        if fraction.as_tuple().exponent < -THRESHOLD_DECIMAL_PLACES:
            raise InvalidRequestError(
                f"alert thresholds have at most 2 decimal places of a percent, got {percent}",
                param="alert_thresholds",
            )
        fractions.add(fraction)
    return tuple(sorted(fractions))


def format_thresholds(thresholds: Iterable[Decimal]) -> str:
    """Write fractions of a limit as percentages: (0.5, 0.8, 1) becomes "50, 80, 100"."""
    return ", ".join(f"{(fraction * 100).normalize():f}" for fraction in thresholds)


def save_budget(
    conn: Connection,
    role: Actor | str,
    *,
    scope_type: str,
    scope_id: int,
    period: str,
    limit_usd: Decimal | str,
    alert_thresholds: tuple[Decimal, ...] = budgets.DEFAULT_THRESHOLDS,
    actor: str | None = None,
) -> int:
    """Check the role, the limit and that the scope exists, then create or change the budget.

    `role` is an Actor, whose organizations must include the scope's, or
    the bare role of an installation-wide principal. `limit_usd` may be text
    typed by a person, parsed by `parse_limit_usd`. Returns the budget's id.
    """
    budgets.check_scope(scope_type)
    require_scope_manager(conn, role, scope_type, scope_id)
    if isinstance(limit_usd, str):
        limit = parse_limit_usd(limit_usd)
    elif isinstance(limit_usd, Decimal):
        limit = check_limit_usd(limit_usd)
    else:
        raise InvalidRequestError(
            f"limit_usd must be a Decimal or text, not {type(limit_usd).__name__}",
            param="limit_usd",
        )
    budgets.check_scope(scope_type)
    find_scope(conn, scope_type, scope_id)
    return budgets.set_budget(
        conn,
        scope_type=scope_type,
        scope_id=scope_id,
        period=period,
        limit_usd=limit,
        alert_thresholds=alert_thresholds,
        actor=actor,
    )


def delete_budget(conn: Connection, role: Actor | str, budget_id: int) -> bool:
    """Check the role and the budget's organization, then remove the budget.

    Returns False when it was already gone, and also for an organization
    user naming a budget of another organization, so the result does not
    reveal that it exists.
    """
    actor = access.as_actor(role)
    require_budget_manager(actor.role)
    access.require_actor(actor, "budgets.manage")
    scope = conn.execute(
        select(budget_table.c.scope_type, budget_table.c.scope_id).where(
            budget_table.c.id == budget_id
        )
    ).first()
    if scope is None:
        return False
    organization_id = access.organization_of_scope(conn, scope.scope_type, scope.scope_id)
    if not actor.may_see(organization_id):
        return False
    require_scope_manager(conn, actor, scope.scope_type, scope.scope_id)
    return budgets.remove_budget(conn, budget_id)


# Rate limits


def check_rate_limit(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RATE_LIMIT:
        raise InvalidRequestError(
            f"{field} must be a whole number from 1 to {MAX_RATE_LIMIT}, or empty for no limit; "
            f"got {value!r}",
            param=field,
        )
    return value


def parse_rate_limit(text: str, field: str) -> int | None:
    """Parse a rate limit typed as a whole number. Blank text means no limit."""
    cleaned = text.strip().replace(",", "").replace("_", "")
    if not cleaned:
        return None
    if not cleaned.isdecimal():
        raise InvalidRequestError(
            f"{field} must be a whole number from 1 to {MAX_RATE_LIMIT}, or empty for no limit; "
            f"got {text.strip()!r}",
            param=field,
        )
    return check_rate_limit(int(cleaned), field)


def set_rate_limits(
    conn: Connection,
    role: Actor | str,
    *,
    scope_type: str,
    scope_id: int,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    requests_per_day: int | None = None,
    max_concurrent: int | None = None,
) -> RateLimits | None:
    """Check the role and the values, then store the scope's rate limits.

    None means no limit. With every value None the scope's row is deleted
    and None is returned. Otherwise returns the stored row. The proxy picks
    up a change when it next reloads the table.
    """
    budgets.check_scope(scope_type)
    require_scope_manager(conn, role, scope_type, scope_id)
    values = {
        "requests_per_minute": check_rate_limit(requests_per_minute, "requests_per_minute"),
        "tokens_per_minute": check_rate_limit(tokens_per_minute, "tokens_per_minute"),
        "requests_per_day": check_rate_limit(requests_per_day, "requests_per_day"),
        "max_concurrent": check_rate_limit(max_concurrent, "max_concurrent"),
    }
    scope_filter = (rate_limits.c.scope_type == scope_type, rate_limits.c.scope_id == scope_id)
    if all(value is None for value in values.values()):
        conn.execute(delete(rate_limits).where(*scope_filter))
        return None
    find_scope(conn, scope_type, scope_id)
    statement = insert(rate_limits).values(scope_type=scope_type, scope_id=scope_id, **values)
    row = conn.execute(
        statement.on_conflict_do_update(
            index_elements=[rate_limits.c.scope_type, rate_limits.c.scope_id],
            set_={**values, "updated_at": func.now()},
        ).returning(*rate_limits.c)
    ).one()
    return RateLimits(**row._mapping)


def list_rate_limits(conn: Connection, actor: Actor | None = None) -> list[RateLimits]:
    """Return every scope's rate limits, or only those in the actor's organizations."""
    rows = conn.execute(
        select(rate_limits).order_by(rate_limits.c.scope_type, rate_limits.c.scope_id)
    )
    limits = [RateLimits(**row._mapping) for row in rows]
    if actor is None or actor.is_staff:
        return limits
    visible = {(scope.scope_type, scope.scope_id) for scope in list_scopes(conn, actor)}
    return [row for row in limits if (row.scope_type, row.scope_id) in visible]


def list_budgets(conn: Connection, actor: Actor) -> list[budgets.Budget]:
    """Return the budgets of every scope the actor may see."""
    all_budgets = budgets.list_budgets(conn)
    if actor.is_staff:
        return all_budgets
    visible = {(scope.scope_type, scope.scope_id) for scope in list_scopes(conn, actor)}
    return [budget for budget in all_budgets if (budget.scope_type, budget.scope_id) in visible]


def list_alert_channels(
    conn: Connection, actor: Actor, organization_id: int
) -> list[alerts.AlertChannel]:
    """Return an organization's alert channels, if the actor may see the organization."""
    access.require_organization(actor, organization_id, "usage.read")
    return alerts.list_channels(conn, organization_id)


# Alert channels and projects


def add_alert_channel(
    conn: Connection,
    role: Actor | str,
    settings_secret: bytes,
    *,
    organization_id: int,
    kind: str,
    target: str,
    secret: str | None = None,
) -> int:
    """Check the role and organization, and store an email or webhook alert channel.

    Returns the channel's id.
    """
    require_scope_manager(conn, role, "organization", organization_id)
    return alerts.add_channel(conn, settings_secret, organization_id, kind, target, secret)


def add_project(
    conn: Connection,
    role: Actor | str,
    *,
    team_id: int,
    name: str,
    principal_investigator: str = "",
    cost_centre: str = "",
) -> directory.Project:
    """Check the role and the team's organization, and create a project under the team.

    Blank optional fields store NULL.
    """
    require_budget_manager(access.as_actor(role).role)
    require_scope_manager(conn, role, "team", team_id)
    team = conn.execute(select(teams.c.id).where(teams.c.id == team_id)).first()
    if team is None:
        raise NotFoundError(f"team {team_id} not found")
    return directory.create_project(
        conn,
        team_id,
        name,
        principal_investigator=principal_investigator.strip() or None,
        cost_centre=cost_centre.strip() or None,
    )


# Burn-down


def _local_midnights(after: datetime, before: datetime, timezone: str) -> list[datetime]:
    """Return each local midnight strictly between two instants, in UTC."""
    tz = ZoneInfo(timezone)
    day: date = after.astimezone(tz).date() + timedelta(days=1)
    midnights = []
    while True:
        midnight = datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC)
        if midnight >= before:
            return midnights
        if midnight > after:
            midnights.append(midnight)
        day += timedelta(days=1)


def _seconds(delta: timedelta) -> Decimal:
    """Convert a timedelta to exact Decimal seconds, without passing through a float."""
    whole = delta.days * 86_400 + delta.seconds
    return Decimal(whole) + Decimal(delta.microseconds).scaleb(-6)


def _usage_of(budget: budgets.Budget) -> ColumnElement[bool]:
    return _USAGE_SCOPE_COLUMNS[budget.scope_type] == budget.scope_id


def _chart_range(
    conn: Connection, budget: budgets.Budget, timezone: str, now: datetime
) -> tuple[datetime, datetime]:
    """Return the start and end of the burn-down chart.

    A lifetime budget's chart starts at local midnight of the day of the
    scope's first usage event (today when it has none) and ends
    LIFETIME_FORECAST_DAYS after now.
    """
    if budget.period != "lifetime":
        return budgets.period_bounds(budget.period, now, timezone)
    first = conn.execute(
        select(func.min(usage_events.c.created_at)).where(
            _usage_of(budget), usage_events.c.created_at < now
        )
    ).scalar_one()
    first_day = (first or now).astimezone(ZoneInfo(timezone)).date()
    start = datetime.combine(first_day, time.min, tzinfo=ZoneInfo(timezone)).astimezone(UTC)
    return start, now + timedelta(days=LIFETIME_FORECAST_DAYS)


def _cumulative_spend(
    conn: Connection, budget: budgets.Budget, points: list[datetime]
) -> list[Decimal]:
    """Return the scope's usage cost from points[0] up to each point, excluding the point."""
    bucket = func.width_bucket(
        usage_events.c.created_at,
        bindparam("points", points, type_=ARRAY(DateTime(timezone=True))),
    )
    rows = conn.execute(
        select(bucket, func.sum(usage_events.c.cost_usd))
        .where(
            _usage_of(budget),
            usage_events.c.created_at >= points[0],
            usage_events.c.created_at < points[-1],
        )
        .group_by(bucket)
    ).all()
    # Bucket i contains the events in [points[i-1], points[i]).
    per_bucket = {index: total for index, total in rows}
    totals = [Decimal(0)]
    for index in range(1, len(points)):
        totals.append(totals[-1] + per_bucket.get(index, Decimal(0)))
    return totals


def burn_down(
    conn: Connection, budget: budgets.Budget, timezone: str, now: datetime
) -> pd.DataFrame:
    """Build a budget's burn-down: cumulative spend of its scope in the current period.

    Spend is the sum of `usage_events.cost_usd` of the budget's scope. This
    can differ from `budget_spend`, which counts only calls made while the
    budget existed.

    The frame has one row per point in time (UTC). In order, the points are
    the chart start, each local midnight of `timezone` up to `now`, `now`,
    each local midnight after it, and the chart end. The chart end is the
    period end, or 30 days after now for a lifetime budget. Columns other
    than `time` are Decimal USD or None:

    - spent: cumulative spend up to the point, for points up to now.
    - reserved: money leased to proxy workers, in the `now` row only.
    - remaining: limit minus spent (minus reserved at now), at least 0, up to now.
    - forecast: spend so far extended linearly to the point, from now on.
      The rate is spent / (now - chart start).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    start, end = _chart_range(conn, budget, timezone, now)
    # A period contains now, and a lifetime chart starts at or before it.
    past = [start, *_local_midnights(start, now, timezone), now] if now > start else [start]
    future = [*_local_midnights(now, end, timezone), end]

    spent = _cumulative_spend(conn, budget, past) if len(past) > 1 else [Decimal(0)]
    spent_now = spent[-1]
    reserved = budgets.budget_status(conn, budget, timezone, now).reserved
    elapsed = _seconds(now - start)
    rate = spent_now / elapsed if elapsed > 0 else Decimal(0)

    rows = []
    for point, total in zip(past, spent, strict=True):
        is_now = point == now
        reserved_at_point = reserved if is_now else Decimal(0)
        rows.append(
            {
                "time": point,
                "spent": total,
                "reserved": reserved if is_now else None,
                "remaining": max(budget.limit_usd - total - reserved_at_point, Decimal(0)),
                "forecast": spent_now if is_now else None,
            }
        )
    for point in future:
        seconds = _seconds(point - now)
        forecast = (spent_now + rate * seconds).quantize(MONEY_QUANTUM)
        rows.append(
            {
                "time": point,
                "spent": None,
                "reserved": None,
                "remaining": None,
                "forecast": forecast,
            }
        )
    frame = pd.DataFrame(rows, columns=list(BURN_DOWN_COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    for column in BURN_DOWN_COLUMNS[1:]:
        frame[column] = frame[column].astype(object)
    return frame
