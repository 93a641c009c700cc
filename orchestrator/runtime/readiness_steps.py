"""What each kind of step needs in order to work, checked through the actions' own read paths.

Split from `readiness` (the pass: playbooks, pairs, rendering) so the per-action knowledge reads on its
own: which reads prove a step could run (`lb.*` the balancer's instances and members, `k8s.*` the
workload), which Kubernetes verbs it will use (the same calls `kube.cluster` makes: the scale
subresource read and replaced, HPAs listed and patched, a Deployment read and watched), and what the
capacity rule says (`k8s.scale`'s own target, computed with `max_replicas` lifted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.scale import ScaleActuator
from orchestrator.core.errors import OrchestratorError, PermanentError
from orchestrator.kube.access import Access
from orchestrator.kube.client import KubernetesRefLike
from orchestrator.playbooks.actions import REGISTRY, StepContext
from orchestrator.playbooks.actions.k8s import K8sScale, PatchParams, ScaleParams, WorkloadParams

if TYPE_CHECKING:
    from orchestrator.runtime.readiness import ReadinessChecker, Reads

Status = Literal["ok", "failed", "skipped"]
MESSAGE_MAX = 400
"""A message is cut here: an API server's Status can be long, and the results are kept in KV."""


@dataclass(frozen=True)
class Check:
    kind: str
    """plan, balancer, guard, workload, capacity, permission, notifier."""
    target: str
    status: Status
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "target": self.target, "message": self.message[:MESSAGE_MAX]}


SCALE_ACTIONS = ("k8s.scale", "k8s.restore_scale")
WORKLOAD_ACTIONS = (*SCALE_ACTIONS, "k8s.wait_ready")


async def step_checks(
    checker: ReadinessChecker, ctx: StepContext, action: str, params: Any, reads: Reads
) -> list[Check]:
    """The checks of one step (one item of a `for_each`), its parameters rendered as at step start."""
    if action.startswith("lb."):
        return await _balancer(checker, ctx, action, params, reads)
    if action in WORKLOAD_ACTIONS:
        return await _workload(checker, ctx, action, params, reads)
    if action == "k8s.patch":
        return await _patched_object(checker, ctx, params, reads)
    if action == "notify":
        return [await _notifier(checker, params.notifier, reads)]
    return []  # approval, sleep, wait_for, http, nats.publish: nothing to read beforehand


async def _balancer(
    checker: ReadinessChecker, ctx: StepContext, action: str, params: Any, reads: Reads
) -> list[Check]:
    name = str(params.balancer)
    try:
        actuator: BalancerActuator = ctx.balancer(name)
    except PermanentError as e:
        return [Check("balancer", name, "failed", str(e))]
    clusters = [params.cluster] if hasattr(params, "cluster") else sorted(params.weights)
    out: list[Check] = []
    view = await checker.balancer_view(reads, actuator)
    if isinstance(view, OrchestratorError):
        out.append(Check("balancer", name, "failed", f"balancer {name} cannot be read: {view}"))
    else:
        # the instances that do not answer: a drain only counts once every instance has it
        out += [
            Check("balancer", name, "failed", f"balancer {name}: {e}")
            for _a, e in sorted(view.unreadable.items())
        ]
        missing = [c for c in clusters if c not in view.current]
        out += [Check("balancer", name, "failed", f"balancer {name} has no member for {c}") for c in missing]
        if not view.unreadable and not missing:
            out.append(
                Check(
                    "balancer",
                    name,
                    "ok",
                    f"balancer {name}: {len(view.instances)} instance(s), members present",
                )
            )
        cluster = clusters[0]
        if action == "lb.drain" and view.current.get(cluster, 0) > 0:
            refusal = actuator.refusal(view.current, {cluster: 0}, ctx.min_healthy_clusters)
            if refusal:
                out.append(Check("guard", name, "failed", f"the drain would be refused: {refusal}"))
            else:
                out.append(Check("guard", name, "ok", f"draining {cluster} from {name} is allowed"))
    driver = checker.kube_balancer(name)
    if driver is not None:  # weights in a Kubernetes object: read, then replaced with its resourceVersion
        for verb in ("get", "update"):
            access = Access(verb, driver.group, driver.plural, driver.namespace, name=driver.object_name)
            out.append(await _permission(checker, reads, driver.ref, access, f"balancer {name}"))
    return out


def _ref(checker: ReadinessChecker, cluster: str) -> KubernetesRefLike | str:
    """The cluster's Kubernetes identity, or why there is none."""
    try:
        ref = checker.config.cluster(cluster).kubernetes
    except KeyError:
        return f"unknown cluster {cluster!r}"
    return ref if ref is not None else f"cluster {cluster} has no 'kubernetes:' section"


