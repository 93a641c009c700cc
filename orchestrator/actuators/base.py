"""The interface every load-balancer driver implements.

Drivers speak absolute native weights (HAProxy 0-256, Gateway API 0-1,000,000, ...) keyed by *cluster
name*; the mapping from cluster to the balancer's own member name lives in the driver. Effects are
absolute targets, never deltas, so a repeated call is harmless (DESIGN §2.3).

Fencing (DESIGN §6b): `set_weights` takes the leader's `fence` and calls it immediately before every
write it sends (each HAProxy instance's `set weight`, each attempt of a Kubernetes or webhook
read-modify-write), after whatever I/O came before, so a replica that stopped leading while it was
reading or recording sends nothing more.

Instances (DESIGN §2.6): a balancer may run as several instances (two HAProxy processes) that each keep
their own runtime weights and drift apart on their own (a reload, an outage during a write). Drivers
report each instance's weights separately and write to a chosen subset, so one instance that is down or
reverted never stops the others from being read or corrected. A driver that is one thing to talk to (a
Kubernetes route, a webhook) is one pseudo-instance, named after the balancer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence

from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError

Term = Callable[[], int | None]
Fence = Callable[[], None]
"""Raises (NotLeader) when this replica no longer leads; a no-op where there is no election."""


InstanceWeights = dict[str, dict[str, int] | OrchestratorError]
"""instance address -> {cluster: native weight}, or the error that instance's read ended in."""


def no_fence() -> None:
    """The fence of a process that acts alone (tests, `failover plan`): never refuses."""


def combined_error(failures: Sequence[OrchestratorError]) -> OrchestratorError:
    """One error for several instances' failures: permanent if any is (retrying will not fix a refusal),
    else temporary; the message keeps every instance's own."""
    message = "; ".join(str(error) for error in failures)
    cls = PermanentError if any(isinstance(error, PermanentError) for error in failures) else TemporaryError
    error = cls(message)
    error.__cause__ = failures[0]
    return error


class Balancer(ABC):
    """One configured load balancer (possibly several instances of it)."""

    #: the largest native weight the driver accepts
    max_weight: int
    #: a weight changed by someone else while we hold ours is put back (and reported as drift); DNS
    #: drivers only report it, since nothing reverts a record by accident (DESIGN §16)
    reassert_drift: bool = True

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        self.config = config
        self.name = config.name
        self.term = term
        """The leader's fencing term, read at each write (the webhook driver sends it)."""

    @property
    def members(self) -> Mapping[str, str]:
        """cluster name -> member name in the balancer."""
        return self.config.members

    @abstractmethod
    async def get_weights(self) -> dict[str, int]:
        """Current native weight per member cluster.

        With several instances that disagree, raise TemporaryError naming the disagreement: a change
        only counts once every instance has it. (The actuator reads `get_instance_weights` instead and
        resolves a disagreement itself, so that one reverted instance does not block every change.)
        """

    async def get_instance_weights(self) -> InstanceWeights:
        """Each instance's weights, or the error its read ended in: one unreadable instance does not
        hide the others. The default is the whole balancer as one pseudo-instance."""
        try:
            return {self.name: await self.get_weights()}
        except OrchestratorError as e:
            return {self.name: e}

    async def get_member_weights(self, cluster: str) -> dict[str, int | OrchestratorError]:
        """Each instance's weight for one member, or the error its read ended in; an instance without
        the member is left out. The default reads everything; a driver that can read one member (HAProxy's
        `get weight`) overrides it, so that noting a step's `before` costs one line, not the backend."""
        out: dict[str, int | OrchestratorError] = {}
        for address, weights in (await self.get_instance_weights()).items():
            if isinstance(weights, OrchestratorError):
                out[address] = weights
            elif cluster in weights:
                out[address] = weights[cluster]
        return out

    def member_label(self, cluster: str) -> str:
        """The balancer's own name for a cluster's member, as its operators know it (`failover plan`)."""
        return self.members[cluster]

    @abstractmethod
    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        """Set absolute native weights for the given clusters on every instance, then verify them.

        `fence()` is called immediately before each write (each instance, each retry attempt) and
        its NotLeader propagates as it is. Raises TemporaryError (unreachable, timeout) or
        PermanentError (refused by the balancer).
        """

    async def set_instance_weights(
        self, weights: Mapping[str, int], instances: Collection[str], fence: Fence = no_fence
    ) -> None:
        """Like `set_weights`, on the named instances only (those the reconciler found reverted).

        The default driver has its one pseudo-instance: it is written when named, else nothing is.
        """
        if self.name in instances:
            await self.set_weights(weights, fence)

    def native_weight(self, nominal: int) -> int:
        """A cluster's nominal weight in this driver's range, used when no original was recorded.

        The default is the nominal value itself, capped; drivers with other ranges override it.
        """
        return max(0, min(self.max_weight, nominal))

    async def close(self) -> None:
        """Release connections; the default driver holds none."""
        return None
