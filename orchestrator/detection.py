"""Feeds the pure detector from NATS and turns its transitions into published events and runs.

Health reports are consumed live, without acknowledgements (DESIGN §5). A report that does not parse,
or whose subject does not match its body, is counted in `failover_malformed_messages_total` and dropped:
input from the network never raises into this loop. The reactor acts only on transitions made here by
our own detector, never on event messages someone else published on the bus (DESIGN §2.7).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from orchestrator import subjects
from orchestrator.bus import Bus
from orchestrator.detector import DetectorState, Tick, Transition, transition
from orchestrator.errors import OrchestratorError
from orchestrator.metrics import Metrics
from orchestrator.models import ClusterEvent, HealthReport

log = structlog.get_logger(__name__)

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]


class DetectionService:
    def __init__(
        self,
        state: DetectorState,
        bus: Bus,
        metrics: Metrics,
        on_event: OnEvent,
        tick_interval_s: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.bus = bus
        self.metrics = metrics
        self.on_event = on_event
        self.tick_interval_s = tick_interval_s
        self.clock = clock
        self.consuming = False
        self._malformed_logged_at = 0.0
        for name in state.clusters:
            metrics.set_cluster_state(name, "unknown")

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.bus.subscribe(subjects.HEALTH_ALL, self._on_message)
        self.consuming = True
        log.info("detector.started", clusters=len(self.state.clusters))
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.tick_interval_s)
                except TimeoutError:
                    await self._apply(Tick())
        finally:
            self.consuming = False
            await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        try:
            report = HealthReport.model_validate_json(msg.data)
        except ValidationError as e:
            self._malformed(
                msg.subject,
                f"invalid report: {e.error_count()} error(s), first: {e.errors(include_url=False)[0]['msg']}",
            )
            return
        if msg.subject != subjects.health(report.cluster, report.probe):
            self._malformed(msg.subject, f"subject does not match body ({report.cluster}/{report.probe})")
            return
        self.metrics.reports.labels(result="ok" if report.ok else "fail").inc()
        await self._apply(report)

    def _malformed(self, subject: str, reason: str) -> None:
        self.metrics.malformed.labels(subject_kind="health").inc()
        now = time.monotonic()
        if now - self._malformed_logged_at > 5:  # a flood must not flood the logs too
            self._malformed_logged_at = now
            log.warning("health.malformed_dropped", subject=subject[:200], reason=reason[:300])

    async def _apply(self, item: HealthReport | Tick) -> None:
        _state, changes = transition(self.state, item, self.clock())
        for change in changes:
            await self._publish(change)

    async def _publish(self, change: Transition) -> None:
        self.metrics.set_cluster_state(change.cluster, change.to)
        self.metrics.transitions.labels(cluster=change.cluster, to=change.to).inc()
        log.info(
            "cluster.transition",
            cluster=change.cluster,
            from_=change.from_,
            to=change.to,
            event_type=change.type,
            reason=change.reason,
        )
        if change.type is None:
            return
        event = ClusterEvent(
            type=change.type,
            cluster=change.cluster,
            from_=change.from_,
            to=change.to,
            reason=change.reason,
            evidence=change.evidence,
        )
        try:
            await self.bus.publish_durable(subjects.cluster_events(change.cluster), event.to_json())
        except OrchestratorError as e:
            log.error("cluster.event_publish_failed", cluster=change.cluster, error=str(e))
        await self.on_event(event.model_dump(mode="json", by_alias=True))

    def cluster_view(self) -> dict[str, str]:
        return {name: c.status for name, c in self.state.clusters.items()}
