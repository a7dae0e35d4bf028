"""The email outbox and the events that queue emails, against aiosmtpd on 127.0.0.1.

Each test queues emails in real Postgres and delivers them with
`email_outbox.deliver_due` or the background `OutboxSender`, then reads
what the local SMTP server received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from gateway_core import email_outbox, emails, keys_admin, ledger, signup, user_data, users_admin
from gateway_core.access import Actor
from gateway_core.schema import email_outbox as outbox_table
from tests.conftest import TEST_SECRET
from tests.support.smtp_inbox import SmtpServer, parts

PASSWORD = "correct horse battery staple"
OWNER = Actor("root", "owner")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def outbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all()


def queue_welcome(engine: Engine, recipient: str = "ada@example.com", **kwargs: Any) -> int | None:
    with engine.begin() as conn:
        return email_outbox.enqueue(
            conn, recipient, "welcome", **emails.sample_context("welcome"), **kwargs
        )


def sign_up(engine: Engine, email: str = "ada@example.com", org: str = "Analytical") -> Any:
    with engine.begin() as conn:
        current = signup.get_settings(conn)
        signup.save_settings(conn, replace(current, signup_enabled=True), "owner")
        return signup.sign_up(conn, TEST_SECRET.encode(), email, PASSWORD, org)


# Outbox delivery


def test_outbox_delivers_once(engine: Engine, smtp: SmtpServer) -> None:
    queue_welcome(engine)
    assert email_outbox.deliver_due(engine, smtp.settings()) == 1
    assert email_outbox.deliver_due(engine, smtp.settings()) == 0
    [message] = smtp.inbox.messages
    assert message["To"] == "ada@example.com"
    assert message["From"] == "gatewayz@example.com"
    assert message["Subject"] == "Welcome to Gatewayz, Acme Research"
    bodies = parts(message)
    assert "Acme Research" in bodies["text/plain"]
    assert bodies["text/html"].startswith("<!doctype html>")
    [row] = outbox_rows(engine)
    assert row.status == "sent"
    assert row.attempts == 1
    assert row.sent_at is not None


def test_outbox_dedupe_key(engine: Engine) -> None:
    first = queue_welcome(engine, dedupe_key="welcome:1")
    second = queue_welcome(engine, dedupe_key="welcome:1")
    assert first is not None
    assert second is None
    assert len(outbox_rows(engine)) == 1


def test_failed_send_retried_later(engine: Engine) -> None:
    # The port is chosen but nothing listens on it yet: the mail server is down.
    server = SmtpServer()
    queue_welcome(engine)
    started = time.monotonic()
    assert email_outbox.deliver_due(engine, server.settings(timeout=2)) == 0
    assert time.monotonic() - started < 5
    [row] = outbox_rows(engine)
    assert row.status == "pending"
    assert row.attempts == 1
    assert "ConnectionRefusedError" in row.last_error
    assert row.next_attempt_at > datetime.now(UTC)

    server.start()
    try:
        # Not due yet, so nothing is sent before the retry time.
        assert email_outbox.deliver_due(engine, server.settings()) == 0
        assert server.inbox.messages == []
        later = datetime.now(UTC) + timedelta(hours=1)
        assert email_outbox.deliver_due(engine, server.settings(), now=later) == 1
        assert email_outbox.deliver_due(engine, server.settings(), now=later) == 0
    finally:
        server.stop()
    assert len(server.inbox.messages) == 1
    [row] = outbox_rows(engine)
    assert row.status == "sent"
    assert row.attempts == 2


def test_permanent_rejection_fails(engine: Engine, smtp: SmtpServer) -> None:
    smtp.inbox.reply = "550 5.1.1 mailbox unavailable"
    queue_welcome(engine)
    assert email_outbox.deliver_due(engine, smtp.settings()) == 0
    [row] = outbox_rows(engine)
    assert row.status == "failed"
    assert "550" in row.last_error
    smtp.inbox.reply = None
    with engine.begin() as conn:
        assert email_outbox.retry_failed(conn, row.id) is True
        assert email_outbox.retry_failed(conn, row.id) is False
    assert email_outbox.deliver_due(engine, smtp.settings()) == 1
    assert len(smtp.inbox.messages) == 1


def test_last_attempt_marks_failed(engine: Engine) -> None:
    server = SmtpServer()
    email_id = queue_welcome(engine)
    with engine.begin() as conn:
        conn.execute(
            update(outbox_table)
            .where(outbox_table.c.id == email_id)
            .values(attempts=email_outbox.MAX_ATTEMPTS - 1)
        )
    email_outbox.deliver_due(engine, server.settings(timeout=2))
    [row] = outbox_rows(engine)
    assert row.status == "failed"
    assert row.attempts == email_outbox.MAX_ATTEMPTS


def test_sender_thread_delivers(engine: Engine, smtp: SmtpServer) -> None:
    sender = email_outbox.OutboxSender(engine, smtp.settings(), interval=60).start()
    try:
        queue_welcome(engine)
        sender.wake()
        deadline = time.monotonic() + 10
        while not smtp.inbox.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
    assert len(smtp.inbox.messages) == 1


def test_render_error_raises_at_enqueue(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="unknown email template"):
        email_outbox.enqueue(conn, "ada@example.com", "no_such_template")


# Emails queued by events


def test_signup_sends_welcome(engine: Engine, smtp: SmtpServer) -> None:
    result = sign_up(engine)
    assert email_outbox.deliver_due(engine, smtp.settings()) == 1
    [message] = smtp.inbox.messages
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome to Gatewayz, Analytical"
    bodies = parts(message)
    assert "$10.00 of trial credit" in bodies["text/plain"]
    assert "Analytical" in bodies["text/html"]
    assert result.test_key.secret not in message.as_string()


def test_invitation_email_has_no_password(engine: Engine, smtp: SmtpServer) -> None:
    with engine.begin() as conn:
        password = users_admin.invite_user(
            conn, OWNER, "grace", "grace@example.com", "researcher", "Grace"
        )
    assert email_outbox.deliver_due(engine, smtp.settings()) == 1
    [message] = smtp.inbox.messages
    assert message["To"] == "grace@example.com"
    bodies = parts(message)
    assert "Your username is grace." in bodies["text/plain"]
    assert "researcher" in bodies["text/html"]
    assert password not in message.as_string()


def test_key_created_email(engine: Engine, smtp: SmtpServer) -> None:
    result = sign_up(engine)
    with engine.begin() as conn:
        signup.approve_live_keys(conn, OWNER, result.organization_id)
        owner = Actor("ada@example.com", "owner")
        issued = keys_admin.create_key(
            conn, TEST_SECRET.encode(), owner, team_id=result.team_id, name="ci", mode="live"
        )
    email_outbox.deliver_due(engine, smtp.settings())
    [message] = smtp.inbox.to("ada@example.com")[1:]
    assert message["Subject"] == 'New live API key "ci" for default'
    bodies = parts(message)
    assert f"{issued.prefix}...{issued.last4}" in bodies["text/plain"]
    assert issued.last4 in bodies["text/html"]
    assert issued.secret not in message.as_string()


def spend(engine: Engine, org_id: int, amount: str, reference: str) -> None:
    with engine.begin() as conn:
        ledger.add_entry(
            conn,
            scope_type="organization",
            scope_id=org_id,
            amount=Decimal(amount),
            kind="usage" if amount.startswith("-") else "grant",
            reference=reference,
        )


def low_balance_check(engine: Engine) -> int:
    with engine.begin() as conn:
        return email_outbox.check_low_balances(conn)


def test_low_balance_once_per_crossing(engine: Engine, smtp: SmtpServer) -> None:
    org_id = sign_up(engine).organization_id
    # The trial credit of $10 is above the default $5 threshold.
    assert low_balance_check(engine) == 0
    spend(engine, org_id, "-6", "req-1")
    assert low_balance_check(engine) == 1
    spend(engine, org_id, "-1", "req-2")
    assert low_balance_check(engine) == 0
    spend(engine, org_id, "10", "top-up")
    assert low_balance_check(engine) == 0
    spend(engine, org_id, "-12", "req-3")
    assert low_balance_check(engine) == 1
    email_outbox.deliver_due(engine, smtp.settings())
    low = [m for m in smtp.inbox.to("ada@example.com") if "credit left" in m["Subject"]]
    assert [m["Subject"] for m in low] == [
        "Analytical has $4.00 of Gatewayz credit left",
        "Analytical has $1.00 of Gatewayz credit left",
    ]
    bodies = parts(low[0])
    assert "warning threshold of $5.00" in bodies["text/plain"]
    assert "/billing" in bodies["text/html"]


def test_low_balance_threshold_setting(engine: Engine) -> None:
    sign_up(engine)
    with engine.begin() as conn:
        current = signup.get_settings(conn)
        raised = replace(current, low_balance_threshold=Decimal(20))
        signup.save_settings(conn, raised, "owner")
    assert low_balance_check(engine) == 1
    [row] = [r for r in outbox_rows(engine) if r.template == "low_balance"]
    assert row.recipient == "ada@example.com"
    assert row.subject == "Analytical has $10.00 of Gatewayz credit left"


def test_user_export_and_delete_cover_emails(engine: Engine) -> None:
    sign_up(engine)
    queue_welcome(engine, "other@example.com")
    with engine.connect() as conn:
        exported = user_data.export_user(conn, "ada@example.com")
    assert [e["template"] for e in exported["emails"]] == ["welcome"]
    assert exported["emails"][0]["subject"] == "Welcome to Gatewayz, Analytical"
    with engine.begin() as conn:
        user_data.delete_user(conn, "ada@example.com")
    assert [row.recipient for row in outbox_rows(engine)] == ["other@example.com"]
