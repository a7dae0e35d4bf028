"""Health alert rules: validation, listing and audited changes.

A rule belongs to an organization and alerts that organization's alert
channels, the same ones budget alerts use. Changes are checked against the
"alerts.manage" action of the permission matrix and written to the audit
log in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from gateway_core import access, audit
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import (
    HEALTH_RULE_KINDS,
    health_alert_rules,
    health_incidents,
    organizations,
)

KIND_LABELS = {
    "error_rate": "Error rate (share of calls with status 5xx)",
    "p95_latency": "p95 latency in milliseconds",
    "circuit_open": "Provider circuit open",
    "spool_rows": "Usage rows waiting in the recorder spool",
}
# Kinds whose value comes from usage_events, which every worker sees alike.
DATABASE_KINDS = frozenset({"error_rate", "p95_latency"})
MAX_NAME_LENGTH = 100
MAX_WINDOW_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class HealthRule:
    id: int
    organization_id: int
    name: str
    kind: str
    provider: str | None
    threshold: Decimal
    window_seconds: int
    min_requests: int
    cooldown_seconds: int
    enabled: bool


def parse_threshold(kind: str, value: Decimal | str) -> Decimal:
    """Parse and check a rule's threshold for its kind."""
    try:
        threshold = Decimal(value)
    except InvalidOperation:
        raise InvalidRequestError(f"invalid threshold {value!r}; expected a number") from None
    if not threshold.is_finite() or threshold < 0:
        raise InvalidRequestError(f"invalid threshold {value!r}; expected zero or more")
    if kind == "error_rate" and threshold > 1:
        raise InvalidRequestError(
            f"invalid error rate threshold {value!r}; expected a fraction from 0 to 1, "
            "e.g. 0.2 for 20%"
        )
    return threshold


def check_rule(
    *,
    name: str,
    kind: str,
    provider: str | None,
    window_seconds: int,
    min_requests: int,
    cooldown_seconds: int,
) -> None:
    """Raise InvalidRequestError for a rule field that is missing or out of range."""
    if not name.strip() or len(name.strip()) > MAX_NAME_LENGTH:
        raise InvalidRequestError(f"rule name must be 1 to {MAX_NAME_LENGTH} characters")
    if kind not in HEALTH_RULE_KINDS:
        raise InvalidRequestError(
            f"invalid rule kind {kind!r}; expected one of {', '.join(HEALTH_RULE_KINDS)}"
        )
    if kind == "circuit_open" and not provider:
        raise InvalidRequestError("a circuit_open rule needs the provider whose circuit it watches")
    if not 0 < window_seconds <= MAX_WINDOW_SECONDS:
        raise InvalidRequestError(
            f"invalid window {window_seconds} s; expected 1 to {MAX_WINDOW_SECONDS} seconds"
        )
    if min_requests < 0:
        raise InvalidRequestError(f"invalid minimum calls {min_requests}; expected zero or more")
    if cooldown_seconds < 0:
        raise InvalidRequestError(f"invalid cool-down {cooldown_seconds} s; expected zero or more")


def list_rules(conn: Connection, *, enabled_only: bool = False) -> list[HealthRule]:
    query = select(*(health_alert_rules.c[name] for name in HealthRule.__dataclass_fields__))
    if enabled_only:
        query = query.where(health_alert_rules.c.enabled)
    rows = conn.execute(query.order_by(health_alert_rules.c.id))
    return [HealthRule(**row._mapping) for row in rows]


def visible_rules(conn: Connection, actor: access.Actor) -> list[HealthRule]:
    """Return the rules of the organizations the actor may see."""
    access.require(actor.role, "alerts.manage")
    return [rule for rule in list_rules(conn) if actor.may_see(rule.organization_id)]


