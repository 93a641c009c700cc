"""external-dns driver: the members' addresses in the targets of one `DNSEndpoint` (externaldns.k8s.io).

For teams whose external-dns already owns DNS: we change the DNSEndpoint object, external-dns
publishes it to whatever provider it drives (Route 53, Cloudflare, RFC 2136...). DNS has no weights
(DESIGN §16): weight 0 removes a cluster's addresses from the targets, any other weight puts them
back, exactly the configured ones; ramps are refused at validation. Native weights are 0 and 1.

Which endpoints: `spec.endpoints[]` whose `dnsName` is the configured name (case and a trailing dot
aside), and whose `setIdentifier` is the configured one when set. A member's IPv4 addresses go to the
`A` endpoint, IPv6 to the `AAAA` one, host names to the `CNAME` one; an address whose endpoint does not
exist is a configuration error (we do not invent records and TTLs). No endpoint that holds a member's
target is left without one, even by `--force` (GuardRefused, `min_healthy_clusters`, as the DNS drivers
do): an empty A endpoint makes external-dns drop the A record, which is NODATA, a full outage, for every
IPv4-only client, never better than sending them to a failed cluster. Targets that are no member's (a
maintenance address left there) serve no one and do not count as left.

A cluster reads as 1 while any of its addresses is in the targets (still serving, even if someone
removed one by hand), so a drain always removes what is left; a restore writes every one back.

One object, so the write discipline is `kube_lb.KubeObjectBalancer`'s: read-modify-write with the
resourceVersion, a concurrent change is a 409 and a fresh read, then a read back.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

from orchestrator.actuators.base import Term
from orchestrator.actuators.kube_lb import KubeObjectBalancer
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError

RECORD_TYPES = ("A", "AAAA", "CNAME")


def record_type(target: str) -> str:
    """`A` for an IPv4 address, `AAAA` for IPv6, `CNAME` for a host name."""
    try:
        return "A" if ipaddress.ip_address(target).version == 4 else "AAAA"
    except ValueError:
        return "CNAME"


def canonical(target: str) -> str:
    """The form two spellings of one target share (`2001:DB8::1` = `2001:db8:0::1`, `a.b.` = `A.b`)."""
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        return target.rstrip(".").lower()


def _name(value: object) -> str:
    return value.rstrip(".").lower() if isinstance(value, str) else ""


class ExternalDnsBalancer(KubeObjectBalancer):
    """The endpoints of one DNSEndpoint named `dns_name`; weights 0 (absent) and 1 (present)."""

    group = "externaldns.k8s.io"
    version = "v1alpha1"
    plural = "dnsendpoints"
    kind = "DNSEndpoint"
    max_weight = 1

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        if config.external_dns is None:
            raise PermanentError(f"balancer {config.name!r} has no 'external_dns:' section")
        section = config.external_dns
        ref = KubernetesRef(kubeconfig=section.kubeconfig, context=section.context)
        super().__init__(config, ref, section.namespace, section.dns_endpoint)
        self.dns_name = section.dns_name
        self.set_identifier = section.set_identifier
        self.term = term  # unused: the resourceVersion fences Kubernetes writes
        self.targets = {cluster: list(config.addresses.get(cluster, [])) for cluster in config.members}
        """cluster -> its targets, as configured (canonical: `config_edge.split_target_members`)."""
        empty = sorted(cluster for cluster, targets in self.targets.items() if not targets)
        if empty:
            raise PermanentError(f"balancer {self.name!r}: no targets for {', '.join(empty)}")

    def member_label(self, cluster: str) -> str:
        return ", ".join(self.targets[cluster])

    def native_weight(self, nominal: int) -> int:
        return 1 if nominal > 0 else 0

    def _endpoints(self, obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """record type -> the one endpoint of the name with that type (as stored in `obj`)."""
        endpoints = (obj.get("spec") or {}).get("endpoints") or []
        found: dict[str, dict[str, Any]] = {}
        for endpoint in endpoints if isinstance(endpoints, list) else []:
            if not isinstance(endpoint, dict) or _name(endpoint.get("dnsName")) != _name(self.dns_name):
                continue
            if self.set_identifier is not None and endpoint.get("setIdentifier") != self.set_identifier:
                continue
            kind = endpoint.get("recordType")
            if kind not in RECORD_TYPES:
                continue
            if kind in found:
                raise PermanentError(
                    f"{self.what} has several {kind} endpoints for {self.dns_name} (set setIdentifier)"
                )
            targets = endpoint.get("targets")
            if targets is not None and not (
                isinstance(targets, list) and all(isinstance(t, str) for t in targets)
            ):
                raise PermanentError(f"{self.what}: the {kind} targets of {self.dns_name} are not strings")
            found[str(kind)] = endpoint
        if not found:
            raise PermanentError(f"{self.what} has no A, AAAA or CNAME endpoint for {self.dns_name}")
        for cluster, targets in self.targets.items():
            missing = sorted({record_type(t) for t in targets} - set(found))
            if missing:
                raise PermanentError(
                    f"{self.what} has no {'/'.join(missing)} endpoint for {self.dns_name}, "
                    f"where {cluster}'s addresses belong"
                )
        return found

    def weights_in(self, obj: dict[str, Any]) -> dict[str, int]:
        endpoints = self._endpoints(obj)
        present = {canonical(t) for e in endpoints.values() for t in e.get("targets") or []}
        return {
            cluster: int(any(canonical(t) in present for t in targets))
            for cluster, targets in self.targets.items()
        }

    def with_weights(self, obj: dict[str, Any], targets: Mapping[str, int]) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        endpoints = self._endpoints(new)
        members = {canonical(t) for targets in self.targets.values() for t in targets}
        ours_before = {
            kind: {canonical(t) for t in e.get("targets") or []} & members for kind, e in endpoints.items()
        }
        for cluster, weight in targets.items():
            mine = {canonical(t): t for t in self.targets[cluster]}
            if not weight:
                for endpoint in endpoints.values():
                    kept = [t for t in endpoint.get("targets") or [] if canonical(t) not in mine]
                    endpoint["targets"] = kept
                continue
            present = {canonical(t) for e in endpoints.values() for t in e.get("targets") or []}
            for key, target in mine.items():  # the missing ones, after the others: nothing reorders
                if key not in present:
                    endpoint = endpoints[record_type(target)]
                    endpoint["targets"] = [*(endpoint.get("targets") or []), target]
        for kind, endpoint in endpoints.items():
            left = {canonical(t) for t in endpoint.get("targets") or []} & members
            if ours_before[kind] and not left:
                raise GuardRefused(
                    "min_healthy_clusters",
                    f"{self.what}: removing {', '.join(sorted(ours_before[kind]))} would leave the {kind} "
                    f"targets of {self.dns_name} with no member's address (clients that only ask for "
                    f"{kind} would get no answer)",
                )
        return new
