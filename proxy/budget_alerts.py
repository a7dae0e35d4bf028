"""Budget alerts sent off the request path after usage is recorded.

The recorder reports each budget's settled spend before and after a batch.
A crossing of one of the budget's thresholds (checked in memory first) is
handed to a worker thread that claims the alert in Postgres, queues its
emails in the outbox and sends its signed webhooks, so each threshold
alerts once per period even with many proxy workers.
"""

from __future__ import annotations

import asyncio
import logging

from gateway_core import alerts
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.email_outbox import OutboxSender
from proxy.recorder import BudgetCrossing
from proxy.spend import SpendGuard

logger = logging.getLogger("gatewayz.alerts")


class BudgetAlerter:
    def __init__(
        self, settings: Settings, spend: SpendGuard, email_sender: OutboxSender | None
    ) -> None:
        self._settings = settings
        self._spend = spend
        self._email_sender = email_sender
        self._tasks: set[asyncio.Future[None]] = set()

    def on_budget_spend(self, crossings: list[BudgetCrossing]) -> None:
        due = []
        for crossing in crossings:
            limit, thresholds = self._spend.budget_limit_and_thresholds(crossing.budget_id)
            if limit is not None and alerts.thresholds_crossed(
                limit, crossing.spent_before, crossing.spent_after, thresholds
            ):
                due.append(crossing)
        if not due:
            return
        future = asyncio.get_running_loop().run_in_executor(None, self._send, due)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    def _send(self, due: list[BudgetCrossing]) -> None:
        engine = get_engine(self._settings.database_url)
        for crossing in due:
            try:
                with engine.begin() as conn:
                    sent = alerts.notify_budget(
                        conn,
                        self._settings.encryption_key,
                        crossing.budget_id,
                        period_start=crossing.period_start,
                        spent_before=crossing.spent_before,
                        spent_after=crossing.spent_after,
                    )
                if sent:
                    logger.info("budget %d alerts sent for %s", crossing.budget_id, sent)
                    if self._email_sender is not None:
                        self._email_sender.wake()
            except Exception:
                logger.exception("budget %d alert failed", crossing.budget_id)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
