"""What the Kubernetes balancer drivers (Gateway API, Istio, SMI) share.

The read-modify-write with the resourceVersion just read, so a concurrent change of the object is a 409
`ConflictError` instead of a lost update, retried a bounded number of times with a short backoff (the
whole read-modify-write, so the retry starts from the other writer's version), then a read back to
verify. Only the member entries' weights change; everything else in the object, including entries that
are not members, is written back as it was read.

Fencing (DESIGN §6b): the leader's `fence` is checked immediately before each attempt's write (after
its read), so a replica deposed during a conflict retry or a slow read sends no further write; and the
write carries the resourceVersion read immediately before it, so a write that does go out from a
deposed leader fails with a conflict rather than overwriting a newer one. The `term` is not needed here.
"""

from __future__ import annotations

import asyncio
import random
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import structlog

from orchestrator.actuators.base import Balancer, Fence, no_fence
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.kube.client import KubeClients
from orchestrator.kube.cluster import KubeCluster

log = structlog.get_logger(__name__)

T = TypeVar("T")

"""The leader's fencing term, read at the moment of a write (None before leader election exists)."""

MAX_WEIGHT = 1_000_000
"""HTTPRoute `backendRefs[].weight` is 0..1,000,000 in the CRD."""
ATTEMPTS = 4
"""Tries of one read, or of one read-modify-write, before a TemporaryError is passed on."""
BACKOFF_S = 0.1
"""First pause between tries; it doubles (with jitter) up to MAX_BACKOFF_S."""
MAX_BACKOFF_S = 2.0


async def retry_temporary(what: str, call: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """Await `call()` until it does not raise a TemporaryError, at most `attempts` times.

    The pause doubles from BACKOFF_S with jitter (so two writers that conflicted do not collide again in
    lockstep); a TemporaryError carrying `delay_s` (a 429's Retry-After) waits at least that, capped.
    PermanentError and anything else propagate at once; the last TemporaryError is re-raised.
    """
    delay = BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except TemporaryError as e:
            if attempt == attempts:
                raise
            pause = min(MAX_BACKOFF_S, max(delay * random.uniform(0.75, 1.25), e.delay_s or 0.0))
            log.info("lb.retry", what=what, attempt=attempt, error=str(e), pause_s=round(pause, 3))
            await asyncio.sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def check_int(weight: object, low: int | None = 0, high: int | None = None, what: str = "weight") -> int:
    """An int (bool is not a weight) in low..high (None: unbounded); else a PermanentError before any I/O."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise PermanentError(f"{what} must be an integer, got {weight!r}")
    if (low is not None and weight < low) or (high is not None and weight > high):
        raise PermanentError(f"{what} must be in {low}..{high}, got {weight}")
    return weight


def stored_weight(entry: dict[str, Any], default: int, where: str) -> int:
    """The `weight` of an entry as stored; a non-integer there is not something we can restore."""
    weight = entry.get("weight", default)
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise PermanentError(f"{where}: weight {weight!r} is not an integer")
    return weight


def find_entries(
    entries: list[Any], key: Callable[[dict[str, Any]], object], members: Mapping[str, str], where: str
) -> dict[str, dict[str, Any]]:
    """cluster -> the one entry (a dict, as stored in the object) whose key is the cluster's member name.

    A member with no entry, or with several (say the same host twice with different subsets), is a
    PermanentError: a weight we cannot place unambiguously is a configuration problem, not a glitch.
    """
    found: dict[str, dict[str, Any]] = {}
    for cluster, member in members.items():
        matches = [e for e in entries if isinstance(e, dict) and key(e) == member]
        if not matches:
            raise PermanentError(f"{where} has no entry {member!r} (member for cluster {cluster!r})")
        if len(matches) > 1:
            raise PermanentError(f"{where} has {len(matches)} entries {member!r}: ambiguous for {cluster!r}")
        found[cluster] = matches[0]
    return found


class KubeObjectBalancer(Balancer):
    """A balancer whose weights live in one namespaced custom object (shared by the Kubernetes drivers).

    Subclasses say which object (`group`, `version`, `plural`, `namespace`, `object_name`, `ref`), how to
    read the member weights out of it (`weights_in`) and how to write new ones into a copy (`with_weights`).
    """

    group: str
    version: str
    plural: str
    kind: str
    """For messages: `HTTPRoute`, `VirtualService`, `TrafficSplit`."""

    def __init__(
        self, config: LoadBalancerConfig, ref: KubernetesRef, namespace: str, object_name: str
    ) -> None:
        super().__init__(config)
        self.ref = ref
        self.namespace = namespace
        self.object_name = object_name
        self._clients: KubeClients | None = None
        self._cluster: KubeCluster | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.namespace}/{self.object_name})"

    @property
    def what(self) -> str:
        """`balancer edge: HTTPRoute shop/web`, the prefix of our messages."""
        return f"balancer {self.name}: {self.kind} {self.namespace}/{self.object_name}"

    @abstractmethod
    def weights_in(self, obj: dict[str, Any]) -> dict[str, int]:
        """The native weight of every member cluster in `obj`; PermanentError if one is missing."""

    @abstractmethod
    def with_weights(self, obj: dict[str, Any], targets: Mapping[str, int]) -> dict[str, Any]:
        """A copy of `obj` with the targets' weights set and nothing else changed (but bookkeeping)."""

    def check_weight(self, weight: object) -> int:
        return check_int(weight, 0, self.max_weight, f"{self.kind} weight")

    async def api(self) -> KubeCluster:
        """The cluster's facade; the client is built on first use and released by `close()`."""
        if self._cluster is None:
            if self._clients is None:
                self._clients = KubeClients()
            self._cluster = await self._clients.cluster(self.ref, self.ref.context)
        return self._cluster

    async def read(self) -> dict[str, Any]:
        """The object as stored now (one try)."""
        api = await self.api()
        return await api.get_custom(self.group, self.version, self.namespace, self.plural, self.object_name)

    async def get_weights(self) -> dict[str, int]:
        obj = await retry_temporary(f"{self.what}: read", self.read)
        return self.weights_in(obj)

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no member for cluster(s) {', '.join(unknown)}")
        targets = {cluster: self.check_weight(weight) for cluster, weight in weights.items()}
        if not targets:
            return

        async def read_modify_write() -> None:
            obj = await self.read()
            resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if not resource_version:
                raise PermanentError(f"{self.what}: the API server sent no resourceVersion")
            new = self.with_weights(obj, targets)
            if new == obj:
                return  # already as wanted: nothing to write
            api = await self.api()
            fence()  # each attempt, after its read: no write from a replica that stopped leading
            await api.replace_custom(
                self.group,
                self.version,
                self.namespace,
                self.plural,
                self.object_name,
                new,
                resource_version=resource_version,
            )

        await retry_temporary(f"{self.what}: write", read_modify_write)
        current = self.weights_in(await retry_temporary(f"{self.what}: read back", self.read))
        wrong = [
            f"{cluster}={current[cluster]} (wanted {weight})"
            for cluster, weight in targets.items()
            if current[cluster] != weight
        ]
        if wrong:
            raise TemporaryError(f"{self.what}: weights did not stick: " + ", ".join(wrong))
        log.info(
            "lb.weights_written",
            balancer=self.name,
            object=f"{self.namespace}/{self.object_name}",
            weights=targets,
        )

    async def close(self) -> None:
        clients, self._clients, self._cluster = self._clients, None, None
        if clients is not None:
            await clients.close()
