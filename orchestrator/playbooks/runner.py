"""Scheduling runs (DESIGN §6b): from events to journalled runs, one at a time per concurrency key.

- One run per `concurrency` key (default: the event's cluster); different keys run in parallel.
- A second event of the same type for the same playbook while its run is active is deduplicated.
- `cluster.failed` preempts a running failback for the same key at its next journalled point, then
  runs; other events queue behind the active run, the latest event per playbook winning.
- Pause (global or per cluster, KV `pause`, `pause.cluster.<c>`) blocks new runs; a blocked protective
  run (on `cluster.failed`) runs its `on_failure` steps, which page.
- `cooldown` and `budget` (KV `guard.<playbook>.<key>`) delay failbacks and notifications; they never
  delay a protective run.
- Unfinished runs found in the journal at start are resumed from their journalled plan.
Every block, dedupe, delay and preemption is a run event that says which rule and why.

Per-key scheduling (dedupe, queueing, preemption) is `scheduling.RunScheduler`; pause, cooldown and
budget are in `guards`; this module is the public `Runner`: intake, driving, resume and lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from orchestrator.bus.leadership import NotLeader
from orchestrator.bus.state import StateStore
from orchestrator.core.aio import wait_any
from orchestrator.core.errors import OrchestratorError, TemporaryError
from orchestrator.core.models import RunEvent, RunEventType, rfc3339
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions import Preempted, Services
from orchestrator.playbooks.execute import RunExecutor
from orchestrator.playbooks.guards import apply_rate_guards, pause_reason, wait_delay
from orchestrator.playbooks.journal import Fenced, Journal
from orchestrator.playbooks.loader import LoadedPlaybook
from orchestrator.playbooks.plan import compact_plan, render_plan
from orchestrator.playbooks.scheduling import PROTECTIVE, Run, RunScheduler

log = structlog.get_logger(__name__)

ClusterView = Callable[[], list[dict[str, Any]]]

FIRST_SAVE_BACKOFF_S = 0.2
FIRST_SAVE_WINDOW_S = 30.0
"""How long a run's first journal write is retried (a JetStream election takes a few seconds)."""


