"""Load-balancer actions: `lb.drain`, `lb.restore` (optionally ramped), `lb.set_weights`.

All go through the balancer's actuator, which holds the per-balancer lock and enforces
`min_healthy_clusters` on the resulting weights. Values are absolute; the value a step replaces is read
(`before`) and journalled before the effect. Results keep the short form of a change
(`global/us-east weight 100 -> 0`); `describe` (`failover plan`) names the balancer's own member too
(`global/us-east (web/us1) weight 100 -> 0`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field, model_validator

from orchestrator.actuators.dns_rrset import DnsBalancer
from orchestrator.actuators.lb import BalancerActuator
from orchestrator.core.config_fields import Seconds
from orchestrator.core.errors import PermanentError
from orchestrator.playbooks.actions.base import Action, Params, Preempted, StepContext, register


def dns_timing(actuator: BalancerActuator, clusters: Iterable[str]) -> dict[str, Any]:
    """`ttl_s` for a DNS balancer: resolvers may serve the answer from before the change this long (the
    run's timeline marks `ttl_expires_at` from it); nothing for balancers without caches.

    The TTL is the one the change for these clusters read right before it wrote (a run owns its
    cluster, so no other change replaces it), never what a later read (the read-back, the reconciler,
    readiness) saw: adding our records re-times the RRset, and resolvers cached the old TTL."""
    balancer = actuator.balancer
    if not isinstance(balancer, DnsBalancer):
        return {}
    ttls = [balancer.ttl_before_change_s.get(cluster, balancer.ttl_s) for cluster in clusters]
    return {"ttl_s": max(ttls, default=balancer.ttl_s)}


async def dns_plan(actuator: BalancerActuator) -> list[str]:
    """For `failover plan` on a DNS balancer: the RRset served now, and the two times the run's timeline
    will record (the record changed; the TTL served before it ran out for resolvers)."""
    balancer = actuator.balancer
    if not isinstance(balancer, DnsBalancer):
        return []
    view = await balancer.read_view()
    served, ttl = balancer.describe_view(view), balancer.resolver_ttl_s(view)
    return [
        f"DNS now: {served}",
        f"DNS timing: record changed when this step runs (dns_changed_at); TTL expired {ttl}s later "
        f"(ttl_expires_at), until then resolvers may still answer from the old RRset",
    ]


class DrainParams(Params):
    balancer: str
    cluster: str


@register
class LbDrain(Action):
    """Weight 0 for one cluster in one balancer; the original weight is recorded first."""

    name = "lb.drain"
    params = DrainParams
    refs = {"balancer": "balancer", "cluster": "cluster"}

    async def before(self, ctx: StepContext, params: DrainParams) -> Any:
        return await ctx.balancer(params.balancer).weight_of(params.cluster)

    async def run(self, ctx: StepContext, params: DrainParams) -> dict[str, Any]:
        change = await ctx.balancer(params.balancer).drain(
            params.cluster, ctx.min_healthy_clusters, ctx.force
        )
        before = ctx.before if ctx.before is not None else change.before
        return {
            "balancer": change.balancer,
            "cluster": change.cluster,
            "before": before,
            "after": 0,
            "change": f"{change.balancer}/{change.cluster} weight {before} -> 0",
            **dns_timing(ctx.balancer(params.balancer), [params.cluster]),
        }

    async def verify(self, ctx: StepContext, params: DrainParams, result: dict[str, Any]) -> str | None:
        weight = (await ctx.balancer(params.balancer).get_weights())[params.cluster]
        return None if weight == 0 else f"{params.balancer}/{params.cluster} weight is {weight}, expected 0"

    async def describe(self, ctx: StepContext, params: DrainParams) -> list[str]:
        actuator = ctx.balancer(params.balancer)
        current = await actuator.get_weights()
        line = actuator.describe_change(params.cluster, current[params.cluster], 0)
        refusal = actuator.refusal(current, {params.cluster: 0}, ctx.min_healthy_clusters)
        line = f"{line}  REFUSED: {refusal}" if refusal and current[params.cluster] else line
        return [line, *await dns_plan(actuator)]


class RestoreParams(Params):
    balancer: str
    cluster: str
    ramp: list[int] = Field(default=[100], min_length=1)
    """Percentages of the original weight, applied in order; must end at 100."""
    interval_s: Seconds = Field(default=10.0, alias="interval", ge=0)
    gate: bool = True
    """Each ramp step, the first included, requires the cluster to be healthy at that moment: a failback
    never raises the weight of a cluster that is not healthy."""

    @model_validator(mode="after")
    def _ramp(self) -> RestoreParams:
        if self.ramp[-1] != 100 or any(not 0 < p <= 100 for p in self.ramp) or self.ramp != sorted(self.ramp):
            raise ValueError("ramp must be increasing percentages in (0, 100] ending at 100")
        return self


def ramp_weights(target: int, ramp: list[int]) -> list[int]:
    return [max(1, round(target * percent / 100)) if target else 0 for percent in ramp]


@register
class LbRestore(Action):
    """Put back the recorded weight (optionally ramped), only where the current value is still ours.

    Each ramp step is a journalled point: the weight about to be set is journalled before the set and
    the progress after it, so a crash between the two resumes the ramp where it was; a preemption (the
    cluster failed again) stops the ramp at once so the drain can run.
    """

    name = "lb.restore"
    params = RestoreParams
    refs = {"balancer": "balancer", "cluster": "cluster"}

    def default_timeout_s(self, params: RestoreParams) -> float:
        return 60.0 + params.interval_s * (len(params.ramp) - 1)

    async def before(self, ctx: StepContext, params: RestoreParams) -> Any:
        return await ctx.balancer(params.balancer).weight_of(params.cluster)

    async def run(self, ctx: StepContext, params: RestoreParams) -> dict[str, Any]:
        actuator = ctx.balancer(params.balancer)
        if "target" not in ctx.journal:
            ctx.journal["target"] = await actuator.target_weight(params.cluster)
            await ctx.save()
        target = int(ctx.journal["target"])
        steps = ramp_weights(target, params.ramp)
        done = int(ctx.journal.get("ramp_done", 0))
        expect = int(ctx.journal.get("last_set", ctx.before if ctx.before is not None else 0))
        changes: list[str] = list(ctx.journal.get("changes", []))
        stepped = done > 0
        for i in range(done, len(steps)):
            if steps[i] <= expect and ctx.journal.get("pending") != steps[i]:
                # a ramp never lowers a weight: a cluster that was only degraded (never drained) keeps
                # its full weight through its failback, and a resumed ramp does not repeat a step
                continue
            if stepped:
                # journalled as a wall-clock time (a resumed ramp keeps it), waited on the monotonic clock
                await ctx.sleep_until(ctx.deadline("next_at", params.interval_s))
            stepped = True
            state = ctx.services.cluster_states().get(params.cluster, "unknown")
            if params.gate and state != "healthy" and not ctx.force:  # every step, the first included
                where = f"after the ramp step to {expect}" if i else "before the first ramp step"
                raise PermanentError(f"health gate: {params.cluster} is {state} {where}; the ramp stops here")
            if ctx.journal.get("pending") == steps[i] and i == done:
                # resumed after a crash between the set and its journal entry: the weight we find is
                # ours when it is the value we were setting (the intent is journalled before each set)
                now = (await actuator.get_weights()).get(params.cluster)
                if now == steps[i]:
                    expect = steps[i]
            ctx.journal["pending"] = steps[i]
            await ctx.save()
            if ctx.preempt.is_set():  # the cluster failed during that write: the drain goes first
                raise Preempted(f"preempted before the ramp step to {steps[i]}")
            change = await actuator.set_weight(
                params.cluster, steps[i], expect=expect, min_healthy=ctx.min_healthy_clusters, force=ctx.force
            )
            changes.append(change.describe())
            if change.drift:
                return {
                    "balancer": actuator.name,
                    "cluster": params.cluster,
                    "drift": change.drift,
                    "changes": changes,
                    "restored": False,
                }
            expect = steps[i]
            ctx.journal.pop("pending", None)
            ctx.journal.update(last_set=steps[i], ramp_done=i + 1, changes=changes)
            ctx.forget_deadline("next_at")
            await ctx.save()
        await actuator.finish_restore(params.cluster)
        return {
            "balancer": actuator.name,
            "cluster": params.cluster,
            "after": target,
            "changes": changes,
            "restored": True,
            **dns_timing(actuator, [params.cluster]),
        }

    async def verify(self, ctx: StepContext, params: RestoreParams, result: dict[str, Any]) -> str | None:
        if not result.get("restored"):
            return None  # drift was reported: the human's value stands
        weight = (await ctx.balancer(params.balancer).get_weights())[params.cluster]
        target = int(result["after"])
        return (
            None
            if weight == target
            else f"{params.balancer}/{params.cluster} weight is {weight}, expected {target}"
        )

    async def describe(self, ctx: StepContext, params: RestoreParams) -> list[str]:
        actuator = ctx.balancer(params.balancer)
        current = (await actuator.get_weights())[params.cluster]
        target = await actuator.target_weight(params.cluster)
        lines, previous = [], current
        for weight in ramp_weights(target, params.ramp):
            lines.append(actuator.describe_change(params.cluster, previous, weight))
            previous = weight
        if len(lines) > 1:
            lines.append(f"(ramped, {params.interval_s:g}s between steps)")
        if current != 0:
            lines.append(
                f"note: current weight is {current}, not the 0 we set: the restore would report drift"
            )
        return [*lines, *await dns_plan(actuator)]


class SetWeightsParams(Params):
    balancer: str
    weights: dict[str, int] = Field(min_length=1)
    """cluster -> absolute native weight."""


@register
class LbSetWeights(Action):
    """Absolute weights for several clusters at once; the guard sees the whole resulting vector."""

    name = "lb.set_weights"
    params = SetWeightsParams
    refs = {"balancer": "balancer"}

    async def before(self, ctx: StepContext, params: SetWeightsParams) -> Any:
        current = await ctx.balancer(params.balancer).get_weights()
        missing = sorted(set(params.weights) - set(current))
        if missing:
            raise PermanentError(f"balancer {params.balancer} has no member for {', '.join(missing)}")
        return {c: current[c] for c in params.weights}

    async def run(self, ctx: StepContext, params: SetWeightsParams) -> dict[str, Any]:
        changes = await ctx.balancer(params.balancer).set_weights(
            params.weights, min_healthy=ctx.min_healthy_clusters, force=ctx.force
        )
        return {
            "balancer": params.balancer,
            "before": ctx.before,
            "after": dict(params.weights),
            "changes": [c.describe() for c in changes],
            **dns_timing(ctx.balancer(params.balancer), params.weights),
        }

    async def verify(self, ctx: StepContext, params: SetWeightsParams, result: dict[str, Any]) -> str | None:
        current = await ctx.balancer(params.balancer).get_weights()
        wrong = {c: current[c] for c, w in params.weights.items() if current[c] != w}
        return None if not wrong else f"{params.balancer}: weights {wrong} differ from {params.weights}"

    async def describe(self, ctx: StepContext, params: SetWeightsParams) -> list[str]:
        actuator = ctx.balancer(params.balancer)
        current = await actuator.get_weights()
        lines = [actuator.describe_change(c, current.get(c), w) for c, w in params.weights.items()]
        refusal = actuator.refusal(current, params.weights, ctx.min_healthy_clusters)
        lines = [*lines, f"REFUSED: {refusal}"] if refusal else lines
        return [*lines, *await dns_plan(actuator)]
