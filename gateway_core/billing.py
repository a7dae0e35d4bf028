"""Credit top-ups and plans paid through Stripe.

Billing is optional: `Billing.from_env()` returns None when STRIPE_API_KEY
is unset, and the rest of Gatewayz works without it.

A top-up is a Stripe Checkout Session in payment mode with one line item
priced in cents. `create_topup_session` records it as a pending row in
`payments`. Credit is added only when Stripe's webhook reports the session
paid, and the amount credited is the paid total of the session's line
items, without tax, as Stripe returns them when the session is retrieved. It
is never a value from the browser, the event body or metadata. Webhook
events are handled in `gateway_core.billing_events`.

A plan is a Stripe subscription to a price listed in `billing_plans`. Each
paid invoice grants the plan's monthly allowance as a `grant` ledger entry
that expires at the end of the invoiced period.

Functions that read or change one organization's billing take an `actor`
and check `billing.manage` in that organization (access.require_organization).
Saving plans is `billing.configure`, which only installation staff take.
A bare role string is an installation-wide principal, as the command line
uses. Webhook events take no actor, because the Stripe signature
authenticates them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import stripe
from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import access, billing_events, ledger
from gateway_core.access import Actor
from gateway_core.billing_events import CURRENCY, EventOutcome, PaymentReceipt
from gateway_core.config import ConfigError
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import (
    billing_accounts,
    billing_invoices,
    billing_plans,
    billing_subscriptions,
    organizations,
    payments,
)

logger = logging.getLogger(__name__)

DEFAULT_TOPUP_MIN = Decimal(5)
DEFAULT_TOPUP_MAX = Decimal(1000)
# Days a plan keeps being served after a failed renewal payment.
DEFAULT_GRACE_DAYS = 7
# Seconds a webhook signature stays valid: stripe-python 16.1's Webhook.DEFAULT_TOLERANCE.
DEFAULT_WEBHOOK_TOLERANCE = stripe.Webhook.DEFAULT_TOLERANCE
DEFAULT_APP_URL = "http://127.0.0.1:8501"
TOPUP_PRODUCT_NAME = "Gatewayz credit"

__all__ = [
    "Billing",
    "BillingSettings",
    "EventOutcome",
    "Payment",
    "PaymentReceipt",
    "TopupSession",
]


@dataclass(frozen=True)
class BillingSettings:
    """Stripe billing settings, read from STRIPE_* and GATEWAYZ_* variables."""

    api_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    # Stripe API base address, which only tests change.
    api_base: str | None = None
    topup_min: Decimal = DEFAULT_TOPUP_MIN
    topup_max: Decimal = DEFAULT_TOPUP_MAX
    grace_days: int = DEFAULT_GRACE_DAYS
    webhook_tolerance: int = DEFAULT_WEBHOOK_TOLERANCE
    # The app's public address, for Checkout and portal return pages.
    app_url: str = DEFAULT_APP_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BillingSettings | None:
        """Read the settings; return None when STRIPE_API_KEY is unset."""
        env = os.environ if environ is None else environ
        api_key = env.get("STRIPE_API_KEY", "").strip()
        if not api_key:
            return None

        if not api_key.startswith(("sk_", "rk_")):
            raise ConfigError(
                "STRIPE_API_KEY must be a secret key (sk_...) or a restricted key (rk_...); "
                "a publishable key (pk_...) cannot create Checkout Sessions"
            )
        webhook_secret = env.get("STRIPE_WEBHOOK_SECRET", "").strip()
        if not webhook_secret:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRET is not set; copy the signing secret (whsec_...) of the "
                "webhook endpoint pointing at /billing/stripe/webhook from the Stripe dashboard"
            )

        api_base = env.get("STRIPE_API_BASE", "").strip().rstrip("/") or None
        if api_base is not None:
            _check_http_url("STRIPE_API_BASE", api_base)
        app_url = env.get("GATEWAYZ_APP_URL", DEFAULT_APP_URL).strip().rstrip("/")
        _check_http_url("GATEWAYZ_APP_URL", app_url)

        topup_min = _env_decimal(env, "GATEWAYZ_TOPUP_MIN_USD", DEFAULT_TOPUP_MIN)
        topup_max = _env_decimal(env, "GATEWAYZ_TOPUP_MAX_USD", DEFAULT_TOPUP_MAX)
        if not Decimal("0.50") <= topup_min <= topup_max:
            # Stripe rejects USD charges below $0.50 ("Amount must convert to at
            # least 50 cents").
            raise ConfigError(
                "GATEWAYZ_TOPUP_MIN_USD must be at least 0.50 and at most "
                f"GATEWAYZ_TOPUP_MAX_USD; got {topup_min} and {topup_max}"
            )

        return cls(
            api_key=api_key,
            webhook_secret=webhook_secret,
            api_base=api_base,
            topup_min=topup_min,
            topup_max=topup_max,
            grace_days=_env_int(env, "GATEWAYZ_BILLING_GRACE_DAYS", DEFAULT_GRACE_DAYS),
            webhook_tolerance=_env_int(
                env, "GATEWAYZ_STRIPE_WEBHOOK_TOLERANCE", DEFAULT_WEBHOOK_TOLERANCE
            ),
            app_url=app_url,
        )


def _check_http_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http:// or https:// address, got {value!r}")


def _env_decimal(env: Mapping[str, str], name: str, default: Decimal) -> Decimal:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a dollar amount such as 25.00, got {text!r}") from None
    if not value.is_finite() or value != value.quantize(billing_events.CENT):
        raise ConfigError(f"{name} must be a dollar amount in whole cents, got {text!r}")
    return value


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"{name} must be a positive whole number, got {text!r}")
    return int(text)


def create_stripe_client(settings: BillingSettings) -> stripe.StripeClient:
    """Build a Stripe client for the configured key and API base address."""
    base_addresses: stripe.BaseAddresses | None = (
        {"api": settings.api_base} if settings.api_base else None
    )
    return stripe.StripeClient(settings.api_key, base_addresses=base_addresses)


@dataclass(frozen=True)
class TopupSession:
    payment_id: int
    session_id: str
    # Stripe's hosted Checkout page, where the customer pays.
    url: str
    amount: Decimal


@dataclass(frozen=True)
class Payment:
    id: int
    organization_id: int
    stripe_session_id: str
    amount: Decimal
    status: str
    credited: Decimal | None
    reversed: Decimal
    created_by: str | None
    created_at: datetime
    paid_at: datetime | None


@dataclass(frozen=True)
class Invoice:
    stripe_invoice_id: str
    status: str
    amount_due: Decimal
    amount_paid: Decimal
    allowance: Decimal | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    updated_at: datetime


@dataclass(frozen=True)
class PlanState:
    stripe_subscription_id: str
    stripe_price_id: str | None
    plan_name: str | None
    monthly_allowance: Decimal | None
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    grace_until: datetime | None


@dataclass(frozen=True)
class Plan:
    stripe_price_id: str
    name: str
    monthly_allowance: Decimal


class Billing:
    """Stripe Checkout, the customer portal and webhook handling for one Stripe account."""

    def __init__(self, settings: BillingSettings, client: stripe.StripeClient | None = None):
        self.settings = settings
        self.client = client or create_stripe_client(settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Billing | None:
        """Return a Billing for the environment's settings, or None without STRIPE_API_KEY."""
        settings = BillingSettings.from_env(environ)
        return None if settings is None else cls(settings)

    def check_topup_amount(self, amount: Decimal) -> Decimal:
        """Return `amount` if it is whole cents between the configured minimum and maximum."""
        amount = ledger.validate_amount(amount)
        if amount != amount.quantize(billing_events.CENT):
            raise InvalidRequestError(
                f"top-up amount {amount} must be in whole cents", param="amount"
            )
        low, high = self.settings.topup_min, self.settings.topup_max
        if not low <= amount <= high:
            raise InvalidRequestError(
                f"top-up amount must be between {low} and {high} dollars, got {amount}",
                param="amount",
            )
        return amount

    def create_topup_session(
        self,
        conn: Connection,
        org_id: int,
        amount: Decimal,
        success_url: str,
        cancel_url: str,
        actor: Actor | str,
    ) -> TopupSession:
        """Create a Checkout Session for a credit top-up and record it as pending.

        The session is created at Stripe before the caller commits. If the
        transaction then rolls back, the session is never shown to anyone,
        expires unpaid after 24 hours, and its events are ignored.
        """
        username = require_billing(actor, org_id)
        amount = self.check_topup_amount(amount)
        _check_return_url("success_url", success_url)
        _check_return_url("cancel_url", cancel_url)
        customer = self._ensure_customer(conn, org_id)
        cents = int(amount * 100)
        session = self.client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer,
                "client_reference_id": str(org_id),
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": CURRENCY,
                            "unit_amount": cents,
                            "product_data": {"name": TOPUP_PRODUCT_NAME},
                        },
                    }
                ],
                "success_url": success_url,
                "cancel_url": cancel_url,
                "metadata": {"gatewayz_organization_id": str(org_id)},
            }
        )
        payment_id = conn.execute(
            insert(payments)
            .values(
                organization_id=org_id,
                stripe_session_id=session.id,
                amount=amount,
                currency=CURRENCY,
                status="pending",
                created_by=username,
            )
            .returning(payments.c.id)
        ).scalar_one()
        logger.info(
            "user %s created checkout session %s (payment %d) for %s dollars for organization %d",
            username,
            session.id,
            payment_id,
            amount,
            org_id,
        )
        return TopupSession(payment_id, session.id, session.url or "", amount)

    def create_plan_session(
        self,
        conn: Connection,
        org_id: int,
        price_id: str,
        success_url: str,
        cancel_url: str,
        actor: Actor | str,
    ) -> str:
        """Create a Checkout Session that subscribes the organization to a plan; return its URL."""
        username = require_billing(actor, org_id)
        if get_plan(conn, price_id) is None:
            raise NotFoundError(f"no billing plan with Stripe price {price_id!r}")
        _check_return_url("success_url", success_url)
        _check_return_url("cancel_url", cancel_url)
        customer = self._ensure_customer(conn, org_id)
        session = self.client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": customer,
                "client_reference_id": str(org_id),
                "line_items": [{"price": price_id, "quantity": 1}],
                "success_url": success_url,
                "cancel_url": cancel_url,
            }
        )
        logger.info(
            "user %s created plan checkout session %s for organization %d",
            username,
            session.id,
            org_id,
        )
        return session.url or ""

    def create_portal_session(
        self, conn: Connection, org_id: int, return_url: str, actor: Actor | str
    ) -> str:
        """Create a Stripe customer portal session and return its URL."""
        require_billing(actor, org_id)
        _check_return_url("return_url", return_url)
        customer = _stripe_customer(conn, org_id)
        if customer is None:
            raise NotFoundError(
                f"organization {org_id} has no Stripe customer yet; make a first top-up"
            )
        portal = self.client.v1.billing_portal.sessions.create(
            params={"customer": customer, "return_url": return_url}
        )
        return portal.url

    def construct_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Verify a webhook's Stripe-Signature on the raw body and return the event.

        Raises stripe.SignatureVerificationError for a missing, forged or
        stale signature, and ValueError for a body that is not JSON.
        """
        event = self.client.construct_event(
            payload, signature, self.settings.webhook_secret, self.settings.webhook_tolerance
        )
        return event.to_dict()

    def handle_event(self, conn: Connection, event: Mapping[str, Any]) -> EventOutcome:
        """Apply a verified webhook event in the caller's transaction, once per event id."""
        return billing_events.handle_event(conn, self.client, self.settings.grace_days, event)

    def _ensure_customer(self, conn: Connection, org_id: int) -> str:
        name = conn.execute(
            select(organizations.c.name).where(organizations.c.id == org_id)
        ).scalar_one_or_none()
        if name is None:
            raise NotFoundError(f"organization {org_id} not found")
        existing = _stripe_customer(conn, org_id)
        if existing is not None:
            return existing
        # Stripe keeps idempotency keys for 24 hours, so a retry after a
        # rolled-back transaction returns the same customer.
        customer = self.client.v1.customers.create(
            params={"name": name, "metadata": {"gatewayz_organization_id": str(org_id)}},
            options={"idempotency_key": f"gatewayz-customer-{org_id}"},
        )
        statement = pg_insert(billing_accounts).values(
            organization_id=org_id, stripe_customer_id=customer.id
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["organization_id"], set_={"stripe_customer_id": customer.id}
            )
        )
        logger.info("created Stripe customer %s for organization %d", customer.id, org_id)
        return customer.id


