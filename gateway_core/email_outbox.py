"""Transactional email outbox: queued with its event, delivered in the background.

`enqueue` renders a template and inserts an `email_outbox` row in the
caller's transaction, so an email exists exactly when its event commits,
and no page or request waits for the mail server. A `dedupe_key` names the
event, so a repeated event queues its email once.

`deliver_due` sends due rows one at a time. Each row is locked with
FOR UPDATE SKIP LOCKED while it is sent, so several processes can drain one
outbox and each row goes to one of them. A connection error, timeout or
4xx reply schedules a retry with exponential backoff. A 5xx reply or the
last attempt marks the row `failed`. Both are logged.

`OutboxSender` runs `deliver_due` and `check_low_balances` in a daemon
thread. The proxy and the app each start one when GATEWAYZ_SMTP_HOST is set.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import access, emails
from gateway_core.access import Actor
from gateway_core.config import ConfigError
from gateway_core.schema import (
    alert_channels,
    credit_balances,
    email_outbox,
    low_balance_notices,
    organization_members,
    organizations,
    self_service_settings,
    users,
)
from gateway_core.smtp import SmtpSettings, build_email, deliver, is_permanent_smtp_error

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
# Seconds before the first retry. Each later retry waits twice as long, up
# to RETRY_MAX, so the eight attempts span about 64 minutes.
RETRY_BASE = 30.0
RETRY_MAX = 3600.0
# Seconds between two passes of the background sender.
POLL_INTERVAL = 5.0
MAX_ERROR_LENGTH = 500
# Used when the self_service_settings row is missing, as in its column default.
DEFAULT_LOW_BALANCE_THRESHOLD = Decimal(5)


@dataclass(frozen=True)
class OutboxEmail:
    id: int
    recipient: str
    template: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


def enqueue(
    conn: Connection,
    recipient: str,
    template: str,
    *,
    dedupe_key: str | None = None,
    **context: Any,
) -> int | None:
    """Render `template` and queue it for `recipient`; return the row id.

    Returns None when a row with the same `dedupe_key` exists. Rendering
    errors raise here, because they are bugs in a template or its caller.
    `app_url` defaults to GATEWAYZ_APP_URL.
    """
    context.setdefault("app_url", emails.app_url())
    subject, text, html = emails.render_email(template, **context)
    statement = (
        pg_insert(email_outbox)
        .values(
            recipient=recipient,
            template=template,
            subject=subject,
            text_body=text,
            html_body=html,
            dedupe_key=dedupe_key,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(email_outbox.c.id)
    )
    email_id = conn.execute(statement).scalar_one_or_none()
    if email_id is None:
        logger.info("%s email %s already queued", template, dedupe_key)
    else:
        logger.info("queued %s email %d to %s", template, email_id, recipient)
    return email_id


def enqueue_many(
    conn: Connection,
    recipients: Iterable[str],
    template: str,
    *,
    dedupe_key: str | None = None,
    **context: Any,
) -> int:
    """Queue one email per recipient and return how many were queued."""
    queued = 0
    for recipient in recipients:
        key = None if dedupe_key is None else f"{dedupe_key}:{recipient}"
        if enqueue(conn, recipient, template, dedupe_key=key, **context) is not None:
            queued += 1
    return queued


def organization_recipients(conn: Connection, organization_id: int) -> list[str]:
    """Return the addresses that get an organization's emails, sorted and distinct.

    These are the enabled members' addresses and the organization's email
    alert channels.
    """
    members = select(users.c.email).join(
        organization_members, organization_members.c.user_id == users.c.id
    )
    members = members.where(
        organization_members.c.organization_id == organization_id,
        users.c.disabled.is_(False),
        users.c.email.isnot(None),
        users.c.email != "",
    )
    channels = select(alert_channels.c.target).where(
        alert_channels.c.organization_id == organization_id, alert_channels.c.kind == "email"
    )
    addresses = {row for row in conn.execute(members).scalars()}
    addresses |= {row for row in conn.execute(channels).scalars()}
    return sorted(address.lower() for address in addresses)


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_BASE * 2 ** (attempts - 1), RETRY_MAX))


def _claim_next(conn: Connection, now: datetime | None) -> Any:
    due_at = func.now() if now is None else now
    query = (
        select(email_outbox)
        .where(email_outbox.c.status == "pending", email_outbox.c.next_attempt_at <= due_at)
        .order_by(email_outbox.c.next_attempt_at, email_outbox.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(query).first()


def _send_row(row: Any, smtp: SmtpSettings) -> Exception | None:
    try:
        message = build_email(smtp.sender, row.recipient, row.subject, row.text_body, row.html_body)
        deliver(
            message,
            smtp.host,
            smtp.port,
            username=smtp.username,
            password=smtp.password,
            starttls=smtp.starttls,
            timeout=smtp.timeout,
        )
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return exc
    return None


def _record_failure(conn: Connection, row: Any, error: Exception, now: datetime | None) -> None:
    attempts = row.attempts + 1
    permanent = isinstance(error, ValueError) or is_permanent_smtp_error(error)
    description = f"{type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
    values: dict[str, Any] = {"attempts": attempts, "last_error": description}
    if permanent or attempts >= MAX_ATTEMPTS:
        values["status"] = "failed"
        logger.error(
            "%s email %d to %s failed on attempt %d of %d, giving up: %s",
            row.template,
            row.id,
            row.recipient,
            attempts,
            MAX_ATTEMPTS,
            description,
        )
    else:
        delay = _retry_delay(attempts)
        values["next_attempt_at"] = (func.now() if now is None else now) + delay
        logger.warning(
            "%s email %d to %s failed on attempt %d of %d, retrying in %ds: %s",
            row.template,
            row.id,
            row.recipient,
            attempts,
            MAX_ATTEMPTS,
            delay.total_seconds(),
            description,
        )
    conn.execute(update(email_outbox).where(email_outbox.c.id == row.id).values(**values))


def deliver_due(
    engine: Engine,
    smtp: SmtpSettings,
    *,
    limit: int = 100,
    now: datetime | None = None,
) -> int:
    """Send up to `limit` due emails and return how many the server accepted.

    `now` replaces the database clock when choosing due rows and scheduling
    retries.
    """
    sent = 0
    for _ in range(limit):
        # NOTE: a process that stops after the server accepted a message but
        # before this transaction commits leaves the row pending, so that
        # message is sent a second time.
        with engine.begin() as conn:
            row = _claim_next(conn, now)
            if row is None:
                break
            error = _send_row(row, smtp)
            if error is not None:
                _record_failure(conn, row, error, now)
                continue
            conn.execute(
                update(email_outbox)
                .where(email_outbox.c.id == row.id)
                .values(
                    status="sent", attempts=row.attempts + 1, sent_at=func.now(), last_error=None
                )
            )
        logger.info("%s email %d sent to %s", row.template, row.id, row.recipient)
        sent += 1
    return sent


def check_low_balances(conn: Connection) -> int:
    """Queue a low-balance email for each organization whose balance fell below the threshold.

    One email goes out per crossing: the organization's `low_balance_notices`
    row stops repeats, and it is deleted once the balance is back at the
    threshold or above. Organizations without ledger entries have no
    balance and get no email. Returns the number of emails queued.
    """
    threshold = conn.execute(
        select(self_service_settings.c.low_balance_threshold).where(self_service_settings.c.id == 1)
    ).scalar_one_or_none()
    if threshold is None:
        threshold = DEFAULT_LOW_BALANCE_THRESHOLD
    balances = credit_balances.c
    conn.execute(
        delete(low_balance_notices).where(
            balances.scope_type == "organization",
            balances.scope_id == low_balance_notices.c.organization_id,
            balances.balance >= threshold,
        )
    )
    below = select(balances.scope_id).where(
        balances.scope_type == "organization", balances.balance < threshold
    )
    claimed = conn.execute(
        pg_insert(low_balance_notices)
        .from_select(["organization_id"], below)
        .on_conflict_do_nothing()
        .returning(low_balance_notices.c.organization_id, low_balance_notices.c.notified_at)
    ).all()
    queued = 0
    for organization_id, notified_at in claimed:
        queued += _queue_low_balance(conn, organization_id, notified_at, threshold)
    return queued


def _queue_low_balance(
    conn: Connection, organization_id: int, notified_at: datetime, threshold: Decimal
) -> int:
    row = conn.execute(
        select(organizations.c.name, credit_balances.c.balance)
        .join(
            credit_balances,
            and_(
                credit_balances.c.scope_type == "organization",
                credit_balances.c.scope_id == organizations.c.id,
            ),
        )
        .where(organizations.c.id == organization_id)
    ).one()
    recipients = organization_recipients(conn, organization_id)
    if not recipients:
        logger.info(
            "organization %d is below the low-balance threshold but has no email recipients",
            organization_id,
        )
        return 0
    base = emails.app_url()
    return enqueue_many(
        conn,
        recipients,
        "low_balance",
        dedupe_key=f"low_balance:{organization_id}:{notified_at.isoformat()}",
        organization=row.name,
        balance=row.balance,
        threshold=threshold,
        topup_url=f"{base}/billing",
        app_url=base,
    )


def list_emails(conn: Connection, actor: Actor | str, limit: int = 100) -> list[OutboxEmail]:
    """Return the newest outbox rows, without their bodies.

    The outbox contains every organization's emails, so only staff list it.
    """
    access.require_actor(access.as_actor(actor), "billing.configure")
    columns = [getattr(email_outbox.c, name) for name in OutboxEmail.__dataclass_fields__]
    rows = conn.execute(select(*columns).order_by(email_outbox.c.id.desc()).limit(limit))
    return [OutboxEmail(*row) for row in rows]


def retry_failed(conn: Connection, email_id: int) -> bool:
    """Put a failed email back in the queue; return False if it is not failed."""
    result = conn.execute(
        update(email_outbox)
        .where(email_outbox.c.id == email_id, email_outbox.c.status == "failed")
        .values(status="pending", attempts=0, next_attempt_at=func.now())
    )
    return result.rowcount == 1


class OutboxSender:
    """Drain the outbox and check low balances in a daemon thread until `stop`."""

    def __init__(self, engine: Engine, smtp: SmtpSettings, interval: float = POLL_INTERVAL) -> None:
        self._engine = engine
        self._smtp = smtp
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="email-outbox", daemon=True)

    def start(self) -> OutboxSender:
        self._thread.start()
        logger.info("email outbox sender started for %s:%d", self._smtp.host, self._smtp.port)
        return self

    def wake(self) -> None:
        """Start the next pass now, for an email this process just queued."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        logger.info("email outbox sender stopped")

    def run_once(self) -> int:
        with self._engine.begin() as conn:
            check_low_balances(conn)
        return deliver_due(self._engine, self._smtp)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once()
            except Exception:
                # A database outage must not end the thread, so the next pass retries.
                logger.exception("email outbox pass failed; retrying in %.0fs", self._interval)
            self._wake.wait(self._interval)
            self._wake.clear()


def start_sender(engine: Engine, interval: float = POLL_INTERVAL) -> OutboxSender | None:
    """Start a sender with the GATEWAYZ_SMTP_* settings, or return None without SMTP.

    Queued emails wait in the outbox until a process with SMTP settings runs.
    """
    try:
        smtp = SmtpSettings.from_env()
    except ConfigError as exc:
        logger.error("emails stay queued until the SMTP settings are fixed: %s", exc)
        return None
    if smtp is None:
        logger.info("emails stay queued: GATEWAYZ_SMTP_HOST is not set")
        return None
    return OutboxSender(engine, smtp, interval).start()
