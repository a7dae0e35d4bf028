"""Export and deletion of one app user's personal data.

A user's data is their account row, the audit entries they made and the
emails queued for their address. The audit log is append-only and chained,
so deletion keeps those entries (the record of who changed what) and
removes the account, its organization memberships and its emails. The
export lists the audit entries so the user can see what remains.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, select

from gateway_core.errors import NotFoundError
from gateway_core.schema import audit_log, email_outbox, organization_members, users


def _user(conn: Connection, username: str) -> Any:
    row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
    if row is None:
        raise NotFoundError(f"no user named {username!r}")
    return row


def export_user(conn: Connection, username: str) -> dict[str, Any]:
    """Return everything stored about a user, without their password hash."""
    user = _user(conn, username)
    account = {key: value for key, value in user.items() if key != "password_hash"}
    actors = (username, f"app:{username}")
    entries = conn.execute(
        select(
            audit_log.c.id,
            audit_log.c.created_at,
            audit_log.c.action,
            audit_log.c.object_type,
            audit_log.c.object_id,
            audit_log.c.client_address,
        )
        .where(audit_log.c.actor.in_(actors))
        .order_by(audit_log.c.id)
    ).mappings()
    emails = conn.execute(
        select(
            email_outbox.c.id,
            email_outbox.c.created_at,
            email_outbox.c.template,
            email_outbox.c.subject,
            email_outbox.c.status,
        )
        .where(func.lower(email_outbox.c.recipient) == user["email"].lower())
        .order_by(email_outbox.c.id)
    ).mappings()
    return {
        "account": account,
        "audit_entries": [dict(entry) for entry in entries],
        "emails": [dict(email) for email in emails],
    }


def delete_user(conn: Connection, username: str) -> None:
    """Delete a user's account; their audit entries stay, as the log is append-only."""
    user = _user(conn, username)
    conn.execute(
        delete(email_outbox).where(func.lower(email_outbox.c.recipient) == user["email"].lower())
    )
    conn.execute(delete(organization_members).where(organization_members.c.user_id == user["id"]))
    conn.execute(delete(users).where(users.c.username == username))
