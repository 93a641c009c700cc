"""What the DNS balancers (RFC 2136, PowerDNS) share: a balancer that is the address RRset of one name.

DNS has no weights (DESIGN §16). A cluster is a list of addresses in the A/AAAA RRset of the balancer's
name, and its native weight is 1 while any of them is in the RRset (it serves: resolvers hand it out),
0 when none is. Setting 0 removes the cluster's addresses; setting 1 puts every one of them back with the
configured TTL. Addresses that belong to no member (a maintenance page someone added) are never touched.

Every change is a read-modify-write of the RRset *as read*: the drivers send it as a prerequisite (RFC
2136) or compare it again right before the write (PowerDNS, whose API has no conditional write), so a
change made meanwhile by someone else is a `DnsConflict` (temporary): the RRset is read again and the
change recomputed on top of theirs, never an overwrite of it.

The last addresses, per record type: an update that would leave the A (or the AAAA) records with none
of the members' addresses, where they had one before, is refused (`min_healthy_clusters`) whatever the
weights say. An empty A RRset is NODATA for every IPv4-only client, a full outage for them, whereas a
dead address is one for some; and an address that is no member's (a maintenance page left in the zone)
serves no one, so it does not count as an address left.

Timing: a resolver that cached the answer before a change keeps it until its TTL runs out. The TTL that
matters is the one served *before* the change (a record someone left at 3600 s keeps clients on a
drained address for an hour whatever we write; and DNS has one TTL per RRset, so adding our records at
`ttl` re-times the records already there too). Each write remembers, per cluster it changed, the larger
of the configured TTL and the TTL read right before that write (`ttl_before_change_s`), which the step's
result and the run's timeline (`ttl_expires_at`) take; later reads (the reconciler, readiness, the
read-back) never change it. `failover plan` computes the same from the RRset it shows.
"""

from __future__ import annotations

import ipaddress
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from orchestrator.actuators.base import Balancer, Fence, Term, no_fence
from orchestrator.actuators.kube_lb import check_int, retry_temporary
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError, TemporaryError

log = structlog.get_logger(__name__)


class DnsConflict(TemporaryError):
    """The RRset changed between our read and our write: read it again and recompute the change."""


