"""Billing in-process: settings, Checkout, events, coupons, referrals, sign-up, emails.

The real stripe client talks to a fake Stripe API on 127.0.0.1. Webhook
deliveries through the running proxy are tested in test_billing_webhook.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
import pytest
import streamlit as st
from markupsafe import escape
from sqlalchemy import Engine, select
from streamlit.runtime.context import ContextProxy
from streamlit.testing.v1 import AppTest

from gateway_core import billing, directory, emails, keys, ledger, promotions, signup
from gateway_core.access import Actor
from gateway_core.billing import Billing, BillingSettings
from gateway_core.config import ConfigError
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.schema import (
    api_keys,
    audit_log,
    billing_subscriptions,
    ledger_entries,
    organization_members,
    payments,
    stripe_events,
    teams,
    users,
)
from tests.conftest import TEST_SECRET
from tests.support.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, event

PAGE_PATH = Path(__file__).resolve().parent.parent / "pages" / "billing.py"
SUCCESS_URL = "http://127.0.0.1:8501/billing?checkout=success"
CANCEL_URL = "http://127.0.0.1:8501/billing?checkout=cancel"
PASSWORD = "correct horse battery staple"
# Installation staff: an owner in no organization.
STAFF = Actor("tester", "owner")


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def billing_service(fake_stripe: FakeStripe) -> Billing:
    settings = BillingSettings(
        api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, api_base=fake_stripe.base_url
    )
    return Billing(settings)


def make_org(engine: Engine, name: str = "Acme") -> int:
    with engine.begin() as conn:
        return directory.ensure_organization(conn, name)


def org_balance(engine: Engine, org_id: int) -> Decimal | None:
    with engine.connect() as conn:
        return ledger.balance(conn, "organization", org_id)


def entries(engine: Engine, org_id: int, kind: str | None = None) -> list[Any]:
    query = select(ledger_entries).where(
        ledger_entries.c.scope_type == "organization", ledger_entries.c.scope_id == org_id
    )
    if kind is not None:
        query = query.where(ledger_entries.c.kind == kind)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(ledger_entries.c.id)))


def apply(engine: Engine, service: Billing, payload: dict[str, Any]) -> billing.EventOutcome:
    with engine.begin() as conn:
        return service.handle_event(conn, payload)


def topup(engine: Engine, service: Billing, org_id: int, amount: str) -> billing.TopupSession:
    with engine.begin() as conn:
        return service.create_topup_session(
            conn, org_id, Decimal(amount), SUCCESS_URL, CANCEL_URL, STAFF
        )


def paid_topup(engine: Engine, service: Billing, fake: FakeStripe, org_id: int, amount: str) -> str:
    session = topup(engine, service, org_id, amount)
    outcome = apply(
        engine, service, event("checkout.session.completed", fake.pay(session.session_id))
    )
    assert outcome.status == "processed"
    return session.session_id


# Settings


def test_settings_none_without_key() -> None:
    assert BillingSettings.from_env({}) is None
    assert Billing.from_env({"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}) is None


def test_settings_read_environment() -> None:
    settings = BillingSettings.from_env(
        {
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": "http://127.0.0.1:9/",
            "GATEWAYZ_TOPUP_MIN_USD": "10",
            "GATEWAYZ_TOPUP_MAX_USD": "250.50",
            "GATEWAYZ_BILLING_GRACE_DAYS": "3",
        }
    )
    assert settings is not None
    assert settings.api_base == "http://127.0.0.1:9"
    assert settings.topup_min == Decimal(10)
    assert settings.topup_max == Decimal("250.50")
    assert settings.grace_days == 3
    assert API_KEY not in repr(settings)
    assert WEBHOOK_SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"STRIPE_API_KEY": "pk_test_123"}, "publishable key"),
        ({"STRIPE_WEBHOOK_SECRET": ""}, "STRIPE_WEBHOOK_SECRET is not set"),
        ({"STRIPE_API_BASE": "ftp://example"}, "STRIPE_API_BASE"),
        ({"GATEWAYZ_TOPUP_MIN_USD": "50", "GATEWAYZ_TOPUP_MAX_USD": "20"}, "at most"),
        ({"GATEWAYZ_TOPUP_MIN_USD": "5.001"}, "whole cents"),
        ({"GATEWAYZ_BILLING_GRACE_DAYS": "-1"}, "positive whole number"),
    ],
)
def test_settings_reject_invalid(overrides: dict[str, str], message: str) -> None:
    env = {"STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, **overrides}
    with pytest.raises(ConfigError, match=message):
        BillingSettings.from_env(env)


# Checkout


def test_topup_session_created(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id = make_org(engine)
    session = topup(engine, billing_service, org_id, "25.00")
    assert session.url.startswith(fake_stripe.base_url + "/pay/")
    assert session.amount == Decimal("25.00")
    created = [p for m, path, p in fake_stripe.requests if path == "/v1/checkout/sessions"][-1]
    assert created["mode"] == "payment"
    assert len(created["line_items"]) == 1
    assert created["line_items"][0]["price_data"]["unit_amount"] == "2500"
    assert created["line_items"][0]["price_data"]["currency"] == "usd"
    with engine.connect() as conn:
        row = conn.execute(select(payments)).one()
    assert row.status == "pending"
    assert row.stripe_session_id == session.session_id
    assert row.amount == Decimal("25.00")
    # Nothing is credited before Stripe reports the payment.
    assert org_balance(engine, org_id) is None


def test_topup_reuses_customer(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id = make_org(engine)
    topup(engine, billing_service, org_id, "10")
    topup(engine, billing_service, org_id, "20")
    sessions = [p for m, path, p in fake_stripe.requests if path == "/v1/checkout/sessions"]
    assert sessions[-1]["customer"] == sessions[-2]["customer"]
    with engine.connect() as conn:
        assert billing.stripe_customer_of(conn, org_id, STAFF) == sessions[-1]["customer"]


@pytest.mark.parametrize("amount", ["4.99", "1000.01", "10.005", "-10"])
def test_topup_amount_outside_limits(engine: Engine, billing_service: Billing, amount: str) -> None:
    org_id = make_org(engine)
    with pytest.raises(InvalidRequestError):
        topup(engine, billing_service, org_id, amount)


def test_topup_rejects_float(engine: Engine, billing_service: Billing) -> None:
    org_id = make_org(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="float"):
        billing_service.create_topup_session(conn, org_id, 10.0, SUCCESS_URL, CANCEL_URL, STAFF)  # type: ignore[arg-type]


def test_topup_unknown_organization(engine: Engine, billing_service: Billing) -> None:
    with engine.begin() as conn, pytest.raises(NotFoundError):
        billing_service.create_topup_session(conn, 999, Decimal(10), SUCCESS_URL, CANCEL_URL, STAFF)


def test_portal_session(engine: Engine, billing_service: Billing, fake_stripe: FakeStripe) -> None:
    org_id = make_org(engine)
    with engine.begin() as conn, pytest.raises(NotFoundError, match="no Stripe customer"):
        billing_service.create_portal_session(conn, org_id, SUCCESS_URL, STAFF)
    topup(engine, billing_service, org_id, "10")
    with engine.begin() as conn:
        url = billing_service.create_portal_session(conn, org_id, SUCCESS_URL, STAFF)
    assert url.startswith(fake_stripe.base_url + "/portal/")


# Events


def test_credit_comes_from_line_items(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id = make_org(engine)
    session = topup(engine, billing_service, org_id, "25")
    body = fake_stripe.pay(session.session_id)
    # A tampered event body does not change what is credited.
    body["amount_total"] = 999_999
    body["metadata"] = {"amount": "9999"}
    outcome = apply(engine, billing_service, event("checkout.session.completed", body))
    assert outcome.status == "processed"
    assert org_balance(engine, org_id) == Decimal(25)
    [entry] = entries(engine, org_id, "purchase")
    assert entry.reference == session.session_id
    assert outcome.receipt is not None
    assert outcome.receipt.email == "payer@example.com"
    assert outcome.receipt.amount == Decimal(25)


def test_unpaid_completion_waits(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id = make_org(engine)
    session = topup(engine, billing_service, org_id, "30")
    body = fake_stripe.complete_unpaid(session.session_id)
    outcome = apply(engine, billing_service, event("checkout.session.completed", body))
    assert outcome.status == "ignored"
    assert org_balance(engine, org_id) is None
    paid = fake_stripe.pay(session.session_id)
    later = apply(engine, billing_service, event("checkout.session.async_payment_succeeded", paid))
    assert later.status == "processed"
    assert org_balance(engine, org_id) == Decimal(30)


def test_event_id_recorded_once(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id = make_org(engine)
    session = topup(engine, billing_service, org_id, "12")
    payload = event("checkout.session.completed", fake_stripe.pay(session.session_id))
    assert apply(engine, billing_service, payload).status == "processed"
    assert apply(engine, billing_service, payload).status == "duplicate"
    assert org_balance(engine, org_id) == Decimal(12)
    with engine.connect() as conn:
        outcomes = conn.execute(select(stripe_events.c.outcome)).scalars().all()
    assert outcomes == ["processed"]


def test_foreign_session_ignored(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    body = {"id": "cs_test_not_ours", "object": "checkout.session", "mode": "payment"}
    body["payment_status"] = "paid"
    outcome = apply(engine, billing_service, event("checkout.session.completed", body))
    assert outcome.status == "ignored"


def test_unhandled_event_ignored(engine: Engine, billing_service: Billing) -> None:
    outcome = apply(engine, billing_service, event("customer.created", {"id": "cus_x"}))
    assert outcome.status == "ignored"


def test_expired_session_marked(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id = make_org(engine)
    session = topup(engine, billing_service, org_id, "10")
    body = dict(fake_stripe.sessions[session.session_id], status="expired")
    assert apply(engine, billing_service, event("checkout.session.expired", body)).status == (
        "processed"
    )
    with engine.connect() as conn:
        assert conn.execute(select(payments.c.status)).scalar_one() == "expired"


def test_first_payment_allows_live_keys(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    result = sign_up_org(engine)
    with engine.connect() as conn:
        assert not signup.live_keys_allowed(conn, result.organization_id, STAFF)
    paid_topup(engine, billing_service, fake_stripe, result.organization_id, "10")
    with engine.connect() as conn:
        assert signup.live_keys_allowed(conn, result.organization_id, STAFF)
        signup.check_live_key_allowed(conn, result.team_id)


# Plans


def subscription(customer: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    period_end = int((datetime.now(UTC) + timedelta(days=30)).timestamp())
    return {
        "id": "sub_test_1",
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": False,
        "items": {
            "object": "list",
            "data": [{"price": {"id": "price_pro"}, "current_period_end": period_end}],
        },
        **extra,
    }


def invoice(customer: str, invoice_id: str = "in_test_1", **extra: Any) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0)
    end = start + timedelta(days=30)
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "currency": "usd",
        "amount_due": 2000,
        "amount_paid": 2000,
        "hosted_invoice_url": f"https://invoice.example/{invoice_id}",
        "parent": {"subscription_details": {"subscription": "sub_test_1"}},
        "lines": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "pricing": {"price_details": {"price": "price_pro"}},
                    "quantity": 1,
                    "period": {"start": int(start.timestamp()), "end": int(end.timestamp())},
                }
            ],
        },
        **extra,
    }


def plan_customer(engine: Engine, billing_service: Billing) -> tuple[int, str]:
    org_id = make_org(engine)
    with engine.begin() as conn:
        billing.save_plan(conn, "price_pro", "Pro", Decimal(15), STAFF)
        url = billing_service.create_plan_session(
            conn, org_id, "price_pro", SUCCESS_URL, CANCEL_URL, STAFF
        )
        customer = billing.stripe_customer_of(conn, org_id, STAFF)
    assert url
    assert customer is not None
    return org_id, customer


def test_invoice_paid_grants_allowance(engine: Engine, billing_service: Billing) -> None:
    org_id, customer = plan_customer(engine, billing_service)
    body = invoice(customer)
    assert apply(engine, billing_service, event("invoice.paid", body)).status == "processed"
    # Another event about the same invoice grants nothing more.
    apply(engine, billing_service, event("invoice.paid", body))
    [grant] = entries(engine, org_id, "grant")
    assert grant.amount == Decimal(15)
    assert grant.reference == "in_test_1"
    period_end = body["lines"]["data"][0]["period"]["end"]
    assert grant.expires_at == datetime.fromtimestamp(period_end, UTC)
    with engine.connect() as conn:
        state = billing.plan_state(conn, org_id, STAFF)
        [listed] = billing.list_invoices(conn, org_id, STAFF)
    assert state is not None
    assert state.status == "active"
    assert state.plan_name == "Pro"
    assert listed.allowance == Decimal(15)
    assert listed.amount_paid == Decimal(20)


def test_next_invoice_renews_allowance(engine: Engine, billing_service: Billing) -> None:
    org_id, customer = plan_customer(engine, billing_service)
    apply(engine, billing_service, event("invoice.paid", invoice(customer, "in_test_1")))
    apply(engine, billing_service, event("invoice.paid", invoice(customer, "in_test_2")))
    grants = entries(engine, org_id, "grant")
    assert [grant.reference for grant in grants] == ["in_test_1", "in_test_2"]


def test_payment_failed_sets_grace(engine: Engine, billing_service: Billing) -> None:
    org_id, customer = plan_customer(engine, billing_service)
    apply(engine, billing_service, event("invoice.paid", invoice(customer)))
    failed = invoice(customer, "in_test_2", amount_paid=0)
    before = datetime.now(UTC)
    outcome = apply(engine, billing_service, event("invoice.payment_failed", failed))
    assert outcome.status == "processed"
    with engine.connect() as conn:
        state = billing.plan_state(conn, org_id, STAFF)
    assert state is not None
    assert state.status == "past_due"
    assert state.grace_until is not None
    assert timedelta(days=6) < state.grace_until - before <= timedelta(days=7, minutes=1)
    assert len(entries(engine, org_id, "grant")) == 1
    # A later successful payment ends the grace period.
    apply(engine, billing_service, event("invoice.paid", invoice(customer, "in_test_2")))
    with engine.connect() as conn:
        state = billing.plan_state(conn, org_id, STAFF)
    assert state is not None
    assert state.status == "active"
    assert state.grace_until is None


def test_subscription_deleted_ends_plan(engine: Engine, billing_service: Billing) -> None:
    org_id, customer = plan_customer(engine, billing_service)
    apply(engine, billing_service, event("customer.subscription.created", subscription(customer)))
    ended = subscription(customer, status="canceled")
    apply(engine, billing_service, event("customer.subscription.deleted", ended))
    with engine.connect() as conn:
        state = billing.plan_state(conn, org_id, STAFF)
    assert state is not None
    assert state.status == "canceled"


def test_older_subscription_event_ignored(engine: Engine, billing_service: Billing) -> None:
    org_id, customer = plan_customer(engine, billing_service)
    now = int(time.time())
    newer = event("customer.subscription.updated", subscription(customer, "past_due"), now)
    older = event("customer.subscription.updated", subscription(customer, "active"), now - 60)
    assert apply(engine, billing_service, newer).status == "processed"
    assert apply(engine, billing_service, older).status == "ignored"
    with engine.connect() as conn:
        state = billing.plan_state(conn, org_id, STAFF)
        stored = conn.execute(select(billing_subscriptions.c.status)).scalar_one()
    assert state is not None
    assert stored == "past_due"


def test_allowance_spent_before_purchase(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, customer = plan_customer(engine, billing_service)
    paid_topup(engine, billing_service, fake_stripe, org_id, "20")
    apply(engine, billing_service, event("invoice.paid", invoice(customer)))
    assert org_balance(engine, org_id) == Decimal(35)
    with engine.begin() as conn:
        ledger.add_entry(
            conn,
            scope_type="organization",
            scope_id=org_id,
            amount=Decimal(-12),
            kind="usage",
            reference="req_1",
        )
    with engine.begin() as conn:
        written = ledger.expire_credits(conn, datetime.now(UTC) + timedelta(days=31))
    assert written == 1
    # The $15 allowance paid for the $12 of usage first, so only its unused
    # $3 expires and the $20 purchase is untouched.
    assert org_balance(engine, org_id) == Decimal(20)
    [expiry] = entries(engine, org_id, "expiry")
    assert expiry.amount == Decimal(-3)


def test_save_plan_validates(engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(InvalidRequestError, match="price_"):
            billing.save_plan(conn, "prod_1", "Pro", Decimal(10), STAFF)
        with pytest.raises(InvalidRequestError, match="negative"):
            billing.save_plan(conn, "price_1", "Pro", Decimal(-1), STAFF)


# Coupons


def test_coupon_max_redemptions(engine: Engine) -> None:
    orgs = [make_org(engine, f"org-{i}") for i in range(3)]
    with engine.begin() as conn:
        promotions.create_coupon(conn, "launch", Decimal(5), actor=STAFF, max_redemptions=2)
    for org_id in orgs[:2]:
        with engine.begin() as conn:
            assert promotions.redeem_coupon(conn, org_id, "LAUNCH", STAFF) == Decimal(5)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="maximum of 2"):
        promotions.redeem_coupon(conn, orgs[2], "launch", STAFF)
    assert org_balance(engine, orgs[2]) is None
    with engine.connect() as conn:
        [coupon] = promotions.list_coupons(conn, STAFF)
    assert coupon.redemptions == 2


def test_coupon_once_per_org(engine: Engine) -> None:
    org_id = make_org(engine)
    with engine.begin() as conn:
        promotions.create_coupon(conn, "WELCOME", Decimal("7.50"), actor=STAFF)
    with engine.begin() as conn:
        promotions.redeem_coupon(conn, org_id, "welcome", STAFF)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="already redeemed"):
        promotions.redeem_coupon(conn, org_id, "welcome", STAFF)
    assert org_balance(engine, org_id) == Decimal("7.50")


def test_coupon_validity_window(engine: Engine) -> None:
    org_id = make_org(engine)
    start = datetime.now(UTC) + timedelta(days=1)
    with engine.begin() as conn:
        promotions.create_coupon(
            conn,
            "SPRING",
            Decimal(5),
            actor=STAFF,
            valid_from=start,
            valid_until=start + timedelta(days=7),
        )
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="not valid before"):
        promotions.redeem_coupon(conn, org_id, "SPRING", STAFF)
    late = start + timedelta(days=8)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="expired"):
        promotions.redeem_coupon(conn, org_id, "SPRING", STAFF, now=late)
    inside = start + timedelta(days=2)
    with engine.begin() as conn:
        promotions.redeem_coupon(conn, org_id, "SPRING", STAFF, now=inside)
    assert org_balance(engine, org_id) == Decimal(5)


def test_coupon_concurrent_redemptions(engine: Engine) -> None:
    orgs = [make_org(engine, f"race-{i}") for i in range(6)]
    with engine.begin() as conn:
        promotions.create_coupon(conn, "RACE", Decimal(1), actor=STAFF, max_redemptions=3)
    results: list[str] = []

    def redeem(org_id: int) -> None:
        try:
            with engine.begin() as conn:
                promotions.redeem_coupon(conn, org_id, "RACE", STAFF)
            results.append("ok")
        except InvalidRequestError:
            results.append("rejected")

    threads = [threading.Thread(target=redeem, args=(org_id,)) for org_id in orgs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == ["ok"] * 3 + ["rejected"] * 3


def test_coupon_unknown_and_invalid(engine: Engine) -> None:
    org_id = make_org(engine)
    with engine.begin() as conn, pytest.raises(NotFoundError):
        promotions.redeem_coupon(conn, org_id, "NOPE", STAFF)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="invalid"):
        promotions.create_coupon(conn, "a b", Decimal(1), actor=STAFF)


# Sign-up and referrals


def enable_signup(engine: Engine, **changes: Any) -> None:
    with engine.begin() as conn:
        current = signup.get_settings(conn)
        values = {
            "signup_enabled": True,
            "trial_credit": current.trial_credit,
            "trial_days": current.trial_days,
            "referral_credit": current.referral_credit,
            **changes,
        }
        signup.save_settings(conn, signup.SelfServiceSettings(**values), STAFF)


def sign_up_org(
    engine: Engine, email: str = "ada@example.com", org: str = "Analytical", **kwargs: Any
) -> signup.SignupResult:
    enable_signup(engine)
    with engine.begin() as conn:
        return signup.sign_up(conn, TEST_SECRET.encode(), email, PASSWORD, org, **kwargs)


def test_signup_off_by_default(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(PermissionDeniedError, match="switched off"):
        signup.sign_up(conn, TEST_SECRET.encode(), "a@example.com", PASSWORD, "Org")


def test_signup_creates_everything(engine: Engine) -> None:
    result = sign_up_org(engine, email="Ada@Example.com")
    assert result.test_key.secret.startswith("gw_test_")
    assert result.test_key.mode == "test"
    with engine.connect() as conn:
        user = conn.execute(select(users).where(users.c.id == result.user_id)).one()
        team = conn.execute(select(teams).where(teams.c.id == result.team_id)).one()
        key_row = conn.execute(select(api_keys).where(api_keys.c.id == result.test_key.id)).one()
        member = conn.execute(select(organization_members)).one()
        allowed = signup.live_keys_allowed(conn, result.organization_id, STAFF)
    assert user.username == "ada@example.com"
    assert user.role == "owner"
    assert user.password_hash != PASSWORD
    assert team.organization_id == result.organization_id
    assert key_row.key_hash == keys.hash_key(TEST_SECRET.encode(), result.test_key.secret)
    assert member.organization_id == result.organization_id
    assert member.user_id == result.user_id
    assert allowed is False
    [trial] = entries(engine, result.organization_id, "trial")
    assert trial.amount == Decimal(10)
    assert trial.expires_at is not None
    assert org_balance(engine, result.organization_id) == Decimal(10)


def test_signup_rejects_duplicates(engine: Engine) -> None:
    sign_up_org(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="already exists"):
        signup.sign_up(conn, TEST_SECRET.encode(), "ada@example.com", PASSWORD, "Other")
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="already exists"):
        signup.sign_up(conn, TEST_SECRET.encode(), "bob@example.com", PASSWORD, "analytical")


@pytest.mark.parametrize(
    ("email", "password", "org", "param"),
    [
        ("not-an-email", PASSWORD, "Org", "email"),
        ("a@example.com", "short", "Org", "password"),
        ("a@example.com", PASSWORD, "   ", "org_name"),
    ],
)
def test_signup_validates_input(
    engine: Engine, email: str, password: str, org: str, param: str
) -> None:
    enable_signup(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError) as raised:
        signup.sign_up(conn, TEST_SECRET.encode(), email, password, org)
    assert raised.value.param == param


def test_live_keys_need_approval(engine: Engine) -> None:
    result = sign_up_org(engine)
    operator_org = make_org(engine, "Operator")
    with engine.begin() as conn:
        operator_team = directory.create_team(conn, "ops", organization="Operator")
    with engine.connect() as conn:
        with pytest.raises(PermissionDeniedError, match="first paid top-up"):
            signup.check_live_key_allowed(conn, result.team_id)
        # Organizations an operator created keep live keys.
        assert signup.live_keys_allowed(conn, operator_org, STAFF)
        signup.check_live_key_allowed(conn, operator_team.id)
    with engine.begin() as conn:
        signup.approve_live_keys(conn, Actor("admin", "admin"), result.organization_id)
    with engine.connect() as conn:
        signup.check_live_key_allowed(conn, result.team_id)


def test_referral_credits_after_first_payment(
    engine: Engine, billing_service: Billing, fake_stripe: FakeStripe
) -> None:
    referrer = sign_up_org(engine, "ref@example.com", "Referrer")
    with engine.begin() as conn:
        code = promotions.referral_code_for(conn, referrer.organization_id, STAFF)
        assert promotions.referral_code_for(conn, referrer.organization_id, STAFF) == code
    referred = sign_up_org(engine, "new@example.com", "Newcomer", referral_code=code.lower())
    # Signing up alone adds no referral credit.
    assert entries(engine, referrer.organization_id, "grant") == []
    assert entries(engine, referred.organization_id, "grant") == []
    paid_topup(engine, billing_service, fake_stripe, referred.organization_id, "10")
    paid_topup(engine, billing_service, fake_stripe, referred.organization_id, "10")
    for org_id in (referrer.organization_id, referred.organization_id):
        [grant] = entries(engine, org_id, "grant")
        assert grant.amount == Decimal(10)
        assert grant.reference == f"referral:{referred.organization_id}"
    assert org_balance(engine, referred.organization_id) == Decimal(40)
    assert org_balance(engine, referrer.organization_id) == Decimal(20)


def test_referral_code_unknown(engine: Engine) -> None:
    enable_signup(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="referral code"):
        signup.sign_up(
            conn, TEST_SECRET.encode(), "x@example.com", PASSWORD, "X", referral_code="NOPE"
        )


# Emails


@pytest.mark.parametrize("name", emails.TEMPLATES)
def test_render_each_template(name: str) -> None:
    subject, text, html = emails.render_email(name, **emails.sample_context(name))
    assert subject
    assert "\n" not in subject
    assert "Acme Research" in text
    assert html.startswith("<!doctype html>")
    assert f"<title>{escape(subject)}</title>" in html


def test_render_escapes_html() -> None:
    context = emails.sample_context("payment_receipt")
    context["organization"] = "<script>alert(1)</script>"
    _, text, html = emails.render_email("payment_receipt", **context)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<script>alert(1)</script>" in text


def test_render_missing_variable() -> None:
    with pytest.raises(jinja2.UndefinedError):
        emails.render_email("welcome", organization="Acme")


def test_format_usd() -> None:
    assert emails.format_usd(Decimal("1234.5")) == "$1,234.50"
    assert emails.format_usd(Decimal("-0.005")) == "-$0.01"
    with pytest.raises(TypeError):
        emails.format_usd(1.5)  # type: ignore[arg-type]


# Billing page


@pytest.fixture
def page_env(engine: Engine, server_env: dict[str, str], monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", server_env["DATABASE_URL"])
    monkeypatch.setenv("GATEWAYZ_SECRET", server_env["GATEWAYZ_SECRET"])
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    # AppTest's client address is a MagicMock; Streamlit reports None for localhost.
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: None))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def run_page(username: str = "owner", role: str = "owner") -> AppTest:
    at = AppTest.from_file(PAGE_PATH, default_timeout=60)
    at.session_state["gatewayz_allowed_pages"] = frozenset({"billing"})
    at.session_state["gatewayz_user"] = {
        "username": username,
        "display_name": username.title(),
        "role": role,
        # None: installation staff, as app.py stores a user in no organization.
        "organization_ids": None,
    }
    at.run()
    assert not at.exception, at.exception
    return at


def page_text(at: AppTest) -> str:
    parts = [element.value for element in (*at.info, *at.warning, *at.error, *at.success)]
    parts += [element.value for element in at.markdown]
    return "\n".join(str(part) for part in parts)


def test_page_without_stripe(engine: Engine, page_env: None) -> None:
    make_org(engine)
    at = run_page()
    text = page_text(at)
    assert "Stripe is not configured" in text
    assert "STRIPE_API_KEY" in text
    assert "works without it" in text
    assert not [button for button in at.button if button.label == "Create Checkout Session"]


def test_page_requires_registration(page_env: None) -> None:
    at = AppTest.from_file(PAGE_PATH, default_timeout=60)
    at.run()
    assert [element.value for element in at.error]


def test_page_creates_checkout_session(
    engine: Engine, page_env: None, fake_stripe: FakeStripe, monkeypatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("STRIPE_API_BASE", fake_stripe.base_url)
    org_id = make_org(engine)
    at = run_page()
    at.text_input(key="billing_topup_amount").input("15.00")
    [submit] = [button for button in at.button if button.label == "Create Checkout Session"]
    submit.click()
    at.run()
    assert not at.exception, at.exception
    assert fake_stripe.base_url + "/pay/" in page_text(at)
    with engine.connect() as conn:
        [payment] = billing.list_payments(conn, org_id, STAFF)
    assert payment.amount == Decimal(15)
    assert payment.created_by == "owner"


def test_page_switches_signup_and_approves(engine: Engine, page_env: None) -> None:
    result = sign_up_org(engine)
    with engine.begin() as conn:
        signup.set_signup_enabled(conn, Actor("root", "owner"), False)
    at = run_page()
    at.selectbox(key="billing_org").set_value(result.organization_id)
    at.run()
    assert "after first top-up" in [metric.value for metric in at.metric]
    at.toggle(key="billing_signup_enabled").set_value(True)
    at.run()
    assert not at.exception, at.exception
    assert "Self-service sign-up is now on." in page_text(at)
    [approve] = [b for b in at.button if b.label == "Approve live keys for this organization"]
    approve.click()
    at.run()
    assert not at.exception, at.exception
    assert "This organization may now create live keys." in page_text(at)
    with engine.connect() as conn:
        assert signup.get_settings(conn).signup_enabled is True
        assert signup.live_keys_allowed(conn, result.organization_id, STAFF) is True
        actions = conn.execute(select(audit_log.c.actor, audit_log.c.action)).all()
    assert ("owner", "signup.set_enabled") in actions
    assert ("owner", "organizations.approve_live_keys") in actions


def test_page_billing_role_cannot_switch_signup(engine: Engine, page_env: None) -> None:
    make_org(engine)
    at = run_page("bea", "billing")
    assert not [toggle for toggle in at.toggle if toggle.key == "billing_signup_enabled"]


def test_page_previews_every_template(engine: Engine, page_env: None) -> None:
    at = run_page()
    for name in emails.TEMPLATES:
        at.selectbox(key="billing_email_template").set_value(name)
        at.run()
        assert not at.exception, at.exception
        subject, _, _ = emails.render_email(name, **emails.sample_context(name))
        assert f"**Subject:** {subject}" in page_text(at)


def test_page_lists_outbox(engine: Engine, page_env: None) -> None:
    sign_up_org(engine)
    at = run_page()
    frames = [frame.value for frame in at.dataframe]
    outbox = [frame for frame in frames if "Template" in frame.columns]
    assert len(outbox) == 1
    assert outbox[0]["Template"].tolist() == ["welcome"]
    assert outbox[0]["Status"].tolist() == ["pending"]
