"""Background task that evaluates the health alert rules in each proxy worker.

Every worker runs one, so rules that watch a worker's own circuits or spool
see every worker. gateway_core.health_alerts keeps it to one message per
incident however many workers and hosts evaluate the same rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from gateway_core import alerts, health_alerts, health_rules
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.health_alerts import LocalHealth
from proxy.routing import CircuitBreaker

logger = logging.getLogger("gatewayz.health")


class HealthMonitor:
    def __init__(
        self,
        settings: Settings,
        breaker: CircuitBreaker,
        spooled_rows: Callable[[], int],
    ) -> None:
        self._settings = settings
        self._breaker = breaker
        self._spooled_rows = spooled_rows
        self._smtp = alerts.SmtpSettings.from_env()
        self._source = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._settings.health_interval > 0:
            self._task = asyncio.create_task(self._run(), name="health-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._settings.health_interval)
            open_circuits = self._breaker.open_providers()
            try:
                await loop.run_in_executor(None, self.evaluate, open_circuits)
            except SQLAlchemyError as exc:
                logger.warning("health rules not evaluated: %s: %s", type(exc).__name__, exc)
            except Exception:
                # The loop must outlive one bad evaluation, or no rule alerts again.
                logger.exception("health rule evaluation failed")

    def evaluate(self, open_circuits: frozenset[str]) -> None:
        """Evaluate every enabled rule once, each in its own transaction."""
        local = LocalHealth(open_circuits, self._spooled_rows())
        engine = get_engine(self._settings.database_url)
        with engine.connect() as conn:
            rules = health_rules.list_rules(conn, enabled_only=True)
        for rule in rules:
            try:
                with engine.begin() as conn:
                    health_alerts.evaluate_rule(
                        conn,
                        rule,
                        local,
                        source=self._source,
                        settings_secret=self._settings.encryption_key,
                        smtp=self._smtp,
                        # Three evaluations without the condition, by any
                        # worker, resolve the incident.
                        resolve_grace=3 * self._settings.health_interval,
                    )
            except SQLAlchemyError as exc:
                logger.warning("health rule %d not evaluated: %s", rule.id, exc)