def rdtype_of(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


@dataclass(frozen=True)
class RRsetView:
    """The name's address records as one read saw them."""

    records: dict[str, frozenset[str]]
    """"A"/"AAAA" -> the addresses served (canonical text); a type without records is absent."""
    ttl_s: dict[str, int] = field(default_factory=dict)
    """"A"/"AAAA" -> the TTL served with it."""
    version: object = None
    """What the driver needs to detect a change since this read (the zone's serial for PowerDNS)."""

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset().union(*self.records.values()) if self.records else frozenset()

    @property
    def max_ttl_s(self) -> int:
        return max(self.ttl_s.values(), default=0)


class DnsBalancer(Balancer):
    """A balancer whose members are address lists in one name's A/AAAA RRset."""

    max_weight = 1
    reassert_drift = False
    """A change in a zone is usually someone's decision (an operator, another tool): reported as drift
    and left as it is; except that a *failed* cluster put back is drained again by the reconciler, since
    a failed cluster carries no traffic (DESIGN §12, see runtime/reconcile.py)."""

    def __init__(
        self, config: LoadBalancerConfig, name: str, ttl_s: int, *, term: Term | None = None
    ) -> None:
        super().__init__(config, term=term)
        if set(config.addresses) != set(config.members):
            raise PermanentError(f"balancer {config.name!r}: every member needs its addresses")
        self.addresses = {cluster: list(listed) for cluster, listed in config.addresses.items()}
        self.record_name = name
        self.ttl_s = ttl_s
        self.ttl_before_change_s: dict[str, int] = {}
        """cluster -> how long a resolver may keep the answer it got before the last change made for that
        cluster (see the module); written by that change only, under the balancer's lock."""
        self.member_addresses = frozenset(a for listed in self.addresses.values() for a in listed)

    @property
    def what(self) -> str:
        """`balancer dns: www.example.com.`, the prefix of every message."""
        return f"balancer {self.name}: {self.record_name}"

    def member_label(self, cluster: str) -> str:
        return ", ".join(self.addresses[cluster])

    def native_weight(self, nominal: int) -> int:
        return 1 if nominal > 0 else 0

    @abstractmethod
    async def read_rrset(self) -> RRsetView:
        """One read of the name's A and AAAA records (no retry)."""

    @abstractmethod
    async def write_rrset(self, read: RRsetView, add: set[str], remove: set[str], fence: Fence) -> None:
        """Remove and add these addresses, on condition that the RRset is still `read`; `fence()` right
        before the write. Raises DnsConflict when it is not, TemporaryError or PermanentError."""

    def weights_in(self, view: RRsetView) -> dict[str, int]:
        served = view.addresses
        return {c: int(any(a in served for a in listed)) for c, listed in self.addresses.items()}

    async def read_view(self) -> RRsetView:
        return await retry_temporary(f"{self.what}: read", self.read_rrset)

    def resolver_ttl_s(self, view: RRsetView) -> int:
        """How long a resolver may keep the answer `view` saw: its TTL, or ours when it had none."""
        return max(self.ttl_s, view.max_ttl_s)

    async def get_weights(self) -> dict[str, int]:
        return self.weights_in(await self.read_view())

    def check_weight(self, cluster: str, weight: object) -> int:
        return check_int(
            weight,
            0,
            1,
            f"{self.what}: DNS has no weights (0 removes {cluster}'s addresses, 1 puts them back); weight",
        )

    def delta(self, view: RRsetView, targets: Mapping[str, int]) -> tuple[set[str], set[str]]:
        """(add, remove) that give every target cluster its weight; refuses to leave a record type that
        served a member's address with none (see the module)."""
        served = view.addresses
        add: set[str] = set()
        remove: set[str] = set()
        for cluster, weight in targets.items():
            listed = set(self.addresses[cluster])
            if weight:
                add |= listed - served
            else:
                remove |= listed & served
        for rdtype in ("A", "AAAA"):
            ours = view.records.get(rdtype, frozenset()) & self.member_addresses
            if not ours or (ours - remove) or any(rdtype_of(a) == rdtype for a in add):
                continue
            foreign = sorted(view.records.get(rdtype, frozenset()) - self.member_addresses)
            raise GuardRefused(
                "min_healthy_clusters",
                f"{self.what}: removing {', '.join(sorted(ours))} would leave its {rdtype} records with no "
                "member's address ("
                + (f"{', '.join(foreign)} is no member's; " if foreign else "")
                + f"{'IPv4' if rdtype == 'A' else 'IPv6'}-only clients would get no answer)",
            )
        return add, remove

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no member for cluster(s) {', '.join(unknown)}")
        targets = {cluster: self.check_weight(cluster, weight) for cluster, weight in weights.items()}
        if not targets:
            return

        async def read_modify_write() -> None:
            view = await self.read_rrset()
            add, remove = self.delta(view, targets)
            # the answer resolvers hold until this write: kept per cluster, for this change's timing
            self.ttl_before_change_s.update(dict.fromkeys(targets, self.resolver_ttl_s(view)))
            if add or remove:
                await self.write_rrset(view, add, remove, fence)
                log.info(
                    "dns.rrset_updated",
                    balancer=self.name,
                    name=self.record_name,
                    added=sorted(add),
                    removed=sorted(remove),
                )

        await retry_temporary(f"{self.what}: update", read_modify_write)
        current = self.weights_in(await self.read_view())
        wrong = [
            f"{cluster}={current[cluster]} (wanted {weight})"
            for cluster, weight in targets.items()
            if current[cluster] != weight
        ]
        if wrong:
            raise TemporaryError(f"{self.what}: the change did not stick: " + ", ".join(wrong))

    async def describe_rrset(self) -> str:
        """The RRset as served now, for `failover plan`: `www.example.com. A 192.0.2.10 ... (TTL 30s)`."""
        return self.describe_view(await self.read_view())

    def describe_view(self, view: RRsetView) -> str:
        parts = [f"{t} {' '.join(sorted(view.records[t]))}" for t in ("A", "AAAA") if t in view.records]
        foreign = sorted(view.addresses - self.member_addresses)
        text = f"{self.record_name} " + ("; ".join(parts) or "no address records")
        text += f" (TTL {view.max_ttl_s}s)" if view.records else ""
        if foreign:
            text += f"; not ours, left alone: {', '.join(foreign)}"
        return text
