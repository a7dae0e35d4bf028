"""The processes and the database behind a benchmark run.

Every server is a separate process (one uvicorn worker unless asked), started in its
own session so that a Ctrl-C in the terminal reaches only the benchmark,
which then stops them in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from gateway_core.budgets import set_budget
from gateway_core.config import PROJECT_ROOT
from gateway_core.db import get_engine, migrate
from gateway_core.directory import create_team
from gateway_core.keys import create_key
from gateway_core.ledger import add_entry
from gateway_core.limits_admin import set_rate_limits
from gateway_core.model_routes import set_price_override
from gateway_core.providers import upsert_provider
from gateway_core.provisioning import create_organization

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
READY_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(server_url: str, name: str) -> str:
    """Return `server_url` with its database name replaced by `name`."""
    base, _, query = server_url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


class BenchDatabase:
    """A fresh, migrated database on `server_url`, dropped by `drop()`."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"gatewayz_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.url = database_url(server_url, self.name)
        migrate(self.url)

    def provision(self, secret: str, upstream_base_url: str) -> tuple[str, str]:
        """Create the `bench` provider and two live keys, and return them.

        The first key's team has no budgets, credits or rate limits. The
        second key's key, team and organization have a budget, its
        organization a credit balance, and all three rate limits too high
        to reject anything, so every check and reservation runs.
        """
        with get_engine(self.url).begin() as conn:
            upsert_provider(conn, name="bench", base_url=upstream_base_url)
            # A price makes every call reserve and settle a real amount.
            set_price_override(conn, "bench/any", {"input": "1", "output": "2"})
            team = create_team(conn, "bench")
            key = create_key(conn, secret.encode(), team_id=team.id, name="bench")
            organization_id = create_organization(conn, "limited", trial_usd=Decimal(0))
            limited = create_team(conn, "limited", organization="limited")
            limited_key = create_key(conn, secret.encode(), team_id=limited.id, name="limited")
            add_entry(
                conn,
                scope_type="organization",
                scope_id=organization_id,
                amount=Decimal(1_000_000),
                kind="grant",
                reference="bench",
            )
            for scope_type, scope_id in (
                ("key", limited_key.id),
                ("team", limited.id),
                ("organization", organization_id),
            ):
                set_budget(
                    conn,
                    scope_type=scope_type,
                    scope_id=scope_id,
                    period="monthly",
                    limit_usd=Decimal(1_000_000),
                )
                set_rate_limits(
                    conn,
                    "owner",
                    scope_type=scope_type,
                    scope_id=scope_id,
                    requests_per_minute=100_000_000,
                    tokens_per_minute=1_000_000_000,
                    requests_per_day=1_000_000_000,
                )
        return key.secret, limited_key.secret

    def usage_by_status(self) -> dict[int, int]:
        """Count the rows in usage_events per HTTP status code."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT status_code, count(*) FROM usage_events GROUP BY status_code"
            ).fetchall()
        return {status: count for status, count in rows}

    def drop(self) -> None:
        get_engine(self.url).dispose()
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            statement = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
            conn.execute(sql.SQL(statement).format(sql.Identifier(self.name)))


class ServerProcess:
    """A server process on a loopback `port`, with its output in `<log_dir>/<name>.log`.

    `env` is the process's whole environment. The process starts in its own
    session, so a Ctrl-C in the terminal does not reach it.
    """

    def __init__(
        self,
        name: str,
        port: int,
        command: list[str],
        env: dict[str, str],
        log_dir: Path,
        cwd: Path,
    ) -> None:
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout: float = READY_TIMEOUT) -> None:
        """Poll `GET path` until it returns 200; raise RuntimeError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode} while "
                    f"starting; its log {self.log_path} ends with:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.base_url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not return 200 for GET {path} within {timeout:.0f} s; "
            f"its log {self.log_path} ends with:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop with SIGINT, uvicorn's graceful shutdown, and kill after `timeout` s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Server(ServerProcess):
    """One uvicorn process serving an app factory on a free loopback port."""

    def __init__(
        self,
        name: str,
        factory: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        access_log: bool = False,
        wrapper: list[str] | None = None,
        options: tuple[str, ...] = (),
        workers: int = 1,
    ) -> None:
        port = free_port()
        # `wrapper` runs uvicorn under another Python tool, e.g. a profiler.
        command = [sys.executable, *(wrapper or ["-m"]), "uvicorn", factory, "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        command += [*options, "--workers", str(workers)]
        if not access_log:
            command.append("--no-access-log")
        super().__init__(name, port, command, {**os.environ, **env}, log_dir, PROJECT_ROOT)
