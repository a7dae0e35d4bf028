"""Evaluation of health alert rules into incidents, and their one message each.

Every proxy worker evaluates every enabled rule on a timer. A rule whose
condition holds opens an incident in `health_incidents`; a partial unique
index allows one open incident per rule, so with many workers and hosts
only the worker whose insert created the row sends the message. Workers
that see the condition later only refresh `last_seen_at`. The incident is
resolved once the condition no longer holds, which re-arms the rule.
A new incident within `cooldown_seconds` of the rule's last message is
recorded but sends nothing, so a flapping condition sends at most one
message per cool-down window.

error_rate and p95_latency are measured in usage_events, which all workers
share. circuit_open and spool_rows are the evaluating worker's own state.
An incident of any kind is resolved only after no worker has seen its
condition for `resolve_grace` seconds. For a local condition, this means
every worker agrees it is gone. For a measured one, a value hovering at the
threshold keeps one incident open instead of resolving and reopening it on
alternate evaluations.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import Connection, text

from gateway_core import alerts
from gateway_core.health_rules import HealthRule

logger = logging.getLogger("gatewayz.health")

_MEASURE = """
SELECT count(*) AS calls,
    count(*) FILTER (WHERE status_code >= 500) AS errors,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
FROM usage_events
WHERE created_at >= now() - make_interval(secs => :window)
    AND (CAST(:provider AS text) IS NULL OR provider = :provider)
"""
# xmax is 0 only on a row this statement inserted, not on one it updated.
_OPEN_INCIDENT = """
INSERT INTO health_incidents (rule_id, opened_at, last_seen_at, value, source)
VALUES (:rule_id, now(), now(), :value, :source)
ON CONFLICT (rule_id) WHERE resolved_at IS NULL
DO UPDATE SET last_seen_at = now(), value = EXCLUDED.value
RETURNING id, opened_at, xmax = 0 AS inserted
"""
_LAST_MESSAGE = """
SELECT max(notified_at) FROM health_incidents
WHERE rule_id = :rule_id AND notified_at IS NOT NULL AND id <> :incident_id
"""
_RESOLVE = """
UPDATE health_incidents SET resolved_at = now()
WHERE rule_id = :rule_id AND resolved_at IS NULL
    AND last_seen_at <= now() - make_interval(secs => :grace)
RETURNING id
"""


@dataclass(frozen=True)
class LocalHealth:
    """The evaluating worker's own state that rules can watch."""

    open_circuits: frozenset[str] = frozenset()
    spool_rows: int = 0


@dataclass(frozen=True)
class Reading:
    """A rule's measured value and whether its condition holds."""

    value: Decimal
    firing: bool


@dataclass(frozen=True)
class HealthAlert:
    """The message for one incident, sent to email and webhook channels."""

    rule: HealthRule
    incident_id: int
    opened_at: datetime
    value: Decimal
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def condition(self) -> str:
        rule = self.rule
        where = f" for provider {rule.provider}" if rule.provider else ""
        if rule.kind == "error_rate":
            return (
                f"error rate{where} was {self.value:.1%} over the last {rule.window_seconds} s, "
                f"at or above {rule.threshold:.1%}"
            )
        if rule.kind == "p95_latency":
            return (
                f"p95 latency{where} was {self.value:.0f} ms over the last "
                f"{rule.window_seconds} s, above {rule.threshold:.0f} ms"
            )
        if rule.kind == "circuit_open":
            return f"the circuit of provider {rule.provider} is open on {self.source}"
        return f"{self.value:.0f} usage rows wait in the recorder spool on {self.source}"

    def subject(self) -> str:
        return f"Gatewayz health alert: {self.rule.name}"

    def text(self) -> str:
        return (
            f"Health alert rule {self.rule.name!r} fired at {self.opened_at.isoformat()}: "
            f"{self.condition()}.\n\n"
            f"No further message is sent for this rule until the condition clears, and none "
            f"within {self.rule.cooldown_seconds} s of this one.\n"
            f"Rule {self.rule.id}, incident {self.incident_id}.\n"
        )

    def html(self) -> str:
        return f"<p>{html.escape(self.text())}</p>".replace("\n", "<br>")

    def payload(self) -> dict[str, Any]:
        return {
            "type": "health_alert",
            "rule_id": self.rule.id,
            "rule_name": self.rule.name,
            "kind": self.rule.kind,
            "provider": self.rule.provider,
            "organization_id": self.rule.organization_id,
            "incident_id": self.incident_id,
            "opened_at": self.opened_at,
            "value": self.value,
            "threshold": self.rule.threshold,
            "source": self.source,
        }


