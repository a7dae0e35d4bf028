"""Fuzz the public API of a running proxy from its OpenAPI descriptions.

Schemathesis (its CLI, in a subprocess) generates valid and invalid
requests for every operation in /openapi.json (the /v1 routes, called with
a test-mode key) and in /admin/openapi.json (called with an owner admin
key). Every response must be free of server errors (5xx other than the
documented 502, 503 and 504 from providers), and its status code, content
type and body must match the description.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from gateway_core import admin_keys, directory, keys
from tests.conftest import TEST_SECRET
from tests.support.processes import ProxyProcess

# Examples per operation, which bounds the run's length.
MAX_EXAMPLES = 25
SEED = 20261204
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("fuzz") / "proxy.log")
    yield process
    process.stop()


def run_schemathesis(
    proxy: ProxyProcess, schema_path: str, secret: str, report_dir: Path
) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        proxy.base_url + schema_path,
        "--url",
        proxy.base_url,
        "--header",
        f"Authorization: Bearer {secret}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--report",
        "ndjson",
        "--report-dir",
        str(report_dir),
        "--output-sanitize",
        "true",
        "--no-color",
    ]
    # Run in report_dir, because schemathesis writes a .schemathesis cache folder there.
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=report_dir
    )


def test_v1_api_has_no_server_errors(proxy: ProxyProcess, engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "fuzz")
        secret = keys.create_key(
            conn, TEST_SECRET.encode(), team_id=team.id, name="fuzz", mode="test"
        ).secret
    document = httpx.get(proxy.base_url + "/openapi.json", timeout=10).json()
    assert "/v1/chat/completions" in document["paths"]
    result = run_schemathesis(proxy, "/openapi.json", secret, tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "Traceback" not in proxy.logs()


def test_admin_api_has_no_server_errors(
    proxy: ProxyProcess, engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        secret = admin_keys.create_admin_key(
            conn, TEST_SECRET.encode(), name="fuzz", role="owner"
        ).secret
    result = run_schemathesis(proxy, "/admin/openapi.json", secret, tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "Traceback" not in proxy.logs()
