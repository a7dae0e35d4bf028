"""`python -m gateway_core run` (what `make run` calls) from an empty data folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psycopg

from gateway_core.config import PROJECT_ROOT
from tests.support.fake_openai import free_port


def start_launcher(data_dir: Path, proxy_port: int, app_port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GATEWAYZ_SECRET")}
    env.update(
        GATEWAYZ_DATA_DIR=str(data_dir),
        GATEWAYZ_PROXY_PORT=str(proxy_port),
        GATEWAYZ_APP_PORT=str(app_port),
        PYTHONUNBUFFERED="1",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gateway_core", "run"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until_banner(process: subprocess.Popen[str], timeout: float = 120) -> str:
    assert process.stdout is not None
    output = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        output.append(line)
        if "Press Ctrl-C to stop." in line:
            return "".join(output)
        assert time.monotonic() < deadline, "".join(output)
    raise AssertionError("launcher exited before it was ready:\n" + "".join(output))


def stop_launcher(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    return rest


def test_run_twice_reuses_data(outside_tmp_path: Path) -> None:
    tmp_path = outside_tmp_path
    proxy_port, app_port = free_port(), free_port()
    first = start_launcher(tmp_path, proxy_port, app_port)
    try:
        banner = read_until_banner(first)
        password = re.search(r"password: (\S+)", banner)
        assert password is not None, banner
        assert f"http://127.0.0.1:{proxy_port}/v1" in banner
        assert f"http://127.0.0.1:{app_port}" in banner
        assert httpx.get(f"http://127.0.0.1:{app_port}/_stcore/health").status_code == 200
        models = openai.OpenAI(
            base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="gw_live_" + "B" * 43
        )
        try:
            models.models.list()
            raise AssertionError("an unknown key must be rejected")
        except openai.AuthenticationError:
            pass
    finally:
        stop_output = stop_launcher(first)
    assert first.returncode == 0, stop_output
    assert "stopping proxy and app" in stop_output
    assert (tmp_path / "postgres" / "PG_VERSION").exists()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()
    assert_port_closed(proxy_port)
    env_file = (tmp_path / "gatewayz.env").read_text()
    assert "GATEWAYZ_SECRET=" in env_file
    assert oct((tmp_path / "gatewayz.env").stat().st_mode & 0o777) == "0o600"

    second = start_launcher(tmp_path, proxy_port, app_port)
    try:
        banner = read_until_banner(second)
        assert "password:" not in banner
        database_url = re.search(r"Database: +(\S+)", banner)
        assert database_url is not None, banner
        with psycopg.connect(database_url.group(1)) as conn:
            hashes = conn.execute("SELECT username, password_hash FROM users").fetchall()
        assert [row[0] for row in hashes] == ["admin"]
        assert hashes[0][1].startswith("$2")
        assert password.group(1) not in hashes[0][1]
    finally:
        stop_launcher(second)
    assert second.returncode == 0


def assert_port_closed(port: int) -> None:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
    except httpx.ConnectError:
        return
    raise AssertionError(f"port {port} still answers after Ctrl-C")


def test_run_refuses_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        process = start_launcher(tmp_path, taken, free_port())
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert f"port {taken} for the proxy is in use" in output
    assert "GATEWAYZ_PROXY_PORT" in output