def _check_return_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequestError(
            f"{name} must be an http:// or https:// address, got {value!r}", param=name
        )


def require_billing(actor: Actor | str, org_id: int) -> str:
    """Check that the actor may manage the organization's billing, and return its username."""
    principal = access.as_actor(actor)
    access.require_organization(principal, org_id, "billing.manage")
    return principal.username


def stripe_customer_of(conn: Connection, org_id: int, actor: Actor | str) -> str | None:
    """Return the organization's Stripe customer id, or None before its first checkout."""
    require_billing(actor, org_id)
    return _stripe_customer(conn, org_id)


def _stripe_customer(conn: Connection, org_id: int) -> str | None:
    return conn.execute(
        select(billing_accounts.c.stripe_customer_id).where(
            billing_accounts.c.organization_id == org_id
        )
    ).scalar_one_or_none()


def save_plan(
    conn: Connection, price_id: str, name: str, monthly_allowance: Decimal, actor: Actor | str
) -> Plan:
    """Insert or update the plan for a Stripe recurring price.

    Plans are offered to every organization, so only staff save them.
    """
    principal = access.as_actor(actor)
    access.require_actor(principal, "billing.configure")
    price_id = price_id.strip()
    name = name.strip()
    if not price_id.startswith("price_"):
        raise InvalidRequestError(
            f"Stripe price ids start with price_, got {price_id!r}", param="price_id"
        )
    if not name:
        raise InvalidRequestError("plan name must not be empty", param="name")
    if monthly_allowance != 0:
        monthly_allowance = ledger.validate_amount(monthly_allowance)
    if monthly_allowance < 0:
        raise InvalidRequestError("monthly allowance must not be negative", param="allowance")
    values = {
        "name": name,
        "monthly_allowance": monthly_allowance,
        "created_by": principal.username,
    }
    statement = pg_insert(billing_plans).values(stripe_price_id=price_id, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["stripe_price_id"], set_=values))
    logger.info("user %s saved plan %s (%s)", principal.username, price_id, name)
    return Plan(price_id, name, monthly_allowance)


