"""GET /v1/key: what the calling key may still spend and when limits reset.

Amounts are decimal strings in USD so clients never see a rounded float.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway_core.budgets import budget_limit_key, period_bounds
from proxy.context import KeyIdentity
from proxy.gateway import Gateway
from proxy.routes import handle_read
from proxy.spend import scopes_of

_KEY = (
    "SELECT k.name, k.mode, k.prefix, k.last4, k.created_at, t.name, p.name, o.timezone "
    "FROM api_keys k JOIN teams t ON t.id = k.team_id "
    "JOIN organizations o ON o.id = t.organization_id "
    "LEFT JOIN projects p ON p.id = k.project_id WHERE k.id = %s"
)
_BUDGETS = (
    "SELECT id, scope_type, scope_id, period, limit_usd FROM budgets "
    "WHERE (scope_type, scope_id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[])) "
    "ORDER BY id"
)
_SPENT = "SELECT spent FROM budget_spend WHERE budget_id = %s AND period_start = %s"
_LEASED = (
    "SELECT coalesce(sum(amount), 0) FROM spend_leases WHERE limit_key = %s AND expires_at > now()"
)
_CREDITS = (
    "SELECT scope_type, scope_id, balance FROM credit_balances "
    "WHERE (scope_type, scope_id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))"
)
_RATE_LIMITS = (
    "SELECT scope_type, scope_id, requests_per_minute, tokens_per_minute, requests_per_day, "
    "max_concurrent FROM rate_limits "
    "WHERE (scope_type, scope_id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))"
)


def usd(amount: Decimal) -> str:
    return format(amount.normalize() if amount else Decimal(0), "f")


async def key_info(request: Request) -> Response:
    async def build(gateway: Gateway, identity: KeyIdentity) -> dict[str, Any]:
        return {"data": await describe_key(gateway.pool, identity)}

    return await handle_read(request, "key", build)


async def describe_key(pool: Any, identity: KeyIdentity) -> dict[str, Any]:
    scopes = scopes_of(identity)
    scope_types = [scope_type for scope_type, _ in scopes]
    scope_ids = [scope_id for _, scope_id in scopes]
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        key = await (await conn.execute(_KEY, (identity.key_id,))).fetchone()
        budget_rows = await (await conn.execute(_BUDGETS, (scope_types, scope_ids))).fetchall()
        credit_rows = await (await conn.execute(_CREDITS, (scope_types, scope_ids))).fetchall()
        limit_rows = await (await conn.execute(_RATE_LIMITS, (scope_types, scope_ids))).fetchall()
        timezone = key[7]
        budgets = []
        for budget_id, scope_type, scope_id, period, limit in budget_rows:
            start, end = period_bounds(period, now, timezone)
            spent = await (await conn.execute(_SPENT, (budget_id, start))).fetchone()
            leased = await (
                await conn.execute(_LEASED, (budget_limit_key(budget_id, start),))
            ).fetchone()
            spent_usd = spent[0] if spent else Decimal(0)
            remaining = max(limit - spent_usd - leased[0], Decimal(0))
            budgets.append(
                {
                    "scope": scope_type,
                    "scope_id": scope_id,
                    "period": period,
                    "limit_usd": usd(limit),
                    "spent_usd": usd(spent_usd),
                    "reserved_usd": usd(leased[0]),
                    "remaining_usd": usd(remaining),
                    "period_start": start.isoformat(),
                    "resets_at": None if period == "lifetime" else end.isoformat(),
                }
            )
    return {
        "id": identity.key_id,
        "name": key[0],
        "mode": key[1],
        "label": f"{key[2]}...{key[3]}",
        "created_at": key[4].isoformat(),
        "team": key[5],
        "project": key[6],
        "is_test": identity.is_test,
        "budgets": budgets,
        "credits": [
            {"scope": scope_type, "scope_id": scope_id, "balance_usd": usd(balance)}
            for scope_type, scope_id, balance in credit_rows
        ],
        "rate_limits": [
            {
                "scope": row[0],
                "scope_id": row[1],
                "requests_per_minute": row[2],
                "tokens_per_minute": row[3],
                "requests_per_day": row[4],
                "max_concurrent": row[5],
            }
            for row in limit_rows
        ],
    }
