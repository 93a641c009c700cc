"""`notify`: tell humans. Not idempotent: an interrupted notification is reported, never sent twice
blindly.

Every message about a cluster belongs to its incident (DESIGN §13, `playbooks.incidents`): the first
`notify` of a protective run (`cluster.failed`) or a manual drain opens it; later runs about the cluster
(a failback, a flapping page) join the open one. The incident's id is the notification's dedup key, its
state (`state:`; `resolve: true` resolves; an `on_failure` step says `step_failed`; otherwise the state
stays as it is) goes with it, and each notifier's first receipt comes back as `thread` on its later
messages. Noise control: a notifier is told each state of an incident once; a `notify` whose incident is
still in the state that notifier was last told is skipped, and the step result says so.

A storm (the observer guard's `observer.suspect`: many clusters failing at once, automation frozen) is
one grouped message naming the clusters and their open incidents, not one message per cluster.
"""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.notifiers import Notification
from orchestrator.playbooks.actions.base import Action, Params, StepContext, register
from orchestrator.playbooks.incidents import opens_incident


class NotifyParams(Params):
    notifier: str
    summary: str
    severity: Literal["info", "warning", "error", "critical"] = "info"
    details: dict[str, Any] = {}
    resolve: bool = False
    """The incident is over: the failback playbooks say so on their last message."""
    state: Literal["opened", "drained", "scaled", "waiting_approval", "step_failed"] | None = None
    """The incident's new state; omitted, it is kept (`step_failed` in `on_failure` steps)."""


@register
class Notify(Action):
    name = "notify"
    params = NotifyParams
    idempotent = False
    refs = {"notifier": "notifier"}

    async def run(self, ctx: StepContext, params: NotifyParams) -> dict[str, Any]:
        cluster = ctx.event.get("cluster")
        cluster = cluster if isinstance(cluster, str) else None
        result: dict[str, Any] = {"notifier": params.notifier, "severity": params.severity}
        incident = await self._incident(ctx, cluster)
        if incident is None and params.resolve and cluster is not None and ctx.services.incidents is not None:
            # a cluster that was only degraded recovers: nobody was paged, so nobody is told it is over
            result["skipped"] = f"{cluster} has no open incident: nothing to resolve"
            return result
        if incident is None:
            details = {**params.details, **await self._storm(ctx)}
            note = Notification(
                summary=params.summary,
                severity=params.severity,
                details=details,
                run_id=ctx.run_id,
                playbook=ctx.playbook,
                cluster=cluster,
                dedup_key=f"{ctx.run_id}.{ctx.step}",
                links=self._links(ctx, None),
            )
            ctx.fence()
            await ctx.notifier(params.notifier).send(note)
            return result
        book = ctx.services.incidents
        incident_id = str(incident["id"])
        result["incident"] = incident_id
        links = self._links(ctx, incident_id)
        if "incident" in links:  # the run's events link to the incident (the step result is their detail)
            result["incident_url"] = links["incident"]
        state = self._state(ctx, params, incident)
        if (incident.get("notified") or {}).get(params.notifier) == state:
            result["skipped"] = f"{params.notifier} was already told incident {incident_id} is {state}"
            return result
        if incident.get("state") != state or incident.get("summary") != params.summary:
            incident = await book.set_state(incident_id, state, params.summary)
        note = Notification(
            summary=params.summary,
            severity=params.severity,
            details=params.details,
            run_id=ctx.run_id,
            playbook=ctx.playbook,
            cluster=cluster,
            dedup_key=incident_id,
            incident=incident_id,
            incident_state=state,
            resolve=state == "resolved",
            links=links,
            thread=(incident.get("receipts") or {}).get(params.notifier),
        )
        ctx.fence()
        receipt = await ctx.notifier(params.notifier).send(note)
        await book.notified(incident_id, params.notifier, state, receipt)
        result["incident_state"] = state
        return result

    async def _incident(self, ctx: StepContext, cluster: str | None) -> dict[str, Any] | None:
        """The run's incident: the one this step found before (a retry), the cluster's open one, or one
        opened now by a protective or manual-drain run."""
        book = ctx.services.incidents
        if book is None or cluster is None:
            return None
        known = ctx.journal.get("incident")
        if isinstance(known, str):
            found: dict[str, Any] | None = await book.get(known)
            return found
        # An earlier step of this run may have resolved the incident (the failback's first notify, when
        # it tells several notifiers): the run's incident is still that one, for this step too.
        found = await book.of_run(cluster, ctx.run_id)
        if found is None and opens_incident(dict(ctx.event)):
            found, _opened = await book.open(cluster, ctx.run_id)
        elif found is None:
            found = await book.open_for(cluster)
            if found is not None:
                found = await book.join(found["id"], ctx.run_id)
        if found is not None:
            ctx.journal["incident"] = found["id"]  # a retry of this step keeps talking about this one
        return found

    @staticmethod
    def _state(ctx: StepContext, params: NotifyParams, incident: dict[str, Any]) -> str:
        if params.resolve:
            return "resolved"
        if params.state is not None:
            return params.state
        if ctx.step.startswith("on_failure-"):
            return "step_failed"
        return str(incident.get("state") or "opened")

    @staticmethod
    async def _storm(ctx: StepContext) -> dict[str, Any]:
        """For a grouped message (an event naming several clusters): their open incidents."""
        book = ctx.services.incidents
        detail = ctx.event.get("detail")
        clusters = detail.get("clusters") if isinstance(detail, dict) else None
        if book is None or not isinstance(clusters, list) or not clusters:
            return {}
        incidents = []
        for name in clusters:
            if isinstance(name, str):
                found = await book.open_for(name)
                if found is not None:
                    incidents.append(found["id"])
        return {"incidents": incidents} if incidents else {}

    @staticmethod
    def _links(ctx: StepContext, incident_id: str | None) -> dict[str, str]:
        base = ctx.services.config.api.external_url
        if not base:
            return {}
        links = {"run": f"{base}/runs/{ctx.run_id}"}
        if incident_id is not None:
            links["incident"] = f"{base}/incidents/{incident_id}"
        return links

    async def describe(self, ctx: StepContext, params: NotifyParams) -> list[str]:
        ctx.notifier(params.notifier)
        what = " and resolve the incident" if params.resolve else ""
        return [f"notify {params.notifier} ({params.severity}){what}: {params.summary}"]
