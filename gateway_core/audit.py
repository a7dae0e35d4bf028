"""Append-only audit log of admin actions, chained by SHA-256.

Each entry stores the hash of the entry before it and its own hash over
its content and that previous hash. Changing, removing or reordering any
entry breaks the chain from that point, which `verify_chain` reports.
Entries are appended under a transaction-level advisory lock, so
concurrent writers still form one chain; an entry commits or rolls back
with the action it describes, because it is written in the same
transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, text

from gateway_core.schema import audit_log

# Key for pg_advisory_xact_lock that serializes appends to the chain.
_CHAIN_LOCK = 0x6761_7465_7761_797A
GENESIS = "0" * 64


@dataclass(frozen=True)
class ChainBreak:
    entry_id: int
    reason: str


def _canonical(value: Any) -> Any:
    """Return a JSON-ready copy with stable types (Decimal and datetime as strings)."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS))


def entry_hash(fields: dict[str, Any], previous_hash: str) -> str:
    payload = orjson.dumps(
        {**fields, "previous_hash": previous_hash}, default=str, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(payload).hexdigest()


def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    client_address: str | None = None,
) -> int:
    """Append one audit entry in the caller's transaction and return its id."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    last = conn.execute(
        select(audit_log.c.entry_hash).order_by(audit_log.c.id.desc()).limit(1)
    ).scalar_one_or_none()
    previous_hash = last or GENESIS
    created_at = datetime.now(UTC)
    fields = {
        "created_at": created_at.isoformat(),
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": None if object_id is None else str(object_id),
        "before": _canonical(before),
        "after": _canonical(after),
        "client_address": client_address,
    }
    digest = entry_hash(fields, previous_hash)
    return conn.execute(
        insert(audit_log)
        .values(
            created_at=created_at,
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=fields["object_id"],
            before=fields["before"],
            after=fields["after"],
            client_address=client_address,
            previous_hash=previous_hash,
            entry_hash=digest,
        )
        .returning(audit_log.c.id)
    ).scalar_one()


def verify_chain(conn: Connection) -> list[ChainBreak]:
    """Recompute every entry's hash in order; return where the chain breaks."""
    breaks: list[ChainBreak] = []
    expected_previous = GENESIS
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings()
    for row in rows:
        if row["previous_hash"] != expected_previous:
            breaks.append(ChainBreak(row["id"], "previous hash does not match the entry before"))
        fields = {
            "created_at": row["created_at"].astimezone(UTC).isoformat(),
            "actor": row["actor"],
            "action": row["action"],
            "object_type": row["object_type"],
            "object_id": row["object_id"],
            "before": row["before"],
            "after": row["after"],
            "client_address": row["client_address"],
        }
        if entry_hash(fields, row["previous_hash"]) != row["entry_hash"]:
            breaks.append(ChainBreak(row["id"], "content does not match its hash"))
        expected_previous = row["entry_hash"]
    return breaks
