"""The leader's readiness loop (DESIGN §17): a pass every `readiness.interval`, and what it tells.

Only the leader checks (one set of reads against the balancers and API servers is enough), at once when
it becomes leader and then every interval. Each pass sets `failover_readiness{playbook,cluster}` and
keeps the report in KV (`readiness.latest` in `failover-state`), which every replica serves at
`GET /api/v1/readiness`. A follower clears its gauge: an alert on `failover_readiness == 0` must not keep
firing from a replica that stopped checking.

Events are news, not a heartbeat: `readiness.failed` when a pair becomes not ready or its problems
change (a different balancer, another missing verb), `readiness.recovered` when pairs that were not
ready are ready again; a pass that finds what the last one found says nothing. The last report is read
back from KV when a replica takes over, so a leader change does not repeat the last leader's events.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import structlog

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.api.handlers import READINESS_KEY
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.aio import wait_any
from orchestrator.core.config import Config
from orchestrator.core.config_daemon import ReadinessConfig
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.metrics import Metrics
from orchestrator.kube.client import KubeClients
from orchestrator.playbooks.loader import LoadedPlaybook
from orchestrator.runtime.readiness import ReadinessChecker, Report, build_notifiers

log = structlog.get_logger(__name__)

KEY = READINESS_KEY
POLL_S = 1.0
"""How often the loop looks at leadership: a new leader checks within this."""
REASON_MAX = 600
Publish = Callable[[str, str, dict[str, Any]], Awaitable[None]]
Pair = tuple[str, str]


def _problem_keys(result: dict[str, Any]) -> frozenset[tuple[str, str]]:
    problems = result.get("problems")
    if not isinstance(problems, list):
        return frozenset()
    return frozenset((str(p.get("kind")), str(p.get("target"))) for p in problems if isinstance(p, dict))


def _pairs(record: Any) -> dict[Pair, dict[str, Any]]:
    """(playbook, cluster) -> result, from a report as kept in KV (anything else reads as no report)."""
    results = record.get("results") if isinstance(record, dict) else None
    if not isinstance(results, list):
        return {}
    return {
        (str(r.get("playbook")), str(r.get("cluster"))): r
        for r in results
        if isinstance(r, dict) and isinstance(r.get("ready"), bool)
    }


def changes(previous: Any, current: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Pair]]:
    """(results newly failing or failing differently, pairs ready again) from one report to the next."""
    before, now = _pairs(previous), _pairs(current)
    failing = []
    for pair, result in now.items():
        if result["ready"]:
            continue
        old = before.get(pair)
        if old is None or old["ready"] or _problem_keys(old) != _problem_keys(result):
            failing.append(result)
    recovered = [
        pair for pair, result in now.items() if result["ready"] and not before.get(pair, result)["ready"]
    ]
    return failing, sorted(recovered)


def _describe(result: dict[str, Any]) -> str:
    problems = "; ".join(str(p.get("message")) for p in result.get("problems", []))
    return f"{result['playbook']} for {result['cluster']}: {problems}"


class ReadinessMonitor:
    def __init__(
        self,
        checker: ReadinessChecker,
        store: StateStore,
        metrics: Metrics,
        publish: Publish,
        settings: ReadinessConfig,
        holder: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.checker = checker
        self.store = store
        self.metrics = metrics
        self.publish = publish
        self.settings = settings
        self.holder = holder
        self._labels: set[Pair] = set()
        self._last: dict[str, Any] | None = None
        """The last report told about (None: read it from KV before telling anything)."""

    async def run(self, stop: asyncio.Event, active: Callable[[], bool] = lambda: True) -> None:
        if not self.settings.enabled:
            return
        leading, last = False, -math.inf
        while not stop.is_set():
            if not active():
                if leading:
                    self._clear()
                    self._last = None  # the next leader may have told more since: read KV again
                leading = False
            elif not leading or time.monotonic() - last >= self.settings.interval_s:
                leading = True
                try:
                    await self.pass_once(active)
                except OrchestratorError as e:
                    log.warning("readiness.pass_failed", error=str(e))
                except Exception:  # advisory: a bug here must never stop the daemon that fails over
                    log.exception("readiness.pass_crashed")
                last = time.monotonic()
            await wait_any(stop, timeout_s=min(POLL_S, self.settings.interval_s))

    async def pass_once(self, active: Callable[[], bool] = lambda: True) -> Report:
        report = await self.checker.run_once(by=self.holder())
        if not active():
            return report  # deposed while checking: the new leader checks and tells
        record = {"enabled": True, "interval_s": self.settings.interval_s, **report.as_dict()}
        previous = self._last if self._last is not None else await self._stored()
        self._gauges(report)
        try:
            await self.store.put(KEY, record)
        except OrchestratorError as e:
            log.warning("readiness.store_failed", error=str(e))
        failing, recovered = changes(previous, record)
        not_ready = record["not_ready"]
        if failing:
            text = "; ".join(_describe(r) for r in failing)
            reason = f"{len(failing)} failover plan(s) would not work: {text}"
            if len(reason) > REASON_MAX:
                reason = reason[: REASON_MAX - 1] + "…"
            log.warning("readiness.failed", pairs=len(failing), not_ready=not_ready)
            await self.publish("readiness.failed", reason, {"results": failing, "not_ready": not_ready})
        if recovered:
            names = ", ".join(f"{p} for {c}" for p, c in recovered)
            reason = f"ready again: {names}" + (f" ({not_ready} still not ready)" if not_ready else "")
            if len(reason) > REASON_MAX:
                reason = reason[: REASON_MAX - 1] + "…"
            log.info("readiness.recovered", pairs=len(recovered), not_ready=not_ready)
            detail = {
                "recovered": [{"playbook": p, "cluster": c} for p, c in recovered],
                "not_ready": not_ready,
            }
            await self.publish("readiness.recovered", reason, detail)
        self._last = record
        log.info(
            "readiness.checked",
            pairs=len(report.results),
            not_ready=not_ready,
            took_s=round(report.duration_s, 3),
        )
        return report

    async def _stored(self) -> Any:
        try:
            return await self.store.get(KEY)
        except OrchestratorError as e:
            log.warning("readiness.read_failed", error=str(e))
            return None

    def _gauges(self, report: Report) -> None:
        seen = set()
        for result in report.results:
            pair = (result.playbook, result.cluster)
            seen.add(pair)
            self.metrics.readiness.labels(playbook=pair[0], cluster=pair[1]).set(1 if result.ready else 0)
        for gone in self._labels - seen:  # a playbook reloaded away, a cluster removed
            self.metrics.readiness.remove(*gone)
        self._labels = seen
        self.metrics.readiness_checked.set(report.checked_at + report.duration_s)

    def _clear(self) -> None:
        self.metrics.readiness.clear()
        self._labels = set()


def readiness_monitor(
    config: Config,
    playbooks: Callable[[], Mapping[str, LoadedPlaybook]],
    balancers: Mapping[str, BalancerActuator],
    kube: KubeClients,
    store: StateStore,
    session: aiohttp.ClientSession,
    bus: Bus,
    metrics: Metrics,
    publish: Publish,
    states: Callable[[], Mapping[str, str]],
    holder: Callable[[], str | None],
) -> ReadinessMonitor:
    """The monitor as the daemon builds it: the leader's balancer drivers (read through actuators of its
    own, which never take the daemon's balancer locks), Kubernetes clients and NATS connection."""
    notifiers, skipped = build_notifiers(config, session, bus)
    drivers = {name: actuator.balancer for name, actuator in balancers.items()}
    checker = ReadinessChecker(config, playbooks, drivers, kube, store, notifiers, states, skipped)
    return ReadinessMonitor(checker, store, metrics, publish, config.readiness, holder)
