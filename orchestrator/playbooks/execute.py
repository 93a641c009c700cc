"""Executing one journalled run (DESIGN §6b).

The journal record holds the rendered plan and, per step (and per `for_each` item), its status, the
parameters rendered at step start, the value the effect replaced (`before`, read and journalled before
the effect), attempts, absolute deadlines and the result. Executing a record that was interrupted:
- finished steps are never repeated; their results feed later templates;
- an idempotent step that was in flight is issued again identically (same parameters, same `before`);
- a non-idempotent one (`http`, `notify`, `nats.publish`) marks the run `needs_attention` and pages.
A preemption (the cluster failed again during its failback) stops the run at its next journalled point.

Time (`playbooks.clock`): a step's deadline is journalled as an absolute wall-clock timestamp and
converted to a monotonic deadline once when the step starts or is resumed in this process; each attempt
gets what is left of it by the monotonic clock. A wall-clock jump while this process runs the step
changes nothing; a jump while no process runs it (crash, failover to another replica) shifts what a
resumed step has left, computed once from the wall deadline (clamped at 0). Timestamps in the record
(`started_at`, `updated_at`, ...) are wall-clock, for people and other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

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

from orchestrator.bus.leadership import NotLeader
from orchestrator.core import redact
from orchestrator.core.errors import GuardRefused, OrchestratorError, PermanentError, TemporaryError
from orchestrator.core.models import RunEventType, rfc3339
from orchestrator.playbooks import templates, timeline
from orchestrator.playbooks.actions import REGISTRY, Preempted, Services, StepContext
from orchestrator.playbooks.journal import Fenced, Journal
from orchestrator.playbooks.model import RetryPolicy
from orchestrator.playbooks.plan import fleet_view, step_params, truthy

log = structlog.get_logger(__name__)

Emit = Callable[[RunEventType, str | None, int | None, dict[str, Any]], Awaitable[None]]
FreshContext = Callable[[], dict[str, Any]]

SECRET_GONE = (
    "its parameters held a secret, which is never journalled, and this process does not have it (the run "
    "was resumed): it was not sent with the redacted value; run it again"
)
# compensations that would put traffic or capacity back: never while the cluster is still failed
RESTORING = {"lb.restore", "lb.set_weights", "k8s.restore_scale"}


class StepFailed(OrchestratorError):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class NeedsAttention(OrchestratorError):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class RunExecutor:
    def __init__(
        self,
        record: dict[str, Any],
        services: Services,
        journal: Journal,
        emit: Emit,
        clusters: Callable[[], list[dict[str, Any]]],
        preempt: asyncio.Event,
    ) -> None:
        self.record = record
        self.services = services
        self.journal = journal
        redact.register_config(services.config)
        # run events carry no secret (`core.redact`)
        self.emit: Emit = lambda kind, step, attempt, detail: emit(kind, step, attempt, redact.redact(detail))
        self.clusters = clusters
        self.preempt = preempt
        self.clock = services.clock
        self.guards = record["plan"].get("guards", {})
        self.force = bool(record.get("force"))

    @property
    def run_id(self) -> str:
        return str(self.record["id"])

    async def save(self) -> None:
        """Journal the record redacted (`core.redact`): the KV never holds a secret; this process keeps
        the values its steps send (sealed parameters, results for later templates) in `record`."""
        self.record["updated_at"] = rfc3339(self.clock.wall())
        await self.journal.save(redact.redact(self.record))

    def base_context(self) -> dict[str, Any]:
        plan = self.record["plan"]
        variables = redact.unseal(plan.get("vars", {}))
        context: dict[str, Any] = {
            "event": self.record["event"],
            "clusters": fleet_view(plan, self.clusters()),
            "vars": variables,
            "steps": {},
        }
        context.update(variables)
        for step_id, entry in self.record["steps"].items():
            if entry.get("status") == "succeeded":
                context["steps"][step_id] = entry.get("result")
        return context

    def fresh_context(self) -> dict[str, Any]:
        """The template context with cluster states as they are now (for polling actions)."""
        return {**self.base_context(), "clusters": self.clusters()}

    async def execute(self) -> str:
        """Run to the end; returns the final status."""
        context = self.base_context()
        timeline.begin(self.record)
        try:
            for step in self.record["plan"]["steps"]:
                if self.preempt.is_set():
                    raise Preempted(f"preempted before {step['id']}")
                await self._step(step, context)
        except Preempted as e:
            return await self._finish("preempted", detail={"reason": str(e)})
        except (Fenced, NotLeader):
            raise
        except NeedsAttention as e:
            self.record.update(failed_step=e.step, error=e.reason)
            await self.emit("needs_attention", e.step, None, {"reason": e.reason})
            await self._on_failure(context, e.step, e.reason)
            return await self._finish("needs_attention")
        except StepFailed as e:
            self.record.update(failed_step=e.step, error=e.reason)
            attention = await self._compensate(context)
            await self._on_failure(context, e.step, e.reason)
            return await self._finish("needs_attention" if attention else "failed")
        return await self._finish("succeeded")

    async def _finish(self, status: str, detail: dict[str, Any] | None = None) -> str:
        self.record["status"] = status
        self.record["finished_at"] = rfc3339(self.clock.wall())
        marks = timeline.finish(self.record, self.record["finished_at"])
        await self.save()
        summary = {
            "status": status,
            "failed_step": self.record.get("failed_step"),
            "error": self.record.get("error"),
            **(detail or {}),
            "timeline": dict(marks),
        }
        if status == "preempted":
            await self.emit("preempted", None, None, summary)
        await self.emit("finished", None, None, summary)
        return status

    # steps ---------------------------------------------------------------------------------------

    async def _step(self, step: dict[str, Any], context: dict[str, Any]) -> None:
        step_id = str(step["id"])
        entry = self.record["steps"].setdefault(
            step_id, {"action": step["action"], "status": "pending", "attempts": 0}
        )
        status = entry["status"]
        if status in ("succeeded", "skipped") or (status == "failed" and step.get("continue_on_error")):
            return
        try:
            when = step.get("when")
            if isinstance(when, str):
                when = truthy(templates.evaluate(when, context))
            if when is False:
                entry["status"] = "skipped"
                await self.save()
                await self.emit("step.succeeded", step_id, None, {"skipped": True, "reason": "when is false"})
                return
            items = entry.get("items_list", step.get("for_each"))
            if isinstance(items, str):
                items = templates.render(items, context)
                if not isinstance(items, list | tuple):
                    raise templates.TemplateError(
                        f"for_each must render to a list, got {type(items).__name__}"
                    )
            if items is not None:
                entry["items_list"] = list(items)
        except templates.TemplateError as e:
            await self._fail(step, entry, context, str(e))
            return
        was_running = status == "running"
        started = self.clock.mono()
        entry["status"] = "running"
        entry.setdefault("started_at", rfc3339(self.clock.wall()))
        await self.save()
        await self.emit(
            "step.started",
            step_id,
            None,
            {"action": step["action"], "items": entry.get("items_list"), "resumed": was_running},
        )
        try:
            if items is None:
                result: Any = await self._invoke(step, step_id, entry, context, was_running)
            else:
                sem = asyncio.Semaphore(int(step.get("max_parallel") or 8))
                subs = entry.setdefault("items", {})

                async def one(i: int, item: Any) -> Any:
                    async with sem:
                        sub = subs.setdefault(str(i), {"item": item, "status": "pending", "attempts": 0})
                        if sub["status"] == "succeeded":
                            return sub.get("result")
                        in_flight = sub["status"] == "running"
                        if not in_flight:  # journalled before the effect: a crash now is seen on resume
                            sub["status"] = "running"
                            await self.save()
                        return await self._invoke(
                            step, step_id, sub, {**context, "item": item}, in_flight, item_index=i
                        )

                outcomes = await asyncio.gather(
                    *(one(i, item) for i, item in enumerate(items)), return_exceptions=True
                )
                _raise_first(outcomes)  # every item ran to its end; the most serious outcome wins
                result = list(outcomes)
        except StepFailed as e:
            await self._fail(step, entry, context, e.reason)
            return
        entry["status"] = "succeeded"
        entry["result"] = result
        entry["finished_at"] = rfc3339(self.clock.wall())
        context["steps"][step_id] = result
        marked = timeline.mark_verified(self.record, step, self.clock.wall())
        await self.save()
        detail: dict[str, Any] = {
            "result": result,
            "action": step["action"],
            "duration_s": round(self.clock.mono() - started, 4),
            **({"timeline": marked} if marked else {}),
        }
        if not self.record.get("first_action_at"):  # detection -> first action, for the latency metric
            self.record["first_action_at"] = rfc3339(self.clock.wall())
            event_ts = self.record["event"].get("ts")
            if isinstance(event_ts, str):
                with contextlib.suppress(ValueError):
                    detail["since_event_s"] = round(
                        self.clock.wall()
                        - datetime.fromisoformat(event_ts.replace("Z", "+00:00")).timestamp(),
                        4,
                    )
        await self.emit("step.succeeded", step_id, entry.get("attempts"), detail)

    async def _fail(
        self, step: dict[str, Any], entry: dict[str, Any], context: dict[str, Any], reason: str
    ) -> None:
        step_id = str(step["id"])
        entry["status"] = "failed"
        entry["error"] = reason
        entry["finished_at"] = rfc3339(self.clock.wall())
        await self.save()
        await self.emit("step.failed", step_id, entry.get("attempts"), {"error": reason})
        if step.get("continue_on_error"):
            context["steps"][step_id] = {"error": reason}
            return
        raise StepFailed(step_id, reason)

    async def _invoke(
        self,
        step: dict[str, Any],
        step_id: str,
        entry: dict[str, Any],
        context: dict[str, Any],
        was_running: bool,
        item_index: int | None = None,
    ) -> Any:
        action = REGISTRY[step["action"]]
        where = step_id if item_index is None else f"{step_id}[{item_index}]"
        if was_running and not action.idempotent:
            raise NeedsAttention(
                step_id,
                f"{step['action']}{'' if item_index is None else f' (item {item_index})'} was in flight "
                "when the daemon stopped; it is not "
                "idempotent, so it was not repeated: check whether it happened",
            )
        try:
            raw = step_params(step, entry.get("params"), context)
            if redact.is_masked(raw):  # `***` where a secret was (a resume in another process): never sent
                raise NeedsAttention(step_id, f"{step['action']}: {SECRET_GONE}")
            params = action.params.model_validate(raw)
        except templates.TemplateError as e:
            raise StepFailed(step_id, str(e)) from e
        except ValidationError as e:
            errors = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise StepFailed(step_id, f"invalid parameters: {errors}") from e
        entry["params"] = redact.seal(raw)  # journalled as `***`; this process keeps the value
        timeout_s = float(step.get("timeout_s") or action.default_timeout_s(params))
        # the step's deadline: absolute in the journal, monotonic here (converted once, at step start or
        # resume); a deadline that passed while no process ran the step starts a fresh timeout
        mono_now, wall_now = self.clock.mono(), self.clock.wall()
        if float(entry.get("deadline", 0)) <= wall_now:
            entry["deadline"] = wall_now + timeout_s
        step_deadline = mono_now + max(0.0, float(entry["deadline"]) - wall_now)
        event = self.record["event"]
        actor = self.record.get("actor")
        if isinstance(actor, str) and actor:  # who started the run (the two-person rule of `approval`)
            event = {**event, "actor": actor}
        ctx = StepContext(
            self.services,
            self.run_id,
            str(self.record["playbook"]),
            where,  # per item: dedup keys and messages name the item
            event,
            journal=entry,
            min_healthy_clusters=int(self.guards.get("min_healthy_clusters", 1)),
            force=self.force,
            checkpoint=self.save,
            preempt=self.preempt,
            template_context=self.fresh_context,
        )

        async def attempt() -> dict[str, Any]:
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
            remaining = max(0.5, step_deadline - self.clock.mono())
            self.services.fence()  # a deposed leader acts on nothing
            try:
                async with asyncio.timeout(remaining):
                    if "before" not in entry:
                        entry["before"] = await action.before(ctx, params)
                        await self.save()  # the value we replace is journalled before the effect
                    result = await action.run(ctx, params)
                    timeline.mark_effect(self.record, action.name, self.clock.wall())
                    if step.get("verify", True):
                        mismatch = await action.verify(ctx, params, result)
                        if mismatch:
                            raise TemporaryError(f"verify: {mismatch}")
                    return result
            except TimeoutError as e:
                raise TemporaryError(f"timed out after {timeout_s:g}s") from e

        policy = RetryPolicy.model_validate(step["retry"]) if step.get("retry") else RetryPolicy(attempts=1)
        try:
            async for try_ in AsyncRetrying(
                stop=stop_after_attempt(policy.attempts),
                wait=_honour_retry_after(
                    wait_exponential(multiplier=policy.initial_s, max=policy.max_s)
                    if policy.backoff == "exponential"
                    else wait_fixed(policy.initial_s),
                    lambda: step_deadline - self.clock.mono(),
                ),
                retry=retry_if_exception_type(TemporaryError),
                before_sleep=lambda state: _log_retry(step_id, state),
                reraise=True,
            ):
                with try_:
                    result = await attempt()
            entry["status"] = "succeeded"
            entry["result"] = result
            return result
        except GuardRefused as e:
            await self.emit("blocked", step_id, entry.get("attempts"), {"rule": e.rule, "reason": str(e)})
            raise StepFailed(step_id, f"refused by guard {e}") from e
        except (Preempted, Fenced, NotLeader):
            raise
        except (TemporaryError, PermanentError) as e:
            raise StepFailed(step_id, str(e)) from e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in an action fails the step; it never kills the daemon
            log.exception("step.crashed", step=step_id)
            raise StepFailed(step_id, f"{type(e).__name__}: {e}") from e
        raise StepFailed(step_id, "no attempt made")  # pragma: no cover - tenacity always attempts

    # failure paths -------------------------------------------------------------------------------

    async def _compensate(self, context: dict[str, Any]) -> bool:
        """Undo, in reverse order, the succeeded steps that opted in with `compensate:`. Returns whether
        a non-idempotent compensation was in flight at a crash (a human must check it)."""
        attention = False
        states = self.services.cluster_states()
        for step in reversed(self.record["plan"]["steps"]):
            compensate = step.get("compensate")
            entry = self.record["steps"].get(step["id"], {})
            if not compensate or entry.get("status") != "succeeded":
                continue
            covered = (entry.get("params") or {}).get("cluster")
            if compensate["action"] in RESTORING and covered and states.get(covered) == "failed":
                await self.emit(
                    "blocked",
                    str(step["id"]),
                    None,
                    {
                        "rule": "no_undo_while_failed",
                        "reason": f"not undoing {step['id']}: {covered} is still failed",
                    },
                )
                continue
            comp_step = {
                "id": f"{step['id']}-compensate",
                "action": compensate["action"],
                "with": compensate["with"],
                "retry": {"attempts": 3},
            }
            comp_entry = self.record["steps"].setdefault(
                comp_step["id"], {"action": compensate["action"], "status": "pending", "attempts": 0}
            )
            if comp_entry["status"] == "succeeded":
                continue
            in_flight = comp_entry["status"] == "running"
            if not in_flight:  # journalled before the effect, like every step
                comp_entry["status"] = "running"
                await self.save()
            try:
                result = await self._invoke(
                    comp_step,
                    comp_step["id"],
                    comp_entry,
                    {**context, "before": entry.get("before")},
                    in_flight,
                )
            except NeedsAttention as e:
                comp_entry.update(status="failed", error=e.reason)
                await self.save()
                await self.emit("needs_attention", comp_step["id"], None, {"reason": e.reason})
                attention = True
                continue
            except StepFailed as e:
                comp_entry.update(status="failed", error=str(e))
                await self.save()
                await self.emit("step.failed", comp_step["id"], comp_entry.get("attempts"), {"error": str(e)})
                continue
            comp_entry["status"] = "succeeded"
            await self.save()
            await self.emit("compensated", str(step["id"]), None, {"result": result})
        return attention

    async def _on_failure(self, context: dict[str, Any], failed_step: str, error: str) -> None:
        context = {**context, "failed_step": failed_step, "error": error}
        for step in self.record["plan"].get("on_failure", []):
            try:
                await self._step(step, context)
            except (StepFailed, NeedsAttention) as e:
                log.error("run.on_failure_step_failed", run_id=self.run_id, step=step["id"], error=str(e))


def _raise_first(outcomes: list[Any]) -> None:
    """After every `for_each` item ended: raise what matters most. Losing the lease or being preempted
    stops the run; an item that needs a human outranks one that failed."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    for kind in (asyncio.CancelledError, Fenced, NotLeader, Preempted, NeedsAttention, StepFailed):
        for error in errors:
            if isinstance(error, kind):
                raise error
    if errors:
        raise errors[0]


RETRY_AFTER_MAX_S = 60.0
"""The longest a step waits on a server's `Retry-After` (a 429 asking for an hour is not honoured)."""


def _honour_retry_after(
    policy: Callable[[RetryCallState], float], left: Callable[[], float]
) -> Callable[[RetryCallState], float]:
    """The step's backoff, or the server's own `Retry-After` when a TemporaryError carries one (a 429
    from Slack or PagerDuty), whichever is longer, never past the step's deadline."""

    def wait(state: RetryCallState) -> float:
        planned = policy(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TemporaryError) and error.delay_s:
            planned = max(planned, min(float(error.delay_s), RETRY_AFTER_MAX_S))
        return max(0.0, min(planned, left()))

    return wait


def _log_retry(step_id: str, state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("step.retrying", step=step_id, attempt=state.attempt_number, error=str(error))
