"""Run journal retention (`runs.retention`): the leader deletes finished runs past their age or count.

Without it the journal grows by one record (up to ~100 KB) per run, forever, until KV `failover-runs`
hits its byte limit and refuses the next run's first write. Every `runs.retention.interval` the leader
deletes finished runs started more than `max_age` ago or beyond the newest `max_runs`; an unfinished run
is never deleted, however old (`BusJournal.prune`). Followers do nothing: one writer is enough.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from orchestrator.core.aio import wait_any
from orchestrator.core.config_daemon import RunsRetentionConfig
from orchestrator.core.errors import OrchestratorError
from orchestrator.playbooks.journal import BusJournal, Pruned

log = structlog.get_logger(__name__)


class RunRetention:
    def __init__(self, journal: BusJournal, config: RunsRetentionConfig) -> None:
        self.journal = journal
        self.config = config

    async def run(self, stop: asyncio.Event, active: Callable[[], bool] = lambda: True) -> None:
        while not stop.is_set():
            await wait_any(stop, timeout_s=self.config.interval_s)
            if stop.is_set() or not active():
                continue
            try:
                await self.pass_once()
            except OrchestratorError as e:
                log.warning("runs.retention_failed", error=str(e))

    async def pass_once(self) -> Pruned:
        started = time.monotonic()
        result = await self.journal.prune(self.config.max_age_s, self.config.max_runs)
        if result.deleted or result.indexed or result.markers:
            log.info(
                "runs.retention",
                deleted=result.deleted,
                kept=result.kept,
                indexed=result.indexed,
                markers=result.markers,
                took_s=round(time.monotonic() - started, 3),
            )
        return result
