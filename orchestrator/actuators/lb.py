"""Guarded balancer changes: the only path by which anything changes a weight.

Every change, from a playbook step or a command, goes through `BalancerActuator` under a per-balancer
lock, and the `min_healthy_clusters` guard is checked on the *resulting* weight vector inside that lock,
so two runs draining two clusters at once cannot together remove the last serving one (DESIGN §6b).

The leader's fence is checked before anything is recorded, and handed to the driver, which checks it
again immediately before each write it sends (after the NATS write of the original weight, for each
HAProxy instance, on each Kubernetes retry attempt).

Changes are described as `global/us-east weight 100 -> 0` in run results (the journal, events and
notifications); `failover plan` adds the balancer's own name for the member,
`global/us-east (web/us1) weight 100 -> 0`, so the line can be checked against the balancer's config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from orchestrator.actuators.base import Balancer, Fence
from orchestrator.bus.state import StateStore
from orchestrator.core.errors import GuardRefused

log = structlog.get_logger(__name__)


def weight_line(balancer: str, cluster: str, before: object, after: object, member: str | None = None) -> str:
    """`global/us-east weight 100 -> 0`, or with the balancer's member `global/us-east (web/us1) ...`."""
    where = f"{balancer}/{cluster}" + (f" ({member})" if member else "")
    return f"{where} weight {before} -> {after}"


@dataclass(frozen=True)
class WeightChange:
    balancer: str
    cluster: str
    before: int
    after: int
    drift: str | None = None
    """Set when a restore found a value we did not set and left it alone."""
    member: str | None = None
    """The balancer's own name for the member (`web/us1`, a backendRef's name...)."""

    def describe(self, with_member: bool = False) -> str:
        """The run journal's form (`global/us-east weight 100 -> 0`); `with_member` is the plan's form."""
        text = weight_line(
            self.balancer, self.cluster, self.before, self.after, self.member if with_member else None
        )
        return f"{text} (drift: {self.drift})" if self.drift else text


