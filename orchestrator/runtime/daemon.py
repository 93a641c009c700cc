"""The daemon: builds every long-lived object in one place and supervises them (STYLE §3, §6, §7).

Shutdown runs in stages on SIGTERM/SIGINT: stop probing, stop consuming, give running steps a grace
period to reach a journalled point, cancel what is left, close the API and the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.actuators.scale import ScaleActuator
from orchestrator.api.chatops import ChatOpsApp
from orchestrator.api.commands import Commands, forced_by_audit
from orchestrator.api.context import ApiContext
from orchestrator.api.server import ApiServer, build_app
from orchestrator.bus.client import Bus
from orchestrator.bus.leadership import Leadership, StateDirLock
from orchestrator.bus.state import StateStore
from orchestrator.core import redact, subjects
from orchestrator.core.aio import Supervisor
from orchestrator.core.config import Config
from orchestrator.core.errors import OrchestratorError, TemporaryError
from orchestrator.core.metrics import Metrics
from orchestrator.core.models import RunEvent, SystemEvent
from orchestrator.detection.machine import DetectorState
from orchestrator.detection.service import DetectionService
from orchestrator.detection.views import FleetView, StatusView
from orchestrator.kube.client import KubeClients
from orchestrator.notifiers import build_notifier
from orchestrator.playbooks.actions import Services
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.playbooks.incidents import IncidentBook
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.playbooks.runner import Runner
from orchestrator.playbooks.timeline import recovery_stages
from orchestrator.probes.prober import Prober
from orchestrator.runtime.drills import practice_runs
from orchestrator.runtime.readiness_monitor import readiness_monitor
from orchestrator.runtime.reconcile import Reconciler
from orchestrator.runtime.reload import PlaybookWatcher
from orchestrator.runtime.reposter import IncidentReposter
from orchestrator.runtime.retention import RunRetention
from orchestrator.runtime.watchdog import DrainWatchdog, catch_up_event

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_S = 20.0


class DaemonFailed(OrchestratorError):
    """The daemon stopped because a task kept dying: the process exits non-zero."""


ELECTION_STEP_S = 10.0
"""Each part of taking over (persist the view, resume runs) is bounded: a slow bus cannot stall it."""
TOPOLOGY_WAIT_S = 60.0
"""How long start-up waits for JetStream to answer (a NATS cluster electing its JetStream leader)."""


class Daemon:
    def __init__(self, config: Config, run_probes: bool = True) -> None:
        self.config = config
        self.run_probes = run_probes
        self.metrics = Metrics()
        self.bus: Bus | None = None
        self.detection: DetectionService | None = None
        self.runner: Runner | None = None
        self.api: ApiServer | None = None
        self.journal: BusJournal | None = None
        self.approvals: ApprovalBook | None = None
        self.commands: Commands | None = None
        self.chatops: ChatOpsApp | None = None
        self.kube: KubeClients | None = None
        self.reconciler: Reconciler | None = None
        self.leadership: Leadership | None = None
        self._lock: StateDirLock | None = None
        self._lead_stop = asyncio.Event()
        self._lead_task: asyncio.Task[None] | None = None
        self.balancers: dict[str, BalancerActuator] = {}
        self.ready = asyncio.Event()
        self.watcher: PlaybookWatcher | None = None
        self.watchdog: DrainWatchdog | None = None
        self.prober: Prober | None = None
        self.supervisor: Supervisor | None = None

    def readiness(self) -> dict[str, Any]:
        return {
            "nats": bool(self.bus and self.bus.nc.is_connected),
            "detector": bool(self.detection and self.detection.consuming),
            "leader": bool(self.leadership and self.leadership.is_leader),  # informative: followers are ready
            **(self.watchdog.healthy() if self.watchdog else {}),
        }

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        redact.register_config(config)  # from the first log line on, no configured secret is shown
        playbooks = load_playbooks(config.playbook_paths(), config)  # refuse bad playbooks before anything
        if config.nats.url is None:  # embedded NATS: one replica only, enforced on the state dir
            self._lock = StateDirLock(config.state_path)
            self._lock.acquire()
        self.bus = bus = await Bus.connect(config.nats, config.state_path)
        bus.on_bad_record = self._bad_record
        self.supervisor = supervisor = Supervisor(
            stop, on_restart=lambda name: self.metrics.task_restarts.labels(task=name).inc()
        )
        tasks = supervisor.tasks
        session = aiohttp.ClientSession()
        try:
            lead = config.leadership
            await _ensure_topology(bus, lead.lease_ttl_s, stop)
            self.leadership = leadership = Leadership(
                None if bus.embedded else bus,
                lead.lease_ttl_s,
                lead.renew_interval_s,
                lead.margin_s,
                vantage=config.daemon_vantage,
            )
            if self.run_probes and config.daemon_vantage not in config.counted_vantages:
                log.warning(
                    "detection.own_vantage_not_counted",
                    vantage=config.daemon_vantage,
                    vantages=config.counted_vantages,
                    hint="the in-process probing does not count: add it to detection.vantages",
                )
            store = StateStore(bus)
            state = DetectorState.from_config(config)
            nominal = {c.name: c.weight for c in config.clusters}

            live = StatusView(state)  # O(1) per question, no copy of the fleet

            def states() -> Mapping[str, str]:
                return live

            cluster_view = FleetView(config, state)

            self.balancers = balancers = {
                lb.name: BalancerActuator(
                    build_balancer(lb, term=lambda: leadership.term),
                    nominal,
                    states,
                    store,
                    fence=leadership.fence,
                    on_weights=self.metrics.observe_weights,
                )
                for lb in config.load_balancers
            }
            notifiers = {n.name: build_notifier(n, session, bus.publish) for n in config.notifiers}
            self.approvals = ApprovalBook()
            self.kube = KubeClients()
            scale = (
                ScaleActuator(self.kube, config, store, states, fence=leadership.fence)
                if any(c.kubernetes for c in config.clusters)
                else None
            )
            services = Services(
                config,
                balancers,
                notifiers,
                states,
                http=session,
                publish=bus.publish,
                approvals=self.approvals,
                scale=scale,
                incidents=IncidentBook(store),
                fence=leadership.fence,
            )
            self.journal = journal = BusJournal(bus)
            self.runner = runner = Runner(
                services,
                self.journal,
                playbooks,
                cluster_view,
                store,
                on_run_event=self._count_run_event,
                force_audited=lambda record: forced_by_audit(bus, record),
            )
            runner.acting = False  # until elected
            log.info("playbooks.loaded", playbooks=sorted(playbooks))

            runner_busy = runner.touches  # a run working on a cluster owns its values meanwhile

            self.reconciler = reconciler = Reconciler(
                balancers,
                scale,
                store,
                self._system_event,
                busy=runner_busy,
                interval_s=config.reconcile.interval_s,
                failed=lambda cluster: states().get(cluster) == "failed",  # re-drained even in DNS
                metrics=self.metrics,
            )

            async def on_event(event: dict[str, Any]) -> None:
                if not leadership.is_leader:
                    return  # followers keep their detector warm; only the leader acts
                if event.get("type") in ("observer.clear", "automation.resumed"):
                    reconciler.kick()  # on unfreeze, desired state is reconciled with the current state
                await runner.on_event(event)

            self.detection = detection = DetectionService(
                state,
                bus,
                self.metrics,
                on_event,
                tick_interval_s=min(0.25, config.probing.interval_s / 4),
                is_leader=lambda: leadership.is_leader,
                own_vantage=config.daemon_vantage,
                daemon_vantages=lambda: leadership.daemon_vantages,
                ingest_process=config.detection.ingest == "process",
            )
            self.commands = Commands(
                config,
                bus,
                runner,
                store,
                self.approvals,
                detection.resume,
                self.status,
                is_leader=lambda: leadership.is_leader,
            )
            self.commands.on_drill = self.metrics.first_actions.drill
            if not config.api.tokens:
                log.warning(
                    "commands.unauthenticated",
                    reason="no api.tokens configured: every command "
                    "runs as anonymous admin; configure tokens for anything but a laptop",
                )
            if config.chatops.slack is not None or config.chatops.mattermost is not None:
                self.chatops = ChatOpsApp(config, self.commands, bus, session, self.approvals, journal, store)
            self.api = ApiServer(
                build_app(
                    ApiContext(
                        config,
                        self.metrics,
                        self.readiness,
                        self.status,
                        self.commands,
                        self.journal,
                        bus,
                        self.current_weights,
                    ),
                    chatops=self.chatops.chatops if self.chatops else None,
                ),
                config.api.host,
                config.api.port,
            )
            await self.api.start()
            detector_task = supervisor.spawn("detector", lambda: detection.run(stop))
            started = asyncio.ensure_future(detection.started.wait())
            await asyncio.wait([started, detector_task], return_when=asyncio.FIRST_COMPLETED)
            if not started.done():  # the detector died while rebuilding: the guard has set `stop`
                started.cancel()
            commands = self.commands

            async def paused(cluster: str) -> bool:
                return await store.pause_for(cluster) is not None

            async def held() -> set[tuple[str, str]]:
                return {pair for pair, weight in (await store.desired_weights()).items() if weight == 0}

            self.watchdog = watchdog = DrainWatchdog(
                balancers,
                states,
                runner.protecting,  # a failback on a failed cluster is preempted by the catch-up
                paused,
                held,
                lambda cluster, serving, attempt: runner.on_event(catch_up_event(cluster, serving, attempt)),
                self._system_event,
                self.metrics,
                interval_s=config.reconcile.interval_s,
            )
            if self.run_probes:
                self.prober = Prober(
                    config,
                    bus.publish_live,  # a report gathered while NATS is away is dropped, not sent late
                    vantage=config.daemon_vantage,
                    baseline=store.original_scale,
                    should_publish=lambda: leadership.is_leader,
                )

            async def elected(term: int) -> None:
                """Runs outside the lease loop (renewals go on meanwhile); each part is bounded."""
                self.metrics.leader.set(1)
                self.metrics.leader_term.set(term)
                if self.prober is not None:
                    self.prober.new_boot()  # R1 -> R2 -> R1: R1's reports are never taken as superseded
                runner.acting = True  # first: an event decided from now on is acted on, not dropped
                await commands.serve_nats()
                try:  # what followers decided silently is now ours to keep
                    async with asyncio.timeout(ELECTION_STEP_S):
                        await detection.persist_all()
                except TimeoutError:
                    log.warning("leader.persist_slow", term=term)
                try:
                    async with asyncio.timeout(ELECTION_STEP_S):
                        resumed = await runner.resume_unfinished()
                    if resumed:
                        log.info("runs.resumed", runs=resumed, term=term)
                except (TimeoutError, OrchestratorError) as e:
                    log.error("runs.resume_failed", term=term, error=str(e) or "timeout")
                watchdog.kick()  # a failed cluster still carrying traffic is drained (own task, bounded)
                reconciler.kick()  # on taking over: what we hold is checked at once
                await self._system_event(
                    "leader.changed", f"{leadership.holder} leads (term {term})", leadership.describe()
                )

            async def deposed() -> None:
                self.metrics.leader.set(0)
                watchdog.kick()  # forgets the leader's view: /readyz and its gauges are not ours now
                await commands.stop_serving()
                await runner.abandon()  # journalled; the new leader resumes what was in flight

            leadership.on_elected.append(elected)
            leadership.on_deposed.append(deposed)
            # the lease outlives the other tasks: running steps reach a journalled point while we still lead
            self._lead_task = supervisor.spawn(
                "leadership", lambda: leadership.run(self._lead_stop), tracked=False
            )
            self.watcher = watcher = PlaybookWatcher(config, runner, self._system_event)
            supervisor.spawn("playbook-watcher", lambda: watcher.run(stop))
            supervisor.spawn("reconciler", lambda: reconciler.run(stop, active=lambda: leadership.is_leader))
            reposter = IncidentReposter(services.incidents, notifiers, config.api.external_url)
            supervisor.spawn("incident-reposter", lambda: reposter.run(stop, lambda: leadership.is_leader))
            retention = RunRetention(journal, config.runs.retention)
            supervisor.spawn("run-retention", lambda: retention.run(stop, lambda: leadership.is_leader))
            drills = practice_runs(
                config, self.status, self.current_weights, store, journal, self._system_event
            )
            supervisor.spawn("drills", lambda: drills.run(stop, lambda: leadership.is_leader))  # `drills:`
            if self.chatops is not None:  # approval buttons in Slack, posted and closed by the leader
                chatops = self.chatops
                supervisor.spawn("chatops", lambda: chatops.run(stop, lambda: leadership.is_leader))
            readiness = readiness_monitor(  # `readiness:` (DESIGN §17): the leader dry-runs every failover
                config, lambda: runner.playbooks, balancers, self.kube, store, session, bus, self.metrics,
                self._system_event, states, lambda: leadership.holder,
            )  # fmt: skip
            supervisor.spawn("readiness", lambda: readiness.run(stop, lambda: leadership.is_leader))
            interval_s = config.reconcile.interval_s
            supervisor.spawn(
                "run-adopter", lambda: runner.adopt_orphans(stop, interval_s, lambda: leadership.is_leader)
            )
            supervisor.spawn(
                "drain-watchdog", lambda: watchdog.run(stop, active=lambda: leadership.is_leader)
            )
            if self.prober is not None:
                prober = self.prober
                supervisor.spawn("prober", lambda: prober.run(stop))
            self.metrics.up.set(1)
            self.ready.set()
            log.info(
                "daemon.started",
                api=f"http://{config.api.host}:{self.api.port}",
                nats=bus.embedded.url if bus.embedded else "external",
                clusters=len(config.clusters),
            )
            await stop.wait()
            log.info("daemon.stopping")
        finally:
            self.metrics.up.set(0)
            await self._shutdown(tasks, session)
        if supervisor.failed:
            raise DaemonFailed(supervisor.failed)

    async def _shutdown(self, tasks: list[asyncio.Task[None]], session: aiohttp.ClientSession) -> None:
        if tasks:
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.stop(SHUTDOWN_GRACE_S)
        self._lead_stop.set()  # hand the lease over now, instead of making followers wait for its TTL
        if self._lead_task is not None:
            await asyncio.gather(self._lead_task, return_exceptions=True)
        if self.api is not None:
            await self.api.stop()
        await session.close()
        if self.kube is not None:
            await self.kube.close()
        for actuator in self.balancers.values():
            with contextlib.suppress(Exception):
                await actuator.balancer.close()
        if self.bus is not None:
            await self.bus.close()
        if self._lock is not None:
            self._lock.release()
        log.info("daemon.stopped")

    def status(self) -> dict[str, Any]:
        states = self.detection.cluster_view() if self.detection else {}
        return {
            "ready": all(self.readiness().values()),
            "clusters": states,
            "frozen": bool(self.detection and self.detection.state.frozen),
            "suspect_vantages": sorted(self.detection.state.suspects) if self.detection else [],
            "unlisted_vantages": self.detection.unlisted_vantages() if self.detection else [],
            "active_runs": {key: run.id for key, run in self.runner.active.items()} if self.runner else {},
            "waiting_approval": sorted(self.approvals.pending()) if self.approvals else [],
            "playbooks": {n: lp.sha256[:12] for n, lp in self.runner.playbooks.items()}
            if self.runner
            else {},
        }

    async def current_weights(self) -> dict[str, dict[str, int]]:
        """balancer -> cluster -> current native weight; a balancer that cannot be read is left out."""
        out: dict[str, dict[str, int]] = {}
        for name, actuator in self.balancers.items():
            with contextlib.suppress(OrchestratorError):
                out[name] = await actuator.get_weights()
        return out

    def request_reload(self) -> None:
        """SIGHUP: re-read the playbooks now."""
        if self.watcher is not None:
            self.watcher.reload_now.set()

    async def _system_event(self, kind: str, reason: str, detail: dict[str, Any]) -> None:
        assert self.bus is not None
        if kind in ("drill.started", "drill.finished"):  # a drill's runs are practice, not detection
            self.metrics.first_actions.drill(str(detail.get("cluster")), kind == "drill.started")
        try:
            await self.bus.publish_durable(
                subjects.SYSTEM_EVENTS, SystemEvent(type=kind, reason=reason, detail=detail).to_json()
            )
        except OrchestratorError as e:
            log.error("event.publish_failed", error=str(e))

    async def _bad_record(self, bucket: str, key: str, reason: str) -> None:
        self.metrics.bad_records.labels(bucket=bucket).inc()
        where = f"quarantine.{bucket}.{key}"
        await self._system_event(
            "record.quarantined",
            f"KV {bucket}/{key} is not a valid record ({reason}): moved aside to {where}.<revision>",
            {"bucket": bucket, "key": key, "reason": reason},
        )

    async def _count_run_event(self, event: RunEvent) -> None:
        if event.type == "finished" and self.reconciler is not None:
            self.reconciler.kick()  # after every run, desired state is reconciled
        self.metrics.run_events.labels(type=event.type).inc()
        if self.chatops is not None:
            self.chatops.kick()  # a run may have started or stopped waiting for an approval (cheap)
        if event.type in ("step.succeeded", "step.failed") and "duration_s" in event.detail:
            outcome = "succeeded" if event.type == "step.succeeded" else "failed"
            self.metrics.step_duration.labels(
                playbook=event.playbook, action=str(event.detail.get("action")), outcome=outcome
            ).observe(float(event.detail["duration_s"]))
        self.metrics.first_actions.run_event(event.run_id, event.type, event.detail)  # automatic runs only
        if event.type == "blocked":
            self.metrics.guard_refusals.labels(rule=str(event.detail.get("rule", "unknown"))).inc()
        if event.type == "finished":
            self.metrics.runs.labels(
                playbook=event.playbook, outcome=str(event.detail.get("status", "unknown"))
            ).inc()
            marks = event.detail.get("timeline")
            for stage, seconds in recovery_stages(marks if isinstance(marks, dict) else {}).items():
                self.metrics.recovery.labels(stage=stage).observe(seconds)


async def run_until_signalled(daemon: Daemon) -> None:
    """Run the daemon; SIGTERM and SIGINT only set the stop event (shutdown is staged, not abrupt)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    await daemon.run(stop)


async def _ensure_topology(bus: Bus, lease_ttl_s: float, stop: asyncio.Event) -> None:
    """Create the streams and buckets, waiting (bounded) while JetStream does not answer: a NATS cluster
    electing its JetStream leader is a reason to wait, not to exit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TOPOLOGY_WAIT_S
    delay = 0.25
    while True:
        try:
            await bus.ensure_topology(leader_ttl_s=lease_ttl_s)
            return
        except TemporaryError as e:
            if loop.time() + delay > deadline or stop.is_set():
                raise
            log.warning("nats.jetstream_unavailable", error=str(e), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