def get_plan(conn: Connection, price_id: str) -> Plan | None:
    row = conn.execute(
        select(
            billing_plans.c.stripe_price_id,
            billing_plans.c.name,
            billing_plans.c.monthly_allowance,
        ).where(billing_plans.c.stripe_price_id == price_id)
    ).first()
    return None if row is None else Plan(*row)


def list_plans(conn: Connection) -> list[Plan]:
    rows = conn.execute(
        select(
            billing_plans.c.stripe_price_id,
            billing_plans.c.name,
            billing_plans.c.monthly_allowance,
        ).order_by(billing_plans.c.monthly_allowance, billing_plans.c.name)
    )
    return [Plan(*row) for row in rows]


def credit_balance(conn: Connection, org_id: int, actor: Actor | str) -> Decimal | None:
    """Return the organization's credit balance, or None if it is not credit-metered."""
    require_billing(actor, org_id)
    return ledger.balance(conn, "organization", org_id)


def ledger_history(
    conn: Connection, org_id: int, actor: Actor | str, limit: int = 100
) -> list[ledger.LedgerEntry]:
    """Return the organization's latest credit ledger entries, newest first."""
    require_billing(actor, org_id)
    return ledger.history(conn, "organization", org_id, limit=limit)


def list_payments(
    conn: Connection, org_id: int, actor: Actor | str, limit: int = 50
) -> list[Payment]:
    """Return the organization's latest top-ups, newest first."""
    require_billing(actor, org_id)
    rows = conn.execute(
        select(
            payments.c.id,
            payments.c.organization_id,
            payments.c.stripe_session_id,
            payments.c.amount,
            payments.c.status,
            payments.c.credited,
            payments.c.reversed,
            payments.c.created_by,
            payments.c.created_at,
            payments.c.paid_at,
        )
        .where(payments.c.organization_id == org_id)
        .order_by(payments.c.id.desc())
        .limit(limit)
    )
    return [Payment(*row) for row in rows]


