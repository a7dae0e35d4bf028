"""Audit log searches and CSV export, for the roles that may take the action "audit.read".

Audit entries carry no organization. An organization user sees the entries
whose actor is a member of one of their organizations, which includes the
`signup.create` entry of an organization they signed up. Entries written by
installation staff stay hidden from them, even about their organization.
Functions take an Actor, or the bare role of an installation-wide principal
(see access.as_actor).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import Connection, Select, select

from gateway_core import access, audit
from gateway_core.access import Actor
from gateway_core.csv_cells import cell
from gateway_core.errors import PermissionDeniedError
from gateway_core.schema import audit_log

CSV_COLUMNS = (
    "id",
    "created_at",
    "actor",
    "action",
    "object_type",
    "object_id",
    "before",
    "after",
    "client_address",
    "previous_hash",
    "entry_hash",
)


@dataclass(frozen=True)
class AuditFilters:
    """Conditions on audit entries. A None field matches every entry."""

    # Half-open range [start, end) of aware datetimes.
    start: datetime | None = None
    end: datetime | None = None
    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None


def _visible(conn: Connection, principal: Actor | str, query: Select) -> Select:
    """Check "audit.read" and keep only the entries the principal may read."""
    actor = access.as_actor(principal)
    access.require(actor.role, "audit.read")
    if actor.organization_ids is None:
        return query
    return query.where(
        access.written_by_member(actor.organization_ids, audit_log.c.actor, audit_log.c.created_at)
    )


def _filtered(filters: AuditFilters) -> Select:
    query = select(*(audit_log.c[name] for name in CSV_COLUMNS))
    if filters.start is not None:
        query = query.where(audit_log.c.created_at >= filters.start)
    if filters.end is not None:
        query = query.where(audit_log.c.created_at < filters.end)
    exact = {
        "actor": filters.actor,
        "action": filters.action,
        "object_type": filters.object_type,
        "object_id": filters.object_id,
    }
    for column, value in exact.items():
        if value is not None:
            query = query.where(audit_log.c[column] == value)
    return query


def search(
    conn: Connection, role: Actor | str, filters: AuditFilters, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Return matching entries, newest first, at most `limit` of them."""
    query = _visible(conn, role, _filtered(filters)).order_by(audit_log.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [dict(zip(CSV_COLUMNS, row, strict=True)) for row in conn.execute(query)]


def distinct_values(conn: Connection, role: Actor | str, column: str) -> list[str]:
    """Return the values of one text column (actor, action, object_type), sorted."""
    if column not in ("actor", "action", "object_type"):
        raise ValueError(f"invalid audit column {column!r}")
    query = _visible(conn, role, select(audit_log.c[column]).distinct())
    rows = conn.execute(query.order_by(audit_log.c[column]))
    return list(rows.scalars())


def write_csv(conn: Connection, role: Actor | str, filters: AuditFilters, out: TextIO) -> int:
    """Write every matching entry as CSV in chain order (oldest first) and return the count.

    JSON columns are written as their JSON text. Text cells that a spreadsheet
    would run as a formula get a leading apostrophe.
    """
    query = _visible(conn, role, _filtered(filters)).order_by(audit_log.c.id)
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    rows = conn.execute(query)
    for row in rows:
        writer.writerow([_csv_value(name, row._mapping[name]) for name in CSV_COLUMNS])
        count += 1
    return count


def _csv_value(name: str, value: Any) -> Any:
    if name in ("before", "after") and value is not None:
        return cell(json.dumps(value, sort_keys=True))
    return cell(value)


def verify(conn: Connection, role: Actor | str) -> list[audit.ChainBreak]:
    """Check the whole hash chain. Organization users may not, as it covers every entry."""
    actor = access.as_actor(role)
    access.require(actor.role, "audit.read")
    if not actor.is_staff:
        raise PermissionDeniedError(
            f"user {actor.username!r} belongs to an organization, so may not verify the "
            "audit chain, which covers every organization. Ask an installation administrator.",
            code="installation_action",
        )
    return audit.verify_chain(conn)
