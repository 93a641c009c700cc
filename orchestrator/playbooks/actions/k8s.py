"""Kubernetes actions: `k8s.scale`, `k8s.restore_scale`, `k8s.wait_ready`, `k8s.patch`.

Capacity math lives in the ScaleActuator (actuators/scale.py); these actions journal what they decided
(target, baseline, weights) the first time, so a resumed step applies exactly the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.actuators.scale import Current, ScaleActuator, Workload, recorded_baseline
from orchestrator.core.config_fields import Seconds
from orchestrator.core.errors import PermanentError
from orchestrator.playbooks.actions.base import Action, Params, StepContext, register


class WorkloadParams(Params):
    cluster: str
    namespace: str
    deployment: str | None = None
    statefulset: str | None = None

    @model_validator(mode="after")
    def _one_workload(self) -> WorkloadParams:
        if (self.deployment is None) == (self.statefulset is None):
            raise ValueError("give exactly one of deployment, statefulset")
        return self

    def workload(self) -> Workload:
        kind = "deployment" if self.deployment else "statefulset"
        return Workload(self.cluster, self.namespace, kind, str(self.deployment or self.statefulset))


def _scaler(ctx: StepContext) -> ScaleActuator:
    if ctx.services.scale is None:
        raise PermanentError("no Kubernetes clients in this process")
    scaler: ScaleActuator = ctx.services.scale
    return scaler


class ScaleParams(WorkloadParams):
    replicas: int | None = Field(default=None, ge=0)
    factor: float | None = Field(default=None, gt=0)
    absorb: str | list[str] | None = None
    """The failed cluster(s) whose share of traffic this workload must absorb."""
    max_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> ScaleParams:
        given = [k for k in ("replicas", "factor", "absorb") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of replicas, factor, absorb (got {', '.join(given) or 'none'})"
            )
        return self


@register
class K8sScale(Action):
    """Absolute replicas, a factor of the baseline, or enough to absorb failed clusters' load."""

    name = "k8s.scale"
    params = ScaleParams
    refs = {"cluster": "cluster"}

    async def before(self, ctx: StepContext, params: ScaleParams) -> Any:
        return (await _scaler(ctx).read(params.workload())).effective

    async def _target(
        self, ctx: StepContext, params: ScaleParams, now: Current, current: int
    ) -> tuple[int, dict[str, Any]]:
        """`current` is the value we change (the HPA's floor under an HPA, as `before` journals it), and
        the baseline is taken in that same unit from the record."""
        scaler = _scaler(ctx)
        w = params.workload()
        record = await scaler.record(w)
        baseline = recorded_baseline(record, now) if record else current
        basis: dict[str, Any]
        if params.replicas is not None:
            target, basis = params.replicas, {"replicas": params.replicas}
        elif params.factor is not None:
            target, basis = (
                math.ceil(baseline * params.factor),
                {"baseline": baseline, "factor": params.factor},
            )
        else:
            absent = [params.absorb] if isinstance(params.absorb, str) else list(params.absorb or [])
            total, surviving = scaler.weights(await scaler.not_serving(absent, sizing=w.cluster))
            target = scaler.absorb_target(baseline, current, total, surviving, None)
            basis = {
                "baseline": baseline,
                "total_weight": total,
                "surviving_weight": surviving,
                "absorb": absent,
            }
        if params.max_replicas is not None and target > params.max_replicas:
            basis["capped_by"] = params.max_replicas
            target = params.max_replicas
        return target, basis

    async def run(self, ctx: StepContext, params: ScaleParams) -> dict[str, Any]:
        scaler = _scaler(ctx)
        w = params.workload()
        current = await scaler.read(w)
        if "target" not in ctx.journal:  # decided once, journalled before the effect
            before = int(ctx.before) if ctx.before is not None else current.effective
            ctx.journal["target"], ctx.journal["basis"] = await self._target(ctx, params, current, before)
            await ctx.save()
        target = int(ctx.journal["target"])
        change = await scaler.scale_to(w, target, current)
        return {
            "workload": str(w),
            "before": ctx.before,
            "after": target,
            "via": change.via,
            "basis": ctx.journal["basis"],
            "change": change.describe(),
        }

    async def verify(self, ctx: StepContext, params: ScaleParams, result: dict[str, Any]) -> str | None:
        now = (await _scaler(ctx).read(params.workload())).effective
        return (
            None
            if now == result["after"]
            else f"{result['workload']} is at {now}, expected {result['after']}"
        )

    async def describe(self, ctx: StepContext, params: ScaleParams) -> list[str]:
        current = await _scaler(ctx).read(params.workload())
        target, basis = await self._target(ctx, params, current, current.effective)
        what = "HPA minReplicas" if current.hpa else "replicas"
        how = ""
        if "surviving_weight" in basis:
            how = (
                f"  (absorb {', '.join(basis['absorb'])}: ceil({basis['baseline']} x {basis['total_weight']}"
                f" / {basis['surviving_weight']}))"
            )
        return [f"{params.workload()} {what} {current.effective} -> {target}{how}"]


class RestoreScaleParams(WorkloadParams):
    max_replicas: int | None = Field(default=None, ge=1)


