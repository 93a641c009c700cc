"""Guarded balancer changes: the only path by which anything changes a weight.

Every change, from a playbook step or a command, goes through `BalancerActuator` under a per-balancer
lock, and the `min_healthy_clusters` guard is checked on the *resulting* weight vector inside that lock,
so two runs draining two clusters at once cannot together remove the last serving one (DESIGN §6b).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from orchestrator.actuators.base import Balancer
from orchestrator.errors import GuardRefused
from orchestrator.state_store import StateStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WeightChange:
    balancer: str
    cluster: str
    before: int
    after: int
    drift: str | None = None
    """Set when a restore found a value we did not set and left it alone."""

    def describe(self) -> str:
        text = f"{self.balancer}/{self.cluster} weight {self.before} -> {self.after}"
        return f"{text} (drift: {self.drift})" if self.drift else text


class BalancerActuator:
    def __init__(
        self,
        balancer: Balancer,
        nominal: Mapping[str, int],
        states: Callable[[], Mapping[str, str]],
        store: StateStore,
    ) -> None:
        self.balancer = balancer
        self.name = balancer.name
        self.nominal = nominal
        """cluster -> nominal weight from the config."""
        self.states = states
        """cluster -> detector status, read at decision time."""
        self.store = store
        self.lock = asyncio.Lock()

    def _check_min_healthy(
        self, current: Mapping[str, int], after: Mapping[str, int], min_healthy: int, force: bool
    ) -> None:
        states = self.states()
        result = {**current, **after}
        serving = sorted(c for c, w in result.items() if w > 0 and states.get(c) != "failed")
        if len(serving) >= min_healthy:
            return
        changed = ", ".join(f"{c} {current.get(c)} -> {w}" for c, w in after.items())
        message = (
            f"balancer {self.name}: {changed} would leave {len(serving)} serving healthy cluster(s) "
            f"({', '.join(serving) or 'none'}); minimum is {min_healthy}"
        )
        if force:
            log.warning("guard.overridden", rule="min_healthy_clusters", balancer=self.name, message=message)
            return
        raise GuardRefused("min_healthy_clusters", message)

    async def drain(self, cluster: str, min_healthy: int = 1, force: bool = False) -> WeightChange:
        """Weight 0 for `cluster`; records the original first (kv.create: never overwritten by a 0)."""
        async with self.lock:
            current = await self.balancer.get_weights()
            before = current[cluster]
            if before == 0:
                return WeightChange(self.name, cluster, 0, 0)
            self._check_min_healthy(current, {cluster: 0}, min_healthy, force)
            await self.store.record_original_lb(self.name, cluster, before)
            await self.balancer.set_weights({cluster: 0})
            log.info("lb.drained", balancer=self.name, cluster=cluster, before=before)
            return WeightChange(self.name, cluster, before, 0)

    async def target_weight(self, cluster: str) -> int:
        """The recorded original, or the nominal weight mapped to the native range."""
        recorded = await self.store.original_lb(self.name, cluster)
        if recorded is not None:
            return recorded
        return self.balancer.native_weight(self.nominal.get(cluster, 0))

    async def set_weight(
        self, cluster: str, weight: int, expect: int | None = None, min_healthy: int = 1, force: bool = False
    ) -> WeightChange:
        """Set an absolute weight; with `expect`, only if the current value is still that (else drift)."""
        async with self.lock:
            current = await self.balancer.get_weights()
            before = current[cluster]
            if expect is not None and before != expect:
                return WeightChange(
                    self.name,
                    cluster,
                    before,
                    before,
                    drift=f"expected {expect}, found {before}; left as it is",
                )
            if before == weight:
                return WeightChange(self.name, cluster, before, weight)
            self._check_min_healthy(current, {cluster: weight}, min_healthy, force)
            await self.balancer.set_weights({cluster: weight})
            log.info("lb.weight_set", balancer=self.name, cluster=cluster, before=before, after=weight)
            return WeightChange(self.name, cluster, before, weight)

    async def finish_restore(self, cluster: str) -> None:
        """Forget the recorded original once the restore is verified complete."""
        await self.store.forget_original_lb(self.name, cluster)

    async def get_weights(self) -> dict[str, int]:
        return await self.balancer.get_weights()