async def _workload(
    checker: ReadinessChecker, ctx: StepContext, action: str, params: WorkloadParams, reads: Reads
) -> list[Check]:
    w = params.workload()
    scaler: ScaleActuator | None = ctx.services.scale
    ref = _ref(checker, w.cluster)
    if scaler is None or isinstance(ref, str):
        return [
            Check("workload", str(w), "failed", f"{w}: {ref if isinstance(ref, str) else 'no Kubernetes'}")
        ]
    out: list[Check] = []
    current = await checker.workload(reads, scaler, w)
    if isinstance(current, OrchestratorError):
        out.append(Check("workload", str(w), "failed", f"{w}: {current}"))
    else:
        what = f"HPA minReplicas {current.effective}" if current.hpa else f"{current.replicas} replicas"
        out.append(Check("workload", str(w), "ok", f"{w} present ({what})"))
    plural = f"{w.kind}s"
    needed: list[Access] = []
    if action in SCALE_ACTIONS:  # `ScaleActuator.read` and its writes (`kube.cluster` get/set_scale, HPAs)
        needed += [
            Access("get", "apps", plural, w.namespace, "scale", w.name),
            Access("update", "apps", plural, w.namespace, "scale", w.name),
            Access("list", "autoscaling", "horizontalpodautoscalers", w.namespace),
        ]
        if not isinstance(current, OrchestratorError) and current.hpa is not None:
            hpa = str(current.hpa["metadata"]["name"])
            needed.append(Access("patch", "autoscaling", "horizontalpodautoscalers", w.namespace, name=hpa))
    else:  # `wait_deployment_ready`: a read, then a watch of the namespace's deployments by name
        needed += [
            Access("get", "apps", plural, w.namespace, name=w.name),
            Access("watch", "apps", plural, w.namespace),
        ]
    for access in needed:
        out.append(await _permission(checker, reads, ref, access, w.cluster))
    if (
        action == "k8s.scale"
        and isinstance(params, ScaleParams)
        and not isinstance(current, OrchestratorError)
    ):
        out.append(await _capacity(ctx, params, current))
    return out


async def _capacity(ctx: StepContext, params: ScaleParams, current: Any) -> Check:
    """The target `k8s.scale` would set, computed by the action itself with `max_replicas` lifted: when
    the cap is lower, the survivors would be capped below what absorbing this cluster's load needs."""
    w = params.workload()
    action = REGISTRY["k8s.scale"]
    assert isinstance(action, K8sScale)
    try:
        # the action's own decision (the run journals the same numbers), on the pair's fleet
        needed, basis = await action._target(
            ctx, params.model_copy(update={"max_replicas": None}), current, current.effective
        )
    except OrchestratorError as e:
        return Check("capacity", str(w), "failed", f"{w}: {e}")
    how = ""
    if "surviving_weight" in basis:
        how = (
            f" to absorb {', '.join(basis['absorb'])}: ceil({basis['baseline']} x {basis['total_weight']}"
            f" / {basis['surviving_weight']})"
        )
    cap = params.max_replicas
    if cap is not None and needed > cap:
        return Check(
            "capacity",
            str(w),
            "failed",
            f"{w}: max_replicas {cap} is below the {needed} replicas needed{how}",
        )
    limit = f", max_replicas {cap}" if cap is not None else ""
    return Check("capacity", str(w), "ok", f"{w}: {current.effective} -> {needed} replicas{how}{limit}")


async def _patched_object(
    checker: ReadinessChecker, ctx: StepContext, params: PatchParams, reads: Reads
) -> list[Check]:
    target = f"{params.cluster}/{params.namespace}/{params.resource}/{params.name}"
    ref = _ref(checker, params.cluster)
    if isinstance(ref, str):
        return [Check("workload", target, "failed", f"{target}: {ref}")]
    action = REGISTRY["k8s.patch"]
    found = await reads.once(("object", target, params.api_version), lambda: action.before(ctx, params))
    out = [
        Check("workload", target, "failed", f"{target}: {found}")
        if isinstance(found, OrchestratorError)
        else Check("workload", target, "ok", f"{target} present")
    ]
    group = params.api_version.rpartition("/")[0]
    for verb in ("get", "patch"):
        access = Access(verb, group, params.resource, params.namespace, name=params.name)
        out.append(await _permission(checker, reads, ref, access, params.cluster))
    return out


async def _permission(
    checker: ReadinessChecker, reads: Reads, ref: KubernetesRefLike, access: Access, who: str
) -> Check:
    answer = await checker.access(reads, ref, access)
    target = f"{who}: {access}"
    if isinstance(answer, OrchestratorError):
        return Check("permission", target, "failed", f"{who}: cannot ask whether it may {access}: {answer}")
    if not answer.allowed:
        why = f": {answer.reason}" if answer.reason else ""
        return Check("permission", target, "failed", f"{who} may not {access}{why}")
    return Check("permission", target, "ok", f"{who} may {access}")


async def _notifier(checker: ReadinessChecker, name: str, reads: Reads) -> Check:
    if name not in checker.notifiers:
        return Check("notifier", name, "failed", f"notifier {name} is not configured")
    if name in checker.skipped_notifiers:
        return Check("notifier", name, "skipped", f"notifier {name}: {checker.skipped_notifiers[name]}")
    result = await checker.notifier(reads, name)
    if result is None:
        driver = checker.notifiers[name].config.driver
        return Check("notifier", name, "skipped", f"notifier {name}: the {driver} driver has no check")
    if isinstance(result, OrchestratorError):
        return Check("notifier", name, "failed", f"notifier {name} unreachable: {result}")
    return Check("notifier", name, "ok", f"notifier {name}: {result}")
