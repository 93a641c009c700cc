"""Istio driver: the weights of one VirtualService http route's destinations, written summing to 100.

Istio wants the integer weights of a route's destinations to sum to 100 (older istiod refuse anything
else through their validating webhook), while our contract is absolute per-cluster targets that
a restore puts back exactly. So this driver's native weights are *relative* weights, 0..100 per cluster:

- a write turns the members' relative weights into percentages by largest-remainder rounding (ties go
  to the destination listed first), so 100/100/100 is written 34/33/33 and draining one of three leaves
  the other two sharing 100; destinations that are not members keep their percentage and the members
  share the rest;
- the same write stores the relative weights it meant in the annotation `failover.io/weights`
  (`{"http[<route>]": {"<host>": <relative>, ...}}`, other routes' entries kept), so reading gives back
  exactly what was set (34/33/33 -> drain -> restore 33 reads 34/33/33 again, not 50/50 rounded);
- a read returns the annotation's relative weights only while the route's actual weights are still
  their normalization; without an annotation, or after someone edited the route, it returns the actual
  percentages. That is how a hand edit shows up as drift.

All members at 0 is refused (PermanentError) instead of writing a route with no traffic anywhere.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.actuators.base import Term
from orchestrator.actuators.kube_lb import KubeObjectBalancer, check_int, find_entries
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError

ANNOTATION = "failover.io/weights"
TOTAL = 100
"""What the weights of a route's destinations sum to."""


