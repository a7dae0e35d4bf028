"""Budget alerts end to end: proxy traffic crosses thresholds, SMTP and webhook receive."""

from __future__ import annotations

import json
import os
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import Engine

from gateway_core import alerts, budgets, directory, keys, model_routes, providers
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI, free_port
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def start_webhook_receiver(received: list[dict[str, Any]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(
                {
                    "body": body,
                    "timestamp": self.headers["x-gatewayz-timestamp"],
                    "signature": self.headers["x-gatewayz-signature"],
                }
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_thresholds_alert_once_each(database_url: str, engine: Engine, tmp_path: Path) -> None:
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    received: list[dict[str, Any]] = []
    webhook = start_webhook_receiver(received)
    upstream = FakeOpenAI().start()
    try:
        with engine.begin() as conn:
            team = directory.create_team(conn, "alerts")
            providers.upsert_provider(conn, name="fake", base_url=upstream.base_url)
            # $0.001 per output token; "fake answer: ping" is 3 tokens, $0.003 a call.
            model_routes.set_price_override(conn, "fake/any", {"input": "0", "output": "1000"})
            budgets.set_budget(
                conn, scope_type="team", scope_id=team.id, period="monthly", limit_usd="0.01"
            )
            alerts.add_channel(
                conn, TEST_SECRET.encode(), team.organization_id, "email", "ops@example.org"
            )
            port = webhook.server_address[1]
            alerts.add_channel(
                conn,
                TEST_SECRET.encode(),
                team.organization_id,
                "webhook",
                f"http://127.0.0.1:{port}/hook",
                secret=WEBHOOK_SECRET,
            )
            key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            GATEWAYZ_SECRET=TEST_SECRET,
            GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
            GATEWAYZ_SMTP_HOST="127.0.0.1",
            GATEWAYZ_SMTP_PORT=str(smtp.port),
            GATEWAYZ_SMTP_FROM="gatewayz@example.org",
        )
        proxy = ProxyProcess(env, tmp_path / "proxy.log")
        try:
            body = {**CHAT, "model": "fake/any", "max_tokens": 3}
            body["messages"] = [{"role": "user", "content": "ping"}]
            statuses = [
                post_json(proxy.base_url, "/v1/chat/completions", body, key).status_code
                for _ in range(4)
            ]
            # Spend goes 0.003, 0.006 (50% crossed), 0.009 (80% crossed); the
            # fourth call cannot reserve its $0.003 within what is left.
            assert statuses == [200, 200, 200, 402]
            deadline = time.monotonic() + 10
            while (len(inbox.messages) < 3 or len(received) < 2) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            proxy.stop()
    finally:
        smtp.stop()
        webhook.shutdown()
        upstream.stop()
    # The email channel also gets the key-created email of the key above.
    subjects = sorted(
        message.content.split(b"Subject: ", 1)[1].split(b"\n", 1)[0].strip()
        for message in inbox.messages
    )
    assert subjects == [
        b"Budget alert: team alerts reached 50% of its monthly budget",
        b"Budget alert: team alerts reached 80% of its monthly budget",
        b'New live API key "k" for alerts',
    ]
    assert all(m.rcpt_tos == ["ops@example.org"] for m in inbox.messages)
    assert len(received) == 2
    thresholds = sorted(Decimal(json.loads(hook["body"])["threshold"]) for hook in received)
    assert thresholds == [Decimal("0.5"), Decimal("0.8")]
    for hook in received:
        assert alerts.verify_webhook_signature(
            WEBHOOK_SECRET, hook["timestamp"], hook["body"], hook["signature"]
        )
