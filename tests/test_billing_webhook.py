"""Stripe webhooks posted to the running proxy, signed like Stripe signs them.

The proxy runs under uvicorn with STRIPE_* variables pointing at a fake
Stripe API on 127.0.0.1. Top-up sessions are created in the test process
against the same fake, then paid there, and the events about them are
delivered to POST /billing/stripe/webhook.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select, text

from gateway_core import directory, ledger
from gateway_core.billing import Billing, BillingSettings
from gateway_core.schema import ledger_entries, payments, stripe_events
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import free_port
from tests.support.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, event, sign
from tests.support.processes import ProxyProcess

WEBHOOK_PATH = "/billing/stripe/webhook"
SUCCESS_URL = "http://127.0.0.1:8501/billing?checkout=success"
CANCEL_URL = "http://127.0.0.1:8501/billing?checkout=cancel"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    received = Inbox()
    controller = Controller(received, hostname="127.0.0.1", port=free_port())
    controller.start()
    received.port = controller.port  # type: ignore[attr-defined]
    yield received
    controller.stop()


def proxy_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE"):
        env.pop(name, None)
    env.update(DATABASE_URL=database_url, GATEWAYZ_SECRET=TEST_SECRET, **extra)
    return env


@pytest.fixture(scope="module")
def proxy(
    database_url: str, fake_stripe: FakeStripe, inbox: Inbox, tmp_path_factory
) -> Iterator[ProxyProcess]:
    env = proxy_env(
        database_url,
        STRIPE_API_KEY=API_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_API_BASE=fake_stripe.base_url,
        GATEWAYZ_SMTP_HOST="127.0.0.1",
        GATEWAYZ_SMTP_PORT=str(inbox.port),  # type: ignore[attr-defined]
        GATEWAYZ_SMTP_FROM="billing@gatewayz.example",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("billing") / "proxy.log")
    yield process
    process.stop()


@pytest.fixture
def service(fake_stripe: FakeStripe) -> Billing:
    settings = BillingSettings(
        api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, api_base=fake_stripe.base_url
    )
    return Billing(settings)


def post_event(
    proxy: ProxyProcess,
    payload: dict[str, Any],
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
) -> httpx.Response:
    body, header = sign(payload, secret, timestamp)
    return post_raw(proxy, body, {"stripe-signature": header})


def post_raw(proxy: ProxyProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return httpx.post(proxy.base_url + WEBHOOK_PATH, content=body, headers=headers, timeout=30)


def new_topup(engine: Engine, service: Billing, amount: str = "25") -> tuple[int, str]:
    with engine.begin() as conn:
        org_id = directory.ensure_organization(conn, "Acme")
        session = service.create_topup_session(
            conn, org_id, Decimal(amount), SUCCESS_URL, CANCEL_URL, "owner"
        )
    return org_id, session.session_id


def purchases(engine: Engine, org_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(ledger_entries.c.amount, ledger_entries.c.reference)
                .where(
                    ledger_entries.c.scope_type == "organization",
                    ledger_entries.c.scope_id == org_id,
                    ledger_entries.c.kind == "purchase",
                )
                .order_by(ledger_entries.c.id)
            )
        )


def balance(engine: Engine, org_id: int) -> Decimal | None:
    with engine.connect() as conn:
        return ledger.balance(conn, "organization", org_id)


def event_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(stripe_events.c.id)).all())


def test_webhook_without_stripe(database_url: str, tmp_path: Path) -> None:
    process = ProxyProcess(proxy_env(database_url), tmp_path / "proxy.log")
    try:
        body, header = sign(event("checkout.session.completed", {"id": "cs_x"}))
        response = post_raw(process, body, {"stripe-signature": header})
    finally:
        process.stop()
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found_error"
    assert error["code"] == "billing_not_configured"
    assert "billing is not configured" in error["message"]


def test_duplicate_delivery_credits_once(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service)
    payload = event("checkout.session.completed", fake_stripe.pay(session_id))
    first = post_event(proxy, payload)
    second = post_event(proxy, payload)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "processed"
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "duplicate"
    assert [row.amount for row in purchases(engine, org_id)] == [Decimal(25)]
    assert balance(engine, org_id) == Decimal(25)


def test_two_events_one_session_credit_once(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service)
    paid = fake_stripe.pay(session_id)
    completed = post_event(proxy, event("checkout.session.completed", paid))
    succeeded = post_event(proxy, event("checkout.session.async_payment_succeeded", paid))
    assert completed.json()["status"] == "processed"
    assert succeeded.json()["status"] == "ignored"
    assert balance(engine, org_id) == Decimal(25)


def test_out_of_order_credits_once(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service, "40")
    processing = fake_stripe.complete_unpaid(session_id)
    completed = event("checkout.session.completed", processing)
    paid = fake_stripe.pay(session_id)
    succeeded = event("checkout.session.async_payment_succeeded", paid, completed["created"] + 5)
    # Stripe delivers the later event first.
    assert post_event(proxy, succeeded).json()["status"] == "processed"
    assert post_event(proxy, completed).json()["status"] == "ignored"
    assert post_event(proxy, succeeded).json()["status"] == "duplicate"
    assert [row.reference for row in purchases(engine, org_id)] == [session_id]
    assert balance(engine, org_id) == Decimal(40)


def test_forged_signature_rejected(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service)
    payload = event("checkout.session.completed", fake_stripe.pay(session_id))
    forged = post_event(proxy, payload, secret="whsec_not_the_real_secret")
    assert forged.status_code == 400
    assert forged.json()["error"]["code"] == "invalid_signature"
    body, header = sign(payload)
    tampered = post_raw(proxy, body.replace(b"25", b"99"), {"stripe-signature": header})
    assert tampered.status_code == 400
    missing = post_raw(proxy, body, {})
    assert missing.status_code == 400
    garbage = post_raw(proxy, body, {"stripe-signature": "t=abc,v1=zz"})
    assert garbage.status_code == 400
    assert balance(engine, org_id) is None
    assert event_count(engine) == 0


def test_stale_signature_rejected(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service)
    payload = event("checkout.session.completed", fake_stripe.pay(session_id))
    stale = post_event(proxy, payload, timestamp=int(time.time()) - 600)
    assert stale.status_code == 400
    assert "tolerance" in stale.json()["error"]["message"]
    assert balance(engine, org_id) is None
    assert event_count(engine) == 0


def test_not_json_rejected(proxy: ProxyProcess) -> None:
    body = b"not json"
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), WEBHOOK_SECRET)
    response = post_raw(proxy, body, {"stripe-signature": header})
    assert response.status_code == 400


def test_oversized_body_rejected(proxy: ProxyProcess) -> None:
    body = b"{" + b" " * (1 << 20) + b"}"
    response = post_raw(proxy, body, {"stripe-signature": "t=1,v1=00"})
    assert response.status_code == 413


FAIL_ONCE = """
CREATE SEQUENCE billing_test_failures;
CREATE FUNCTION billing_test_fail_once() RETURNS trigger AS $$
BEGIN
    -- nextval is not rolled back, so only the first insert fails.
    IF nextval('billing_test_failures') = 1 THEN
        RAISE EXCEPTION 'injected failure for the billing webhook test';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER billing_test_fail_once BEFORE INSERT ON ledger_entries
    FOR EACH ROW WHEN (NEW.reference = '{reference}') EXECUTE FUNCTION billing_test_fail_once();