def recent_incidents(conn: Connection, actor: access.Actor, limit: int) -> list[dict[str, Any]]:
    """Return the newest incidents of the rules in the actor's organizations, newest first."""
    access.require(actor.role, "alerts.manage")
    query = select(health_incidents).order_by(health_incidents.c.id.desc()).limit(limit)
    if not actor.is_staff:
        query = query.join(
            health_alert_rules, health_alert_rules.c.id == health_incidents.c.rule_id
        ).where(health_alert_rules.c.organization_id.in_(actor.organization_ids or ()))
    return [dict(row) for row in conn.execute(query).mappings()]


def get_rule(conn: Connection, rule_id: int) -> HealthRule:
    for rule in list_rules(conn):
        if rule.id == rule_id:
            return rule
    raise NotFoundError(f"health alert rule {rule_id} not found")


def _require_rule(conn: Connection, actor: access.Actor, rule_id: int) -> HealthRule:
    """Return a rule the actor may manage.

    A rule of another organization raises the NotFoundError of a missing rule.
    """
    rule = get_rule(conn, rule_id)
    access.require_object(
        actor, rule.organization_id, "alerts.manage", f"health alert rule {rule_id} not found"
    )
    return rule


def save_rule(
    conn: Connection,
    actor: access.Actor,
    *,
    rule_id: int | None = None,
    organization_id: int,
    name: str,
    kind: str,
    provider: str | None,
    threshold: Decimal | str,
    window_seconds: int,
    min_requests: int,
    cooldown_seconds: int,
    enabled: bool = True,
) -> int:
    """Check the actor's role, organization and the fields, then create or change a rule.

    Returns the rule's id. Changing a rule needs access to both its current
    organization and `organization_id`.
    """
    access.require_organization(actor, organization_id, "alerts.manage")
    if rule_id is not None:
        _require_rule(conn, actor, rule_id)
    provider = (provider or "").strip() or None
    check_rule(
        name=name,
        kind=kind,
        provider=provider,
        window_seconds=window_seconds,
        min_requests=min_requests,
        cooldown_seconds=cooldown_seconds,
    )
    exists = conn.execute(select(organizations.c.id).where(organizations.c.id == organization_id))
    if exists.first() is None:
        raise NotFoundError(f"organization {organization_id} not found")
    values: dict[str, Any] = {
        "organization_id": organization_id,
        "name": name.strip(),
        "kind": kind,
        "provider": provider,
        "threshold": parse_threshold(kind, threshold),
        "window_seconds": window_seconds,
        "min_requests": min_requests,
        "cooldown_seconds": cooldown_seconds,
        "enabled": enabled,
        "updated_by": actor.username,
        "updated_at": func.now(),
    }
    before = None
    if rule_id is None:
        rule_id = conn.execute(
            insert(health_alert_rules).values(values).returning(health_alert_rules.c.id)
        ).scalar_one()
        action = "health_rule.create"
    else:
        before = asdict(get_rule(conn, rule_id))
        conn.execute(
            update(health_alert_rules).where(health_alert_rules.c.id == rule_id).values(values)
        )
        action = "health_rule.update"
    _record(conn, actor, action, rule_id, before, asdict(get_rule(conn, rule_id)))
    return rule_id


def delete_rule(conn: Connection, actor: access.Actor, rule_id: int) -> bool:
    """Check the actor's role and organization, and delete a rule with its incidents.

    Returns False when the rule was already gone.
    """
    access.require_actor(actor, "alerts.manage")
    try:
        rule = _require_rule(conn, actor, rule_id)
    except NotFoundError:
        return False
    before = asdict(rule)
    conn.execute(delete(health_alert_rules).where(health_alert_rules.c.id == rule_id))
    _record(conn, actor, "health_rule.delete", rule_id, before, None)
    return True


def _record(
    conn: Connection,
    actor: access.Actor,
    action: str,
    rule_id: int,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    audit.record(
        conn,
        actor=actor.username,
        action=action,
        object_type="health_rule",
        object_id=rule_id,
        before=before,
        after=after,
        client_address=actor.client_address,
    )