class Runner(RunScheduler):
    def __init__(
        self,
        services: Services,
        journal: Journal,
        playbooks: Mapping[str, LoadedPlaybook],
        clusters: ClusterView,
        store: StateStore | None = None,
        on_run_event: Callable[[RunEvent], Awaitable[None]] | None = None,
        force_audited: Callable[[dict[str, Any]], Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__()
        self.services = services
        self.journal = journal
        self.playbooks = dict(playbooks)
        self.clusters = clusters
        self.store = store
        self.on_run_event = on_run_event
        self.force_audited = force_audited
        """Whether the audit stream holds the command that forced this journalled run (None: no record
        may keep `force` on resume). The journal is data, not authority (DESIGN §12)."""
        self.acting = True
        """False on a follower, and on a leader that lost its lease: no run starts."""

    def set_playbooks(self, playbooks: Mapping[str, LoadedPlaybook]) -> None:
        """Hot reload: new runs use the new set; running and resumed runs keep their journalled plan."""
        self.playbooks = dict(playbooks)

    # intake ----------------------------------------------------------------------------------------

    def matching(self, event: Mapping[str, Any]) -> list[LoadedPlaybook]:
        cluster = event.get("cluster")
        labels: dict[str, str] = {}
        if isinstance(cluster, str):
            with contextlib.suppress(KeyError):
                labels = dict(self.services.config.cluster(cluster).labels)
        out = []
        for loaded in self.playbooks.values():
            on = loaded.playbook.on
            if on.event != event.get("type"):
                continue
            if on.clusters is not None and not (
                isinstance(cluster, str) and on.clusters.matches(cluster, labels)
            ):
                continue
            out.append(loaded)
        return out

    async def on_event(self, event: Mapping[str, Any]) -> list[str]:
        """Schedule a run of every playbook the event matches; return their run ids."""
        if not self._accepting or not self.acting:
            return []
        started = []
        for loaded in self.matching(event):
            run_id = await self.submit(loaded, dict(event))
            if run_id:
                started.append(run_id)
        return started

    def touches(self, cluster: str) -> bool:
        """Whether an active run works on `cluster`: its event's cluster, or a cluster one of its steps
        names (a survivor it scales, the items of a `for_each`). The reconciler and the watchdog leave
        such a cluster's balancer weights and workloads to the run until it finishes."""
        for run in self.active.values():
            if run.task is not None and run.task.done():
                continue
            if run.event.get("cluster") == cluster:
                return True
            record = run.record or {}
            steps = [*record.get("plan", {}).get("steps", []), *record.get("plan", {}).get("on_failure", [])]
            for step in steps:
                if (step.get("with") or {}).get("cluster") == cluster:
                    return True
                items = step.get("for_each")
                if isinstance(items, list) and cluster in items:
                    return True
            for entry in record.get("steps", {}).values():
                if cluster in (entry.get("items_list") or []):
                    return True
        return False

    async def _check_force(self, run: Run) -> str | None:
        """A journalled `force` (guards overridden) is kept only when the audit stream has the admin
        command that started the run: anyone able to write the journal could otherwise resume a forced
        run. Returns why it was dropped, or None."""
        if not run.force:
            return None
        try:
            if self.force_audited is not None and await self.force_audited(run.record or {}):
                return None
            reason = "no audited command forced this run"
        except OrchestratorError as e:
            reason = f"the audit stream could not be read: {e}"
        run.force = False
        if run.record is not None:
            run.record["force"] = False
        log.error("run.force_dropped", run_id=run.id, reason=reason)
        return reason

    def protecting(self, cluster: str) -> bool:
        """Whether a protective run (on `cluster.failed`) for `cluster` is running or queued. Anything
        else working on the cluster (a failback, a notification, an approval) does not stop the drain
        watchdog: its catch-up `cluster.failed` preempts that run (DESIGN §12)."""
        queued = [run for runs in self.pending.values() for run in runs]
        return any(
            run.event.get("type") == PROTECTIVE
            and run.event.get("cluster") == cluster
            and (run.task is None or not run.task.done())
            for run in [*self.active.values(), *queued]
        )

    # driving a run ------------------------------------------------------------------------------

    async def _drive(self, run: Run) -> None:
        try:
            with structlog.contextvars.bound_contextvars(run_id=run.id, playbook=run.playbook):
                if run.hold is not None:  # resumed while automation is paused: a human has the wheel
                    await self._block(run, "pause", run.hold)
                if run.record is None:
                    await self._begin(run)
                if run.record is not None and run.record["status"] in ("running", "delayed"):
                    executor = self._executor(run)
                    if run.record["status"] == "delayed":
                        await wait_delay(self.journal, run, self._emit, self.services.clock)
                    if run.record["status"] == "running":
                        await executor.execute()
        except (Fenced, NotLeader) as e:
            log.warning("run.fenced", run_id=run.id, reason=str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            # the record still says `running`: the periodic adoption (resume_unfinished) picks it up
            log.exception("run.crashed", run_id=run.id)
        finally:
            if self.runs.get(run.id) is run:
                del self.runs[run.id]  # finished here: the journal has it (bounded memory)
            self._next(run.key)

    def _executor(self, run: Run) -> RunExecutor:
        assert run.record is not None

        async def emit(
            kind: RunEventType, step: str | None, attempt: int | None, detail: dict[str, Any]
        ) -> None:
            await self._emit(run.id, run.playbook, kind, step, attempt, detail)

        return RunExecutor(run.record, self.services, self.journal, emit, self.clusters, run.preempt)

    async def _begin(self, run: Run) -> None:
        assert run.loaded is not None
        pb = run.loaded.playbook
        record: dict[str, Any] = {
            "id": run.id,
            "playbook": pb.name,
            "playbook_sha256": run.loaded.sha256,
            "event": run.event,
            "key": run.key,
            "status": "running",
            "created_at": rfc3339(self.services.clock.wall()),
            "steps": {},
            "force": run.force,
            "actor": run.actor,
        }
        run.record = record
        try:
            record["plan"] = compact_plan(render_plan(pb, run.event, self.clusters()))
        except templates.TemplateError as e:
            record.update(status="failed", error=f"cannot render the plan: {e}", plan={"steps": []})
            await self._first_save(record)
            await self._emit(
                run.id, pb.name, "finished", detail={"status": "failed", "error": record["error"]}
            )
            return
        await self._first_save(record)
        await self._emit(
            run.id,
            pb.name,
            "started",
            detail={
                "event": run.event.get("type"),
                "cluster": run.event.get("cluster"),
                "key": run.key,
                "playbook_sha256": run.loaded.sha256,
                "actor": run.actor,
                "force": run.force,
            },
        )
        paused = await pause_reason(self.store, run)
        if paused:
            await self._block(run, "pause", paused)
            return
        await apply_rate_guards(self.store, self.journal, run, self._emit)

    async def _first_save(self, record: dict[str, Any]) -> None:
        """Hand the event over to the journal durably (DESIGN §12): the first write is retried with
        backoff through a JetStream hiccup (an election, a slow disk) instead of ending in `run.crashed`
        with no record. A write that timed out may have landed: the retry then loses its create, and the
        record found is ours (same id and creation time), so it is adopted, not given up as fenced."""
        delay = FIRST_SAVE_BACKOFF_S
        deadline = time.monotonic() + FIRST_SAVE_WINDOW_S
        uncertain = False
        while True:
            try:
                await self.journal.save(record)
                return
            except Fenced:
                if not uncertain:
                    raise
                found = await self.journal.load(str(record["id"]))  # adopts its revision when ours
                if found is None or found.get("created_at") != record.get("created_at"):
                    raise
                uncertain = False  # ours landed: write the current content over it
            except TemporaryError as e:
                if time.monotonic() + delay > deadline or not self.acting:
                    raise
                uncertain = True
                log.warning("run.first_write_retry", run_id=record["id"], error=str(e), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _block(self, run: Run, rule: str, reason: str) -> None:
        assert run.record is not None
        run.record.update(status="blocked", error=reason, finished_at=rfc3339(self.services.clock.wall()))
        await self.journal.save(run.record)
        await self._emit(run.id, run.playbook, "blocked", detail={"rule": rule, "reason": reason})
        if run.event.get("type") == PROTECTIVE:
            # a protective action that did not happen is a page, not a log line
            executor = self._executor(run)
            await executor._on_failure(executor.base_context(), f"(guard {rule})", reason)
            await self.journal.save(run.record)
        await self._emit(run.id, run.playbook, "finished", detail={"status": "blocked", "error": reason})

    # resume ---------------------------------------------------------------------------------------

    async def resume_unfinished(self) -> list[str]:
        """Adopt and continue every run left unfinished that no task of this process drives: a previous
        leader's (at election) and, called periodically, one of ours whose journal write failed mid-run
        (its task ended, its record still says `running`). Each continues from its journalled plan.

        A run that is not protective while its cluster is `failed` now (a failback a previous leader was
        preempting) is resumed preempted: it stops at its first journalled point, so neither it nor
        the catch-up drain waits for the other (DESIGN §12)."""
        resumed = []
        states = self.services.cluster_states()
        for record in await self.journal.unfinished():
            known = self.runs.get(str(record.get("id")))
            if known is not None and (known.task is None or not known.task.done()):
                continue  # queued or running here: ours already
            if not self.acting:
                break
            run = Run(
                str(record["id"]),
                str(record["playbook"]),
                dict(record["event"]),
                str(record["key"]),
                self.playbooks.get(str(record["playbook"])),
                record,
                bool(record.get("force")),
                record.get("actor"),
            )
            dropped = await self._check_force(run)
            run.hold = await pause_reason(self.store, run)
            cluster = run.event.get("cluster")
            failed_now = isinstance(cluster, str) and states.get(cluster) == "failed"
            if failed_now and run.event.get("type") != PROTECTIVE:
                run.preempt.set()
            if run.key in self.active:
                self.pending.setdefault(run.key, []).append(run)
                self.runs[run.id] = run
            else:
                self._start(run)
            in_flight = [s for s, e in record.get("steps", {}).items() if e.get("status") == "running"]
            await self._emit(
                run.id,
                run.playbook,
                "resumed",
                detail={
                    "status": record["status"],
                    "in_flight": in_flight,
                    "done": [s for s, e in record.get("steps", {}).items() if e.get("status") == "succeeded"],
                    **({"force_dropped": dropped} if dropped else {}),
                },
            )
            if run.preempt.is_set():
                await self._emit(
                    run.id,
                    run.playbook,
                    "preempted",
                    detail={
                        "rule": "protective_first",
                        "key": run.key,
                        "by_event": PROTECTIVE,
                        "reason": f"{cluster} is failed: the resumed run stops at its next journalled point",
                    },
                )
            resumed.append(run.id)
        return resumed

    async def adopt_orphans(
        self, stop: asyncio.Event, interval_s: float, active: Callable[[], bool], timeout_s: float = 10.0
    ) -> None:
        """While this replica leads, adopt every `interval_s` the unfinished runs no task drives (a
        journal write that failed mid-run ended its task; its record still says `running`)."""
        while not stop.is_set():
            await wait_any(stop, timeout_s=interval_s)
            if stop.is_set() or not active() or not self.acting:
                continue
            try:
                async with asyncio.timeout(timeout_s):
                    adopted = await self.resume_unfinished()
                if adopted:
                    log.warning("runs.adopted", runs=adopted)
            except (TimeoutError, OrchestratorError) as e:
                log.warning("runs.adopt_failed", error=str(e) or "timeout")

    # events and lifecycle -------------------------------------------------------------------------

    async def _emit(
        self,
        run_id: str,
        playbook: str,
        kind: RunEventType,
        step: str | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        event = RunEvent(
            run_id=run_id, playbook=playbook, type=kind, step=step, attempt=attempt, detail=detail or {}
        )
        log.info(f"run.{kind}", run_id=run_id, playbook=playbook, step=step, detail=detail or {})
        try:
            await self.journal.emit(event)
        except OrchestratorError as e:
            log.error("run.event_publish_failed", error=str(e))
        if self.on_run_event is not None:
            await self.on_run_event(event)

    async def wait_idle(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            tasks = [r.task for r in self.runs.values() if r.task and not r.task.done()]
            if not tasks and not self.pending:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if tasks:
                await asyncio.wait(tasks, timeout=remaining)
            else:
                await asyncio.sleep(0.01)

    async def abandon(self) -> None:
        """The lease is lost: stop every run at once, writing nothing more (the journal already holds
        what was in flight, and the new leader resumes it)."""
        self.acting = False
        self.pending.clear()
        tasks = [r.task for r in self.runs.values() if r.task and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.active.clear()
        self.runs.clear()

    async def stop(self, grace_s: float) -> None:
        """Stop taking work, give running steps `grace_s` to finish, then cancel (the journal keeps
        what was in flight, and the next leader resumes it)."""
        self._accepting = False
        self.pending.clear()
        await self.wait_idle(grace_s)
        tasks = [r.task for r in self.runs.values() if r.task and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


__all__ = ["Preempted", "Run", "Runner"]