def read_rule(conn: Connection, rule: HealthRule, local: LocalHealth) -> Reading:
    """Measure a rule's value, in usage_events or in the worker's own state."""
    if rule.kind == "circuit_open":
        is_open = rule.provider in local.open_circuits
        return Reading(Decimal(int(is_open)), is_open)
    if rule.kind == "spool_rows":
        rows = Decimal(local.spool_rows)
        return Reading(rows, rows > rule.threshold)
    row = conn.execute(
        text(_MEASURE), {"window": rule.window_seconds, "provider": rule.provider}
    ).one()
    if row.calls == 0 or row.calls < rule.min_requests:
        return Reading(Decimal(0), False)
    if rule.kind == "error_rate":
        rate = Decimal(row.errors) / Decimal(row.calls)
        return Reading(rate, rate >= rule.threshold)
    p95 = Decimal(str(round(row.p95, 3)))
    return Reading(p95, p95 > rule.threshold)


def evaluate_rule(
    conn: Connection,
    rule: HealthRule,
    local: LocalHealth,
    *,
    source: str,
    settings_secret: bytes,
    smtp: alerts.SmtpSettings | None,
    resolve_grace: float,
    client: httpx.Client | None = None,
    attempts: int = alerts.DEFAULT_ATTEMPTS,
    backoff: float = alerts.DEFAULT_BACKOFF,
) -> str:
    """Open, refresh or resolve the rule's incident and send its message if due.

    Returns what happened: "notified", "cooldown", "ongoing", "resolved" or
    "clear". Sending happens in the caller's transaction, while the new
    incident row is locked, so call this off the request path.
    """
    reading = read_rule(conn, rule, local)
    if not reading.firing:
        resolved = conn.execute(
            text(_RESOLVE), {"rule_id": rule.id, "grace": resolve_grace}
        ).first()
        if resolved is None:
            return "clear"
        logger.info("health rule %d recovered; incident %d resolved", rule.id, resolved.id)
        return "resolved"
    incident = conn.execute(
        text(_OPEN_INCIDENT), {"rule_id": rule.id, "value": reading.value, "source": source}
    ).one()
    if not incident.inserted:
        return "ongoing"
    last_message = conn.execute(
        text(_LAST_MESSAGE), {"rule_id": rule.id, "incident_id": incident.id}
    ).scalar_one()
    if last_message is not None and (
        (incident.opened_at - last_message).total_seconds() < rule.cooldown_seconds
    ):
        logger.info(
            "health rule %d fired again (incident %d) within its %d s cool-down; no message",
            rule.id,
            incident.id,
            rule.cooldown_seconds,
        )
        return "cooldown"
    conn.execute(
        text("UPDATE health_incidents SET notified_at = now() WHERE id = :id"),
        {"id": incident.id},
    )
    alert = HealthAlert(rule, incident.id, incident.opened_at, reading.value, source)
    channels = alerts.list_channels(conn, rule.organization_id)
    delivered = sum(
        alerts.send_to_channel(channel, alert, settings_secret, smtp, client, attempts, backoff)
        for channel in channels
    )
    if delivered == 0:
        # NOTE: the incident stays marked as notified, so it is not sent
        # again even though no channel received it.
        logger.error(
            "health rule %d incident %d reached none of %d channels of organization %d",
            rule.id,
            incident.id,
            len(channels),
            rule.organization_id,
        )
    else:
        logger.info(
            "health rule %d incident %d sent to %d channels", rule.id, incident.id, delivered
        )
    return "notified"
