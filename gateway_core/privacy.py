"""Request and response bodies: opt-in storage, redaction and retention.

Bodies are stored only for calls whose key, project, team or organization
has `log_bodies` switched on (the most specific setting wins). Before a
body is stored, strings are redacted with built-in patterns (email
addresses, card numbers, API keys) and the organization's own patterns.
`purge_bodies` deletes bodies older than each organization's retention;
usage rows, which carry no bodies, are kept for reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core.errors import InvalidRequestError
from gateway_core.schema import (
    SCOPE_TYPES,
    privacy_settings,
    redaction_patterns,
    request_bodies,
)

DEFAULT_RETENTION_DAYS = 30
REDACTED = "[REDACTED]"
# Built-in patterns, applied to every stored body.
BUILT_IN_PATTERNS: tuple[tuple[str, str], ...] = (
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    # 13 to 19 digits, optionally grouped by spaces or dashes: card numbers.
    ("card", r"\b(?:\d[ -]?){12,18}\d\b"),
    ("api_key", r"\b(?:gw_(?:live|test|admin)_|sk-(?:ant-|proj-)?)[A-Za-z0-9_\-]{16,}"),
)


@dataclass(frozen=True)
class Redactor:
    patterns: tuple[re.Pattern[str], ...]
    replacement: str = REDACTED

    @classmethod
    def build(cls, extra: Iterable[str] = ()) -> Redactor:
        sources = [pattern for _, pattern in BUILT_IN_PATTERNS] + list(extra)
        return cls(tuple(re.compile(source) for source in sources))

    def redact(self, value: Any) -> Any:
        """Return a copy of a JSON value with every matching substring replaced."""
        if isinstance(value, str):
            for pattern in self.patterns:
                value = pattern.sub(self.replacement, value)
            return value
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        if isinstance(value, dict):
            return {key: self.redact(item) for key, item in value.items()}
        return value


def check_pattern(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidRequestError(f"invalid regular expression {pattern!r}: {exc}") from exc


def set_privacy(
    conn: Connection,
    *,
    scope_type: str,
    scope_id: int,
    log_bodies: bool,
    retention_days: int | None = None,
) -> None:
    if scope_type not in SCOPE_TYPES:
        raise InvalidRequestError(f"scope must be one of {', '.join(SCOPE_TYPES)}")
    if retention_days is not None and not 1 <= retention_days <= 3650:
        raise InvalidRequestError("retention_days must be between 1 and 3650")
    values = {"log_bodies": log_bodies, "retention_days": retention_days}
    statement = pg_insert(privacy_settings).values(
        scope_type=scope_type, scope_id=scope_id, **values
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[privacy_settings.c.scope_type, privacy_settings.c.scope_id],
            set_=values,
        )
    )


def add_redaction_pattern(conn: Connection, organization_id: int, name: str, pattern: str) -> int:
    check_pattern(pattern)
    return conn.execute(
        insert(redaction_patterns)
        .values(organization_id=organization_id, name=name, pattern=pattern)
        .returning(redaction_patterns.c.id)
    ).scalar_one()


def purge_bodies(conn: Connection, now: datetime | None = None) -> int:
    """Delete stored bodies older than their organization's retention; return the count."""
    now = now or datetime.now(UTC)
    retention = {
        scope_id: days
        for scope_id, days in conn.execute(
            select(privacy_settings.c.scope_id, privacy_settings.c.retention_days).where(
                privacy_settings.c.scope_type == "organization",
                privacy_settings.c.retention_days.is_not(None),
            )
        )
    }
    deleted = 0
    organizations = conn.execute(select(request_bodies.c.organization_id).distinct()).scalars()
    for organization_id in list(organizations):
        days = retention.get(organization_id, DEFAULT_RETENTION_DAYS)
        cutoff = now - timedelta(days=days)
        deleted += conn.execute(
            delete(request_bodies).where(
                request_bodies.c.organization_id.is_not_distinct_from(organization_id),
                request_bodies.c.created_at < cutoff,
            )
        ).rowcount
    return deleted


def stored_body(conn: Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(request_bodies.c.request, request_bodies.c.response).where(
            request_bodies.c.request_id == request_id
        )
    ).first()
    return None if row is None else {"request": row.request, "response": row.response}
