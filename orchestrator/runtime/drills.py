"""Practice runs (`drills:`, DESIGN §15): the leader starts drills on a schedule, as AWS ARC does.

Every `CHECK_S` the leader asks each schedule whether a drill is due (`due`: inside its window, on an
allowed day, not on a blocked date, `every` since its last drill). A due drill is skipped, with a
`drill.skipped` system event saying why, while anything else is going on (a cluster not healthy, a run,
a pause, a freeze: the refusals of `failover drill`); the same reason is said once, not every check.
Otherwise it runs, through the leader's own objects (`LocalView`), and announces itself with
`drill.started` and `drill.finished` (the timeline in its detail). The schedule's last drill is kept in
the state KV (`drill.last.<name>`), so a new leader neither repeats it nor forgets it; its clusters are
drilled in turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from orchestrator.api.bodies import run_summary
from orchestrator.bus.state import StateStore
from orchestrator.core.aio import wait_any
from orchestrator.core.config import Config
from orchestrator.core.config_daemon import DrillScheduleConfig
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.models import rfc3339
from orchestrator.playbooks.journal import BusJournal
from orchestrator.runtime.drill import Drill, DrillRefused, DrillSpec, refusal

log = structlog.get_logger(__name__)

CHECK_S = 30.0
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Publish = Callable[[str, str, dict[str, Any]], Awaitable[None]]


def due(schedule: DrillScheduleConfig, now: float, last: float | None) -> tuple[bool, str]:
    """Whether a drill of `schedule` may start at `now` (epoch seconds), and why not."""
    window = schedule.window
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(window.timezone))
    if local.date() in schedule.blocked_dates:
        return False, f"{local.date()} is a blocked date"
    if window.days and DAYS[local.weekday()] not in window.days:
        return False, f"{DAYS[local.weekday()]} is not a drill day"
    clock = local.strftime("%H:%M")
    if not window.start <= clock < window.end:
        return False, f"{clock} {window.timezone} is outside {window.start}-{window.end}"
    if last is not None and now - last < schedule.every_s:
        return False, f"the last drill was at {rfc3339(last)}"
    return True, ""


class LocalView:
    """The `DaemonView` of a practice run: the leader's own status, balancers, journal and events."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        weights: Callable[[], Awaitable[dict[str, dict[str, int]]]],
        store: StateStore,
        journal: BusJournal,
        publish: Publish,
        config: Config,
    ) -> None:
        self._status, self._weights, self.store = status, weights, store
        self.journal, self.publish, self.config = journal, publish, config

    async def status(self) -> dict[str, Any]:
        status = dict(self._status())
        paused: list[dict[str, Any]] = []
        for cluster in (None, *(c.name for c in self.config.clusters)):
            found = await self.store.pause_for(cluster)
            if found is not None and not any(p["scope"] == found[0] for p in paused):
                paused.append({"scope": found[0], "by": found[1].get("by")})
        status["paused"] = paused
        return status

    async def weights(self, cluster: str) -> dict[str, int] | None:
        current = await self._weights()
        if len(current) < len(self.config.load_balancers):
            return None  # a balancer could not be read
        return {lb: w[cluster] for lb, w in current.items() if cluster in w}

    async def runs(self) -> list[dict[str, Any]]:
        return [run_summary(r) for r in (await self.journal.page(20)).runs]

    async def run(self, run_id: str) -> dict[str, Any] | None:
        return await self.journal.read(run_id)

    async def announce(self, phase: str, detail: dict[str, Any]) -> None:
        reason = f"practice run: {detail['fault']} drill on {detail['cluster']} {phase}"
        if "outcome" in detail:
            reason += f": {detail['outcome']}"
        await self.publish(f"drill.{phase}", reason, detail)


class DrillScheduler:
    def __init__(
        self,
        config: Config,
        view: LocalView,
        store: StateStore,
        publish: Publish,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.view = view
        self.store = store
        self.publish = publish
        self.clock = clock
        self._said: dict[str, str] = {}
        """schedule -> the skip reason last said (said again only when it changes)."""

    async def run(self, stop: asyncio.Event, active: Callable[[], bool] = lambda: True) -> None:
        while not stop.is_set():
            await wait_any(stop, timeout_s=CHECK_S)
            if stop.is_set() or not active():
                continue
            try:
                await self.tick()
            except OrchestratorError as e:
                log.warning("drills.check_failed", error=str(e))

    async def tick(self) -> list[dict[str, Any]]:
        """One check of every schedule; runs the drills that are due. Returns their reports."""
        reports = []
        for schedule in self.config.drills:
            last = await self.store.get(f"drill.last.{schedule.name}") or {}
            when = last.get("at") if isinstance(last.get("at"), int | float) else None
            ok, _why = due(schedule, self.clock(), when)
            if not ok:
                continue
            cluster = self._next_cluster(schedule, last.get("cluster"))
            why = refusal(await self.view.status(), cluster)
            if why:
                await self._skip(schedule, cluster, why)
                continue
            self._said.pop(schedule.name, None)
            report = await self._drill(schedule, cluster)
            if report is not None:
                reports.append(report)
        return reports

    @staticmethod
    def _next_cluster(schedule: DrillScheduleConfig, last: Any) -> str:
        clusters: list[str] = schedule.clusters
        return clusters[(clusters.index(last) + 1) % len(clusters)] if last in clusters else clusters[0]

    async def _skip(self, schedule: DrillScheduleConfig, cluster: str, why: str) -> None:
        if self._said.get(schedule.name) == why:
            return
        self._said[schedule.name] = why
        log.info("drill.skipped", schedule=schedule.name, cluster=cluster, reason=why)
        await self.publish(
            "drill.skipped",
            f"practice run {schedule.name} on {cluster} skipped: {why}",
            {"schedule": schedule.name, "cluster": cluster, "fault": schedule.fault, "reason": why},
        )

    def _workload(self, schedule: DrillScheduleConfig, cluster: str) -> tuple[str, str]:
        if schedule.namespace and schedule.deployment:
            return schedule.namespace, schedule.deployment
        probe = next(p.kube_workload for p in self.config.cluster(cluster).probes if p.kube_workload)
        return probe.namespace, probe.deployment

    async def _drill(self, schedule: DrillScheduleConfig, cluster: str) -> dict[str, Any] | None:
        namespace, deployment = self._workload(schedule, cluster)
        spec = DrillSpec(
            cluster, schedule.fault, namespace, deployment, schedule.timeout_s, schedule.recovery_timeout_s
        )
        # recorded first: a drill that dies with the leader is not repeated at once by the next one
        await self.store.put(f"drill.last.{schedule.name}", {"at": self.clock(), "cluster": cluster})
        try:
            report = await Drill(self.config, spec, self.view).run()  # real time: runs are stamped so
        except DrillRefused as e:
            await self._skip(schedule, cluster, str(e))
            return None
        out = report.as_dict()
        log.info("drill.finished", schedule=schedule.name, cluster=cluster, outcome=out["outcome"])
        return out


def practice_runs(
    config: Config,
    status: Callable[[], dict[str, Any]],
    weights: Callable[[], Awaitable[dict[str, dict[str, int]]]],
    store: StateStore,
    journal: BusJournal,
    publish: Publish,
) -> DrillScheduler:
    """The scheduler as the daemon builds it (one line there)."""
    return DrillScheduler(config, LocalView(status, weights, store, journal, publish, config), store, publish)
