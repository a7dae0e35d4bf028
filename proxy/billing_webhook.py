"""POST /billing/stripe/webhook: Stripe events for top-ups, refunds and plans.

The endpoint verifies the Stripe-Signature header on the raw body with the
signing secret (STRIPE_WEBHOOK_SECRET) and rejects a missing, forged or
stale signature with 400. A verified event is applied in one Postgres
transaction, on a worker thread because the Stripe client and the
SQLAlchemy engine are synchronous. The response is 200 only after the
commit, and 500 if anything failed, so Stripe delivers the event again.

Without STRIPE_API_KEY the endpoint returns 404 "billing is not configured".
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import Connection, Engine
from starlette.requests import Request
from starlette.responses import Response

from gateway_core import notifications
from gateway_core.billing import Billing, EventOutcome
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError, InvalidRequestError, NotFoundError
from proxy.responses import JSONResponse, error_response

logger = logging.getLogger("gatewayz.billing_webhook")

# Stripe events are a few kilobytes. The limit bounds what is read before
# the signature is checked.
MAX_EVENT_BYTES = 1 << 20


@dataclass
class _WebhookState:
    billing: Billing | None
    engine: Engine
    # Set when STRIPE_* variables are invalid.
    config_error: str | None = None


def _state(request: Request) -> _WebhookState:
    """Return the endpoint's Stripe client and engine, built on first use."""
    state = getattr(request.app.state, "billing_webhook", None)
    if state is not None:
        return state
    settings: Settings = request.app.state.gateway.settings
    engine = get_engine(settings.database_url)
    try:
        state = _WebhookState(Billing.from_env(), engine)
    except ConfigError as exc:
        logger.error("Stripe webhooks are rejected until the configuration is fixed: %s", exc)
        state = _WebhookState(None, engine, config_error=str(exc))
    request.app.state.billing_webhook = state
    return state


def _request_id() -> str:
    return "whk_" + secrets.token_hex(12)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
        raise InvalidRequestError(
            f"the event body is larger than {MAX_EVENT_BYTES} bytes", status_code=413
        )
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_EVENT_BYTES:
            raise InvalidRequestError(
                f"the event body is larger than {MAX_EVENT_BYTES} bytes", status_code=413
            )
    return bytes(body)


def _apply(state: _WebhookState, event: dict[str, Any]) -> EventOutcome:
    assert state.billing is not None
    with state.engine.begin() as conn:
        outcome = state.billing.handle_event(conn, event)
        if outcome.receipt is not None and outcome.receipt.email:
            _queue_receipt(conn, outcome)
        return outcome


def _queue_receipt(conn: Connection, outcome: EventOutcome) -> None:
    """Queue the receipt with the credit, in a savepoint of the event's transaction."""
    receipt = outcome.receipt
    assert receipt is not None and receipt.email
    try:
        with conn.begin_nested():
            notifications.payment_receipt(
                conn,
                email=receipt.email,
                organization=receipt.organization,
                amount=receipt.amount,
                reference=receipt.reference,
                paid_at=receipt.paid_at,
                balance=receipt.balance,
            )
    except Exception:
        # A broken template must not roll back the credit and make Stripe retry.
        logger.exception("payment receipt for event %s was not queued", outcome.event_id)


async def stripe_webhook(request: Request) -> Response:
    request_id = _request_id()
    state = _state(request)
    if state.config_error is not None:
        # 500, so Stripe keeps delivering the event until the setting is fixed.
        error = GatewayError(f"billing is misconfigured: {state.config_error}")
        return error_response(error, request_id)
    if state.billing is None:
        error = NotFoundError(
            "billing is not configured: set STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET "
            "for the proxy to receive Stripe webhooks",
            code="billing_not_configured",
        )
        return error_response(error, request_id)
    try:
        body = await _read_body(request)
        event = state.billing.construct_event(body, request.headers.get("stripe-signature"))
    except GatewayError as error:
        logger.warning("rejected Stripe webhook %s: %s", request_id, error.message)
        return error_response(error, request_id)
    except stripe.SignatureVerificationError as exc:
        logger.warning("rejected Stripe webhook %s: %s", request_id, exc)
        error = InvalidRequestError(
            f"invalid Stripe-Signature header: {exc}", code="invalid_signature"
        )
        return error_response(error, request_id)
    except ValueError as exc:
        logger.warning("rejected Stripe webhook %s: body is not a JSON event: %s", request_id, exc)
        return error_response(InvalidRequestError("the body is not a JSON event"), request_id)

    try:
        outcome = await asyncio.to_thread(_apply, state, event)
    except Exception:
        # Any failure gets a non-2xx response, so Stripe delivers the event
        # again. The transaction was rolled back, so the retry starts clean.
        logger.exception(
            "stripe event %s (%s) failed; Stripe will retry it", event.get("id"), event.get("type")
        )
        error = GatewayError(
            "processing the event failed; Stripe will retry it", code="event_failed"
        )
        return error_response(error, request_id)
    sender = request.app.state.gateway.email_sender
    if outcome.receipt is not None and sender is not None:
        sender.wake()
    return JSONResponse(
        {"received": True, "id": outcome.event_id, "status": outcome.status},
        headers={"x-request-id": request_id},
    )
