"""Health alert rules: one message per incident over real SMTP and webhooks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select, text, update

from gateway_core import alerts, directory, health_alerts, health_rules, keys, providers
from gateway_core.access import Actor
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.health_alerts import LocalHealth
from gateway_core.schema import health_alert_rules, health_incidents
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI, free_port
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json
from tests.test_budget_alerts import WEBHOOK_SECRET, Inbox, start_webhook_receiver

OWNER = Actor("olga", "owner")


@dataclass
class Receivers:
    inbox: Inbox
    smtp_port: int
    hooks: list[dict[str, Any]]
    webhook_url: str


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    hooks: list[dict[str, Any]] = []
    webhook = start_webhook_receiver(hooks)
    url = f"http://127.0.0.1:{webhook.server_address[1]}/hook"
    try:
        yield Receivers(inbox, smtp.port, hooks, url)
    finally:
        smtp.stop()
        webhook.shutdown()


def add_channels(engine: Engine, receivers: Receivers, organization_id: int) -> None:
    with engine.begin() as conn:
        alerts.add_channel(conn, TEST_SECRET.encode(), organization_id, "email", "ops@example.org")
        alerts.add_channel(
            conn,
            TEST_SECRET.encode(),
            organization_id,
            "webhook",
            receivers.webhook_url,
            secret=WEBHOOK_SECRET,
        )


def save_rule(engine: Engine, organization_id: int, **fields: Any) -> int:
    values = {
        "name": "fake errors",
        "kind": "error_rate",
        "provider": "fake",
        "threshold": "0.5",
        "window_seconds": 2,
        "min_requests": 1,
        "cooldown_seconds": 3600,
        **fields,
    }
    with engine.begin() as conn:
        return health_rules.save_rule(conn, OWNER, organization_id=organization_id, **values)


def incidents(engine: Engine, rule_id: int) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            select(health_incidents)
            .where(health_incidents.c.rule_id == rule_id)
            .order_by(health_incidents.c.id)
        ).all()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_failing_upstream_alerts_once_per_cooldown(
    database_url: str, engine: Engine, receivers: Receivers, tmp_path: Path
) -> None:
    upstream = FakeOpenAI().start()
    with engine.begin() as conn:
        team = directory.create_team(conn, "health")
        providers.upsert_provider(conn, name="fake", base_url=upstream.base_url)
        key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret
    add_channels(engine, receivers, team.organization_id)
    rule_id = save_rule(engine, team.organization_id)
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_UPSTREAM_MAX_RETRIES="0",
        GATEWAYZ_CIRCUIT_FAILURES="1000",
        GATEWAYZ_HEALTH_INTERVAL="0.2",
        GATEWAYZ_SMTP_HOST="127.0.0.1",
        GATEWAYZ_SMTP_PORT=str(receivers.smtp_port),
        GATEWAYZ_SMTP_FROM="gatewayz@example.org",
    )
    failing = {**CHAT, "model": "fake/fail-500"}
    healthy = {**CHAT, "model": "fake/any"}

    def send(body: dict[str, Any], calls: int, pause: float = 0.1) -> list[int]:
        statuses = []
        for _ in range(calls):
            statuses.append(
                post_json(proxy.base_url, "/v1/chat/completions", body, key).status_code
            )
            time.sleep(pause)
        return statuses

    def resolved() -> bool:
        return all(row.resolved_at is not None for row in incidents(engine, rule_id))

    # Two workers evaluate the same rule, so a double send would show here.
    proxy = ProxyProcess(env, tmp_path / "proxy.log", workers=2)
    try:
        assert set(send(failing, 15)) == {502}
        assert wait_for(lambda: len(receivers.hooks) >= 1)
        assert wait_for(lambda: len(receivers.inbox.messages) >= 1)
        # The condition keeps holding for many evaluations; no second message.
        send(failing, 10)
        assert len(receivers.inbox.messages) == 1
        assert len(receivers.hooks) == 1

        assert set(send(healthy, 3)) == {200}
        assert wait_for(resolved)
        # Let the rule's 2 s window empty of the earlier failures, so the
        # error rate only rises while the next failures arrive.
        time.sleep(2.2)
        send(failing, 10)
        assert wait_for(lambda: len(incidents(engine, rule_id)) >= 2)
        # Inside the cool-down, the new incident is recorded but not sent.
        time.sleep(0.6)
        assert incidents(engine, rule_id)[1].notified_at is None
        assert len(receivers.hooks) == 1

        with engine.begin() as conn:
            conn.execute(
                update(health_alert_rules)
                .where(health_alert_rules.c.id == rule_id)
                .values(cooldown_seconds=0)
            )
        assert wait_for(resolved)
        time.sleep(2.2)
        send(failing, 10)
        assert wait_for(lambda: len(receivers.hooks) >= 2)
        assert wait_for(lambda: len(receivers.inbox.messages) >= 2)
        time.sleep(0.6)
    finally:
        proxy.stop()
        upstream.stop()

    assert len(receivers.inbox.messages) == 2
    assert len(receivers.hooks) == 2
    rows = incidents(engine, rule_id)
    assert len(rows) == 3
    assert [row.notified_at is not None for row in rows] == [True, False, True]
    for message in receivers.inbox.messages:
        assert message.rcpt_tos == ["ops@example.org"]
        assert b"Gatewayz health alert: fake errors" in message.content
    for hook in receivers.hooks:
        assert alerts.verify_webhook_signature(
            WEBHOOK_SECRET, hook["timestamp"], hook["body"], hook["signature"]
        )
    payloads = [json.loads(hook["body"]) for hook in receivers.hooks]
    assert [payload["type"] for payload in payloads] == ["health_alert", "health_alert"]
    assert [payload["rule_id"] for payload in payloads] == [rule_id, rule_id]
    assert [payload["incident_id"] for payload in payloads] == [rows[0].id, rows[2].id]
    assert Decimal(payloads[0]["value"]) >= Decimal("0.5")


def evaluate(
    engine: Engine, receivers: Receivers, rule_id: int, local: LocalHealth, grace: float = 0.0
) -> str:
    smtp = alerts.SmtpSettings("127.0.0.1", "gatewayz@example.org", port=receivers.smtp_port)
    with engine.begin() as conn:
        rule = health_rules.get_rule(conn, rule_id)
        return health_alerts.evaluate_rule(
            conn,
            rule,
            local,
            source="test:1",
            settings_secret=TEST_SECRET.encode(),
            smtp=smtp,
            resolve_grace=grace,
            backoff=0.01,
        )


def test_concurrent_workers_send_once(engine: Engine, receivers: Receivers) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "spool")
    add_channels(engine, receivers, team.organization_id)
    rule_id = save_rule(
        engine, team.organization_id, name="spool", kind="spool_rows", provider=None, threshold="10"
    )
    backlog = LocalHealth(spool_rows=100)
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda _: evaluate(engine, receivers, rule_id, backlog), range(6)))
    assert sorted(outcomes) == ["notified"] + ["ongoing"] * 5
    assert len(receivers.hooks) == 1
    assert len(receivers.inbox.messages) == 1
    assert Decimal(json.loads(receivers.hooks[0]["body"])["value"]) == 100
    assert len(incidents(engine, rule_id)) == 1


def test_local_condition_resolves_after_grace(engine: Engine, receivers: Receivers) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "circuits")
    add_channels(engine, receivers, team.organization_id)
    rule_id = save_rule(
        engine, team.organization_id, name="circuit", kind="circuit_open", threshold="0"
    )
    assert evaluate(engine, receivers, rule_id, LocalHealth()) == "clear"
    assert (
        evaluate(engine, receivers, rule_id, LocalHealth(open_circuits=frozenset({"other"})))
        == "clear"
    )
    assert (
        evaluate(engine, receivers, rule_id, LocalHealth(open_circuits=frozenset({"fake"})))
        == "notified"
    )
    # Another worker whose circuit is closed does not end the incident while
    # the worker that sees it open has reported within the grace period.
    assert evaluate(engine, receivers, rule_id, LocalHealth(), grace=60) == "clear"
    assert incidents(engine, rule_id)[0].resolved_at is None
    assert evaluate(engine, receivers, rule_id, LocalHealth(), grace=0) == "resolved"
    assert incidents(engine, rule_id)[0].resolved_at is not None
    assert len(receivers.hooks) == 1


def test_p95_latency_rule(engine: Engine, receivers: Receivers) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "latency")
        conn.execute(
            text(
                "INSERT INTO usage_events (request_id, created_at, endpoint, provider, "
                "status_code, latency_ms) SELECT 'req_p95_' || g, now(), 'chat.completions', "
                "'slowprov', 200, g * 100 FROM generate_series(1, 20) AS g"
            )
        )
    add_channels(engine, receivers, team.organization_id)
    rule_id = save_rule(
        engine,
        team.organization_id,
        name="slow",
        kind="p95_latency",
        provider="slowprov",
        threshold="1800",
        window_seconds=600,
        min_requests=20,
    )
    # p95 of 100, 200, ..., 2000 ms is 1905 ms.
    assert evaluate(engine, receivers, rule_id, LocalHealth()) == "notified"
    assert Decimal(json.loads(receivers.hooks[0]["body"])["value"]) == 1905
    with engine.begin() as conn:
        conn.execute(
            update(health_alert_rules)
            .where(health_alert_rules.c.id == rule_id)
            .values(min_requests=21)
        )
    # A measured condition that clears for less than the grace period keeps
    # its incident open, so a value at the threshold does not flap.
    assert evaluate(engine, receivers, rule_id, LocalHealth(), grace=60) == "clear"
    assert incidents(engine, rule_id)[0].resolved_at is None
    assert evaluate(engine, receivers, rule_id, LocalHealth()) == "resolved"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": "1.5"}, "expected a fraction from 0 to 1"),
        ({"threshold": "abc"}, "invalid threshold 'abc'"),
        ({"threshold": "-1"}, "expected zero or more"),
        ({"kind": "disk_full"}, "invalid rule kind 'disk_full'"),
        ({"kind": "circuit_open", "provider": " "}, "needs the provider"),
        ({"window_seconds": 0}, "invalid window 0 s"),
        ({"cooldown_seconds": -5}, "invalid cool-down -5 s"),
        ({"name": ""}, "rule name must be 1 to 100 characters"),
    ],
)
def test_invalid_rule_rejected(engine: Engine, fields: dict[str, Any], message: str) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "invalid")
    with pytest.raises(InvalidRequestError, match=message):
        save_rule(engine, team.organization_id, **fields)
    with engine.connect() as conn:
        assert conn.execute(select(health_alert_rules)).all() == []


def test_rule_changes_audited(engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "audited")
    rule_id = save_rule(engine, team.organization_id)
    with engine.begin() as conn:
        health_rules.save_rule(
            conn,
            OWNER,
            rule_id=rule_id,
            organization_id=team.organization_id,
            name="fake errors",
            kind="error_rate",
            provider="fake",
            threshold="0.25",
            window_seconds=300,
            min_requests=10,
            cooldown_seconds=900,
            enabled=False,
        )
    with engine.begin() as conn:
        assert health_rules.delete_rule(conn, OWNER, rule_id) is True
        assert health_rules.delete_rule(conn, OWNER, rule_id) is False
        with pytest.raises(NotFoundError):
            health_rules.get_rule(conn, rule_id)
        entries = conn.execute(
            text("SELECT action, actor, before, after FROM audit_log ORDER BY id")
        ).all()
    assert [entry.action for entry in entries] == [
        "health_rule.create",
        "health_rule.update",
        "health_rule.delete",
    ]
    assert {entry.actor for entry in entries} == {"olga"}
    assert entries[1].before["threshold"] == "0.500000"
    assert entries[1].after["threshold"] == "0.250000"
    assert entries[1].after["enabled"] is False
    assert entries[2].after is None