def list_invoices(
    conn: Connection, org_id: int, actor: Actor | str, limit: int = 50
) -> list[Invoice]:
    """Return the organization's latest plan invoices, newest first."""
    require_billing(actor, org_id)
    rows = conn.execute(
        select(
            billing_invoices.c.stripe_invoice_id,
            billing_invoices.c.status,
            billing_invoices.c.amount_due,
            billing_invoices.c.amount_paid,
            billing_invoices.c.allowance,
            billing_invoices.c.period_end,
            billing_invoices.c.hosted_invoice_url,
            billing_invoices.c.updated_at,
        )
        .where(billing_invoices.c.organization_id == org_id)
        .order_by(billing_invoices.c.updated_at.desc())
        .limit(limit)
    )
    return [Invoice(*row) for row in rows]


def plan_state(conn: Connection, org_id: int, actor: Actor | str) -> PlanState | None:
    """Return the organization's plan as the latest Stripe events describe it."""
    require_billing(actor, org_id)
    row = conn.execute(
        select(
            billing_subscriptions.c.stripe_subscription_id,
            billing_subscriptions.c.stripe_price_id,
            billing_plans.c.name,
            billing_plans.c.monthly_allowance,
            billing_subscriptions.c.status,
            billing_subscriptions.c.current_period_end,
            billing_subscriptions.c.cancel_at_period_end,
            billing_subscriptions.c.grace_until,
        )
        .outerjoin(
            billing_plans,
            billing_plans.c.stripe_price_id == billing_subscriptions.c.stripe_price_id,
        )
        .where(billing_subscriptions.c.organization_id == org_id)
    ).first()
    return None if row is None else PlanState(*row)
