"""SMI driver: the weights of one TrafficSplit's backends (split.smi-spec.io/v1alpha2, as Linkerd uses it).

`spec.backends[]` entries are matched by `service` against the members; weights are integers, relative
to each other, that we keep in 0..1,000,000 (the CRD itself only says non-negative). The write
discipline (read-modify-write fenced by resourceVersion, conflicts retried, read back) is the one of
`gateway_api.KubeObjectBalancer`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from orchestrator.actuators.base import Term
from orchestrator.actuators.kube_lb import KubeObjectBalancer, find_entries, stored_weight
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError

MAX_WEIGHT = 1_000_000


class SmiBalancer(KubeObjectBalancer):
    """`spec.backends[]` of one TrafficSplit, matched by `service`; an omitted weight counts as 0."""

    group = "split.smi-spec.io"
    version = "v1alpha2"
    plural = "trafficsplits"
    kind = "TrafficSplit"
    max_weight = MAX_WEIGHT

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        if config.smi is None:
            raise PermanentError(f"balancer {config.name!r} has no 'smi:' section")
        section = config.smi
        ref = KubernetesRef(kubeconfig=section.kubeconfig, context=section.context)
        super().__init__(config, ref, section.namespace, section.traffic_split)
        self.term = term  # unused: the resourceVersion fences Kubernetes writes

    def _backends(self, obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
        backends = (obj.get("spec") or {}).get("backends") or []
        where = f"{self.what} spec.backends"
        return find_entries(
            backends if isinstance(backends, list) else [], lambda b: b.get("service"), self.members, where
        )

    def weights_in(self, obj: dict[str, Any]) -> dict[str, int]:
        return {
            cluster: stored_weight(backend, 0, f"{self.what} backend {backend.get('service')!r}")
            for cluster, backend in self._backends(obj).items()
        }

    def with_weights(self, obj: dict[str, Any], targets: Mapping[str, int]) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        backends = self._backends(new)
        for cluster, weight in targets.items():
            backends[cluster]["weight"] = weight
        return new