def split_percent(relative: Sequence[int], total: int = TOTAL) -> list[int]:
    """Integers summing to `total`, proportional to `relative` (largest remainder, earlier wins ties).

    A zero relative weight always gets 0: the leftover units are fewer than the non-zero remainders.
    """
    whole = sum(relative)
    if whole <= 0:
        raise ValueError("relative weights must not all be 0")
    quotas = [divmod(weight * total, whole) for weight in relative]
    shares = [quotient for quotient, _ in quotas]
    order = sorted(range(len(relative)), key=lambda i: (-quotas[i][1], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def lay_out_members(
    weights: Sequence[int],
    positions: Mapping[str, int],
    relative: Mapping[str, int],
    total: int,
    over: str,
    all_zero: Callable[[int], str],
) -> list[int]:
    """`weights` with the members' entries replaced by their share of what the others leave of `total`.

    Shared by the drivers whose native weights are relative (Istio, Consul): `positions` maps each
    member cluster to its entry's index, `relative` gives its relative weight. The entries that are not
    members keep their weight; taking more than `total` between them is a PermanentError(`over`), and
    so is every member at 0 while some traffic remains (`all_zero(remaining)`): that would leave the
    remaining traffic nowhere to go.
    """
    laid = list(weights)
    members = sorted(positions.values())
    remaining = total - sum(w for i, w in enumerate(laid) if i not in members)
    if remaining < 0:
        raise PermanentError(over)
    by_position = {position: cluster for cluster, position in positions.items()}
    wanted = [relative[by_position[i]] for i in members]
    if sum(wanted) == 0:
        if remaining:
            raise PermanentError(all_zero(remaining))
        shares = [0] * len(members)
    else:
        shares = split_percent(wanted, remaining)
    for i, share in zip(members, shares, strict=True):
        laid[i] = share
    return laid


def _host(destination: dict[str, Any]) -> object:
    return (destination.get("destination") or {}).get("host")


class IstioBalancer(KubeObjectBalancer):
    """`spec.http[route].route[]` of one VirtualService, matched by `destination.host`; relative weights."""

    group = "networking.istio.io"
    version = "v1"
    plural = "virtualservices"
    kind = "VirtualService"
    max_weight = TOTAL

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        if config.istio is None:
            raise PermanentError(f"balancer {config.name!r} has no 'istio:' section")
        section = config.istio
        ref = KubernetesRef(kubeconfig=section.kubeconfig, context=section.context)
        super().__init__(config, ref, section.namespace, section.virtual_service)
        self.route = section.route
        self.key = f"http[{section.route}]"
        """This route's entry in the annotation."""
        self.term = term  # unused: the resourceVersion fences Kubernetes writes

    def _destinations(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        http = (obj.get("spec") or {}).get("http") or []
        if not isinstance(http, list) or self.route >= len(http) or not isinstance(http[self.route], dict):
            raise PermanentError(f"{self.what} has no http route {self.route} ({len(http)} route(s))")
        destinations = http[self.route].get("route") or []
        if not isinstance(destinations, list) or not all(isinstance(d, dict) for d in destinations):
            raise PermanentError(f"{self.what} http[{self.route}].route is not a list of destinations")
        return destinations

    def _positions(self, destinations: list[dict[str, Any]]) -> dict[str, int]:
        """cluster -> index of its destination in the route."""
        found = find_entries(destinations, _host, self.members, f"{self.what} {self.key}.route")
        index = {id(d): i for i, d in enumerate(destinations)}
        return {cluster: index[id(destination)] for cluster, destination in found.items()}

    @staticmethod
    def _actual(destinations: list[dict[str, Any]]) -> list[int]:
        """What Istio applies: an omitted weight is 100 for a lone destination, else 0."""
        default = TOTAL if len(destinations) == 1 else 0
        weights = []
        for destination in destinations:
            weight = destination.get("weight")
            weights.append(weight if isinstance(weight, int) and not isinstance(weight, bool) else default)
        return weights

    def _layout(self, destinations: list[dict[str, Any]], relative: Mapping[str, int]) -> list[int]:
        """The route's weights, in destination order, that carry these relative member weights."""
        positions = self._positions(destinations)
        return lay_out_members(
            self._actual(destinations),
            positions,
            relative,
            TOTAL,
            f"{self.what}: destinations that are not members already take over {TOTAL}",
            lambda remaining: (
                f"{self.what}: refusing to set every member of {self.key} to 0 "
                f"({remaining}% of the traffic would have no destination)"
            ),
        )

    def _annotation(self, obj: dict[str, Any]) -> dict[str, Any]:
        raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
        try:
            data = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _intended(self, obj: dict[str, Any]) -> dict[str, int] | None:
        """The relative weights our last write stored for this route, if complete and well-formed."""
        entry = self._annotation(obj).get(self.key)
        if not isinstance(entry, dict):
            return None
        intended: dict[str, int] = {}
        for cluster, host in self.members.items():
            weight = entry.get(host)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= TOTAL:
                return None
            intended[cluster] = weight
        return intended

    def weights_in(self, obj: dict[str, Any]) -> dict[str, int]:
        destinations = self._destinations(obj)
        positions = self._positions(destinations)
        actual = self._actual(destinations)
        intended = self._intended(obj)
        if intended is not None:
            try:
                if self._layout(destinations, intended) == actual:
                    return intended
            except PermanentError:
                pass  # the annotation cannot describe this route any more: the route is the truth
        return {cluster: actual[position] for cluster, position in positions.items()}

    def with_weights(self, obj: dict[str, Any], targets: Mapping[str, int]) -> dict[str, Any]:
        relative = {**self.weights_in(obj), **targets}
        new = copy.deepcopy(obj)
        destinations = self._destinations(new)
        layout = self._layout(destinations, relative)
        for position in self._positions(destinations).values():
            destinations[position]["weight"] = layout[position]
        annotation = self._annotation(new)
        annotation[self.key] = {self.members[cluster]: weight for cluster, weight in relative.items()}
        metadata = new.setdefault("metadata", {})
        annotations = metadata.get("annotations") or {}
        annotations[ANNOTATION] = json.dumps(annotation, sort_keys=True, separators=(",", ":"))
        metadata["annotations"] = annotations
        return new

    def check_weight(self, weight: object) -> int:
        return check_int(weight, 0, TOTAL, "Istio relative weight")