class BalancerActuator:
    def __init__(
        self,
        balancer: Balancer,
        nominal: Mapping[str, int],
        states: Callable[[], Mapping[str, str]],
        store: StateStore,
        fence: Fence = lambda: None,
    ) -> None:
        self.balancer = balancer
        self.name = balancer.name
        self.nominal = nominal
        """cluster -> nominal weight from the config."""
        self.states = states
        """cluster -> detector status, read at decision time."""
        self.store = store
        self.lock = asyncio.Lock()
        self.fence = fence
        """Raises when this replica no longer leads: checked before recording anything, and by the
        driver right before each write it sends."""

    def member(self, cluster: str) -> str | None:
        """The balancer's own name for a cluster's member (`web/us1`), None for an unknown cluster."""
        return self.balancer.member_label(cluster) if cluster in self.balancer.members else None

    def describe_change(self, cluster: str, before: object, after: object) -> str:
        """A planned change, as `failover plan` prints it: `global/us-east (web/us1) weight 100 -> 0`."""
        return weight_line(self.name, cluster, before, after, self.member(cluster))

    def refusal(self, current: Mapping[str, int], after: Mapping[str, int], min_healthy: int) -> str | None:
        """Why `min_healthy_clusters` forbids going from `current` to `after`, or None."""
        states = self.states()
        result = {**current, **after}
        serving = sorted(c for c, w in result.items() if w > 0 and states.get(c) != "failed")
        if len(serving) >= min_healthy:
            return None
        changed = ", ".join(f"{c} {current.get(c)} -> {w}" for c, w in after.items())
        return (
            f"balancer {self.name}: {changed} would leave {len(serving)} serving healthy cluster(s) "
            f"({', '.join(serving) or 'none'}); minimum is {min_healthy}"
        )

    def _check_min_healthy(
        self, current: Mapping[str, int], after: Mapping[str, int], min_healthy: int, force: bool
    ) -> None:
        message = self.refusal(current, after, min_healthy)
        if message is None:
            return
        if force:
            log.warning("guard.overridden", rule="min_healthy_clusters", balancer=self.name, message=message)
            return
        raise GuardRefused("min_healthy_clusters", message)

    async def drain(self, cluster: str, min_healthy: int = 1, force: bool = False) -> WeightChange:
        """Weight 0 for `cluster`; records the original first (kv.create: never overwritten by a 0)."""
        [change] = await self.set_weights({cluster: 0}, min_healthy=min_healthy, force=force)
        return change

    async def set_weights(
        self,
        weights: Mapping[str, int],
        expect: Mapping[str, int] | None = None,
        min_healthy: int = 1,
        force: bool = False,
    ) -> list[WeightChange]:
        """Set absolute weights for several clusters at once, under the balancer's lock.

        The guard sees the whole resulting vector. Before a cluster's weight first goes down from a
        serving value, that value is recorded (kv.create) so a restore can put it back. With `expect`,
        a cluster whose current weight is not the expected one is left alone and reported as drift.
        """
        async with self.lock:
            current = await self.balancer.get_weights()
            unknown = sorted(set(weights) - set(current))
            if unknown:
                raise GuardRefused("members", f"balancer {self.name} has no member for {', '.join(unknown)}")
            changes: dict[str, WeightChange] = {}
            apply: dict[str, int] = {}
            for cluster, weight in weights.items():
                before = current[cluster]
                if expect is not None and cluster in expect and before != expect[cluster]:
                    changes[cluster] = WeightChange(
                        self.name,
                        cluster,
                        before,
                        before,
                        drift=f"expected {expect[cluster]}, found {before}; left as it is",
                        member=self.member(cluster),
                    )
                elif before == weight:
                    changes[cluster] = WeightChange(
                        self.name, cluster, before, weight, member=self.member(cluster)
                    )
                else:
                    apply[cluster] = weight
            if apply:
                self._check_min_healthy(current, apply, min_healthy, force)
                self.fence()
                for cluster, weight in apply.items():
                    if weight < current[cluster]:
                        await self.store.record_original_lb(self.name, cluster, current[cluster])
                # the NATS write above took time: the driver fences again right before each write
                await self.balancer.set_weights(apply, fence=self.fence)
                for cluster, weight in apply.items():
                    # what we set is held (re-asserted after a reload or a GitOps revert) while in force
                    await self.store.put(f"desired.lb.{self.name}.{cluster}", {"weight": weight})
                    changes[cluster] = WeightChange(
                        self.name, cluster, current[cluster], weight, member=self.member(cluster)
                    )
                    log.info(
                        "lb.weight_set",
                        balancer=self.name,
                        cluster=cluster,
                        before=current[cluster],
                        after=weight,
                    )
            return [changes[c] for c in weights]

    async def set_weight(
        self, cluster: str, weight: int, expect: int | None = None, min_healthy: int = 1, force: bool = False
    ) -> WeightChange:
        """Set one absolute weight; with `expect`, only if the current value is still that (else drift)."""
        [change] = await self.set_weights(
            {cluster: weight}, None if expect is None else {cluster: expect}, min_healthy, force
        )
        return change

    async def target_weight(self, cluster: str) -> int:
        """The recorded original, or the nominal weight mapped to the native range."""
        recorded = await self.store.original_lb(self.name, cluster)
        if recorded is not None:
            return recorded
        return self.balancer.native_weight(self.nominal.get(cluster, 0))

    async def finish_restore(self, cluster: str) -> None:
        """Forget the recorded original, and stop holding a desired weight, once the restore is verified."""
        await self.store.forget_original_lb(self.name, cluster)
        await self.store.delete(f"desired.lb.{self.name}.{cluster}")

    async def get_weights(self) -> dict[str, int]:
        return await self.balancer.get_weights()
