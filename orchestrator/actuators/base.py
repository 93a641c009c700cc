"""The interface every load-balancer driver implements.

Drivers speak absolute native weights (HAProxy 0-256, Gateway API 0-1,000,000, ...) keyed by *cluster
name*; the mapping from cluster to the balancer's own member name lives in the driver. Effects are
absolute targets, never deltas, so a repeated call is harmless (DESIGN §2.3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

from orchestrator.core.config_drivers import LoadBalancerConfig

Term = Callable[[], int | None]


class Balancer(ABC):
    """One configured load balancer (possibly several instances of it)."""

    #: the largest native weight the driver accepts
    max_weight: int

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
        only counts once every instance has it.
        """

    @abstractmethod
    async def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set absolute native weights for the given clusters on every instance, then verify them.

        Raises TemporaryError (unreachable, timeout) or PermanentError (refused by the balancer).
        """

    def native_weight(self, nominal: int) -> int:
        """A cluster's nominal weight in this driver's range, used when no original was recorded.

        The default is the nominal value itself, capped; drivers with other ranges override it.
        """
        return max(0, min(self.max_weight, nominal))

    async def close(self) -> None:
        """Release connections; the default driver holds none."""
        return None
