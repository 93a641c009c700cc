"""Flow actions: `sleep`, `wait_for` and `approval`. All keep absolute deadlines in the journal, so a
resumed run waits until the same moment, not for the whole duration again; inside a process they wait
on the monotonic clock (the journalled deadline converted once, `playbooks.clock`), so a wall-clock jump
during a sleep, a poll or an approval neither shortens nor stretches it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.core.config_fields import Seconds
from orchestrator.core.errors import PermanentError
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions.base import Action, Params, StepContext, register
from orchestrator.playbooks.approvals import Rule
from orchestrator.playbooks.plan import truthy


class SleepParams(Params):
    duration_s: Seconds = Field(alias="duration", ge=0)


@register
class Sleep(Action):
    name = "sleep"
    params = SleepParams

    def default_timeout_s(self, params: SleepParams) -> float:
        return params.duration_s + 30.0

    async def run(self, ctx: StepContext, params: SleepParams) -> dict[str, Any]:
        until = ctx.deadline("until", params.duration_s)
        await ctx.save()
        await ctx.sleep_until(until)
        return {"slept_until": ctx.journal["until"]}

    async def describe(self, ctx: StepContext, params: SleepParams) -> list[str]:
        return [f"sleep {params.duration_s:g}s"]


class WaitForParams(Params):
    expression: str
    poll_s: Seconds = Field(default=2.0, alias="poll", gt=0)
    timeout_s: Seconds = Field(default=300.0, alias="timeout", gt=0)


@register
class WaitFor(Action):
    """Poll a template expression over fresh cluster states until it is true, or time out."""

    name = "wait_for"
    params = WaitForParams

    def default_timeout_s(self, params: WaitForParams) -> float:
        return params.timeout_s + 30.0

    async def run(self, ctx: StepContext, params: WaitForParams) -> dict[str, Any]:
        deadline = ctx.deadline("until", params.timeout_s)
        await ctx.save()
        polls = 0
        while True:
            polls += 1
            context = ctx.template_context() if ctx.template_context else {}
            try:
                if truthy(templates.evaluate(params.expression, context)):
                    return {"polls": polls, "met_at": ctx.clock.wall()}
            except templates.TemplateError as e:
                raise PermanentError(str(e)) from e
            if ctx.clock.mono() >= deadline:
                raise PermanentError(f"{params.expression!r} still false after {params.timeout_s:g}s")
            await ctx.sleep_until(min(deadline, ctx.clock.mono() + params.poll_s))

    async def describe(self, ctx: StepContext, params: WaitForParams) -> list[str]:
        return [f"wait until {params.expression} (every {params.poll_s:g}s, at most {params.timeout_s:g}s)"]


class ApprovalParams(Params):
    approvers: list[str] = []
    """Names of API tokens, or `role:operator` / `role:admin`; empty: any operator."""
    min_approvals: int = Field(default=1, ge=1, le=10)
    """How many distinct approvers must say yes (one deny ends the wait)."""
    distinct_from_initiator: bool = True
    """The two-person rule: whoever started the run (`actor`) cannot approve it."""
    timeout_s: Seconds = Field(default=900.0, alias="timeout", gt=0)
    on_timeout: Literal["proceed", "abort"] = "abort"
    summary: str = ""

    @model_validator(mode="after")
    def _reachable(self) -> ApprovalParams:
        names = {a for a in self.approvers if not a.startswith("role:")}
        if self.approvers and len(names) == len(self.approvers) and len(names) < self.min_approvals:
            raise ValueError(
                f"min_approvals {self.min_approvals} can never be met by {len(names)} named approver(s)"
            )
        return self


@register
class Approval(Action):
    """Wait for `approve RUN` / `deny RUN` (DESIGN §14): `min_approvals` distinct approvers, never the
    run's initiator unless `distinct_from_initiator: false`; one deny ends it. Approvals collected so far
    are journalled, so waiting again after a restart keeps them."""

    name = "approval"
    params = ApprovalParams

    def default_timeout_s(self, params: ApprovalParams) -> float:
        return params.timeout_s + 30.0

    async def run(self, ctx: StepContext, params: ApprovalParams) -> dict[str, Any]:
        book = ctx.services.approvals
        if book is None:
            raise PermanentError("approvals are not available in this process")
        deadline = ctx.deadline("until", params.timeout_s)
        initiator = ctx.event.get("actor")
        rule = Rule(
            tuple(params.approvers),
            params.min_approvals,
            initiator if params.distinct_from_initiator and isinstance(initiator, str) else None,
        )
        ctx.journal["waiting_approval"] = True
        await ctx.save()
        before = [
            (str(a["by"]), float(a["at"]))
            for a in ctx.journal.get("approvals") or []
            if isinstance(a, dict) and "by" in a and "at" in a
        ]

        async def progress(approvals: list[dict[str, object]]) -> None:
            ctx.journal["approvals"] = approvals
            await ctx.save()

        # a failure of this cluster does not wait for a human to answer (DESIGN §12)
        decision = await ctx.preemptible(
            book.wait(ctx.run_id, rule, ctx.clock.left(deadline), approved=before, progress=progress)
        )
        ctx.journal.pop("waiting_approval", None)
        if decision is None:
            if params.on_timeout == "proceed":
                return {"approved": None, "timed_out": True, "proceeded": True}
            raise PermanentError(f"no approval within {params.timeout_s:g}s (on_timeout: abort)")
        result = {
            "approved": decision.approved,
            "by": decision.actor,
            "at": decision.at,
            "approvals": list(decision.approvals),
        }
        if not decision.approved:
            raise PermanentError(f"denied by {decision.actor}")
        return result

    async def describe(self, ctx: StepContext, params: ApprovalParams) -> list[str]:
        who = ", ".join(params.approvers) or "any operator"
        count = "approval" if params.min_approvals == 1 else f"{params.min_approvals} distinct approvals"
        initiator = ctx.event.get("actor")
        if params.distinct_from_initiator:
            rule = f"not {initiator}, who asked" if isinstance(initiator, str) else "not the initiator"
        else:
            rule = "the initiator may approve"
        return [
            f"wait for {count} by {who} ({rule}; at most {params.timeout_s:g}s, then {params.on_timeout})"
        ]