"""
DROP_FAIL_ONCE = """
DROP TRIGGER IF EXISTS billing_test_fail_once ON ledger_entries;
DROP FUNCTION IF EXISTS billing_test_fail_once();
DROP SEQUENCE IF EXISTS billing_test_failures;
"""


def test_failure_then_redelivery_credits_once(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service, "30")
    payload = event("checkout.session.completed", fake_stripe.pay(session_id))
    with engine.begin() as conn:
        conn.execute(text(DROP_FAIL_ONCE))
        conn.execute(text(FAIL_ONCE.replace("{reference}", session_id)))
    try:
        failed = post_event(proxy, payload)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "event_failed"
        assert event_count(engine) == 0
        assert balance(engine, org_id) is None
        with engine.connect() as conn:
            status = conn.execute(select(payments.c.status)).scalar_one()
        assert status == "pending"
        retried = post_event(proxy, payload)
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "processed"
        assert post_event(proxy, payload).json()["status"] == "duplicate"
    finally:
        with engine.begin() as conn:
            conn.execute(text(DROP_FAIL_ONCE))
    assert [row.amount for row in purchases(engine, org_id)] == [Decimal(30)]
    assert "injected failure" in proxy.logs()


def test_partial_then_full_refund(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service, "50")
    post_event(proxy, event("checkout.session.completed", fake_stripe.pay(session_id)))
    charge = fake_stripe.charge_for(session_id)
    partial = event("charge.refunded", fake_stripe.refund(charge["id"], 2000))
    assert post_event(proxy, partial).json()["status"] == "processed"
    assert balance(engine, org_id) == Decimal(30)
    # Redelivery, and a second event reporting the same cumulative refund, remove nothing more.
    assert post_event(proxy, partial).json()["status"] == "duplicate"
    same_total = event("charge.refunded", dict(fake_stripe.charges[charge["id"]]))
    assert post_event(proxy, same_total).json()["status"] == "ignored"
    assert balance(engine, org_id) == Decimal(30)
    full = event("charge.refunded", fake_stripe.refund(charge["id"], 3000))
    assert post_event(proxy, full).json()["status"] == "processed"
    # The earlier partial refund, delivered late as a new event, removes nothing.
    late = post_event(proxy, event("charge.refunded", partial["data"]["object"]))
    assert late.json()["status"] == "ignored"
    assert balance(engine, org_id) == Decimal(0)
    amounts = [row.amount for row in purchases(engine, org_id)]
    assert amounts == [Decimal(50), Decimal(-20), Decimal(-30)]


def test_refund_before_checkout_event(
    engine: Engine, proxy: ProxyProcess, service: Billing, fake_stripe: FakeStripe
) -> None:
    org_id, session_id = new_topup(engine, service, "20")
    paid = fake_stripe.pay(session_id)
    charge = fake_stripe.charge_for(session_id)
    refunded = event("charge.refunded", fake_stripe.refund(charge["id"], 500))
    assert post_event(proxy, refunded).json()["status"] == "processed"
    assert balance(engine, org_id) == Decimal(15)
    completed = post_event(proxy, event("checkout.session.completed", paid))
    assert completed.json()["status"] == "ignored"
    assert [row.amount for row in purchases(engine, org_id)] == [Decimal(20), Decimal(-5)]


def test_foreign_charge_ignored(proxy: ProxyProcess) -> None:
    charge = {
        "id": "ch_test_foreign",
        "object": "charge",
        "amount": 1000,
        "amount_refunded": 1000,
        "currency": "usd",
        "payment_intent": "pi_test_foreign",
    }
    response = post_event(proxy, event("charge.refunded", charge))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"


def test_receipt_email_sent(
    engine: Engine,
    proxy: ProxyProcess,
    service: Billing,
    fake_stripe: FakeStripe,
    inbox: Inbox,
) -> None:
    inbox.messages.clear()
    org_id, session_id = new_topup(engine, service, "25")
    paid = fake_stripe.pay(session_id, email="receipts@acme.example")
    assert post_event(proxy, event("checkout.session.completed", paid)).status_code == 200
    deadline = time.monotonic() + 10
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    [message] = inbox.messages
    assert message.rcpt_tos == ["receipts@acme.example"]
    assert b"$25.00" in message.content
    assert session_id.encode() in message.content
