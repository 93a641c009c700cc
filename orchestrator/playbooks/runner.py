"""Runs: from an event to executed steps, journalled at every transition.

One run at a time per `concurrency` key (default: the event's cluster), different keys in parallel.
A second event of the same type for a key whose run is still active is deduplicated (and says so).
Every step runs under a timeout; TemporaryError is retried with the step's policy (tenacity), anything
else fails the step. The journal (KV `failover-runs`, key `run.<id>`) and the run events
(`failover.runs.<id>`) are written at every step transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
)

from orchestrator.errors import GuardRefused, OrchestratorError, PermanentError, TemporaryError
from orchestrator.models import RunEvent, RunEventType, new_id, rfc3339
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions import REGISTRY, Services, StepContext
from orchestrator.playbooks.loader import LoadedPlaybook
from orchestrator.playbooks.model import Playbook, RetryPolicy, Step

log = structlog.get_logger(__name__)


class Journal(Protocol):
    async def save(self, record: dict[str, Any]) -> None: ...

    async def emit(self, event: RunEvent) -> None: ...


ClusterView = Callable[[], list[dict[str, Any]]]


class StepFailed(OrchestratorError):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.reason = message


@dataclass
class Run:
    id: str
    loaded: LoadedPlaybook
    event: dict[str, Any]
    key: str
    record: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def playbook(self) -> Playbook:
        return self.loaded.playbook


class Runner:
    def __init__(
        self,
        services: Services,
        journal: Journal,
        playbooks: Mapping[str, LoadedPlaybook],
        clusters: ClusterView,
        on_run_event: Callable[[RunEvent], Awaitable[None]] | None = None,
    ) -> None:
        self.services = services
        self.journal = journal
        self.playbooks = dict(playbooks)
        self.clusters = clusters
        self.on_run_event = on_run_event
        self.active: dict[str, Run] = {}
        """concurrency key -> the run holding it."""
        self.runs: dict[str, Run] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._accepting = True

    def set_playbooks(self, playbooks: Mapping[str, LoadedPlaybook]) -> None:
        self.playbooks = dict(playbooks)

    def matching(self, event: Mapping[str, Any]) -> list[LoadedPlaybook]:
        cluster = event.get("cluster")
        labels = {}
        if isinstance(cluster, str):
            with contextlib.suppress(KeyError):
                labels = self.services.config.cluster(cluster).labels
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
        """Start a run of every playbook the event matches; return the run ids started."""
        if not self._accepting:
            return []
        started = []
        for loaded in self.matching(event):
            run = self._new_run(loaded, dict(event))
            if run is None:
                continue
            started.append(run.id)
        return started

    def start(self, loaded: LoadedPlaybook, event: Mapping[str, Any]) -> str | None:
        run = self._new_run(loaded, dict(event))
        return run.id if run else None

    def _new_run(self, loaded: LoadedPlaybook, event: dict[str, Any]) -> Run | None:
        key = self._concurrency_key(loaded.playbook, event)
        run = Run(new_id(), loaded, event, key)
        active = self.active.get(key)
        if active is not None and active.event.get("type") == event.get("type") and active.loaded is loaded:
            asyncio.get_running_loop().create_task(
                self._emit(
                    run,
                    "deduplicated",
                    detail={
                        "rule": "concurrency",
                        "key": key,
                        "active_run": active.id,
                        "reason": f"a run for {event.get('type')} on {key} is already active",
                    },
                )
            )
            return None
        self.runs[run.id] = run
        run.task = asyncio.get_running_loop().create_task(self._guarded(run), name=f"run-{run.id}")
        return run

    def _concurrency_key(self, playbook: Playbook, event: Mapping[str, Any]) -> str:
        if playbook.concurrency:
            try:
                return f"{playbook.name}:{templates.render_string(playbook.concurrency, {'event': event})}"
            except templates.TemplateError as e:
                log.warning("run.concurrency_key_failed", playbook=playbook.name, error=str(e))
        return str(event.get("cluster") or playbook.name)

    async def _guarded(self, run: Run) -> None:
        lock = self._locks.setdefault(run.key, asyncio.Lock())
        try:
            async with lock:
                self.active[run.key] = run
                try:
                    with structlog.contextvars.bound_contextvars(run_id=run.id, playbook=run.playbook.name):
                        await self._execute(run)
                finally:
                    self.active.pop(run.key, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run.crashed", run_id=run.id)

    async def _execute(self, run: Run) -> None:
        pb = run.playbook
        run.record = {
            "id": run.id,
            "playbook": pb.name,
            "playbook_sha256": run.loaded.sha256,
            "event": run.event,
            "status": "running",
            "started_at": rfc3339(time.time()),
            "steps": {},
            "key": run.key,
        }
        await self._emit(
            run, "started", detail={"event": run.event.get("type"), "cluster": run.event.get("cluster")}
        )
        context: dict[str, Any] = {"event": run.event, "clusters": self.clusters(), "steps": {}}
        try:
            variables = self._render_vars(pb, context)
            context["vars"] = variables
            context.update(variables)
            for index, step in enumerate(pb.steps):
                await self._run_step(run, step, pb.step_id(index, step), context)
        except StepFailed as failure:
            run.record["status"] = "failed"
            run.record["failed_step"] = failure.step
            run.record["error"] = failure.reason
            await self._on_failure(run, context, failure)
            await self._finish(run)
            return
        run.record["status"] = "succeeded"
        await self._finish(run)

    def _render_vars(self, pb: Playbook, context: dict[str, Any]) -> dict[str, Any]:
        variables: dict[str, Any] = {}
        for name, value in pb.vars.items():
            try:
                variables[name] = templates.render(value, {**context, **variables, "vars": variables})
            except templates.TemplateError as e:
                raise StepFailed("vars", f"{name}: {e}") from e
        return variables

    async def _on_failure(self, run: Run, context: dict[str, Any], failure: StepFailed) -> None:
        on_failure = run.playbook.on_failure
        if on_failure is None:
            return
        context = {**context, "failed_step": failure.step, "error": failure.reason}
        for index, step in enumerate(on_failure.steps):
            try:
                await self._run_step(run, step, run.playbook.step_id(index, step, "on_failure-"), context)
            except StepFailed as e:
                log.error("run.on_failure_step_failed", step=e.step, error=e.reason)

    async def _finish(self, run: Run) -> None:
        run.record["finished_at"] = rfc3339(time.time())
        await self._save(run)
        await self._emit(
            run,
            "finished",
            detail={
                "status": run.record["status"],
                "failed_step": run.record.get("failed_step"),
                "error": run.record.get("error"),
            },
        )

    async def _run_step(self, run: Run, step: Step, step_id: str, context: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"action": step.action, "status": "pending", "attempts": 0}
        run.record["steps"][step_id] = entry
        try:
            if step.when is not None and not self._truthy(step.when, context):
                entry["status"] = "skipped"
                await self._save(run)
                return
            items: list[Any] | None = None
            if step.for_each is not None:
                rendered = templates.render(step.for_each, context)
                if not isinstance(rendered, list | tuple):
                    raise StepFailed(
                        step_id, f"for_each must render to a list, got {type(rendered).__name__}"
                    )
                items = list(rendered)
        except templates.TemplateError as e:
            entry["status"] = "failed"
            entry["error"] = str(e)
            await self._save(run)
            await self._emit(run, "step.failed", step_id, detail={"error": str(e)})
            if step.continue_on_error:
                return
            raise StepFailed(step_id, str(e)) from e

        entry["status"] = "running"
        entry["started_at"] = rfc3339(time.time())
        await self._save(run)
        await self._emit(
            run,
            "step.started",
            step_id,
            detail={"action": step.action, "items": items if items is not None else None},
        )
        try:
            if items is None:
                result: Any = await self._invoke(run, step, step_id, context, entry)
            else:
                sem = asyncio.Semaphore(step.max_parallel)
                entry["items"] = {}

                async def one(i: int, item: Any) -> Any:
                    async with sem:
                        sub = entry["items"].setdefault(str(i), {"item": item, "attempts": 0})
                        return await self._invoke(run, step, step_id, {**context, "item": item}, sub)

                result = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        except StepFailed as e:
            entry["status"] = "failed"
            entry["error"] = e.reason
            entry["finished_at"] = rfc3339(time.time())
            await self._save(run)
            await self._emit(run, "step.failed", step_id, entry.get("attempts"), detail={"error": e.reason})
            if step.continue_on_error:
                context["steps"][step_id] = {"error": e.reason}
                return
            raise
        entry["status"] = "succeeded"
        entry["result"] = result
        entry["finished_at"] = rfc3339(time.time())
        context["steps"][step_id] = result
        await self._save(run)
        await self._emit(run, "step.succeeded", step_id, entry.get("attempts"), detail={"result": result})

    def _truthy(self, expression: str | bool, context: Mapping[str, Any]) -> bool:
        if isinstance(expression, bool):
            return expression
        value = templates.evaluate(expression, context)
        if isinstance(value, str):
            return value.strip().lower() not in ("", "false", "no", "0", "none")
        return bool(value)

    async def _invoke(
        self, run: Run, step: Step, step_id: str, context: dict[str, Any], entry: dict[str, Any]
    ) -> Any:
        action = REGISTRY[step.action]
        try:
            rendered = templates.render(step.with_, context)
            params = action.params.model_validate(rendered)
        except templates.TemplateError as e:
            raise StepFailed(step_id, str(e)) from e
        except ValidationError as e:
            errors = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise StepFailed(step_id, f"invalid parameters: {errors}") from e
        entry["params"] = rendered
        timeout_s = step.timeout_s or action.default_timeout_s(params)
        ctx = StepContext(
            self.services,
            run.id,
            run.playbook.name,
            step_id,
            run.event,
            min_healthy_clusters=run.playbook.guards.min_healthy_clusters,
            journal=entry,
        )

        async def attempt() -> dict[str, Any]:
            entry["attempts"] = entry.get("attempts", 0) + 1
            try:
                async with asyncio.timeout(timeout_s):
                    return await action.run(ctx, params)
            except TimeoutError as e:
                raise TemporaryError(f"timed out after {timeout_s:g}s") from e

        policy = step.retry or RetryPolicy(attempts=1)
        try:
            async for try_ in AsyncRetrying(
                stop=stop_after_attempt(policy.attempts),
                wait=(
                    wait_exponential(multiplier=policy.initial_s, max=policy.max_s)
                    if policy.backoff == "exponential"
                    else wait_fixed(policy.initial_s)
                ),
                retry=retry_if_exception_type(TemporaryError),
                before_sleep=lambda state: self._log_retry(step_id, state),
                reraise=True,
            ):
                with try_:
                    return await attempt()
        except GuardRefused as e:
            await self._emit(run, "blocked", step_id, detail={"rule": e.rule, "reason": str(e)})
            raise StepFailed(step_id, f"refused by guard {e}") from e
        except (TemporaryError, PermanentError) as e:
            raise StepFailed(step_id, str(e)) from e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in an action must fail the step, never kill the daemon
            log.exception("step.crashed", step=step_id)
            raise StepFailed(step_id, f"{type(e).__name__}: {e}") from e
        raise StepFailed(step_id, "no attempt made")  # pragma: no cover - tenacity always attempts

    @staticmethod
    def _log_retry(step_id: str, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("step.retrying", step=step_id, attempt=state.attempt_number, error=str(error))

    async def _save(self, run: Run) -> None:
        try:
            await self.journal.save(run.record)
        except OrchestratorError as e:
            log.error("run.journal_write_failed", error=str(e))

    async def _emit(
        self,
        run: Run,
        kind: RunEventType,
        step: str | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        event = RunEvent(
            run_id=run.id,
            playbook=run.playbook.name,
            type=kind,
            step=step,
            attempt=attempt,
            detail=detail or {},
        )
        log.info(f"run.{kind}", run_id=run.id, playbook=run.playbook.name, step=step, detail=detail or {})
        try:
            await self.journal.emit(event)
        except OrchestratorError as e:
            log.error("run.event_publish_failed", error=str(e))
        if self.on_run_event is not None:
            await self.on_run_event(event)

    async def wait_idle(self, timeout_s: float | None = None) -> None:
        tasks = [r.task for r in self.runs.values() if r.task and not r.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting events, give running steps `grace_s` to finish, then cancel."""
        self._accepting = False
        await self.wait_idle(grace_s)
        tasks = [r.task for r in self.runs.values() if r.task and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
