"""Gateway API driver: the weights of one HTTPRoute rule's backendRefs (0..1,000,000 each).

The write discipline (read-modify-write with the resourceVersion, bounded conflict retry, read back) is
shared with the other Kubernetes drivers in `kube_lb`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from orchestrator.actuators.base import Term
from orchestrator.actuators.kube_lb import (
    MAX_WEIGHT,
    KubeObjectBalancer,
    check_int,
    find_entries,
    stored_weight,
)
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError


class GatewayApiBalancer(KubeObjectBalancer):
    """`spec.rules[rule].backendRefs[]` of one HTTPRoute, matched by `name` against the members.

    Native weights are the backendRefs' own (0..1,000,000; an omitted weight is the CRD's default, 1).
    The range is the API server's to enforce: an out-of-range weight comes back as its 422, a
    PermanentError naming the field.
    """

    group = "gateway.networking.k8s.io"
    version = "v1"
    plural = "httproutes"
    kind = "HTTPRoute"
    max_weight = MAX_WEIGHT

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        if config.gateway_api is None:
            raise PermanentError(f"balancer {config.name!r} has no 'gateway_api:' section")
        section = config.gateway_api
        ref = KubernetesRef(kubeconfig=section.kubeconfig, context=section.context)
        super().__init__(config, ref, section.namespace, section.route)
        self.rule = section.rule
        self.term = term  # unused: the resourceVersion fences Kubernetes writes

    def check_weight(self, weight: object) -> int:
        # Only the type here: the range is the CRD's, and the API server's refusal names the field.
        return check_int(weight, None, None, "HTTPRoute weight")

    def _refs(self, obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
        rules = (obj.get("spec") or {}).get("rules") or []
        if not isinstance(rules, list) or self.rule >= len(rules) or not isinstance(rules[self.rule], dict):
            raise PermanentError(f"{self.what} has no rule {self.rule} ({len(rules)} rule(s))")
        refs = rules[self.rule].get("backendRefs") or []
        where = f"{self.what} rules[{self.rule}].backendRefs"
        return find_entries(
            refs if isinstance(refs, list) else [], lambda r: r.get("name"), self.members, where
        )

    def weights_in(self, obj: dict[str, Any]) -> dict[str, int]:
        return {
            cluster: stored_weight(ref, 1, f"{self.what} backendRef {ref.get('name')!r}")
            for cluster, ref in self._refs(obj).items()
        }

    def with_weights(self, obj: dict[str, Any], targets: Mapping[str, int]) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        refs = self._refs(new)
        for cluster, weight in targets.items():
            refs[cluster]["weight"] = weight
        return new
