"""Budget alerts, sent by email and by signed webhook.

When settled spend crosses one of a budget's alert thresholds (fractions of
its limit), `notify_budget` claims that threshold for the budget's current
period in `budget_alerts_sent` and notifies every alert channel of the
budget's organization. Only the first claimer sends, so each threshold
alerts once per period however many workers see the crossing.

Email channels get the `budget_alert` template through the email outbox,
queued in the claim's transaction, so the email exists exactly when its
claim commits and is delivered with retries later. Webhooks are sent at
once with retries. Their failures are logged and returned as a flag
instead of raised, so a broken receiver does not fail the caller.

A webhook POST carries two headers: `x-gatewayz-timestamp` (Unix seconds)
and `x-gatewayz-signature: v1=<hex>`, the HMAC-SHA256 under the channel's
secret of the timestamp, a dot and the raw body. Receivers check both with
`verify_webhook_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from gateway_core import email_outbox, secret_box
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import (
    alert_channels,
    api_keys,
    budget_alerts_sent,
    budgets,
    organizations,
    projects,
    teams,
)

# Re-exported: callers and tests use the SMTP helpers through this module.
from gateway_core.smtp import (  # noqa: F401
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    DEFAULT_TIMEOUT,
    EMAIL_ADDRESS,
    SmtpSettings,
    build_email,
    deliver,
    is_permanent_smtp_error,
    send_email,
)

logger = logging.getLogger(__name__)

TIMESTAMP_HEADER = "x-gatewayz-timestamp"
SIGNATURE_HEADER = "x-gatewayz-signature"
SIGNATURE_VERSION = "v1"
CHANNEL_KINDS = ("email", "webhook")
MIN_WEBHOOK_SECRET_LENGTH = 16


@dataclass(frozen=True)
class AlertChannel:
    id: int
    organization_id: int
    kind: str
    # An email address or a webhook URL.
    target: str
    secret_encrypted: str | None = field(repr=False)


def _require_decimal(name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal or an int, not {type(value).__name__}")
    return Decimal(value)


def thresholds_crossed(
    limit: Decimal, spent_before: Decimal, spent_after: Decimal, thresholds: Iterable[Decimal]
) -> list[Decimal]:
    """Return the thresholds that spend passed in going from before to after.

    A threshold is a fraction of the limit. It is crossed when spend was
    below `threshold * limit` and is now at or above it. With a limit of 0,
    the first positive spend crosses every threshold. Ascending, no repeats.
    """
    limit = _require_decimal("limit", limit)
    before = _require_decimal("spent_before", spent_before)
    after = _require_decimal("spent_after", spent_after)
    crossed = set()
    for threshold in thresholds:
        threshold = _require_decimal("threshold", threshold)
        if limit == 0:
            if before <= 0 < after:
                crossed.add(threshold)
        elif before < threshold * limit <= after:
            crossed.add(threshold)
    return sorted(crossed)


def claim_alert(
    conn: Connection, budget_id: int, period_start: datetime, threshold: Decimal
) -> bool:
    """Claim one threshold of one budget period, returning True for the first claimer only.

    A second claimer waits on the primary key until the first commits,
    then gets False. If the first rolls back, the second gets True.
    """
    statement = (
        insert(budget_alerts_sent)
        .values(budget_id=budget_id, period_start=period_start, threshold=threshold)
        .on_conflict_do_nothing()
        .returning(budget_alerts_sent.c.budget_id)
    )
    return conn.execute(statement).first() is not None


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """Return the signature header value for a webhook body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def verify_webhook_signature(
    secret: str,
    timestamp: str,
    body: bytes | str,
    signature: str,
    tolerance_seconds: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """Check a received webhook's signature and that its timestamp is recent.

    `signature` may list several comma-separated values (as during a secret
    change); one match is enough. Comparison is in constant time.
    """
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = sign_webhook(secret, timestamp, raw).encode()
    matched = False
    for candidate in signature.split(","):
        matched |= hmac.compare_digest(candidate.strip().encode(), expected)
    return matched


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def send_webhook(
    url: str,
    secret: str,
    payload: dict[str, Any],
    client: httpx.Client | None = None,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """POST `payload` as signed JSON; return True on a 2xx reply.

    Connection errors, timeouts, 429 and 5xx replies are retried up to
    `attempts` times in all, each attempt signed with a fresh timestamp.
    Other replies fail at once. Decimals and datetimes in the payload are
    sent as strings, and any other type that json cannot encode raises
    TypeError. Delivery failures are logged and return False.
    """
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=_json_default)
    raw = body.encode()
    http = client if client is not None else httpx.Client(timeout=timeout)
    try:
        for attempt in range(1, attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "content-type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign_webhook(secret, timestamp, raw),
            }
            try:
                response = http.post(url, content=raw, headers=headers, timeout=timeout)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            except httpx.InvalidURL as exc:
                logger.error("webhook to %s not sent: invalid URL: %s", url, exc)
                return False
            else:
                if response.is_success:
                    logger.info("webhook to %s delivered (%d)", url, response.status_code)
                    return True
                failure = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    logger.error("webhook to %s rejected: %s", url, failure)
                    return False
            if attempt == attempts:
                logger.error("webhook to %s failed after %d attempts: %s", url, attempts, failure)
                return False
            delay = backoff * 2 ** (attempt - 1)
            logger.warning(
                "webhook to %s failed on attempt %d of %d, retrying in %.2fs: %s",
                url,
                attempt,
                attempts,
                delay,
                failure,
            )
            time.sleep(delay)
    finally:
        if client is None:
            http.close()
    return False


def add_channel(
    conn: Connection,
    settings_secret: bytes,
    organization_id: int,
    kind: str,
    target: str,
    secret: str | None = None,
) -> int:
    """Store an alert channel and return its id.

    An email channel takes an address and no secret. A webhook channel
    takes an http(s) URL and a signing secret, which is stored encrypted.
    """
    target = target.strip()
    if kind == "email":
        if not EMAIL_ADDRESS.match(target):
            raise InvalidRequestError(f"invalid email address {target!r}", param="target")
        if secret is not None:
            raise InvalidRequestError("email channels take no secret", param="secret")
    elif kind == "webhook":
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError(
                f"webhook URL must be an http:// or https:// URL, got {target!r}",
                param="target",
            )
        if secret is None or len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
            raise InvalidRequestError(
                f"webhook channels need a signing secret of at least "
                f"{MIN_WEBHOOK_SECRET_LENGTH} characters",
                param="secret",
            )
    else:
        raise InvalidRequestError(
            f"unknown channel kind {kind!r}; expected one of {', '.join(CHANNEL_KINDS)}",
            param="kind",
        )
    exists = conn.execute(
        select(organizations.c.id).where(organizations.c.id == organization_id)
    ).first()
    if exists is None:
        raise NotFoundError(f"organization {organization_id} not found")
    encrypted = secret_box.encrypt(settings_secret, secret) if secret is not None else None
    return conn.execute(
        alert_channels.insert()
        .values(
            organization_id=organization_id, kind=kind, target=target, secret_encrypted=encrypted
        )
        .returning(alert_channels.c.id)
    ).scalar_one()


def list_channels(conn: Connection, organization_id: int) -> list[AlertChannel]:
    rows = conn.execute(
        select(
            alert_channels.c.id,
            alert_channels.c.organization_id,
            alert_channels.c.kind,
            alert_channels.c.target,
            alert_channels.c.secret_encrypted,
        )
        .where(alert_channels.c.organization_id == organization_id)
        .order_by(alert_channels.c.id)
    )
    return [AlertChannel(*row) for row in rows]


def _scope_owner(conn: Connection, scope_type: str, scope_id: int) -> tuple[int, str] | None:
    """Return the id of the organization that owns a scope, and the scope's name."""
    if scope_type == "organization":
        query = select(organizations.c.id, organizations.c.name).where(
            organizations.c.id == scope_id
        )
    elif scope_type == "team":
        query = select(teams.c.organization_id, teams.c.name).where(teams.c.id == scope_id)
    elif scope_type == "project":
        query = (
            select(teams.c.organization_id, projects.c.name)
            .select_from(projects.join(teams, teams.c.id == projects.c.team_id))
            .where(projects.c.id == scope_id)
        )
    else:
        query = (
            select(teams.c.organization_id, api_keys.c.name)
            .select_from(api_keys.join(teams, teams.c.id == api_keys.c.team_id))
            .where(api_keys.c.id == scope_id)
        )
    row = conn.execute(query).first()
    return None if row is None else (row[0], row[1])


@dataclass(frozen=True)
class BudgetAlert:
    """One crossed threshold of one budget, as sent to every channel."""

    budget_id: int
    organization_id: int
    scope_type: str
    scope_id: int
    scope_name: str
    period: str
    period_start: datetime
    limit_usd: Decimal
    spent_usd: Decimal
    threshold: Decimal

    def percent(self) -> str:
        return format((self.threshold * 100).normalize(), "f")

    def payload(self) -> dict[str, Any]:
        return {
            "type": "budget.threshold_crossed",
            "budget_id": self.budget_id,
            "organization_id": self.organization_id,
            "scope_type": self.scope_type,
            "scope_id": self.scope_id,
            "scope_name": self.scope_name,
            "period": self.period,
            "period_start": self.period_start,
            "limit_usd": self.limit_usd,
            "spent_usd": self.spent_usd,
            "threshold": self.threshold,
        }


def notify_budget(
    conn: Connection,
    settings_secret: bytes,
    budget_id: int,
    *,
    period_start: datetime,
    spent_before: Decimal,
    spent_after: Decimal,
    client: httpx.Client | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> list[Decimal]:
    """Claim and send an alert for each threshold that this spend crossed.

    Returns the thresholds this call claimed. A threshold that another
    worker already claimed this period is skipped. Webhooks are sent
    inside the caller's transaction, so call this off the request path.
    """
    budget = conn.execute(
        select(
            budgets.c.scope_type,
            budgets.c.scope_id,
            budgets.c.period,
            budgets.c.limit_usd,
            budgets.c.alert_thresholds,
        ).where(budgets.c.id == budget_id)
    ).first()
    if budget is None:
        raise NotFoundError(f"budget {budget_id} not found")
    crossed = thresholds_crossed(
        budget.limit_usd, spent_before, spent_after, budget.alert_thresholds
    )
    if not crossed:
        return []
    owner = _scope_owner(conn, budget.scope_type, budget.scope_id)
    if owner is None:
        logger.error(
            "budget %d alert not sent: its %s %d no longer exists",
            budget_id,
            budget.scope_type,
            budget.scope_id,
        )
        return []
    organization_id, scope_name = owner
    organization_name = conn.execute(
        select(organizations.c.name).where(organizations.c.id == organization_id)
    ).scalar_one()
    channels = list_channels(conn, organization_id)
    claimed = []
    for threshold in crossed:
        if not claim_alert(conn, budget_id, period_start, threshold):
            continue
        claimed.append(threshold)
        alert = BudgetAlert(
            budget_id=budget_id,
            organization_id=organization_id,
            scope_type=budget.scope_type,
            scope_id=budget.scope_id,
            scope_name=scope_name,
            period=budget.period,
            period_start=period_start,
            limit_usd=budget.limit_usd,
            spent_usd=spent_after,
            threshold=threshold,
        )
        delivered = sum(
            _queue_email(conn, channel, alert, organization_name)
            if channel.kind == "email"
            else _send_webhook(channel, alert, settings_secret, client, attempts, backoff)
            for channel in channels
        )
        if delivered == 0:
            # NOTE: the claim stays, so this threshold is not alerted again
            # this period even though no channel received it.
            logger.error(
                "budget %d alert at %s%% reached none of %d channels of organization %d",
                budget_id,
                alert.percent(),
                len(channels),
                organization_id,
            )
    return claimed


def _queue_email(
    conn: Connection, channel: AlertChannel, alert: BudgetAlert, organization: str
) -> bool:
    dedupe_key = (
        f"budget_alert:{alert.budget_id}:{alert.period_start.isoformat()}:"
        f"{alert.percent()}:{channel.id}"
    )
    email_outbox.enqueue(
        conn,
        channel.target,
        "budget_alert",
        dedupe_key=dedupe_key,
        organization=organization,
        scope=f"{alert.scope_type} {alert.scope_name}",
        period=alert.period,
        spent=alert.spent_usd,
        limit=alert.limit_usd,
        percent=Decimal(alert.percent()),
    )
    return True


class AlertMessage(Protocol):
    """A message for an alert channel: a budget alert or a health alert."""

    def subject(self) -> str: ...

    def text(self) -> str: ...

    def html(self) -> str: ...

    def payload(self) -> dict[str, Any]: ...


def send_to_channel(
    channel: AlertChannel,
    alert: AlertMessage,
    settings_secret: bytes,
    smtp: SmtpSettings | None,
    client: httpx.Client | None,
    attempts: int,
    backoff: float,
) -> bool:
    """Send `alert` to one channel at once, by SMTP or by signed webhook."""
    if channel.kind == "email":
        if smtp is None:
            logger.warning(
                "alert channel %d skipped: email is not configured (GATEWAYZ_SMTP_HOST)",
                channel.id,
            )
            return False
        return send_email(
            smtp.host,
            smtp.port,
            smtp.sender,
            channel.target,
            alert.subject(),
            alert.text(),
            alert.html(),
            username=smtp.username,
            password=smtp.password,
            starttls=smtp.starttls,
            timeout=smtp.timeout,
            attempts=attempts,
            backoff=backoff,
        )
    return _send_webhook(channel, alert, settings_secret, client, attempts, backoff)


def _send_webhook(
    channel: AlertChannel,
    alert: AlertMessage,
    settings_secret: bytes,
    client: httpx.Client | None,
    attempts: int,
    backoff: float,
) -> bool:
    if channel.secret_encrypted is None:
        logger.error("alert channel %d skipped: webhook has no signing secret", channel.id)
        return False
    try:
        secret = secret_box.decrypt(settings_secret, channel.secret_encrypted)
    except secret_box.SecretBoxError as exc:
        logger.error("alert channel %d skipped: failed to decrypt its secret: %s", channel.id, exc)
        return False
    return send_webhook(
        channel.target, secret, alert.payload(), client, attempts=attempts, backoff=backoff
    )
