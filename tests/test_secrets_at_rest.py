"""Provider keys are stored encrypted, used by the proxy, and survive key rotation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway_core import directory, keys, secret_box
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json

PROVIDER_KEY = "sk-live-provider-0123456789abcdefXYZ"
OLD_KEY = "old-encryption-key-" + "o" * 20
NEW_KEY = "new-encryption-key-" + "n" * 20


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_encrypted_provider_key_rotation(
    server_env: dict[str, str],
    engine: Engine,
    upstream: FakeOpenAI,
    database_url: str,
    tmp_path: Path,
) -> None:
    old_env = {**server_env, "GATEWAYZ_ENCRYPTION_KEY": OLD_KEY}
    added = cli(
        old_env, "providers", "add", "vault", "--base-url", upstream.base_url,
        "--api-key-stdin", stdin=PROVIDER_KEY + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT api_key_encrypted FROM providers")).scalar_one()
        dump = conn.execute(text("SELECT string_agg(t::text, '') FROM providers t")).scalar_one()
    assert PROVIDER_KEY not in dump
    assert secret_box.decrypt(OLD_KEY.encode(), stored) == PROVIDER_KEY

    rotated = cli(
        {**server_env, "GATEWAYZ_ENCRYPTION_KEY": NEW_KEY, "GATEWAYZ_OLD_ENCRYPTION_KEYS": OLD_KEY},
        "secrets", "rotate",
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 1" in rotated.stdout
    with engine.connect() as conn:
        token = conn.execute(text("SELECT api_key_encrypted FROM providers")).scalar_one()
    assert token != stored
    with pytest.raises(secret_box.SecretBoxError):
        secret_box.decrypt(OLD_KEY.encode(), token)

    with engine.begin() as conn:
        team = directory.create_team(conn, "vault")
        key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_ENCRYPTION_KEY=NEW_KEY,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_LOG_LEVEL="DEBUG",
        GATEWAYZ_ACCESS_LOG="json",
    )
    proxy = ProxyProcess(env, tmp_path / "proxy.log")
    try:
        response = post_json(
            proxy.base_url, "/v1/chat/completions", {**CHAT, "model": "vault/any"}, key
        )
    finally:
        proxy.stop()
    assert response.status_code == 200
    assert upstream.headers[-1]["authorization"] == f"Bearer {PROVIDER_KEY}"
    logs = proxy.logs() + added.stdout + added.stderr + rotated.stdout + rotated.stderr
    assert PROVIDER_KEY not in logs
    assert key not in logs


def test_log_scan_pattern_matches_keys() -> None:
    from gateway_core.keys import generate_key
    from tests.conftest import SECRET_IN_LOG

    assert SECRET_IN_LOG.search(f"INFO auth failed for {generate_key('live')}")
    assert SECRET_IN_LOG.search(f"x {generate_key('test')} y")
    assert SECRET_IN_LOG.search(f"Bearer {PROVIDER_KEY}")
    assert not SECRET_IN_LOG.search("request req_0123 key 17 (gw_live_AbC1...xY9z)")
