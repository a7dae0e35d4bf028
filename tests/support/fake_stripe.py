"""A fake Stripe API served by uvicorn on 127.0.0.1, for the real stripe client.

It implements only what Gatewayz calls: customers, Checkout Sessions
(create, retrieve with expanded line items, list by payment intent) and
customer portal sessions. State lives in memory. The helpers `pay`,
`charge_for` and `refund` change a session as a customer and Stripe would,
and `event` and `sign` build webhook deliveries signed like Stripe's.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.fake_openai import free_port

API_KEY = "sk_test_gatewayz_fake_0123456789"
WEBHOOK_SECRET = "whsec_gatewayz_test_0123456789abcdef"
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(8)}"


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn Stripe's `a[b][0][c]=v` form encoding into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        path = [head, *_BRACKETS.findall(key)]
        node: Any = root
        for name, following in zip(path, path[1:], strict=False):
            child_is_list = following.isdigit() or following == ""
            node = _child(node, name, [] if child_is_list else {})
        _assign(node, path[-1], value)
    return root


def _child(node: Any, name: str, empty: Any) -> Any:
    if isinstance(node, list):
        index = int(name) if name else len(node)
        while len(node) <= index:
            node.append(type(empty)())
        return node[index]
    return node.setdefault(name, empty)


def _assign(node: Any, name: str, value: str) -> None:
    if isinstance(node, list):
        node.append(value)
    else:
        node[name] = value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": "invalid_request_error", "message": message}}, status_code=status
    )


class FakeStripe:
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.line_items: dict[str, list[dict[str, Any]]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        # (method, path, decoded parameters) of every authorized request.
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        app = Starlette(
            routes=[
                Route("/v1/customers", self.create_customer, methods=["POST"]),
                Route("/v1/checkout/sessions", self.create_session, methods=["POST"]),
                Route("/v1/checkout/sessions", self.list_sessions, methods=["GET"]),
                Route("/v1/checkout/sessions/{id}", self.retrieve_session, methods=["GET"]),
                Route("/v1/billing_portal/sessions", self.create_portal, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeStripe:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Stripe did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _params(self, request: Request) -> dict[str, Any] | None:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return None
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        if request.method == "POST":
            pairs += parse_qsl((await request.body()).decode(), keep_blank_values=True)
        params = decode_form(pairs)
        self.requests.append((request.method, request.url.path, params))
        return params

    async def create_customer(self, request: Request) -> JSONResponse:
        params = await self._params(request)
        if params is None:
            return _error(401, "Invalid API Key provided")
        customer = {
            "id": _new_id("cus"),
            "object": "customer",
            "name": params.get("name"),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
        }
        self.customers[customer["id"]] = customer
        return JSONResponse(customer)

    async def create_session(self, request: Request) -> JSONResponse:
        params = await self._params(request)
        if params is None:
            return _error(401, "Invalid API Key provided")
        session_id = _new_id("cs")
        items = [self._line_item(item) for item in params.get("line_items", [])]
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params.get("mode"),
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": sum(item["amount_total"] for item in items),
            "currency": "usd",
            "customer": params.get("customer"),
            "customer_details": None,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "payment_intent": None,
            "subscription": None,
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"{self.base_url}/pay/{session_id}",
        }
        with self._lock:
            self.sessions[session_id] = session
            self.line_items[session_id] = items
        return JSONResponse(session)

    def _line_item(self, item: dict[str, Any]) -> dict[str, Any]:
        quantity = int(item.get("quantity", 1))
        price_data = item.get("price_data")
        if price_data is not None:
            unit_amount = int(price_data["unit_amount"])
            price = {"id": _new_id("price"), "object": "price", "unit_amount": unit_amount}
            description = price_data.get("product_data", {}).get("name")
        else:
            # A recurring plan price; the fake prices every plan at $20.
            unit_amount = 2000
            price = {"id": item["price"], "object": "price", "unit_amount": unit_amount}
            description = item["price"]
        return {
            "id": _new_id("li"),
            "object": "item",
            "amount_subtotal": unit_amount * quantity,
            "amount_discount": 0,
            "amount_tax": 0,
            "amount_total": unit_amount * quantity,
            "currency": "usd",
            "description": description,
            "price": price,
            "quantity": quantity,
        }

    async def retrieve_session(self, request: Request) -> JSONResponse:
        params = await self._params(request)
        if params is None:
            return _error(401, "Invalid API Key provided")
        session_id = request.path_params["id"]
        if session_id not in self.sessions:
            return _error(404, f"No such checkout.session: '{session_id}'")
        body = dict(self.sessions[session_id])
        if "line_items" in params.get("expand", []):
            body["line_items"] = {
                "object": "list",
                "data": self.line_items[session_id],
                "has_more": False,
                "url": f"/v1/checkout/sessions/{session_id}/line_items",
            }
        return JSONResponse(body)

    async def list_sessions(self, request: Request) -> JSONResponse:
        params = await self._params(request)
        if params is None:
            return _error(401, "Invalid API Key provided")
        intent = params.get("payment_intent")
        data = [
            s for s in self.sessions.values() if intent is None or s["payment_intent"] == intent
        ]
        return JSONResponse(
            {"object": "list", "data": data, "has_more": False, "url": "/v1/checkout/sessions"}
        )

    async def create_portal(self, request: Request) -> JSONResponse:
        params = await self._params(request)
        if params is None:
            return _error(401, "Invalid API Key provided")
        if params.get("customer") not in self.customers:
            return _error(404, f"No such customer: '{params.get('customer')}'")
        portal_id = _new_id("bps")
        return JSONResponse(
            {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"{self.base_url}/portal/{portal_id}",
            }
        )

    def pay(self, session_id: str, email: str = "payer@example.com") -> dict[str, Any]:
        """Mark a session paid, as after a card payment, and return it."""
        return self._complete(session_id, "paid", email)

    def complete_unpaid(self, session_id: str, email: str = "payer@example.com") -> dict[str, Any]:
        """Complete a session whose payment (a bank debit, say) is still processing."""
        return self._complete(session_id, "unpaid", email)

    def _complete(self, session_id: str, payment_status: str, email: str) -> dict[str, Any]:
        with self._lock:
            session = self.sessions[session_id]
            session["status"] = "complete"
            session["payment_status"] = payment_status
            session["customer_details"] = {"email": email}
            if session["payment_intent"] is None:
                session["payment_intent"] = _new_id("pi")
            return dict(session)

    def charge_for(self, session_id: str) -> dict[str, Any]:
        """Return the charge of a paid session's payment intent, creating it once."""
        session = self.sessions[session_id]
        intent = session["payment_intent"]
        for charge in self.charges.values():
            if charge["payment_intent"] == intent:
                return dict(charge)
        charge = {
            "id": _new_id("ch"),
            "object": "charge",
            "amount": session["amount_total"],
            "amount_refunded": 0,
            "currency": "usd",
            "payment_intent": intent,
            "refunded": False,
        }
        self.charges[charge["id"]] = charge
        return dict(charge)

    def refund(self, charge_id: str, cents: int) -> dict[str, Any]:
        """Refund `cents` more of a charge and return the charge as Stripe would."""
        charge = self.charges[charge_id]
        charge["amount_refunded"] += cents
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return dict(charge)


def event(event_type: str, obj: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    """Build a webhook event around a Stripe object."""
    return {
        "id": _new_id("evt"),
        "object": "event",
        "api_version": stripe.api_version,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": obj},
    }


def sign(
    payload: dict[str, Any], secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, str]:
    """Serialize an event and return (body, Stripe-Signature header)."""
    body = json.dumps(payload)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp)
    return body.encode(), header