@register
class K8sRestoreScale(Action):
    """Back to what the clusters serving now need: the recorded baseline once every cluster serves."""

    name = "k8s.restore_scale"
    params = RestoreScaleParams
    refs = {"cluster": "cluster"}

    async def before(self, ctx: StepContext, params: RestoreScaleParams) -> Any:
        return (await _scaler(ctx).read(params.workload())).effective

    async def run(self, ctx: StepContext, params: RestoreScaleParams) -> dict[str, Any]:
        change, reason = await _scaler(ctx).restore(params.workload(), params.max_replicas)
        result: dict[str, Any] = {"workload": str(params.workload()), "reason": reason, "before": ctx.before}
        if change is not None:
            result.update(after=change.after, change=change.describe(), drift=change.drift)
        return result

    async def verify(
        self, ctx: StepContext, params: RestoreScaleParams, result: dict[str, Any]
    ) -> str | None:
        if result.get("after") is None or result.get("drift"):
            return None
        now = (await _scaler(ctx).read(params.workload())).effective
        return (
            None
            if now == result["after"]
            else f"{result['workload']} is at {now}, expected {result['after']}"
        )

    async def describe(self, ctx: StepContext, params: RestoreScaleParams) -> list[str]:
        plan = await _scaler(ctx).plan_restore(params.workload(), params.max_replicas)
        now: Current = plan["current"]
        what = "HPA minReplicas" if now.hpa else "replicas"
        if plan["target"] is None:
            return [f"{params.workload()} {what} stay at {now.effective}: {plan['reason']}"]
        return [f"{params.workload()} {what} {now.effective} -> {plan['target']}  ({plan['reason']})"]


class WaitReadyParams(WorkloadParams):
    timeout_s: Seconds = Field(default=300.0, alias="timeout", gt=0)


@register
class K8sWaitReady(Action):
    """Until available == desired (the rules of `kubectl rollout status`), or time out (the step fails,
    and `on_failure` pages: a survivor that cannot become ready is a human's problem now)."""

    name = "k8s.wait_ready"
    params = WaitReadyParams
    refs = {"cluster": "cluster"}

    def default_timeout_s(self, params: WaitReadyParams) -> float:
        return params.timeout_s + 30.0

    async def run(self, ctx: StepContext, params: WaitReadyParams) -> dict[str, Any]:
        if params.statefulset:
            raise PermanentError("k8s.wait_ready supports deployments")
        kube = await _scaler(ctx).cluster(params.cluster)
        deployment = await ctx.preemptible(  # a failure of this cluster does not wait for readiness
            kube.wait_deployment_ready(params.namespace, str(params.deployment), params.timeout_s)
        )
        status = deployment.get("status") or {}
        return {
            "workload": str(params.workload()),
            "available": status.get("availableReplicas"),
            "desired": (deployment.get("spec") or {}).get("replicas"),
        }

    async def describe(self, ctx: StepContext, params: WaitReadyParams) -> list[str]:
        return [f"wait until {params.workload()} is ready (at most {params.timeout_s:g}s)"]


class PatchParams(Params):
    cluster: str
    api_version: str
    """`apps/v1` for deployments, or `group/version` of a custom resource."""
    resource: str
    """Plural resource name: `deployments`, `httproutes`, ..."""
    namespace: str
    name: str
    patch: dict[str, Any] | list[dict[str, Any]]
    patch_type: Literal["merge", "json", "strategic"] = "merge"


def _pick(obj: Any, patch: Any) -> Any:
    """The current values of exactly the fields a merge patch touches (journalled as `before`)."""
    if isinstance(patch, dict) and isinstance(obj, dict):
        return {k: _pick(obj.get(k), v) for k, v in patch.items()}
    return obj


@register
class K8sPatch(Action):
    name = "k8s.patch"
    params = PatchParams
    refs = {"cluster": "cluster"}

    async def _get(self, ctx: StepContext, p: PatchParams) -> dict[str, Any]:
        kube = await _scaler(ctx).cluster(p.cluster)
        if p.api_version == "apps/v1" and p.resource == "deployments":
            return await kube.get_deployment(p.namespace, p.name)
        group, _, version = p.api_version.rpartition("/")
        return await kube.get_custom(group, version, p.namespace, p.resource, p.name)

    async def before(self, ctx: StepContext, params: PatchParams) -> Any:
        obj = await self._get(ctx, params)
        return _pick(obj, params.patch) if isinstance(params.patch, dict) else obj

    async def run(self, ctx: StepContext, params: PatchParams) -> dict[str, Any]:
        kube = await _scaler(ctx).cluster(params.cluster)
        if params.api_version == "apps/v1" and params.resource == "deployments":
            ctx.fence()  # after the journal save of `before`, right before the write
            obj = await kube.patch_deployment(params.namespace, params.name, params.patch, params.patch_type)
        else:
            if params.patch_type == "strategic":
                raise PermanentError(
                    "strategic merge patch only applies to built-in kinds; use merge or json"
                )
            group, _, version = params.api_version.rpartition("/")
            ctx.fence()
            obj = await kube.patch_custom(
                group,
                version,
                params.namespace,
                params.resource,
                params.name,
                params.patch,
                patch_type=params.patch_type,
            )
        return {
            "object": f"{params.cluster}/{params.namespace}/{params.resource}/{params.name}",
            "resourceVersion": (obj.get("metadata") or {}).get("resourceVersion"),
        }

    async def verify(self, ctx: StepContext, params: PatchParams, result: dict[str, Any]) -> str | None:
        if not isinstance(params.patch, dict):
            return None
        now = _pick(await self._get(ctx, params), params.patch)
        wanted = _strip_nulls(params.patch)
        return None if _contains(now, wanted) else f"{result['object']} does not show the patch"

    async def describe(self, ctx: StepContext, params: PatchParams) -> list[str]:
        before = await self.before(ctx, params)
        target = f"{params.cluster}/{params.namespace}/{params.resource}/{params.name}"
        return [f"patch {target} ({params.patch_type}): {before} -> {params.patch}"]


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def _contains(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_contains(have.get(k), v) for k, v in want.items())
    return bool(have == want)
