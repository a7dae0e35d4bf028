from __future__ import annotations

import email
import email.policy
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServerProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select

from gateway_core import alerts, directory, email_outbox, secret_box
from gateway_core.config import ConfigError, Settings
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import alert_channels, budgets

WEBHOOK_SECRET = "whsec_" + "k" * 32
PERIOD = datetime(2026, 12, 1, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingHandler:
    """aiosmtpd handler that keeps each message, after optional temporary failures."""

    def __init__(self, temporary_failures: int = 0) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []
        self.temporary_failures = temporary_failures
        self.attempts = 0

    async def handle_DATA(
        self, server: SmtpServerProtocol, session: Session, envelope: Envelope
    ) -> str:
        self.attempts += 1
        if self.attempts <= self.temporary_failures:
            return "451 4.3.0 try again later"
        self.envelopes.append(envelope)
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)


def start_smtp(**kwargs: Any) -> tuple[Controller, SmtpServer]:
    handler = RecordingHandler(kwargs.pop("temporary_failures", 0))
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, SmtpServer("127.0.0.1", port, handler)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    controller, server = start_smtp()
    yield server
    controller.stop()


class WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((dict(self.headers.items()), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookServer(ThreadingHTTPServer):
    received: list[tuple[dict[str, str], bytes]]
    statuses: list[int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/budget"


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    server = WebhookServer(("127.0.0.1", 0), WebhookHandler)
    server.received = []
    server.statuses = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def header(headers: dict[str, str], name: str) -> str:
    return {key.lower(): value for key, value in headers.items()}[name]


# thresholds_crossed


@pytest.mark.parametrize(
    ("limit", "before", "after", "expected"),
    [
        ("100", "0", "49.99", []),
        ("100", "0", "50", ["0.5"]),
        ("100", "49.99", "80", ["0.5", "0.8"]),
        ("100", "50", "79", []),
        ("100", "79", "250", ["0.8", "1.0"]),
        ("100", "100", "120", []),
        ("100", "60", "40", []),
        ("0", "0", "0.01", ["0.5", "0.8", "1.0"]),
        ("0", "0.01", "0.02", []),
    ],
)
def test_thresholds_crossed(limit: str, before: str, after: str, expected: list[str]) -> None:
    thresholds = [Decimal("1.0"), Decimal("0.5"), Decimal("0.8"), Decimal("0.5")]
    crossed = alerts.thresholds_crossed(Decimal(limit), Decimal(before), Decimal(after), thresholds)
    assert crossed == [Decimal(value) for value in expected]


def test_thresholds_reject_float() -> None:
    with pytest.raises(TypeError, match="spent_after must be a Decimal"):
        alerts.thresholds_crossed(Decimal(100), Decimal(0), 50.0, [Decimal("0.5")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="threshold must be a Decimal"):
        alerts.thresholds_crossed(Decimal(100), Decimal(0), Decimal(50), [0.5])  # type: ignore[list-item]


# claim_alert


def create_budget(engine: Engine, limit: str = "100") -> tuple[int, int]:
    """Create a team with a monthly budget; return (organization id, budget id)."""
    with engine.begin() as conn:
        team = directory.create_team(conn, "research", "Acme")
        budget_id = conn.execute(
            budgets.insert()
            .values(scope_type="team", scope_id=team.id, period="monthly", limit_usd=Decimal(limit))
            .returning(budgets.c.id)
        ).scalar_one()
    return team.organization_id, budget_id


def test_claim_once_per_period(engine: Engine) -> None:
    _, budget_id = create_budget(engine)
    with engine.begin() as conn:
        assert alerts.claim_alert(conn, budget_id, PERIOD, Decimal("0.5")) is True
        assert alerts.claim_alert(conn, budget_id, PERIOD, Decimal("0.5")) is False
        assert alerts.claim_alert(conn, budget_id, PERIOD, Decimal("0.8")) is True
        next_period = datetime(2027, 1, 1, tzinfo=UTC)
        assert alerts.claim_alert(conn, budget_id, next_period, Decimal("0.5")) is True


def test_concurrent_claimers_one_wins(engine: Engine) -> None:
    _, budget_id = create_budget(engine)
    barrier = threading.Barrier(2)
    results: list[bool] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            with engine.begin() as conn:
                barrier.wait()
                results.append(alerts.claim_alert(conn, budget_id, PERIOD, Decimal("0.8")))
                # Hold the claim open so the other claimer must wait on it.
                time.sleep(0.2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [False, True]


# send_email


def test_email_delivered_with_both_parts(smtp_server: SmtpServer) -> None:
    sent = alerts.send_email(
        smtp_server.host,
        smtp_server.port,
        "gateway@example.test",
        "owner@example.test",
        "Budget alert: 80%",
        "Plain body ✓",
        "<p>HTML body ✓</p>",
    )
    assert sent is True
    (message,) = smtp_server.handler.messages
    assert message["Subject"] == "Budget alert: 80%"
    assert message["From"] == "gateway@example.test"
    assert message["To"] == "owner@example.test"
    assert smtp_server.handler.envelopes[0].rcpt_tos == ["owner@example.test"]
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Plain body ✓"
    assert html.get_content().strip() == "<p>HTML body ✓</p>"


def test_email_text_only(smtp_server: SmtpServer) -> None:
    assert alerts.send_email(
        smtp_server.host, smtp_server.port, "a@example.test", "b@example.test", "S", "T"
    )
    (message,) = smtp_server.handler.messages
    assert message.get_content_type() == "text/plain"


def test_email_closed_port_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    caplog.set_level(logging.INFO, logger="gateway_core.smtp")
    started = time.monotonic()
    sent = alerts.send_email(
        "127.0.0.1", port, "a@example.test", "b@example.test", "S", "T", backoff=0.01
    )
    assert sent is False
    assert time.monotonic() - started < 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(warnings) == 2
    assert len(errors) == 1
    assert f"127.0.0.1:{port} failed on attempt 3 of 3" in errors[0].getMessage()
    assert "ConnectionRefusedError" in errors[0].getMessage()


def test_email_temporary_failure_retried() -> None:
    controller, server = start_smtp(temporary_failures=1)
    try:
        sent = alerts.send_email(
            server.host, server.port, "a@example.test", "b@example.test", "S", "T", backoff=0.01
        )
    finally:
        controller.stop()
    assert sent is True
    assert server.handler.attempts == 2
    assert len(server.handler.messages) == 1


def test_email_header_injection_rejected(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    sent = alerts.send_email(
        smtp_server.host,
        smtp_server.port,
        "a@example.test",
        "b@example.test",
        "Alert\r\nBcc: victim@example.test",
        "T",
    )
    assert sent is False
    assert smtp_server.handler.messages == []
    assert "invalid message" in caplog.text


class PasswordChecker:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self,
        server: SmtpServerProtocol,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        self.calls += 1
        assert isinstance(auth_data, LoginPassword)
        valid = auth_data.login == b"mailer" and auth_data.password == b"s3cret-pass"
        # handled=False makes aiosmtpd send the 535 reply itself on failure.
        return AuthResult(success=valid, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_login(caplog: pytest.LogCaptureFixture) -> None:
    checker = PasswordChecker()
    controller, server = start_smtp(
        authenticator=checker, auth_require_tls=False, auth_required=True
    )

    try:
        accepted = alerts.send_email(
            server.host,
            server.port,
            "a@example.test",
            "b@example.test",
            "S",
            "T",
            username="mailer",
            password="s3cret-pass",
        )
        rejected = alerts.send_email(
            server.host,
            server.port,
            "a@example.test",
            "b@example.test",
            "S",
            "T",
            username="mailer",
            password="wrong-pass",
            backoff=0.01,
        )
    finally:
        controller.stop()

    assert accepted is True
    assert rejected is False
    # One call for the right password; smtplib then tries PLAIN and LOGIN
    # with the wrong one. A 535 reply is permanent, so there is no retry.
    assert checker.calls == 3
    assert "failed on attempt 1 of 3: SMTPAuthenticationError" in caplog.text
    assert "retrying" not in caplog.text
    assert len(server.handler.messages) == 1
    assert "SMTPAuthenticationError" in caplog.text
    assert "wrong-pass" not in caplog.text
    assert "s3cret-pass" not in caplog.text


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "smtp.pem"
    key_path = directory / "smtp.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_email_starttls(tmp_path: Path) -> None:
    cert_path, key_path = write_self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    controller, server = start_smtp(tls_context=server_context, require_starttls=True)
    try:
        trusted = alerts.send_email(
            server.host,
            server.port,
            "a@example.test",
            "b@example.test",
            "S",
            "T",
            starttls=True,
            ssl_context=ssl.create_default_context(cafile=str(cert_path)),
        )
        untrusted = alerts.send_email(
            server.host,
            server.port,
            "a@example.test",
            "b@example.test",
            "S",
            "T",
            starttls=True,
            backoff=0.01,
        )
        plain = alerts.send_email(
            server.host, server.port, "a@example.test", "b@example.test", "S", "T", backoff=0.01
        )
    finally:
        controller.stop()
    assert trusted is True
    assert untrusted is False
    assert plain is False
    assert len(server.handler.messages) == 1


# webhooks


def test_webhook_signature_verifies(webhook_server: WebhookServer) -> None:
    payload = {"type": "budget.threshold_crossed", "spent_usd": Decimal("80.10")}
    assert alerts.send_webhook(webhook_server.url, WEBHOOK_SECRET, payload) is True
    ((headers, body),) = webhook_server.received
    timestamp = header(headers, "x-gatewayz-timestamp")
    signature = header(headers, "x-gatewayz-signature")
    assert header(headers, "content-type") == "application/json"
    assert signature.startswith("v1=")
    assert json.loads(body) == {"type": "budget.threshold_crossed", "spent_usd": "80.10"}
    assert abs(int(timestamp) - time.time()) < 60
    assert alerts.verify_webhook_signature(WEBHOOK_SECRET, timestamp, body, signature)
    assert alerts.verify_webhook_signature(
        WEBHOOK_SECRET, timestamp, body.decode(), f"v1=00, {signature}"
    )


def test_webhook_tampering_detected(webhook_server: WebhookServer) -> None:
    alerts.send_webhook(webhook_server.url, WEBHOOK_SECRET, {"spent_usd": "80.10"})
    ((headers, body),) = webhook_server.received
    timestamp = header(headers, "x-gatewayz-timestamp")
    signature = header(headers, "x-gatewayz-signature")
    tampered_body = body.replace(b"80.10", b"8.10")
    assert not alerts.verify_webhook_signature(WEBHOOK_SECRET, timestamp, tampered_body, signature)
    later = str(int(timestamp) + 1)
    assert not alerts.verify_webhook_signature(WEBHOOK_SECRET, later, body, signature)
    assert not alerts.verify_webhook_signature("other-secret-value", timestamp, body, signature)
    assert not alerts.verify_webhook_signature(WEBHOOK_SECRET, timestamp, body, "v1=" + "0" * 64)
    assert not alerts.verify_webhook_signature(WEBHOOK_SECRET, "soon", body, signature)


def test_webhook_stale_timestamp_rejected() -> None:
    body = b'{"a":1}'
    sent_at = 1_700_000_000
    signature = alerts.sign_webhook(WEBHOOK_SECRET, str(sent_at), body)
    assert alerts.verify_webhook_signature(
        WEBHOOK_SECRET, str(sent_at), body, signature, now=sent_at + 300
    )
    assert not alerts.verify_webhook_signature(
        WEBHOOK_SECRET, str(sent_at), body, signature, now=sent_at + 301
    )
    assert not alerts.verify_webhook_signature(
        WEBHOOK_SECRET, str(sent_at), body, signature, now=sent_at - 301
    )


def test_webhook_retries_server_errors(webhook_server: WebhookServer) -> None:
    webhook_server.statuses = [503, 500]
    sent = alerts.send_webhook(webhook_server.url, WEBHOOK_SECRET, {"n": 1}, backoff=0.01)
    assert sent is True
    assert len(webhook_server.received) == 3


def test_webhook_gives_up_after_attempts(
    webhook_server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    webhook_server.statuses = [502, 502, 502, 502]
    sent = alerts.send_webhook(webhook_server.url, WEBHOOK_SECRET, {"n": 1}, backoff=0.01)
    assert sent is False
    assert len(webhook_server.received) == 3
    assert "failed after 3 attempts: HTTP 502" in caplog.text
    assert WEBHOOK_SECRET not in caplog.text


def test_webhook_client_error_not_retried(
    webhook_server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    webhook_server.statuses = [400]
    sent = alerts.send_webhook(webhook_server.url, WEBHOOK_SECRET, {"n": 1}, backoff=0.01)
    assert sent is False
    assert len(webhook_server.received) == 1
    assert "rejected: HTTP 400" in caplog.text


def test_webhook_connect_error_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    sent = alerts.send_webhook(url, WEBHOOK_SECRET, {"n": 1}, backoff=0.01)
    assert sent is False
    assert "failed after 3 attempts: ConnectError" in caplog.text


# alert channels and notify_budget


def test_add_channel_encrypts_secret(engine: Engine, settings: Settings) -> None:
    organization_id, _ = create_budget(engine)
    with engine.begin() as conn:
        channel_id = alerts.add_channel(
            conn, settings.secret, organization_id, "webhook", "https://hooks.example.test/x",
            WEBHOOK_SECRET,
        )  # fmt: skip
        stored = conn.execute(
            select(alert_channels.c.secret_encrypted).where(alert_channels.c.id == channel_id)
        ).scalar_one()
    assert stored is not None
    assert WEBHOOK_SECRET not in stored
    assert secret_box.decrypt(settings.secret, stored) == WEBHOOK_SECRET
    with engine.connect() as conn:
        (channel,) = alerts.list_channels(conn, organization_id)
    assert WEBHOOK_SECRET not in repr(channel)
    assert stored not in repr(channel)


@pytest.mark.parametrize(
    ("kind", "target", "secret", "message"),
    [
        ("sms", "+100", None, "unknown channel kind 'sms'"),
        ("email", "not-an-address", None, "invalid email address"),
        ("email", "a@example.test", WEBHOOK_SECRET, "email channels take no secret"),
        ("webhook", "ftp://example.test/x", WEBHOOK_SECRET, "http:// or https://"),
        ("webhook", "https://example.test/x", None, "signing secret"),
        ("webhook", "https://example.test/x", "short", "signing secret"),
    ],
)
def test_add_channel_invalid(
    engine: Engine, settings: Settings, kind: str, target: str, secret: str | None, message: str
) -> None:
    organization_id, _ = create_budget(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match=message):
        alerts.add_channel(conn, settings.secret, organization_id, kind, target, secret)


def test_add_channel_unknown_organization(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn, pytest.raises(NotFoundError, match="organization 404"):
        alerts.add_channel(conn, settings.secret, 404, "email", "a@example.test")


def add_channels(
    engine: Engine, settings: Settings, organization_id: int, webhook_url: str
) -> None:
    with engine.begin() as conn:
        alerts.add_channel(conn, settings.secret, organization_id, "email", "owner@example.test")
        alerts.add_channel(
            conn, settings.secret, organization_id, "webhook", webhook_url, WEBHOOK_SECRET
        )


def notify(
    engine: Engine,
    settings: Settings,
    budget_id: int,
    before: str,
    after: str,
) -> list[Decimal]:
    with engine.begin() as conn:
        return alerts.notify_budget(
            conn,
            settings.secret,
            budget_id,
            period_start=PERIOD,
            spent_before=Decimal(before),
            spent_after=Decimal(after),
            backoff=0.01,
        )


def test_notify_budget_sends_each_threshold_once(
    engine: Engine,
    settings: Settings,
    smtp_server: SmtpServer,
    webhook_server: WebhookServer,
) -> None:
    organization_id, budget_id = create_budget(engine)
    add_channels(engine, settings, organization_id, webhook_server.url)
    smtp = alerts.SmtpSettings(
        host=smtp_server.host, port=smtp_server.port, sender="gateway@example.test"
    )

    assert notify(engine, settings, budget_id, "40", "85") == [
        Decimal("0.5"),
        Decimal("0.8"),
    ]
    assert notify(engine, settings, budget_id, "40", "85") == []
    assert notify(engine, settings, budget_id, "85", "101") == [Decimal("1.0")]
    # Emails wait in the outbox until a sender delivers them.
    assert smtp_server.handler.messages == []
    assert email_outbox.deliver_due(engine, smtp) == 3

    # Python folds a long Subject onto a continuation line, and its parser
    # keeps the folding space, which mail clients drop.
    subjects = [message["Subject"].strip() for message in smtp_server.handler.messages]
    assert subjects == [
        "Budget alert: team research reached 50% of its monthly budget",
        "Budget alert: team research reached 80% of its monthly budget",
        "Budget alert: team research reached 100% of its monthly budget",
    ]
    assert all(m["To"] == "owner@example.test" for m in smtp_server.handler.messages)
    html = smtp_server.handler.messages[2].get_body(preferencelist=("html",))
    text = smtp_server.handler.messages[2].get_body(preferencelist=("plain",))
    assert html is not None
    assert text is not None
    assert "$101.00" in html.get_content()
    assert "Requests that would exceed the budget are now rejected." in text.get_content()

    assert len(webhook_server.received) == 3
    headers, body = webhook_server.received[1]
    assert alerts.verify_webhook_signature(
        WEBHOOK_SECRET,
        header(headers, "x-gatewayz-timestamp"),
        body,
        header(headers, "x-gatewayz-signature"),
    )
    event = json.loads(body)
    assert event["type"] == "budget.threshold_crossed"
    assert event["budget_id"] == budget_id
    assert event["organization_id"] == organization_id
    assert event["threshold"] == "0.8000"
    assert event["spent_usd"] == "85"
    assert event["period_start"] == PERIOD.isoformat()


def test_notify_budget_concurrent_workers(
    engine: Engine, settings: Settings, webhook_server: WebhookServer
) -> None:
    organization_id, budget_id = create_budget(engine)
    with engine.begin() as conn:
        alerts.add_channel(
            conn, settings.secret, organization_id, "webhook", webhook_server.url, WEBHOOK_SECRET
        )
    barrier = threading.Barrier(4)
    claimed: list[list[Decimal]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            claimed.append(notify(engine, settings, budget_id, "0", "90"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(threshold for result in claimed for threshold in result) == [
        Decimal("0.5"),
        Decimal("0.8"),
    ]
    assert len(webhook_server.received) == 2


def test_notify_budget_queues_email_once(
    engine: Engine, settings: Settings, webhook_server: WebhookServer
) -> None:
    organization_id, budget_id = create_budget(engine)
    add_channels(engine, settings, organization_id, webhook_server.url)
    assert notify(engine, settings, budget_id, "0", "50") == [Decimal("0.5")]
    assert notify(engine, settings, budget_id, "0", "50") == []
    assert len(webhook_server.received) == 1
    with engine.connect() as conn:
        queued = email_outbox.list_emails(conn, "owner")
    assert [(e.template, e.recipient, e.status) for e in queued] == [
        ("budget_alert", "owner@example.test", "pending")
    ]


def test_notify_budget_failed_delivery_logged(
    engine: Engine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    organization_id, budget_id = create_budget(engine)
    closed = f"http://127.0.0.1:{free_port()}/hook"
    with engine.begin() as conn:
        alerts.add_channel(
            conn, settings.secret, organization_id, "webhook", closed, WEBHOOK_SECRET
        )
    assert notify(engine, settings, budget_id, "0", "50") == [Decimal("0.5")]
    assert f"budget {budget_id} alert at 50% reached none of 1 channels" in caplog.text
    assert WEBHOOK_SECRET not in caplog.text


def test_notify_budget_unknown_budget(engine: Engine, settings: Settings) -> None:
    with pytest.raises(NotFoundError, match="budget 999"):
        notify(engine, settings, 999, "0", "50")


# SmtpSettings


def test_smtp_settings_from_env() -> None:
    assert alerts.SmtpSettings.from_env({}) is None
    smtp = alerts.SmtpSettings.from_env(
        {
            "GATEWAYZ_SMTP_HOST": "mail.example.test",
            "GATEWAYZ_SMTP_PORT": "587",
            "GATEWAYZ_SMTP_FROM": "gateway@example.test",
            "GATEWAYZ_SMTP_USERNAME": "mailer",
            "GATEWAYZ_SMTP_PASSWORD": "hunter2-password",
            "GATEWAYZ_SMTP_STARTTLS": "true",
        }
    )
    assert smtp == alerts.SmtpSettings(
        host="mail.example.test",
        sender="gateway@example.test",
        port=587,
        username="mailer",
        password="hunter2-password",
        starttls=True,
    )
    assert "hunter2-password" not in repr(smtp)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"GATEWAYZ_SMTP_FROM": ""}, "GATEWAYZ_SMTP_FROM"),
        ({"GATEWAYZ_SMTP_PORT": "smtp"}, "GATEWAYZ_SMTP_PORT"),
        ({"GATEWAYZ_SMTP_PORT": "70000"}, "GATEWAYZ_SMTP_PORT"),
        ({"GATEWAYZ_SMTP_STARTTLS": "maybe"}, "GATEWAYZ_SMTP_STARTTLS"),
    ],
)
def test_smtp_settings_invalid(changes: dict[str, str], message: str) -> None:
    env = {"GATEWAYZ_SMTP_HOST": "mail.example.test", "GATEWAYZ_SMTP_FROM": "g@example.test"}
    with pytest.raises(ConfigError, match=message):
        alerts.SmtpSettings.from_env({**env, **changes})
