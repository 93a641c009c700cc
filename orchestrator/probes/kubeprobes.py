"""Probe kinds that ask a cluster's Kubernetes API: `kube_api` and `kube_workload`.

Both default to impact `degrade`: a control-plane upgrade or a slow rollout must not drain a cluster
whose ingress still serves. `kube_workload` measures available replicas against
min(spec.replicas, recorded baseline), so our own scale-out (spec 6 -> 9, pods still starting) never makes
a survivor look unhealthy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from orchestrator.core.config_clusters import ClusterConfig, KubeWorkloadProbe
from orchestrator.core.errors import OrchestratorError
from orchestrator.kube.client import KubeClients
from orchestrator.probes.base import ProbeResult

Baseline = Callable[[str, str, str, str], Awaitable[int | None]]
"""(cluster, namespace, kind, name) -> the replicas recorded before our first scale-out, if any."""


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def check_kube_api(clients: KubeClients, cluster: ClusterConfig, timeout_s: float) -> ProbeResult:
    assert cluster.kubernetes is not None
    start = time.perf_counter()
    try:
        kube = await clients.cluster(cluster.kubernetes, cluster.name)
        ok, detail = await kube.readyz(timeout_s=timeout_s)
    except OrchestratorError as e:
        return ProbeResult(False, _elapsed_ms(start), str(e)[:300])
    return ProbeResult(ok, _elapsed_ms(start), detail[:300] if detail else ("ready" if ok else "not ready"))


async def check_kube_workload(
    clients: KubeClients,
    cluster: ClusterConfig,
    spec: KubeWorkloadProbe,
    timeout_s: float,
    baseline: Baseline | None,
) -> ProbeResult:
    assert cluster.kubernetes is not None
    start = time.perf_counter()
    try:
        kube = await clients.cluster(cluster.kubernetes, cluster.name)
        deployment = await kube.get_deployment(spec.namespace, spec.deployment, timeout_s=timeout_s)
        recorded = (
            await baseline(cluster.name, spec.namespace, "deployment", spec.deployment) if baseline else None
        )
    except OrchestratorError as e:
        return ProbeResult(False, _elapsed_ms(start), str(e)[:300])
    desired = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    available = int((deployment.get("status") or {}).get("availableReplicas") or 0)
    wanted = min(desired, recorded) if recorded is not None else desired
    latency = _elapsed_ms(start)
    if wanted <= 0:
        return ProbeResult(True, latency, f"{available} available; scaled to 0 on purpose")
    ratio = available / wanted
    basis = f"min(spec {desired}, baseline {recorded})" if recorded is not None else f"spec {desired}"
    detail = f"{available}/{wanted} available ({ratio:.0%} of {basis}; need {spec.min_available_ratio:.0%})"
    return ProbeResult(ratio >= spec.min_available_ratio, latency, detail)
