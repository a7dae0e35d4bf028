"""Opt-in body storage with redaction, retention purge, and user data export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from gateway_core import directory, keys, privacy
from tests.conftest import TEST_SECRET
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import post_json, usage_row

SECRETISH = (
    "mail me at ada@example.org, card 4111 1111 1111 1111, key gw_live_ABCDEFGHIJKLMNOPQRSTUV"
)


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("privacy") / "proxy.log")
    yield process
    process.stop()


def body_row(engine: Engine, request_id: str) -> dict | None:
    with engine.connect() as conn:
        return privacy.stored_body(conn, request_id)


def test_bodies_stored_only_when_enabled_and_redacted(proxy: ProxyProcess, engine: Engine) -> None:
    with engine.begin() as conn:
        logged = directory.create_team(conn, "logged")
        quiet = directory.create_team(conn, "quiet")
        privacy.set_privacy(conn, scope_type="team", scope_id=logged.id, log_bodies=True)
        privacy.add_redaction_pattern(conn, logged.organization_id, "grant ids", r"GRANT-\d+")
        logged_key = keys.create_key(conn, TEST_SECRET.encode(), team_id=logged.id, name="a")
        quiet_key = keys.create_key(conn, TEST_SECRET.encode(), team_id=quiet.id, name="b")
    content = SECRETISH + " for GRANT-4242"
    body = {"model": "sandbox/echo", "messages": [{"role": "user", "content": content}]}
    response = post_json(proxy.base_url, "/v1/chat/completions", body, logged_key.secret)
    request_id = response.headers["x-request-id"]
    usage_row(engine, request_id)
    stored = body_row(engine, request_id)
    assert stored is not None
    text_in = stored["request"]["messages"][0]["content"]
    text_out = stored["response"]["choices"][0]["message"]["content"]
    for leaked in ("ada@example.org", "4111 1111 1111 1111", "gw_live_ABCDEF", "GRANT-4242"):
        assert leaked not in text_in
        assert leaked not in text_out
    assert text_in.count("[REDACTED]") == 4
    quiet_response = post_json(proxy.base_url, "/v1/chat/completions", body, quiet_key.secret)
    quiet_id = quiet_response.headers["x-request-id"]
    usage_row(engine, quiet_id)
    assert body_row(engine, quiet_id) is None


def test_streamed_answer_stored(proxy: ProxyProcess, engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "streams")
        privacy.set_privacy(conn, scope_type="team", scope_id=team.id, log_bodies=True)
        key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="s").secret
    body = {
        "model": "sandbox/echo",
        "stream": True,
        "messages": [{"role": "user", "content": "stream me"}],
    }
    with httpx.stream(
        "POST",
        proxy.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    ) as response:
        request_id = response.headers["x-request-id"]
        response.read()
    usage_row(engine, request_id)
    stored = body_row(engine, request_id)
    assert stored is not None
    assert stored["response"]["content"].endswith("stream me")


def test_purge_keeps_usage_rows(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        team = directory.create_team(conn, "retention")
        privacy.set_privacy(
            conn,
            scope_type="organization",
            scope_id=team.organization_id,
            log_bodies=True,
            retention_days=7,
        )
        for request_id, age in (("req_old", 8), ("req_new", 6)):
            conn.execute(
                text(
                    "INSERT INTO request_bodies (request_id, created_at, organization_id, "
                    "request) VALUES (:id, :at, :org, '{}')"
                ),
                {"id": request_id, "at": now - timedelta(days=age), "org": team.organization_id},
            )
            conn.execute(
                text(
                    "INSERT INTO usage_events (request_id, created_at, endpoint, status_code, "
                    "latency_ms) VALUES (:id, :at, 'chat', 200, 1)"
                ),
                {"id": request_id, "at": now - timedelta(days=age)},
            )
        assert privacy.purge_bodies(conn, now) == 1
    with engine.connect() as conn:
        remaining = conn.execute(text("SELECT request_id FROM request_bodies")).scalars().all()
        usage = conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
    assert remaining == ["req_new"]
    assert usage == 2


def test_user_export_and_delete(server_env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        directory.create_user(conn, username="grace", password="pw-0123456789", role="viewer")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway_core", *args],
            env=server_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    exported = cli("users", "export", "grace")
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert data["account"]["username"] == "grace"
    assert "password_hash" not in data["account"]
    assert cli("users", "delete", "grace").returncode == 0
    missing = cli("users", "export", "grace")
    assert missing.returncode == 1
    assert "no user named 'grace'" in missing.stderr
