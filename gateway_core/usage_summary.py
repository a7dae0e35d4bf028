"""Usage totals from `usage_events`, grouped by model, team, project, key or UTC day.

Every filter is a bound parameter. Rows of calls rejected before a key was
known (no team, no key) group under None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Connection, Date, Select, cast, func, null, select
from sqlalchemy.sql.elements import ColumnElement

from gateway_core.errors import InvalidRequestError
from gateway_core.schema import api_keys, projects, teams, usage_events

GROUPS = ("model", "team", "project", "key", "day")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class UsageGroup:
    # Team, project or key id; None when grouping by model or day.
    group_id: int | None
    # Model id, UTC date (ISO 8601), team name, "team / project" or key label.
    group: str | None
    requests: int
    # Calls that returned HTTP status 400 or higher.
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _grouped(group_by: str) -> tuple[Select, list[ColumnElement]]:
    """Return the select of group id and label, and the columns to group by."""
    event = usage_events.c
    no_id = cast(null(), BigInteger).label("group_id")
    if group_by == "model":
        return select(no_id, event.model.label("group")), [event.model]
    if group_by == "day":
        day = cast(func.timezone("UTC", event.created_at), Date)
        return select(no_id, day.label("group")), [day]
    if group_by == "team":
        query = select(event.team_id.label("group_id"), teams.c.name.label("group"))
        query = query.select_from(usage_events).outerjoin(teams, teams.c.id == event.team_id)
        return query, [event.team_id, teams.c.name]
    if group_by == "project":
        label = teams.c.name + " / " + projects.c.name
        query = select(event.project_id.label("group_id"), label.label("group"))
        query = (
            query.select_from(usage_events)
            .outerjoin(projects, projects.c.id == event.project_id)
            .outerjoin(teams, teams.c.id == projects.c.team_id)
        )
        return query, [event.project_id, teams.c.name, projects.c.name]
    if group_by == "key":
        label = api_keys.c.name + " (" + api_keys.c.prefix + "…" + api_keys.c.last4 + ")"
        query = select(event.api_key_id.label("group_id"), label.label("group"))
        query = query.select_from(usage_events).outerjoin(
            api_keys, api_keys.c.id == event.api_key_id
        )
        return query, [event.api_key_id, api_keys.c.name, api_keys.c.prefix, api_keys.c.last4]
    raise InvalidRequestError(
        f"group_by must be one of {', '.join(GROUPS)}; got {group_by!r}", param="group_by"
    )


def summarize_usage(
    conn: Connection,
    group_by: str,
    *,
    key_id: int | None = None,
    team_id: int | None = None,
    project_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[UsageGroup]:
    """Sum requests, errors, tokens and cost per group, for calls from `start` up to `end`.

    Days are ordered oldest first; other groups by cost, then requests, descending.
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequestError(f"{name} must include a time zone", param=name)
    if start is not None and end is not None and start >= end:
        raise InvalidRequestError("start must be before end", param="start")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be from 1 to {MAX_LIMIT}", param="limit")
    event = usage_events.c
    query, group_columns = _grouped(group_by)
    cost = func.coalesce(func.sum(event.cost_usd), 0)
    requests = func.count()
    query = query.add_columns(
        requests.label("requests"),
        func.count().filter(event.status_code >= 400).label("errors"),
        func.coalesce(func.sum(event.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(event.completion_tokens), 0).label("completion_tokens"),
        cost.label("cost_usd"),
    ).group_by(*group_columns)
    filters = {
        event.api_key_id: key_id,
        event.team_id: team_id,
        event.project_id: project_id,
    }
    for column, value in filters.items():
        if value is not None:
            query = query.where(column == value)
    if start is not None:
        query = query.where(event.created_at >= start)
    if end is not None:
        query = query.where(event.created_at < end)
    if group_by == "day":
        query = query.order_by(group_columns[0])
    else:
        query = query.order_by(cost.desc(), requests.desc(), group_columns[0].asc().nulls_last())
    groups = []
    for row in conn.execute(query.limit(limit)):
        label = row.group.isoformat() if group_by == "day" else row.group
        groups.append(
            UsageGroup(
                group_id=row.group_id,
                group=label,
                requests=row.requests,
                errors=row.errors,
                prompt_tokens=int(row.prompt_tokens),
                completion_tokens=int(row.completion_tokens),
                cost_usd=Decimal(row.cost_usd),
            )
        )
    return groups
