"""Emissary-ingress / Edge Stack driver: the `weight` of one `Mapping` per cluster (getambassador.io).

Emissary splits a prefix's traffic between the Mappings that share it by their `weight`s, as
cumulative percentages (`irhttpmappinggroup.normalize_weights_in_mappings`): a group whose weights
exceed 100 is refused whole (the prefix stops routing), and one whose weights all set sum to less
than 100 leaves the rest of the requests to no Mapping at all. So the members' weights are always
written summing to 100, and this driver's native weights are *relative*, 0..100 per cluster, as in
the Istio driver: a write turns them into percentages by largest remainder (`istio.split_percent`),
stores the relative weight it meant on each Mapping (annotation `failover.io/weight`), and a read
returns the stored relative weights only while the Mappings' weights are still their normalization
(a hand edit shows up as drift, not as what we meant).

The Mappings are separate objects, so one change is several writes. Each is a read-modify-write with
the resourceVersion just read (a concurrent change is a 409, and the whole change starts again from a
fresh read of every Mapping); the lowered weights go first, so the group never goes over 100 while
a change is half done (going under 100 for the moment between two writes loses a few requests to
the prefix's fallback, which is what a half-applied change of any kind would cost; going over would
make Emissary drop the group).

All members at 0 is refused (PermanentError): the prefix would route nowhere.

Only the members' Mappings are read: every Mapping of the prefix should be a member (a weighted one
that is not would push the group over 100 once ours sum to it; a weightless one would get nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import structlog

from orchestrator.actuators.base import Balancer, Fence, Term, no_fence
from orchestrator.actuators.istio import split_percent
from orchestrator.actuators.kube_lb import check_int, retry_temporary
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.kube.client import KubeClients
from orchestrator.kube.cluster import KubeCluster

log = structlog.get_logger(__name__)

GROUP = "getambassador.io"
VERSION = "v3alpha1"
"""The version Emissary 3.x and Edge Stack document; the CRD serves v1, v2 and v3alpha1."""
PLURAL = "mappings"
ANNOTATION = "failover.io/weight"
TOTAL = 100
"""What the weights of one prefix's Mappings sum to (Emissary refuses more)."""
GROUP_KEYS = ("prefix", "prefix_regex", "hostname", "host", "method")
"""The fields that put Mappings into one group in Emissary: ours must agree on them."""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class EmissaryBalancer(Balancer):
    """One Mapping per member cluster (`members: {eu-west: web-eu}`), all in `emissary.namespace`."""

    max_weight = TOTAL

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        super().__init__(config, term=term)  # the term is unused: resourceVersions fence the writes
        if config.emissary is None:
            raise PermanentError(f"balancer {config.name!r} has no 'emissary:' section")
        section = config.emissary
        self.ref = KubernetesRef(kubeconfig=section.kubeconfig, context=section.context)
        self.namespace = section.namespace
        self._clients: KubeClients | None = None
        self._cluster: KubeCluster | None = None

    def __repr__(self) -> str:
        return f"EmissaryBalancer({self.name!r}, {self.namespace})"

    def member_label(self, cluster: str) -> str:
        return f"{self.namespace}/{self.members[cluster]}"

    def _what(self, cluster: str | None = None) -> str:
        where = f"Mapping {self.member_label(cluster)}" if cluster else f"Mappings in {self.namespace}"
        return f"balancer {self.name}: {where}"

    async def api(self) -> KubeCluster:
        """The cluster's facade; the client is built on first use and released by `close()`."""
        if self._cluster is None:
            if self._clients is None:
                self._clients = KubeClients()
            self._cluster = await self._clients.cluster(self.ref, self.ref.context)
        return self._cluster

    async def read(self) -> dict[str, dict[str, Any]]:
        """cluster -> its Mapping as stored now (one try each)."""
        api = await self.api()
        return {
            cluster: await api.get_custom(GROUP, VERSION, self.namespace, PLURAL, mapping)
            for cluster, mapping in self.members.items()
        }

    def _check_group(self, objs: Mapping[str, dict[str, Any]]) -> None:
        """The members' Mappings must be one Emissary group, or their weights mean nothing together."""
        for key in GROUP_KEYS:
            values = {cluster: (obj.get("spec") or {}).get(key) for cluster, obj in objs.items()}
            if len({repr(v) for v in values.values()}) > 1:
                listed = ", ".join(f"{self.members[c]}={v!r}" for c, v in values.items())
                raise PermanentError(
                    f"{self._what()}: the members' Mappings differ in {key} ({listed}), so Emissary does "
                    "not split one prefix between them"
                )

    def _actual(self, objs: Mapping[str, dict[str, Any]]) -> dict[str, int]:
        """The share Emissary gives each Mapping: its weight, or for weightless ones an equal part of
        what the weighted ones leave (the last takes the rounding)."""
        weights = {c: _int((obj.get("spec") or {}).get("weight")) for c, obj in objs.items()}
        for cluster, obj in objs.items():
            raw = (obj.get("spec") or {}).get("weight")
            if raw is not None and weights[cluster] is None:
                raise PermanentError(f"{self._what(cluster)}: weight {raw!r} is not an integer")
        if len(objs) == 1:
            return dict.fromkeys(objs, TOTAL)
        weightless = [c for c, w in weights.items() if w is None]
        given = sum(w for w in weights.values() if w is not None)
        actual = {c: w for c, w in weights.items() if w is not None}
        if weightless:
            remaining = max(0, TOTAL - given)
            share = round(remaining / len(weightless))
            for i, cluster in enumerate(weightless):
                last = i == len(weightless) - 1
                actual[cluster] = remaining - share * (len(weightless) - 1) if last else share
        return {c: actual[c] for c in objs}

    @staticmethod
    def _intended(objs: Mapping[str, dict[str, Any]]) -> dict[str, int] | None:
        """The relative weights our last write stored, if every member has a well-formed one."""
        intended: dict[str, int] = {}
        for cluster, obj in objs.items():
            raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
            weight = int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else None
            if weight is None or weight > TOTAL:
                return None
            intended[cluster] = weight
        return intended

    def _layout(self, relative: Mapping[str, int]) -> dict[str, int]:
        """The Mappings' weights (summing to 100) that carry these relative weights, in member order."""
        order = list(self.members)
        wanted = [relative[c] for c in order]
        if sum(wanted) == 0:
            raise PermanentError(
                f"{self._what()}: refusing to set every member to 0 (the prefix would route nowhere)"
            )
        return dict(zip(order, split_percent(wanted, TOTAL), strict=True))

    def weights_in(self, objs: Mapping[str, dict[str, Any]]) -> dict[str, int]:
        self._check_group(objs)
        actual = self._actual(objs)
        intended = self._intended(objs)
        if intended is not None and any(intended.values()) and self._layout(intended) == actual:
            return intended
        return actual

    async def get_weights(self) -> dict[str, int]:
        return self.weights_in(await retry_temporary(f"{self._what()}: read", self.read))

    def _with_weight(self, obj: dict[str, Any], weight: int, relative: int) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        new.setdefault("spec", {})["weight"] = weight
        metadata = new.setdefault("metadata", {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), ANNOTATION: str(relative)}
        return new

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no member for cluster(s) {', '.join(unknown)}")
        targets = {c: check_int(w, 0, TOTAL, "Emissary relative weight") for c, w in weights.items()}
        if not targets:
            return

        async def read_modify_write() -> None:
            objs = await self.read()
            relative = {**self.weights_in(objs), **targets}
            layout = self._layout(relative)
            actual = self._actual(objs)
            writes: list[tuple[int, str, dict[str, Any], str]] = []
            for cluster, obj in objs.items():
                new = self._with_weight(obj, layout[cluster], relative[cluster])
                if new == obj:
                    continue
                resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if not resource_version:
                    raise PermanentError(f"{self._what(cluster)}: the API server sent no resourceVersion")
                writes.append((layout[cluster] - actual[cluster], cluster, new, resource_version))
            api = await self.api()
            for _, cluster, new, resource_version in sorted(writes, key=lambda w: w[0]):
                fence()  # each write, after the reads: no write from a replica that stopped leading
                await api.replace_custom(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.members[cluster],
                    new,
                    resource_version=resource_version,
                )

        await retry_temporary(f"{self._what()}: write", read_modify_write)
        current = self.weights_in(await retry_temporary(f"{self._what()}: read back", self.read))
        wrong = [f"{c}={current[c]} (wanted {w})" for c, w in targets.items() if current[c] != w]
        if wrong:
            raise TemporaryError(f"{self._what()}: weights did not stick: " + ", ".join(wrong))
        log.info("lb.weights_written", balancer=self.name, namespace=self.namespace, weights=targets)

    async def close(self) -> None:
        clients, self._clients, self._cluster = self._clients, None, None
        if clients is not None:
            await clients.close()
