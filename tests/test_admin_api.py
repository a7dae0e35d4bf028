"""The admin API at /admin of a running proxy: auth, roles, keys, usage, audit, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from gateway_core import admin_keys, audit, signup
from gateway_core.access import Actor
from gateway_core.client import GatewayzAdmin, GatewayzAPIError
from gateway_core.schema import audit_log, usage_events
from tests.conftest import TEST_SECRET
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, usage_row

ENDPOINTS = {
    "/organizations": {"get", "post"},
    "/teams": {"get", "post"},
    "/projects": {"get", "post"},
    "/keys": {"get", "post"},
    "/keys/{key_id}": {"get", "patch"},
    "/keys/{key_id}/rotate": {"post"},
    "/keys/{key_id}/revoke": {"post"},
    "/budgets": {"get", "post"},
    "/budgets/{budget_id}": {"delete"},
    "/rate-limits": {"get", "post"},
    "/usage": {"get"},
}


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("admin") / "proxy.log")
    yield process
    process.stop()


def new_admin_key(engine: Engine, role: str = "owner", name: str = "ops") -> str:
    with engine.begin() as conn:
        issued = admin_keys.create_admin_key(conn, TEST_SECRET.encode(), name=name, role=role)
    return issued.secret


def admin_call(
    proxy: ProxyProcess,
    method: str,
    path: str,
    admin_key: str | None,
    body: Any = None,
    **kwargs: Any,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    return httpx.request(
        method, proxy.base_url + "/admin" + path, json=body, headers=headers, timeout=30, **kwargs
    )


def chat(
    proxy: ProxyProcess, engine: Engine, api_key: str, model: str = "sandbox/echo"
) -> httpx.Response:
    """Call the proxy and wait for the call's usage row.

    Waiting keeps a row from arriving after the next test has emptied the
    tables, where it would count against that test's key of the same id.
    """
    response = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json={**CHAT, "model": model},
        headers={"authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    usage_row(engine, response.headers["x-request-id"])
    return response


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    return body["error"]


def setup_team(proxy: ProxyProcess, admin_key: str) -> dict[str, int]:
    """Create an organization (no trial), a team and a project; return their ids."""
    org = admin_call(proxy, "POST", "/organizations", admin_key, {"name": "Uni", "trial_usd": "0"})
    assert org.status_code == 201, org.text
    team = admin_call(
        proxy, "POST", "/teams", admin_key, {"organization_id": org.json()["id"], "name": "lab"}
    )
    assert team.status_code == 201, team.text
    project = admin_call(
        proxy,
        "POST",
        "/projects",
        admin_key,
        {"team_id": team.json()["id"], "name": "folding", "principal_investigator": "Dr. Rivera"},
    )
    assert project.status_code == 201, project.text
    return {
        "organization": org.json()["id"],
        "team": team.json()["id"],
        "project": project.json()["id"],
    }


def test_missing_wrong_and_revoked_admin_keys(proxy: ProxyProcess, engine: Engine) -> None:
    missing = admin_call(proxy, "GET", "/organizations", None)
    assert missing.status_code == 401
    assert error_of(missing)["type"] == "authentication_error"
    assert error_of(missing)["code"] == "missing_admin_key"

    basic = httpx.get(
        proxy.base_url + "/admin/organizations", headers={"authorization": "Basic Zm9vOmJhcg=="}
    )
    assert basic.status_code == 401

    wrong = admin_call(proxy, "GET", "/organizations", "gw_admin_" + "x" * 43)
    assert wrong.status_code == 401
    assert error_of(wrong)["code"] == "invalid_admin_key"

    key = new_admin_key(engine)
    assert admin_call(proxy, "GET", "/organizations", key).status_code == 200

    api_key = admin_call(proxy, "GET", "/organizations", "gw_live_" + "x" * 43)
    assert api_key.status_code == 401

    with engine.begin() as conn:
        key_id = admin_keys.list_admin_keys(conn)[0].id
        assert admin_keys.revoke_admin_key(conn, key_id)
    revoked = admin_call(proxy, "GET", "/organizations", key)
    assert revoked.status_code == 403
    assert error_of(revoked)["type"] == "permission_error"
    assert error_of(revoked)["code"] == "admin_key_revoked"


def test_roles_limit_writes(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine, "owner", "owner")
    viewer = new_admin_key(engine, "viewer", "auditor")
    billing = new_admin_key(engine, "billing", "finance")
    ids = setup_team(proxy, owner)

    assert admin_call(proxy, "GET", "/organizations", viewer).status_code == 200
    assert admin_call(proxy, "GET", "/usage", viewer).status_code == 200
    writes = [
        ("POST", "/organizations", {"name": "Other"}),
        ("POST", "/teams", {"organization_id": ids["organization"], "name": "x"}),
        ("POST", "/keys", {"team_id": ids["team"], "name": "k"}),
        ("POST", "/rate-limits", {"scope_type": "team", "scope_id": ids["team"]}),
        (
            "POST",
            "/budgets",
            {"scope_type": "team", "scope_id": ids["team"], "period": "monthly", "limit_usd": "5"},
        ),
    ]
    for method, path, body in writes:
        denied = admin_call(proxy, method, path, viewer, body)
        assert denied.status_code == 403, path
        assert error_of(denied)["code"] == "insufficient_role", path

    no_key = admin_call(proxy, "POST", "/keys", billing, {"team_id": ids["team"], "name": "k"})
    assert no_key.status_code == 403
    budget = admin_call(proxy, *writes[-1][:2], billing, writes[-1][2])
    assert budget.status_code == 200, budget.text
    assert budget.json()["limit_usd"] == "5"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM organizations")).scalar_one() == 1


def test_client_creates_research_key(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine)
    ids = setup_team(proxy, owner)
    with GatewayzAdmin(proxy.base_url, owner) as admin:
        created = admin.create_api_key(
            name="research",
            team=ids["team"],
            project=ids["project"],
            rate_limit=1000,
            credit_limit=Decimal("100"),
            allowed_models=["sandbox/*"],
        )
    assert created["key"].startswith("gw_live_")
    assert created["project_id"] == ids["project"]
    assert created["rate_limits"]["requests_per_day"] == 1000
    assert created["budgets"][0]["period"] == "lifetime"
    assert created["budgets"][0]["limit_usd"] == "100"

    call = chat(proxy, engine, created["key"])
    assert call.status_code == 200, call.text
    info = httpx.get(
        proxy.base_url + "/v1/key", headers={"authorization": f"Bearer {created['key']}"}
    )
    assert info.status_code == 200, info.text
    usage_row(engine, info.headers["x-request-id"])
    data = info.json()["data"]
    assert data["project"] == "folding"
    key_limits = [row for row in data["rate_limits"] if row["scope"] == "key"]
    assert key_limits[0]["requests_per_day"] == 1000
    key_budgets = [row for row in data["budgets"] if row["scope"] == "key"]
    assert key_budgets[0]["limit_usd"] == "100"
    assert key_budgets[0]["period"] == "lifetime"

    with engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix FROM api_keys")).one()
    assert created["key"].encode() not in bytes(stored.key_hash)
    assert created["key"].startswith(stored.prefix)


def test_usage_by_model_matches_rows(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine)
    ids = setup_team(proxy, owner)
    admin = GatewayzAdmin(proxy.base_url, owner)
    created = admin.create_api_key(name="usage", team=ids["team"], project=ids["project"])
    other = admin.create_api_key(name="other", team=ids["team"])
    for model in ("sandbox/echo", "sandbox/echo", "sandbox/reverse"):
        response = chat(proxy, engine, created["key"], model)
        assert response.status_code == 200, response.text
    assert chat(proxy, engine, other["key"]).status_code == 200

    groups = admin.get_usage(group_by="model", key=created["id"])
    with engine.connect() as conn:
        expected = conn.execute(
            select(
                usage_events.c.model,
                func.count(),
                func.sum(usage_events.c.prompt_tokens + usage_events.c.completion_tokens),
                func.sum(usage_events.c.cost_usd),
            )
            .where(usage_events.c.api_key_id == created["id"])
            .group_by(usage_events.c.model)
        ).all()
    assert {group["group"] for group in groups} == {"sandbox/echo", "sandbox/reverse"}
    by_model = {group["group"]: group for group in groups}
    for model, requests, tokens, cost in expected:
        assert by_model[model]["requests"] == requests
        assert by_model[model]["total_tokens"] == tokens
        assert by_model[model]["cost_usd"] == cost
        assert isinstance(by_model[model]["cost_usd"], Decimal)
    assert by_model["sandbox/echo"]["requests"] == 2

    by_key = admin.get_usage(group_by="key", team=ids["team"])
    assert {group["group_id"]: group["requests"] for group in by_key} == {
        created["id"]: 3,
        other["id"]: 1,
    }
    by_project = admin.get_usage(group_by="project", project=ids["project"])
    assert [(g["group"], g["requests"]) for g in by_project] == [("lab / folding", 3)]
    today = datetime.now(UTC).date().isoformat()
    by_day = admin.get_usage(group_by="day", team=ids["team"])
    assert [(g["group"], g["requests"]) for g in by_day] == [(today, 4)]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert admin.get_usage(start=future, team=ids["team"]) == []
    window = admin.get_usage(
        group_by="team",
        start=datetime.now(UTC) - timedelta(hours=1),
        end=future,
    )
    assert [(g["group_id"], g["group"], g["requests"]) for g in window] == [(ids["team"], "lab", 4)]
    admin.close()


def test_writes_are_audited(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine, name="ops")
    ids = setup_team(proxy, owner)
    admin = GatewayzAdmin(proxy.base_url, owner)
    created = admin.create_api_key(
        name="audited", team=ids["team"], rate_limit={"requests_per_minute": 60}
    )
    patched = admin_call(proxy, "PATCH", f"/keys/{created['id']}", owner, {"tags": ["grant-7"]})
    assert patched.status_code == 200, patched.text
    rotated = admin.rotate_api_key(created["id"], grace_seconds=60)
    admin.revoke_api_key(rotated["id"])
    budget = admin.set_budget(scope="team", scope_id=ids["team"], period="monthly", limit="250")
    limits = admin_call(
        proxy,
        "POST",
        "/rate-limits",
        owner,
        {"scope_type": "team", "scope_id": ids["team"], "requests_per_day": 5000},
    )
    assert limits.status_code == 200, limits.text
    removed = admin_call(proxy, "DELETE", f"/budgets/{budget['id']}", owner)
    assert removed.status_code == 204
    admin.close()

    with engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings().all()
        assert audit.verify_chain(conn) == []
        key_id = admin_keys.list_admin_keys(conn)[0].id
    assert [row["action"] for row in rows] == [
        "organization.create",
        "team.create",
        "project.create",
        "key.create",
        "key.update_policy",
        "key.rotate",
        "key.revoke",
        "budget.set",
        "rate_limits.set",
        "budget.remove",
    ]
    assert {row["actor"] for row in rows} == {f"admin_key:{key_id}:ops"}
    assert {row["client_address"] for row in rows} == {"127.0.0.1"}
    policy_change = rows[4]
    assert policy_change["before"]["tags"] == []
    assert policy_change["after"]["tags"] == ["grant-7"]
    assert rows[5]["after"]["replacement_id"] == rotated["id"]
    assert rows[7]["after"]["limit_usd"] == "250"
    logged = " ".join(str(dict(row)) for row in rows)
    assert created["key"] not in logged
    assert rotated["key"] not in logged
    assert owner not in proxy.logs()


def test_rotation_keeps_limits(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine)
    ids = setup_team(proxy, owner)
    with GatewayzAdmin(proxy.base_url, owner) as admin:
        old = admin.create_api_key(
            name="rotating", team=ids["team"], rate_limit=1000, credit_limit="100"
        )
        assert chat(proxy, engine, old["key"]).status_code == 200
        new = admin.rotate_api_key(old["id"], grace_seconds=3600)
        assert new["rotated_from"] == old["id"]
        assert new["rate_limits"]["requests_per_day"] == 1000
        assert new["budgets"][0]["limit_usd"] == "100"
        assert chat(proxy, engine, new["key"]).status_code == 200
        assert chat(proxy, engine, old["key"]).status_code == 200
        old_now = admin.get_api_key(old["id"])
        expires_at = datetime.fromisoformat(old_now["expires_at"])
        assert timedelta(minutes=59) < expires_at - datetime.now(UTC) <= timedelta(hours=1)

        revoked = admin.revoke_api_key(old["id"])
        assert revoked["revoked_at"] is not None
        rejected = chat(proxy, engine, old["key"])
        assert rejected.status_code == 403
        assert rejected.json()["error"]["code"] == "api_key_revoked"
        default_grace = admin_call(proxy, "POST", f"/keys/{new['id']}/rotate", owner)
        assert default_grace.status_code == 201, default_grace.text
        new_expires_at = datetime.fromisoformat(admin.get_api_key(new["id"])["expires_at"])
        assert timedelta(hours=23) < new_expires_at - datetime.now(UTC) <= timedelta(hours=24)
        with pytest.raises(GatewayzAPIError) as raised:
            admin.rotate_api_key(old["id"])
        assert raised.value.status_code == 400
        assert "revoked" in raised.value.message


def test_live_key_gate(proxy: ProxyProcess, engine: Engine) -> None:
    with engine.begin() as conn:
        signup.set_signup_enabled(conn, Actor("root", "owner"), True)
        result = signup.sign_up(
            conn, TEST_SECRET.encode(), "ada@example.com", "correct horse battery", "Analytical"
        )
    admin_key = new_admin_key(engine)
    live = {"team_id": result.team_id, "name": "prod"}
    rejected = admin_call(proxy, "POST", "/keys", admin_key, live)
    assert rejected.status_code == 403, rejected.text
    error = error_of(rejected)
    assert error["code"] == "live_keys_not_allowed"
    assert "first paid top-up" in error["message"]
    test = admin_call(proxy, "POST", "/keys", admin_key, {**live, "mode": "test"})
    assert test.status_code == 201, test.text
    rotated = admin_call(proxy, "POST", f"/keys/{result.test_key.id}/rotate", admin_key)
    assert rotated.status_code == 201, rotated.text
    with engine.begin() as conn:
        signup.approve_live_keys(conn, Actor("root", "owner"), result.organization_id)
    allowed = admin_call(proxy, "POST", "/keys", admin_key, live)
    assert allowed.status_code == 201, allowed.text


def test_patch_policy_takes_effect(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine)
    ids = setup_team(proxy, owner)
    with GatewayzAdmin(proxy.base_url, owner) as admin:
        created = admin.create_api_key(name="scoped", team=ids["team"])
    assert chat(proxy, engine, created["key"]).status_code == 200
    patched = admin_call(
        proxy, "PATCH", f"/keys/{created['id']}", owner, {"allowed_models": ["sandbox/reverse"]}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["allowed_models"] == ["sandbox/reverse"]
    time.sleep(1.1)
    denied = chat(proxy, engine, created["key"])
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "model_not_allowed"
    cleared = admin_call(proxy, "PATCH", f"/keys/{created['id']}", owner, {"allowed_models": None})
    assert cleared.json()["allowed_models"] is None


def test_openapi_document_and_docs(proxy: ProxyProcess) -> None:
    document = httpx.get(proxy.base_url + "/admin/openapi.json")
    assert document.status_code == 200
    paths = document.json()["paths"]
    for path, methods in ENDPOINTS.items():
        assert path in paths, path
        assert set(paths[path]) == methods, path
    for path in paths.values():
        for operation in path.values():
            assert "422" not in operation["responses"]
    schemes = document.json()["components"]["securitySchemes"]
    assert schemes["AdminKey"]["scheme"] == "bearer"
    docs = httpx.get(proxy.base_url + "/admin/docs")
    assert docs.status_code == 200
    assert "/admin/openapi.json" in docs.text


def test_invalid_input_is_rejected(proxy: ProxyProcess, engine: Engine) -> None:
    owner = new_admin_key(engine)
    ids = setup_team(proxy, owner)
    team = ids["team"]
    cases: list[tuple[str, str, Any, int, str | None]] = [
        ("POST", "/keys", {"team_id": team, "credit_limit_usd": 100}, 400, "credit_limit_usd"),
        ("POST", "/keys", {"team_id": team, "credit_limit_usd": "-1"}, 400, "credit_limit_usd"),
        ("POST", "/keys", {"team_id": team, "colour": "red"}, 400, "colour"),
        ("POST", "/keys", {"team_id": team, "rate_limits": {"requests_per_day": 0}}, 400,
         "rate_limits.requests_per_day"),
        ("POST", "/keys", {"team_id": team, "allowed_ips": ["not-a-network"]}, 400,
         "allowed_ips"),
        ("POST", "/keys", {"team_id": team, "expires_at": "2030-01-01T00:00:00"}, 400,
         "expires_at"),
        ("POST", "/keys", {"team_id": 999_999}, 404, "team_id"),
        ("POST", "/keys", {"team_id": str(team)}, 400, "team_id"),
        ("POST", "/teams", {"organization_id": ids["organization"], "name": "lab"}, 400, "name"),
        ("POST", "/organizations", {"name": "Tz", "timezone": "Mars/Base"}, 400, None),
        ("POST", "/budgets", {"scope_type": "team", "scope_id": team, "period": "yearly",
                              "limit_usd": "1"}, 400, "period"),
        ("POST", "/budgets", {"scope_type": "team", "scope_id": 999_999, "period": "daily",
                              "limit_usd": "1"}, 404, None),
        ("GET", "/usage?group_by=colour", None, 400, "group_by"),
        ("GET", "/usage?start=2030-01-01T00:00:00", None, 400, "start"),
        ("GET", "/usage?start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z", None, 400, "start"),
        ("GET", "/keys/999999", None, 404, None),
        ("POST", "/keys/999999/revoke", None, 404, None),
        ("PATCH", f"/keys/{999_999}", {"tags": []}, 404, None),
        ("GET", "/nowhere", None, 404, None),
        ("DELETE", "/organizations", None, 405, None),
    ]  # fmt: skip
    for method, path, body, status, param in cases:
        response = admin_call(proxy, method, path, owner, body)
        assert response.status_code == status, (method, path, response.text)
        error = error_of(response)
        expected_type = {400: "invalid_request_error", 404: "not_found_error"}.get(status)
        if expected_type:
            assert error["type"] == expected_type, (path, error)
        if param is not None:
            assert error["param"] == param, (path, error)

    broken = httpx.post(
        proxy.base_url + "/admin/keys",
        content=b'{"team_id": ',
        headers={"authorization": f"Bearer {owner}", "content-type": "application/json"},
    )
    assert broken.status_code == 400
    assert error_of(broken)["code"] == "invalid_json"
    huge = httpx.post(
        proxy.base_url + "/admin/keys",
        content=b"x" * (1024 * 1024 + 1),
        headers={"authorization": f"Bearer {owner}", "content-type": "application/json"},
    )
    assert huge.status_code == 413
    assert error_of(huge)["code"] == "body_too_large"
    with GatewayzAdmin(proxy.base_url, owner) as admin:
        with pytest.raises(GatewayzAPIError) as raised:
            admin.revoke_api_key(999_999)
        assert raised.value.status_code == 404
        assert "999999" in raised.value.message
        with pytest.raises(TypeError):
            admin.create_api_key(name="k", team=team, credit_limit=1.5)  # type: ignore[arg-type]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 0


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_admin_keys_cli(proxy: ProxyProcess, server_env: dict[str, str], engine: Engine) -> None:
    created = cli(server_env, "admin-keys", "create", "--name", "robot", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("gw_admin_")
    assert len(secret) == len("gw_admin_") + 43
    assert admin_call(proxy, "GET", "/teams", secret).status_code == 200

    listed = cli(server_env, "admin-keys", "list")
    assert "robot\tviewer" in listed.stdout
    assert secret not in listed.stdout
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, key_hash, last4 FROM admin_keys")).one()
        actions = conn.execute(text("SELECT action FROM audit_log ORDER BY id")).scalars().all()
    assert bytes(row.key_hash) != secret.encode()
    assert secret.endswith(row.last4)

    revoked = cli(server_env, "admin-keys", "revoke", str(row.id))
    assert revoked.returncode == 0, revoked.stderr
    assert admin_call(proxy, "GET", "/teams", secret).status_code == 403
    again = cli(server_env, "admin-keys", "revoke", str(row.id))
    assert "already revoked" in again.stdout
    bad_role = cli(server_env, "admin-keys", "create", "--name", "x", "--role", "root")
    assert bad_role.returncode != 0
    assert actions == ["admin-keys.create"]
