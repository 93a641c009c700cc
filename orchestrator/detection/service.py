"""Feeds the pure detector from NATS and turns its outputs into published events, persisted state and runs.

Health reports are consumed live, without acknowledgements (DESIGN §5). A report that does not parse,
or whose subject does not match its body, is counted in `failover_malformed_messages_total` and dropped:
input from the network never raises into this loop. A valid report counts only when `admission` says
so (listed vantage, configured target, made around its receipt); otherwise it is counted in
`failover_reports_dropped_total{reason}`. The reactor acts only on transitions made here by
our own detector, never on event messages someone else published on the bus (DESIGN §2.7).

Restart without amnesia (DESIGN §6): cluster states and the observer guard are persisted in KV
`failover-state` after every change; on start they are loaded and only the last
max(stale_after, failure_threshold x interval, recovery_hold) of health is replayed from the stream to
rebuild the counts. Live reports that arrive during the replay are buffered and applied after it, so
nothing is lost and nothing already emitted is emitted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import Any

import structlog
from pydantic import ValidationError

from orchestrator.bus.client import Bus
from orchestrator.core import subjects
from orchestrator.core.aio import gather_bounded
from orchestrator.core.clock import steady_wall
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.metrics import Metrics
from orchestrator.core.models import ClusterEvent, HealthReport, SystemEvent
from orchestrator.detection.admission import Admission
from orchestrator.detection.ingest import IngestProcess, Record, report_from
from orchestrator.detection.machine import DetectorState, Resume, Tick, transition
from orchestrator.detection.outputs import Output, Signal, Transition
from orchestrator.detection.snapshots import guard_snapshot, restore, snapshot

log = structlog.get_logger(__name__)

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]

INGEST_READY_S = 30.0
"""How long start-up waits for the ingest process to subscribe (`detection.ingest: process`)."""

YIELD_EVERY = 256
"""Live reports handled before the handler lets the loop run other tasks: ~5 ms of work. One socket
read hands nats-py up to 256 KiB (~1,000 reports, 20-40 ms) that it would otherwise feed us without a
break; yielding more often cost burst throughput (every 64: a quarter of it, measured)."""


class DetectionService:
    def __init__(
        self,
        state: DetectorState,
        bus: Bus,
        metrics: Metrics,
        on_event: OnEvent,
        tick_interval_s: float = 0.1,
        clock: Callable[[], float] = steady_wall,
        is_leader: Callable[[], bool] = lambda: True,
        own_vantage: str | None = None,
        daemon_vantages: Callable[[], Collection[str]] = frozenset,
        ingest_process: bool = False,
    ) -> None:
        self.state = state
        self.bus = bus
        self.metrics = metrics
        self.on_event = on_event
        self.tick_interval_s = tick_interval_s
        self.clock = clock
        self.is_leader = is_leader
        """Followers decide exactly as the leader does, but only the leader publishes and persists."""
        self.admission = Admission(state, metrics, own_vantage, daemon_vantages)
        """Which valid reports count: listed vantages, configured targets, made around their receipt."""
        self.ingest_process = ingest_process
        """`detection.ingest: process`: reports come validated from a child process (`ingest`)."""
        self.ingest: IngestProcess | None = None
        self.consuming = False
        self.started = asyncio.Event()
        """Set once state is rebuilt (KV + replay) and live reports are being applied."""
        self._buffer: list[tuple[str, bytes]] | None = None
        self._record_buffer: list[Record] | None = None
        self._unyielded = 0
        """Reports handled since this handler last let other tasks run (`YIELD_EVERY`)."""
        self._malformed_logged_at = 0.0
        self._outputs: asyncio.Queue[Output] = asyncio.Queue()
        """Outputs in the order the detector made them, drained by one publisher task: the hot path
        (report -> transition) never awaits, and events still leave in order."""
        self._counts = metrics.reports
        for name in state.clusters:
            metrics.set_cluster_state(name, "unknown")

    async def run(self, stop: asyncio.Event) -> None:
        self._buffer, self._record_buffer = [], []  # live reports wait here while the replay rebuilds
        publisher = asyncio.get_running_loop().create_task(self._drain_outputs(), name="detector-publisher")
        sub = None
        ingest_stop = asyncio.Event()
        ingest_task = None
        if self.ingest_process:
            self.ingest = self._ingest_process()
            ingest_task = asyncio.get_running_loop().create_task(self.ingest.run(ingest_stop), name="ingest")
            with contextlib.suppress(TimeoutError):  # bounded: a child that cannot connect is restarted
                await asyncio.wait_for(self.ingest.ready.wait(), INGEST_READY_S)
        else:
            sub = await self.bus.subscribe(subjects.HEALTH_ALL, self._on_live)
        try:
            await self._rebuild()
            self.consuming = self.ingest is None or self.ingest.ready.is_set()
            self.started.set()
            log.info(
                "detector.started",
                clusters=len(self.state.clusters),
                statuses=self.cluster_view(),
                frozen=self.state.frozen,
            )
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.tick_interval_s)
                except TimeoutError:
                    self._apply(Tick(), self.clock())
        finally:
            self.consuming = False
            if sub is not None:
                await sub.unsubscribe()
            if ingest_task is not None:
                ingest_stop.set()
                await asyncio.gather(ingest_task, return_exceptions=True)
            await self._outputs.join()  # what was decided is published before we stop
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)

    async def _drain_outputs(self) -> None:
        while True:
            output = await self._outputs.get()
            try:
                await self._publish(output)
            except Exception:  # one bad output must not stop the ones after it
                log.exception("detector.publish_crashed")
            finally:
                self._outputs.task_done()

    async def settled(self) -> None:
        """Wait until every output decided so far has been published and handed to the reactor."""
        await self._outputs.join()

    async def _rebuild(self) -> None:
        kv = self.bus.kv.state
        persisted = await Bus.kv_items(kv, "cluster.")
        guard = await Bus.kv_get(kv, "freeze")
        restore(
            self.state,
            {k.removeprefix("cluster."): v for k, v in persisted.items()},
            guard[0] if guard else None,
        )
        for name, cluster in self.state.clusters.items():
            self.metrics.set_cluster_state(name, cluster.status)
        window = self.state.settings.replay_window_s
        replayed = 0
        async for subject, data, stored_at in self.bus.replay(
            subjects.STREAM_HEALTH, subjects.HEALTH_ALL, window
        ):
            report = self._parse(subject, data, count=False)
            admitted = self.admission.admit(report, stored_at, count=False) if report else None
            if admitted is not None:
                self._apply(admitted, stored_at)
                replayed += 1
        buffered, self._buffer = self._buffer or [], None
        for subject, data in buffered:
            self._handle(subject, data)
        records, self._record_buffer = self._record_buffer or [], None
        self._on_records(records)
        self._apply(Tick(), self.clock())
        await self._outputs.join()
        log.info(
            "detector.rebuilt",
            persisted=len(persisted),
            replayed=replayed,
            window_s=window,
            buffered=len(buffered) + len(records),
        )

    async def _on_live(self, msg: Any) -> None:
        if self._buffer is not None:
            self._buffer.append((msg.subject, bytes(msg.data)))
            return
        self._handle(msg.subject, msg.data)
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            # nats-py awaits this callback for each queued message without ever suspending while its
            # queue is not empty: a backlog of reports would hold the loop (lease renewals, the API,
            # the runner) until it is drained, 14 s measured at 5,000 clusters on a busy machine
            self._unyielded = 0
            await asyncio.sleep(0)

    def _ingest_process(self) -> IngestProcess:
        """The child process of `detection.ingest: process`, on the bus's own URL and credentials."""
        if self.bus.url is None or self.bus.nats_config is None:
            raise OrchestratorError("detection.ingest: process needs the bus's URL and credentials")

        def on_state(ready: bool) -> None:
            if self.started.is_set():
                self.consuming = ready  # /readyz: a dead child means nothing is being detected

        return IngestProcess(
            self.bus.url, self.bus.nats_config, subjects.HEALTH_ALL, self._on_records, on_state
        )

    def _on_records(self, records: list[Record]) -> None:
        """A batch from the ingest process, in the order it received the reports."""
        if self._record_buffer is not None:
            self._record_buffer.extend(records)
            return
        for record in records:
            if record[0] == "r":
                self._admit(report_from(record), record[1], record[10])
            elif record[0] == "m":
                self._malformed(str(record[1]), str(record[2]))

    def _handle(self, subject: str, data: bytes) -> None:
        report = self._parse(subject, data)
        if report is None:
            return
        self._admit(report, time.time(), report.ts.timestamp())

    def _admit(self, report: HealthReport, received_at: float, made_at: float) -> None:
        admitted = self.admission.admit(report, received_at, made_at=made_at)  # the prober's clock
        if admitted is not None:
            if admitted.ok:
                self._counts.ok += 1
            else:
                self._counts.fail += 1
            self.metrics.observe_probe(
                admitted.cluster, admitted.probe, admitted.vantage, admitted.ok, made_at
            )
            self._apply(admitted, self.clock())

    def unlisted_vantages(self, within_s: float = 3600.0) -> list[str]:
        """Vantages not in detection.vantages that reported recently: a forgotten prober is never silent."""
        return self.admission.unlisted_vantages(within_s)

    def _parse(self, subject: str, data: bytes, count: bool = True) -> HealthReport | None:
        try:
            report = HealthReport.model_validate_json(data)
        except ValidationError as e:
            if count:
                self._malformed(
                    subject,
                    f"invalid report: {e.error_count()} error(s), first: "
                    f"{e.errors(include_url=False)[0]['msg']}",
                )
            return None
        if subject != subjects.health(report.vantage, report.cluster, report.probe):
            if count:
                self._malformed(
                    subject,
                    f"subject does not match body ({report.vantage}/{report.cluster}/{report.probe})",
                )
            return None
        return report

    def _malformed(self, subject: str, reason: str) -> None:
        self.metrics.malformed.labels(subject_kind="health").inc()
        now = time.monotonic()
        if now - self._malformed_logged_at > 5:  # a flood must not flood the logs too
            self._malformed_logged_at = now
            log.warning("health.malformed_dropped", subject=subject[:200], reason=reason[:300])

    async def resume(self, actor: str) -> None:
        """A human resumes automation after the observer guard froze it."""
        self._apply(Resume(actor), self.clock())
        await self._outputs.join()

    def _apply(self, item: HealthReport | Tick | Resume, now: float) -> None:
        _state, outputs = transition(self.state, item, now)
        for output in outputs:
            self._outputs.put_nowait(output)

    async def _publish(self, output: Output) -> None:
        if isinstance(output, Signal):
            await self._publish_signal(output)
            return
        change: Transition = output
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
        if not self.is_leader():
            return
        await self._persist(f"cluster.{change.cluster}", snapshot(self.state, change.cluster))
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
        await self._durable(subjects.cluster_events(change.cluster), event.to_json())
        await self.on_event(event.model_dump(mode="json", by_alias=True))

    async def _publish_signal(self, signal: Signal) -> None:
        log.warning("system.signal", signal=signal.type, reason=signal.reason)
        self.metrics.observer_frozen.set(1 if self.state.frozen else 0)
        self.metrics.suspect_vantages.set(len(self.state.suspects))
        if not self.is_leader():
            return
        if signal.type.startswith(("observer.", "automation.")):
            await self._persist("freeze", guard_snapshot(self.state))
        if signal.type == "cluster.flapping":
            cluster = str(signal.detail["cluster"])
            await self._persist(f"cluster.{cluster}", snapshot(self.state, cluster))
        event = SystemEvent(type=signal.type, reason=signal.reason, detail=signal.detail)
        await self._durable(subjects.SYSTEM_EVENTS, event.to_json())
        await self.on_event(event.model_dump(mode="json"))

    async def persist_all(self) -> None:
        """On taking over: write every cluster's state and the guard (a follower kept them only in memory)."""
        writes = [  # the snapshots taken now, written 32 at a time (10,000 one by one took seconds)
            partial(self._persist, f"cluster.{name}", snapshot(self.state, name))
            for name in self.state.clusters
        ]
        await gather_bounded(writes, 32)
        await self._persist("freeze", guard_snapshot(self.state))

    async def _persist(self, key: str, value: dict[str, Any]) -> None:
        try:
            await Bus.kv_put(self.bus.kv.state, key, value)
        except OrchestratorError as e:
            log.error("detector.persist_failed", key=key, error=str(e))

    async def _durable(self, subject: str, payload: bytes) -> None:
        try:
            await self.bus.publish_durable(subject, payload)
        except OrchestratorError as e:
            log.error("event.publish_failed", subject=subject, error=str(e))

    def cluster_view(self) -> dict[str, str]:
        return {name: c.status for name, c in self.state.clusters.items()}
