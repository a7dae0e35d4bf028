"""API keys as the admin API reads them, and limits carried over on rotation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from gateway_core import budgets
from gateway_core.errors import NotFoundError
from gateway_core.schema import api_keys, organizations, rate_limits, teams

# Every api_keys column except key_hash, which never leaves the database.
KEY_COLUMNS = tuple(column for column in api_keys.c if column.name != "key_hash")
RATE_LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "requests_per_day",
    "max_concurrent",
)


def _key_dict(row: Any) -> dict[str, Any]:
    key = dict(row._mapping)
    if key["allowed_ips"] is not None:
        key["allowed_ips"] = [str(network) for network in key["allowed_ips"]]
    key["tags"] = list(key["tags"] or [])
    key["metadata"] = dict(key["metadata"] or {})
    return key


def get_key(conn: Connection, key_id: int) -> dict[str, Any]:
    """Return one key's columns (without its hash); raise NotFoundError if it does not exist."""
    row = conn.execute(select(*KEY_COLUMNS).where(api_keys.c.id == key_id)).first()
    if row is None:
        raise NotFoundError(f"no API key with id {key_id}")
    return _key_dict(row)


def list_keys(
    conn: Connection,
    *,
    team_id: int | None = None,
    project_id: int | None = None,
    include_revoked: bool = True,
) -> list[dict[str, Any]]:
    query = select(*KEY_COLUMNS).order_by(api_keys.c.id)
    if team_id is not None:
        query = query.where(api_keys.c.team_id == team_id)
    if project_id is not None:
        query = query.where(api_keys.c.project_id == project_id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_key_dict(row) for row in conn.execute(query)]


def key_rate_limits(conn: Connection, key_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(rate_limits).where(
            rate_limits.c.scope_type == "key", rate_limits.c.scope_id == key_id
        )
    ).first()
    return None if row is None else dict(row._mapping)


def key_timezone(conn: Connection, key_id: int) -> str:
    """Return the IANA zone of the key's organization, which its budget periods follow."""
    return conn.execute(
        select(organizations.c.timezone)
        .select_from(api_keys)
        .join(teams, teams.c.id == api_keys.c.team_id)
        .join(organizations, organizations.c.id == teams.c.organization_id)
        .where(api_keys.c.id == key_id)
    ).scalar_one()


def carry_over_limits(conn: Connection, old_id: int, new_id: int, actor: str | None) -> None:
    """Give a rotated key's replacement the old key's rate limits and budgets.

    A lifetime budget moves over as what is left of it: its limit minus the
    old key's settled spend. Daily, weekly and monthly budgets keep their
    limits, so the new key starts the current period at zero.
    """
    limits = key_rate_limits(conn, old_id)
    if limits is not None:
        values = {field: limits[field] for field in RATE_LIMIT_FIELDS}
        conn.execute(
            insert(rate_limits)
            .values(scope_type="key", scope_id=new_id, **values)
            .on_conflict_do_update(
                index_elements=[rate_limits.c.scope_type, rate_limits.c.scope_id], set_=values
            )
        )
    timezone = key_timezone(conn, old_id)
    for budget in budgets.list_budgets(conn, "key", old_id):
        limit = budget.limit_usd
        if budget.period == "lifetime":
            # NOTE: during the grace period the old key may still spend its
            # remainder, so both keys together can spend up to twice what was
            # left of a lifetime budget at rotation.
            spent = budgets.budget_status(conn, budget, timezone).spent
            limit = max(limit - spent, Decimal(0))
        budgets.set_budget(
            conn,
            scope_type="key",
            scope_id=new_id,
            period=budget.period,
            limit_usd=limit,
            alert_thresholds=budget.alert_thresholds,
            actor=actor,
        )
