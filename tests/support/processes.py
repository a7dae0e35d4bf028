"""Start the real proxy as a uvicorn subprocess for tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway_core.config import PROJECT_ROOT
from gateway_core.launcher import PROXY_SERVER_OPTIONS
from tests.support.fake_openai import free_port


class ProxyProcess:
    # Every log file written in this test run, scanned for secrets at the end.
    log_paths: list[Path] = []

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        ProxyProcess.log_paths.append(log_path)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "proxy.app:create_app",
            "--factory",
            *PROXY_SERVER_OPTIONS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--log-level",
            "info",
        ]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.base_url + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")
