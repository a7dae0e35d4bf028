"""Stripe webhook events applied to payments, plans and the credit ledger.

`handle_event` runs in the caller's transaction. Its first write inserts the
event id into `stripe_events`, so a redelivered event finds the row and does
nothing, and a concurrent duplicate waits on the primary key until the first
delivery commits. If anything fails, the caller rolls back the event row
with the ledger entries, and Stripe's next delivery applies the event again.

Credit is added at most once per Checkout Session: the `purchase` ledger
entry has the session id as reference, and the payment row is locked while
it is credited. Both `checkout.session.completed` (paid) and
`checkout.session.async_payment_succeeded` credit, in either order.

`charge.refunded` carries the charge's cumulative `amount_refunded`. The
credit to remove is that share of the credited amount minus what earlier
refunds of the charge already removed, so partial refunds, a later full
refund and late or repeated deliveries each remove credit once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe
from sqlalchemy import Connection, Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import ledger, promotions, signup
from gateway_core.schema import (
    billing_accounts,
    billing_invoices,
    billing_plans,
    billing_subscriptions,
    organizations,
    payments,
    stripe_events,
)

logger = logging.getLogger(__name__)

# The ledger is kept in US dollars, so only USD payments are accepted.
CURRENCY = "usd"
CENT = Decimal("0.01")
STRIPE_ACTOR = "stripe"
# Subscription statuses in which a plan's grace period is over or unneeded.
_IN_GOOD_STANDING = ("active", "trialing")


class BillingError(RuntimeError):
    """Stripe sent data this module cannot apply; the event is retried later."""


@dataclass(frozen=True)
class PaymentReceipt:
    """Data for a payment receipt email, sent once the transaction commits."""

    organization_id: int
    organization: str
    email: str | None
    amount: Decimal
    reference: str
    paid_at: datetime
    balance: Decimal | None


@dataclass(frozen=True)
class EventOutcome:
    event_id: str
    event_type: str
    # processed, ignored (nothing to apply) or duplicate (seen before).
    status: str
    detail: str
    receipt: PaymentReceipt | None = None


@dataclass(frozen=True)
class _Handled:
    status: str
    detail: str
    receipt: PaymentReceipt | None = None


def _ignored(detail: str) -> _Handled:
    return _Handled("ignored", detail)


@dataclass(frozen=True)
class _Context:
    client: stripe.StripeClient
    grace_days: int
    event_type: str
    # Stripe's `created` time of the event.
    created: datetime


def _dig(value: Any, *path: str) -> Any:
    """Return value[path[0]][path[1]]..., or None where a level is missing."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _object_id(value: Any) -> str | None:
    """Return the id of a Stripe reference, whether it is an id or an expanded object."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value if isinstance(value, str) and value else None


def _from_timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return datetime.fromtimestamp(value, UTC)


def _dollars(cents: Any, what: str) -> Decimal:
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise BillingError(f"{what} is {cents!r}, expected an integer number of cents")
    return Decimal(cents).scaleb(-2)


def handle_event(
    conn: Connection, client: stripe.StripeClient, grace_days: int, event: Mapping[str, Any]
) -> EventOutcome:
    """Apply one verified Stripe event, once per event id."""
    event_id, event_type = event.get("id"), event.get("type")
    created = _from_timestamp(event.get("created"))
    if not isinstance(event_id, str) or not isinstance(event_type, str) or created is None:
        raise BillingError("the event has no id, type or created time")
    first = conn.execute(
        pg_insert(stripe_events)
        .values(id=event_id, type=event_type, created=created, outcome="processing")
        .on_conflict_do_nothing()
        .returning(stripe_events.c.id)
    ).first()
    if first is None:
        return EventOutcome(event_id, event_type, "duplicate", "event was processed before")
    handler = HANDLERS.get(event_type)
    obj = _dig(event, "data", "object")
    if handler is None:
        handled = _ignored(f"Gatewayz does not handle {event_type} events")
    elif not isinstance(obj, Mapping):
        raise BillingError(f"event {event_id} has no data.object")
    else:
        handled = handler(_Context(client, grace_days, event_type, created), conn, obj)
    conn.execute(
        update(stripe_events).where(stripe_events.c.id == event_id).values(outcome=handled.status)
    )
    logger.info("stripe event %s (%s) %s: %s", event_id, event_type, handled.status, handled.detail)
    return EventOutcome(event_id, event_type, handled.status, handled.detail, handled.receipt)


def _on_checkout_completed(ctx: _Context, conn: Connection, session: Mapping[str, Any]) -> _Handled:
    session_id = session.get("id")
    if session.get("mode") != "payment":
        return _ignored(
            f"checkout session {session_id} is in {session.get('mode')} mode; plans follow "
            "customer.subscription and invoice events"
        )
    if session.get("payment_status") != "paid":
        return _ignored(
            f"checkout session {session_id} is {session.get('payment_status')}; credit waits "
            "for checkout.session.async_payment_succeeded"
        )
    return _credit_session(ctx, conn, str(session_id))


def _on_async_payment_succeeded(
    ctx: _Context, conn: Connection, session: Mapping[str, Any]
) -> _Handled:
    return _credit_session(ctx, conn, str(session.get("id")))


def _on_session_closed(ctx: _Context, conn: Connection, session: Mapping[str, Any]) -> _Handled:
    """Mark a pending top-up failed (async payment failed) or expired."""
    status = "expired" if ctx.event_type == "checkout.session.expired" else "failed"
    marked = conn.execute(
        update(payments)
        .where(payments.c.stripe_session_id == session.get("id"), payments.c.status == "pending")
        .values(status=status)
        .returning(payments.c.id)
    ).first()
    if marked is None:
        return _ignored(f"checkout session {session.get('id')} has no pending payment")
    return _Handled("processed", f"payment {marked.id} marked {status}")


def _lock_payment(conn: Connection, *condition: Any) -> Row[Any] | None:
    return conn.execute(
        select(
            payments.c.id,
            payments.c.organization_id,
            payments.c.stripe_session_id,
            payments.c.amount,
            payments.c.status,
            payments.c.credited,
            payments.c.reversed,
        )
        .where(*condition)
        .with_for_update()
    ).first()


def _credit_session(ctx: _Context, conn: Connection, session_id: str) -> _Handled:
    payment = _lock_payment(conn, payments.c.stripe_session_id == session_id)
    if payment is None:
        return _ignored(f"checkout session {session_id} was not created by Gatewayz")
    if payment.status == "paid":
        return _ignored(f"checkout session {session_id} was credited before")
    # Stripe's copy of the session, not the event body, decides what is credited.
    session = ctx.client.v1.checkout.sessions.retrieve(
        session_id, params={"expand": ["line_items"]}
    ).to_dict()
    if session.get("payment_status") != "paid":
        return _ignored(
            f"Stripe reports checkout session {session_id} as "
            f"{session.get('payment_status')}, not paid"
        )
    credited = _dollars(_line_items_cents(session), f"line items of {session_id}")
    if credited <= 0:
        raise BillingError(f"checkout session {session_id} has no positive line item total")
    if credited != payment.amount:
        logger.warning(
            "checkout session %s: line items total %s dollars but %s were requested; "
            "crediting the line items",
            session_id,
            credited,
            payment.amount,
        )

    organization_id = payment.organization_id
    ledger.add_entry(
        conn,
        scope_type="organization",
        scope_id=organization_id,
        amount=credited,
        kind="purchase",
        reference=session_id,
        reason=f"Stripe top-up, checkout session {session_id}",
        actor=STRIPE_ACTOR,
    )

    paid_at = datetime.now(UTC)
    email = _dig(session, "customer_details", "email")
    conn.execute(
        update(payments)
        .where(payments.c.id == payment.id)
        .values(
            status="paid",
            credited=credited,
            stripe_payment_intent_id=_object_id(session.get("payment_intent")),
            receipt_email=email,
            paid_at=paid_at,
        )
    )

    if signup.allow_live_keys_after_payment(conn, organization_id):
        referral_credit = signup.get_settings(conn).referral_credit
        promotions.credit_referral(conn, organization_id, referral_credit)

    receipt = PaymentReceipt(
        organization_id=organization_id,
        organization=_organization_name(conn, organization_id),
        email=email,
        amount=credited,
        reference=session_id,
        paid_at=paid_at,
        balance=ledger.balance(conn, "organization", organization_id),
    )
    return _Handled(
        "processed",
        f"credited {credited} dollars to organization {organization_id}",
        receipt,
    )


def _line_items_cents(session: Mapping[str, Any]) -> int:
    """Return what the customer paid for the line items, in cents, without tax."""
    items = session.get("line_items")
    if not isinstance(items, Mapping) or items.get("has_more"):
        # Gatewayz creates top-up sessions with one line item, so one page contains them all.
        raise BillingError(f"checkout session {session.get('id')} line items are missing or paged")
    total = 0
    for item in items.get("data") or ():
        if item.get("currency") != CURRENCY:
            raise BillingError(
                f"checkout session {session.get('id')} has a line item in "
                f"{item.get('currency')!r}; only {CURRENCY} is credited"
            )
        amount_total, amount_tax = item.get("amount_total"), item.get("amount_tax") or 0
        if not isinstance(amount_total, int) or not isinstance(amount_tax, int):
            raise BillingError(f"checkout session {session.get('id')} has a malformed line item")
        total += amount_total - amount_tax
    return total


def _organization_name(conn: Connection, organization_id: int) -> str:
    return conn.execute(
        select(organizations.c.name).where(organizations.c.id == organization_id)
    ).scalar_one()


def _on_charge_refunded(ctx: _Context, conn: Connection, charge: Mapping[str, Any]) -> _Handled:
    charge_id = charge.get("id")
    intent = _object_id(charge.get("payment_intent"))
    if intent is None:
        return _ignored(f"charge {charge_id} has no payment intent")
    payment = _lock_payment(conn, payments.c.stripe_payment_intent_id == intent)
    if payment is None:
        # The refund can arrive before the checkout events that name the
        # session's payment intent, so ask Stripe which session it was.
        sessions = ctx.client.v1.checkout.sessions.list(
            params={"payment_intent": intent, "limit": 1}
        )
        if not sessions.data:
            return _ignored(f"charge {charge_id} is not from a Gatewayz checkout session")
        _credit_session(ctx, conn, sessions.data[0].id)
        payment = _lock_payment(conn, payments.c.stripe_payment_intent_id == intent)
    if payment is None or payment.status != "paid" or payment.credited is None:
        return _ignored(f"charge {charge_id} belongs to no credited Gatewayz payment")

    if charge.get("currency") != CURRENCY:
        raise BillingError(f"charge {charge_id} is in {charge.get('currency')!r}, not {CURRENCY}")
    charged, refunded = charge.get("amount"), charge.get("amount_refunded")
    if not isinstance(charged, int) or not isinstance(refunded, int) or charged <= 0:
        raise BillingError(f"charge {charge_id} has a malformed amount or amount_refunded")

    share = (payment.credited * refunded / charged).quantize(CENT, rounding=ROUND_HALF_UP)
    target = min(payment.credited, share)
    reversal = target - payment.reversed
    if reversal <= 0:
        return _ignored(
            f"refunds of charge {charge_id} up to {refunded} cents were reversed before"
        )
    # NOTE: live keys and referral credit that the first paid top-up
    # unlocked stay after a full refund.
    ledger.add_entry(
        conn,
        scope_type="organization",
        scope_id=payment.organization_id,
        amount=-reversal,
        kind="purchase",
        reference=f"{charge_id}:refunded:{refunded}",
        reason=f"refund of charge {charge_id}, checkout session {payment.stripe_session_id}",
        actor=STRIPE_ACTOR,
    )
    conn.execute(
        update(payments)
        .where(payments.c.id == payment.id)
        .values(reversed=target, refunded_cents=refunded)
    )
    return _Handled(
        "processed",
        f"removed {reversal} dollars of credit from organization {payment.organization_id}",
    )


def _organization_for_customer(conn: Connection, customer: Any) -> int | None:
    customer_id = _object_id(customer)
    if customer_id is None:
        return None
    return conn.execute(
        select(billing_accounts.c.organization_id).where(
            billing_accounts.c.stripe_customer_id == customer_id
        )
    ).scalar_one_or_none()


def _apply_plan_state(
    ctx: _Context,
    conn: Connection,
    organization_id: int,
    subscription_id: str,
    status: str,
    **changes: Any,
) -> bool:
    """Write the organization's plan state unless a newer event was applied already.

    Returns False when the stored state came from a later event, or when
    the event ends a subscription that is no longer the organization's.
    """
    current = conn.execute(
        select(
            billing_subscriptions.c.stripe_subscription_id,
            billing_subscriptions.c.status,
            billing_subscriptions.c.grace_until,
            billing_subscriptions.c.last_event_at,
        )
        .where(billing_subscriptions.c.organization_id == organization_id)
        .with_for_update()
    ).first()
    if current is not None:
        if current.last_event_at > ctx.created:
            return False
        replaced = current.stripe_subscription_id != subscription_id
        if replaced and status in ("canceled", "incomplete_expired"):
            return False
    if status in _IN_GOOD_STANDING:
        changes["grace_until"] = None
    elif status == "past_due" and (current is None or current.grace_until is None):
        changes["grace_until"] = datetime.now(UTC) + timedelta(days=ctx.grace_days)
    values = {
        "stripe_subscription_id": subscription_id,
        "status": status,
        "last_event_at": ctx.created,
        "updated_at": func.now(),
        **changes,
    }
    statement = pg_insert(billing_subscriptions).values(organization_id=organization_id, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["organization_id"], set_=values))
    return True


def _on_subscription_changed(
    ctx: _Context, conn: Connection, subscription: Mapping[str, Any]
) -> _Handled:
    subscription_id = subscription.get("id")
    organization_id = _organization_for_customer(conn, subscription.get("customer"))
    if organization_id is None or not isinstance(subscription_id, str):
        return _ignored(f"subscription {subscription_id} has no Gatewayz customer")
    deleted = ctx.event_type == "customer.subscription.deleted"
    status = "canceled" if deleted else str(subscription.get("status"))
    item = next(iter(_dig(subscription, "items", "data") or ()), None)
    # The API version stripe-python 16.1 pins (2026-10-28.endive) has the period on
    # each item. Older versions have it on the subscription.
    period_end = _from_timestamp(_dig(item, "current_period_end")) or _from_timestamp(
        subscription.get("current_period_end")
    )
    applied = _apply_plan_state(
        ctx,
        conn,
        organization_id,
        subscription_id,
        status,
        stripe_price_id=_object_id(_dig(item, "price")),
        current_period_end=period_end,
        cancel_at_period_end=bool(subscription.get("cancel_at_period_end")),
    )
    if not applied:
        return _ignored(f"a later event about organization {organization_id}'s plan was applied")
    return _Handled("processed", f"organization {organization_id} plan is {status}")


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    # The API version stripe-python 16.1 pins has the subscription under parent.
    # Older versions have it at the top level.
    return _object_id(_dig(invoice, "parent", "subscription_details", "subscription")) or (
        _object_id(invoice.get("subscription"))
    )


def _invoice_lines(ctx: _Context, invoice: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    lines = invoice.get("lines")
    if isinstance(lines, Mapping) and not lines.get("has_more"):
        return list(lines.get("data") or ())
    listed = ctx.client.v1.invoices.line_items.list(str(invoice.get("id")), params={"limit": 100})
    return [line.to_dict() for line in listed.auto_paging_iter()]


def _line_price(line: Mapping[str, Any]) -> str | None:
    return _object_id(_dig(line, "pricing", "price_details", "price")) or _object_id(
        line.get("price")
    )


def _invoice_allowance(
    ctx: _Context, conn: Connection, invoice: Mapping[str, Any]
) -> tuple[Decimal, datetime | None, str | None]:
    """Return the plan allowance an invoice pays for, its period end and its price."""
    allowance = Decimal(0)
    period_end: datetime | None = None
    price_id: str | None = None
    for line in _invoice_lines(ctx, invoice):
        line_price = _line_price(line)
        plan_allowance = conn.execute(
            select(billing_plans.c.monthly_allowance).where(
                billing_plans.c.stripe_price_id == line_price
            )
        ).scalar_one_or_none()
        if plan_allowance is None:
            logger.warning(
                "invoice %s has a line with price %s, which matches no billing plan, "
                "so no allowance is granted for that line",
                invoice.get("id"),
                line_price,
            )
            continue
        quantity = line.get("quantity")
        allowance += plan_allowance * (quantity if isinstance(quantity, int) else 1)
        price_id = line_price
        line_end = _from_timestamp(_dig(line, "period", "end"))
        if line_end is not None and (period_end is None or line_end > period_end):
            period_end = line_end
    return allowance, period_end or _from_timestamp(invoice.get("period_end")), price_id


def _record_invoice(
    conn: Connection,
    invoice: Mapping[str, Any],
    organization_id: int,
    status: str,
    allowance: Decimal | None,
    period_end: datetime | None,
) -> None:
    values = {
        "organization_id": organization_id,
        "stripe_subscription_id": _invoice_subscription(invoice),
        "status": status,
        "amount_due": _dollars(invoice.get("amount_due"), "invoice amount_due"),
        "amount_paid": _dollars(invoice.get("amount_paid"), "invoice amount_paid"),
        "currency": str(invoice.get("currency")),
        "hosted_invoice_url": invoice.get("hosted_invoice_url"),
        "period_end": period_end,
        "allowance": allowance,
        "updated_at": func.now(),
    }
    statement = pg_insert(billing_invoices).values(stripe_invoice_id=invoice.get("id"), **values)
    # A failed attempt delivered after the invoice was paid must not undo "paid".
    keep_paid = None if status == "paid" else billing_invoices.c.status != "paid"
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["stripe_invoice_id"], set_=values, where=keep_paid
        )
    )


def _on_invoice_paid(ctx: _Context, conn: Connection, invoice: Mapping[str, Any]) -> _Handled:
    invoice_id = invoice.get("id")
    organization_id = _organization_for_customer(conn, invoice.get("customer"))
    if organization_id is None or not isinstance(invoice_id, str):
        return _ignored(f"invoice {invoice_id} has no Gatewayz customer")
    if invoice.get("currency") != CURRENCY:
        raise BillingError(f"invoice {invoice_id} is in {invoice.get('currency')!r}")

    subscription_id = _invoice_subscription(invoice)
    allowance, period_end, price_id = _invoice_allowance(ctx, conn, invoice)
    _record_invoice(conn, invoice, organization_id, "paid", allowance, period_end)
    if subscription_id is None:
        return _Handled("processed", f"invoice {invoice_id} recorded; it is not for a plan")

    if allowance > 0:
        ledger.add_entry(
            conn,
            scope_type="organization",
            scope_id=organization_id,
            amount=allowance,
            kind="grant",
            reference=invoice_id,
            reason=f"plan allowance, invoice {invoice_id}",
            actor=STRIPE_ACTOR,
            expires_at=period_end,
        )
    changes: dict[str, Any] = {"current_period_end": period_end}
    if price_id is not None:
        changes["stripe_price_id"] = price_id
    _apply_plan_state(ctx, conn, organization_id, subscription_id, "active", **changes)
    return _Handled(
        "processed",
        f"granted a {allowance} dollar allowance to organization {organization_id} "
        f"until {period_end}",
    )


def _on_invoice_payment_failed(
    ctx: _Context, conn: Connection, invoice: Mapping[str, Any]
) -> _Handled:
    invoice_id = invoice.get("id")
    organization_id = _organization_for_customer(conn, invoice.get("customer"))
    if organization_id is None or not isinstance(invoice_id, str):
        return _ignored(f"invoice {invoice_id} has no Gatewayz customer")
    _record_invoice(conn, invoice, organization_id, "payment_failed", None, None)
    subscription_id = _invoice_subscription(invoice)
    if subscription_id is None:
        return _Handled("processed", f"invoice {invoice_id} recorded as failed")
    applied = _apply_plan_state(ctx, conn, organization_id, subscription_id, "past_due")
    if not applied:
        return _ignored(f"a later event about organization {organization_id}'s plan was applied")
    return _Handled("processed", f"organization {organization_id} plan is past due")


Handler = Callable[[_Context, Connection, Mapping[str, Any]], _Handled]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _on_checkout_completed,
    "checkout.session.async_payment_succeeded": _on_async_payment_succeeded,
    "checkout.session.async_payment_failed": _on_session_closed,
    "checkout.session.expired": _on_session_closed,
    "charge.refunded": _on_charge_refunded,
    "customer.subscription.created": _on_subscription_changed,
    "customer.subscription.updated": _on_subscription_changed,
    "customer.subscription.deleted": _on_subscription_changed,
    "invoice.paid": _on_invoice_paid,
    "invoice.payment_failed": _on_invoice_payment_failed,
}
