"""`notify`: tell humans (webhook, Slack). Not idempotent: an interrupted notification is reported,
never sent twice blindly."""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.notifiers import Notification
from orchestrator.playbooks.actions.base import Action, Params, StepContext, register


class NotifyParams(Params):
    notifier: str
    summary: str
    severity: Literal["info", "warning", "error", "critical"] = "info"
    details: dict[str, Any] = {}


@register
class Notify(Action):
    name = "notify"
    params = NotifyParams
    idempotent = False
    refs = {"notifier": "notifier"}

    async def run(self, ctx: StepContext, params: NotifyParams) -> dict[str, Any]:
        cluster = ctx.event.get("cluster")
        note = Notification(
            summary=params.summary,
            severity=params.severity,
            details=params.details,
            run_id=ctx.run_id,
            playbook=ctx.playbook,
            cluster=cluster if isinstance(cluster, str) else None,
            dedup_key=f"{ctx.run_id}.{ctx.step}",
        )
        ctx.fence()
        await ctx.notifier(params.notifier).send(note)
        return {"notifier": params.notifier, "severity": params.severity}

    async def describe(self, ctx: StepContext, params: NotifyParams) -> list[str]:
        ctx.notifier(params.notifier)
        return [f"notify {params.notifier} ({params.severity}): {params.summary}"]
