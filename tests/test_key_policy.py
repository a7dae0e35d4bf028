"""Key restrictions enforced by the proxy: networks, referrers, scopes, expiry, rotation."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine

from gateway_core import directory, keys
from proxy.key_policy import client_address, parse_networks
from tests.conftest import TEST_SECRET
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, usage_row


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        # Only this made-up proxy address is trusted, so X-Forwarded-For
        # sent straight from 127.0.0.1 must be ignored.
        GATEWAYZ_TRUSTED_PROXIES="192.0.2.10/32",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("policy") / "proxy.log", workers=2)
    yield process
    process.stop()


@pytest.fixture
def key(engine: Engine) -> keys.IssuedKey:
    with engine.begin() as conn:
        team = directory.create_team(conn, "policy")
        return keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k")


def call(proxy: ProxyProcess, secret: str, body: dict | None = None, **headers: str):
    return httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json=body or CHAT,
        headers={"authorization": f"Bearer {secret}", **headers},
        timeout=30,
    )


def set_policy(engine: Engine, key_id: int, **values: object) -> None:
    with engine.begin() as conn:
        keys.set_key_policy(conn, key_id, **values)
    # Both workers drop the key at the NOTIFY; the cache TTL bounds a miss.
    time.sleep(1.1)


def test_ip_allowlist_and_spoofed_forwarded_for(
    proxy: ProxyProcess, key: keys.IssuedKey, engine: Engine
) -> None:
    set_policy(engine, key.id, allowed_ips=["10.0.0.0/8", "2001:db8::/32"])
    rejected = call(proxy, key.secret)
    assert rejected.status_code == 403
    assert rejected.json()["error"]["code"] == "ip_not_allowed"
    assert "127.0.0.1" in rejected.json()["error"]["message"]
    spoofed = call(proxy, key.secret, **{"x-forwarded-for": "10.1.2.3"})
    assert spoofed.status_code == 403
    row = usage_row(engine, spoofed.headers["x-request-id"])
    assert row["api_key_id"] == key.id
    set_policy(engine, key.id, allowed_ips=["127.0.0.0/8", "::1/128"])
    assert call(proxy, key.secret).status_code == 200


def test_forwarded_for_from_trusted_proxy() -> None:
    trusted = parse_networks(["192.0.2.10/32", "192.0.2.11/32"])
    assert trusted is not None
    assert str(client_address("192.0.2.10", "203.0.113.5, 192.0.2.11", trusted)) == "203.0.113.5"
    assert str(client_address("127.0.0.1", "203.0.113.5", trusted)) == "127.0.0.1"
    assert str(client_address("192.0.2.10", "garbage", trusted)) == "192.0.2.10"
    assert str(client_address("192.0.2.10", "2001:db8::7", trusted)) == "2001:db8::7"


def test_referrer_domains(proxy: ProxyProcess, key: keys.IssuedKey, engine: Engine) -> None:
    set_policy(engine, key.id, allowed_referrers=["example.org"])
    assert call(proxy, key.secret).status_code == 403
    assert call(proxy, key.secret, referer="https://evil.example.com/x").status_code == 403
    assert call(proxy, key.secret, referer="https://app.example.org/chat").status_code == 200
    assert call(proxy, key.secret, origin="https://example.org").status_code == 200


def test_model_and_endpoint_scopes(
    proxy: ProxyProcess, key: keys.IssuedKey, engine: Engine
) -> None:
    set_policy(engine, key.id, allowed_models=["sandbox/e*"], allowed_endpoints=["chat"])
    assert call(proxy, key.secret).status_code == 200
    other = call(proxy, key.secret, {**CHAT, "model": "sandbox/reverse"})
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "model_not_allowed"
    embeddings = httpx.post(
        proxy.base_url + "/v1/embeddings",
        json={"model": "sandbox/echo", "input": "x"},
        headers={"authorization": f"Bearer {key.secret}"},
    )
    assert embeddings.status_code == 403
    assert embeddings.json()["error"]["code"] == "endpoint_not_allowed"
    listed = httpx.get(
        proxy.base_url + "/v1/models", headers={"authorization": f"Bearer {key.secret}"}
    )
    assert [m["id"] for m in listed.json()["data"]] == ["sandbox/echo"]


def test_expiry_and_rotation_grace(
    proxy: ProxyProcess, key: keys.IssuedKey, engine: Engine
) -> None:
    with engine.begin() as conn:
        replacement = keys.rotate_key(
            conn, TEST_SECRET.encode(), key.id, grace=timedelta(seconds=3)
        )
    assert call(proxy, key.secret).status_code == 200
    assert call(proxy, replacement.secret).status_code == 200
    time.sleep(4.2)
    expired = call(proxy, key.secret)
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "api_key_expired"
    assert call(proxy, replacement.secret).status_code == 200
    set_policy(engine, replacement.id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert call(proxy, replacement.secret).status_code == 401


def test_tags_and_metadata_in_usage(
    proxy: ProxyProcess, key: keys.IssuedKey, engine: Engine
) -> None:
    set_policy(engine, key.id, tags=["grant-42", "nlp"], metadata={"owner": "rivera"})
    response = call(proxy, key.secret)
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["key_tags"] == ["grant-42", "nlp"]
    assert row["key_metadata"] == {"owner": "rivera"}


def test_revocation_reaches_every_worker(
    proxy: ProxyProcess, key: keys.IssuedKey, engine: Engine
) -> None:
    for _ in range(10):
        assert call(proxy, key.secret).status_code == 200
    with engine.begin() as conn:
        keys.revoke_key(conn, key.id)
    time.sleep(1.0)
    statuses = {call(proxy, key.secret).status_code for _ in range(20)}
    assert statuses == {403}


def test_policy_validation(engine: Engine, key: keys.IssuedKey) -> None:
    from gateway_core.errors import InvalidRequestError

    with engine.begin() as conn, pytest.raises(InvalidRequestError):
        keys.set_key_policy(conn, key.id, allowed_ips=["not-a-network"])
    with engine.begin() as conn, pytest.raises(InvalidRequestError):
        keys.set_key_policy(conn, key.id, allowed_endpoints=["teleport"])
    with engine.begin() as conn, pytest.raises(InvalidRequestError):
        keys.set_key_policy(conn, key.id, expires_at=datetime(2030, 1, 1))
