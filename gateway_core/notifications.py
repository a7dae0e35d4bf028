"""Queue the transactional email of each event, in the event's transaction.

Each function renders through `email_outbox.enqueue` with a `dedupe_key`
naming the event, so an event applied twice queues its email once.
Welcome and low-balance emails are queued by `signup` and `email_outbox`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, select

from gateway_core import email_outbox, emails
from gateway_core.schema import organization_members, organizations, teams, users


def key_created(
    conn: Connection,
    *,
    key_id: int,
    team_id: int,
    key_name: str,
    mode: str,
    key_prefix: str,
    key_last4: str,
    created_by: str | None,
) -> int:
    """Queue a key-created email to the organization and the key's creator.

    Returns the number of emails queued.
    """
    team = conn.execute(
        select(teams.c.name, organizations.c.id, organizations.c.name.label("organization"))
        .join(organizations, organizations.c.id == teams.c.organization_id)
        .where(teams.c.id == team_id)
    ).one()
    recipients = set(email_outbox.organization_recipients(conn, team.id))
    creator_email = _email_of(conn, created_by)
    if creator_email:
        recipients.add(creator_email.lower())
    return email_outbox.enqueue_many(
        conn,
        sorted(recipients),
        "key_created",
        dedupe_key=f"key_created:{key_id}",
        organization=team.organization,
        team=team.name,
        key_name=key_name,
        mode=mode,
        key_prefix=key_prefix,
        key_last4=key_last4,
        created_by=created_by or "an administrator",
    )


def invitation(
    conn: Connection,
    *,
    user_id: int,
    username: str,
    email: str,
    role: str,
    inviter: str,
) -> int | None:
    """Queue the invitation email of a new user; never includes the password."""
    organization = conn.execute(
        select(organizations.c.name)
        .join(organization_members, organization_members.c.organization_id == organizations.c.id)
        .join(users, users.c.id == organization_members.c.user_id)
        .where(users.c.username == inviter)
        .order_by(organizations.c.id)
        .limit(1)
    ).scalar_one_or_none()
    return email_outbox.enqueue(
        conn,
        email,
        "invitation",
        dedupe_key=f"invitation:{user_id}",
        organization=organization,
        inviter=inviter,
        role=role,
        username=username,
    )


def payment_receipt(
    conn: Connection,
    *,
    email: str,
    organization: str,
    amount: Decimal,
    reference: str,
    paid_at: datetime,
    balance: Decimal | None,
) -> int | None:
    """Queue the receipt of a paid top-up; a reference gets one receipt."""
    return email_outbox.enqueue(
        conn,
        email,
        "payment_receipt",
        dedupe_key=f"payment_receipt:{reference}",
        organization=organization,
        amount=amount,
        reference=reference,
        paid_at=emails.format_timestamp(paid_at),
        balance=balance,
    )


def _email_of(conn: Connection, username: str | None) -> str | None:
    if not username:
        return None
    return conn.execute(
        select(users.c.email).where(users.c.username == username)
    ).scalar_one_or_none()
