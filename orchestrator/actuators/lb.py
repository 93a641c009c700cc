"""Guarded balancer changes: the only path by which anything changes a weight.

Every change, from a playbook step or a command, goes through `BalancerActuator` under a per-balancer
lock, and the `min_healthy_clusters` guard is checked on the *resulting* weight vector inside that lock,
so two runs draining two clusters at once cannot together remove the last serving one (DESIGN §6b).

The leader's fence is checked before anything is recorded, and handed to the driver, which checks it
again immediately before each write it sends (after the NATS write of the original weight, for each
HAProxy instance, on each Kubernetes retry attempt).

Several instances (two HAProxy processes) are read one by one. Where they disagree (one was reloaded,
one missed a write while it was down) the actuator resolves one value per cluster rather than refusing to
act: a disagreement is drift for the reconciler, never a reason to block a drain. What a change intends
(the original weight, the desired weight) is recorded before the balancer is touched, so a write that
reaches one instance and times out on the other is completed by the reconciler.

Changes are described as `global/us-east weight 100 -> 0` in run results (the journal, events and
notifications); `failover plan` adds the balancer's own name for the member,
`global/us-east (web/us1) weight 100 -> 0`, so the line can be checked against the balancer's config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.actuators.base import Balancer, Fence, combined_error
from orchestrator.bus.state import StateStore
from orchestrator.core.errors import GuardRefused, OrchestratorError, PermanentError

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


@dataclass(frozen=True)
class WeightsView:
    """One read of every instance of a balancer."""

    instances: dict[str, dict[str, int]]
    """instance -> cluster -> weight, for the instances that answered."""
    unreadable: dict[str, OrchestratorError]
    """instance -> why it could not be read."""
    current: dict[str, int]
    """cluster -> the one value decisions are made on (`BalancerActuator.read` says how)."""

    def off(self, cluster: str, weight: int) -> dict[str, int]:
        """The instances that answered with another weight than `weight` for `cluster`, and theirs."""
        return {a: w[cluster] for a, w in self.instances.items() if cluster in w and w[cluster] != weight}

    def settled(self, cluster: str, weight: int) -> bool:
        """Every instance answered and has `weight`: there is nothing to write."""
        return not self.unreadable and not self.off(cluster, weight)


def _serving_at_least(
    current: Mapping[str, int], after: Mapping[str, int], states: Mapping[str, str], enough: int
) -> bool:
    """Whether at least `enough` clusters serve (weight above 0, not failed) once `after` is applied:
    stops counting at `enough`, so a drain in a fleet of 10,000 looks at a few members, not all."""
    if enough <= 0:
        return True
    count = 0
    for weights, skip in ((after, None), (current, after)):
        for cluster, weight in weights.items():
            if skip is not None and cluster in skip:
                continue
            if weight > 0 and states.get(cluster) != "failed":
                count += 1
                if count >= enough:
                    return True
    return False


class BalancerActuator:
    def __init__(
        self,
        balancer: Balancer,
        nominal: Mapping[str, int],
        states: Callable[[], Mapping[str, str]],
        store: StateStore,
        fence: Fence = lambda: None,
        on_weights: Callable[[str, Mapping[str, int]], None] | None = None,
    ) -> None:
        self.balancer = balancer
        self.on_weights = on_weights
        """Told every read and every write (`failover_balancer_weight`): what a weight is now."""
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
        if _serving_at_least(current, after, states, min_healthy):
            return None  # the usual answer, found without walking a large fleet
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

    def _check_not_raising_failed(
        self, current: Mapping[str, int], after: Mapping[str, int], force: bool
    ) -> None:
        """No change raises the weight of a cluster the detector says is failed (DESIGN §12): whatever
        decided it (a failback whose cluster failed after its health gate, a command, a held weight),
        the state at the moment of the write wins. Admin `--force` overrides, audited."""
        states = self.states()
        raised = sorted(c for c, w in after.items() if w > current.get(c, 0) and states.get(c) == "failed")
        if not raised:
            return
        message = f"balancer {self.name}: not raising the weight of failed cluster(s) {', '.join(raised)}"
        if force:
            log.warning("guard.overridden", rule="no_raise_while_failed", balancer=self.name, message=message)
            return
        raise GuardRefused("no_raise_while_failed", message)

    async def drain(self, cluster: str, min_healthy: int = 1, force: bool = False) -> WeightChange:
        """Weight 0 for `cluster`; records the original first (kv.create: never overwritten by a 0)."""
        [change] = await self.set_weights({cluster: 0}, min_healthy=min_healthy, force=force)
        return change

    def _desired_key(self, cluster: str) -> str:
        return f"desired.lb.{self.name}.{cluster}"

    async def _held(self, cluster: str) -> int | None:
        """The desired weight we hold for `cluster`, if any."""
        record = await self.store.get(self._desired_key(cluster))
        weight = record.get("weight") if isinstance(record, dict) else None
        return weight if isinstance(weight, int) else None

    async def read(self) -> WeightsView:
        """Every instance's weights and one resolved value per cluster; raises only when no instance
        answers.

        Where the instances that answered agree, that value. Where they disagree: the desired weight we
        hold, if one of them has it (the others reverted: drift the reconciler puts right); else the
        highest, "serving somewhere", which is the conservative view both for `min_healthy_clusters`
        and for the watchdog's "a failed cluster still has weight".
        """
        by_instance = await self.balancer.get_instance_weights()
        instances = {a: w for a, w in by_instance.items() if not isinstance(w, OrchestratorError)}
        unreadable = {a: e for a, e in by_instance.items() if isinstance(e, OrchestratorError)}
        if not instances:
            raise combined_error(list(unreadable.values()))
        current: dict[str, int] = {}
        for cluster in dict.fromkeys(c for weights in instances.values() for c in weights):
            values = {w[cluster] for w in instances.values() if cluster in w}
            held = await self._held(cluster) if len(values) > 1 else None
            current[cluster] = held if held is not None and held in values else max(values)
        if self.on_weights is not None:
            self.on_weights(self.name, current)
        return WeightsView(instances, unreadable, current)

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
        A weight is written to every instance unless every instance answered with it already, so a
        step retried while one instance is down keeps failing instead of passing on the others' word.
        """
        async with self.lock:
            view = await self.read()
            current = view.current
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
                elif view.settled(cluster, weight):
                    changes[cluster] = WeightChange(
                        self.name, cluster, before, weight, member=self.member(cluster)
                    )
                else:
                    apply[cluster] = weight
            if apply:
                self._check_min_healthy(current, apply, min_healthy, force)
                self._check_not_raising_failed(current, apply, force)
                self.fence()
                replaced = await self._record_intent(current, apply)
                try:
                    # the NATS writes above took time: the cluster may have failed meanwhile, and the
                    # driver fences again right before each write
                    self._check_not_raising_failed(current, apply, force)
                    # only the instances that do not hold the value yet, and those that did not answer
                    # (a retried drain sends nothing again to the instance it already reached)
                    stale = {a for c, w in apply.items() for a in view.off(c, w)} | set(view.unreadable)
                    await self.balancer.set_instance_weights(apply, stale, fence=self.fence)
                except PermanentError:  # GuardRefused included: nothing was sent
                    await self._withdraw_intent(replaced)
                    raise
                if self.on_weights is not None:
                    self.on_weights(self.name, apply)
                for cluster, weight in apply.items():
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

    async def _record_intent(self, current: Mapping[str, int], apply: Mapping[str, int]) -> dict[str, Any]:
        """Record the originals, and the weights we now hold, before the balancer is touched.

        A write that fails half-way (one instance done, another timed out) then leaves the intent on
        record, and the reconciler completes it on the instance that missed it. Returns the desired
        records replaced, for `_withdraw_intent`.
        """
        replaced: dict[str, Any] = {}
        for cluster, weight in apply.items():
            if weight < current[cluster]:
                await self.store.record_original_lb(self.name, cluster, current[cluster])
            key = self._desired_key(cluster)
            replaced[key] = await self.store.get(key)
            # what we set is held (re-asserted after a reload or a GitOps revert) while in force
            await self.store.put(key, {"weight": weight})
        return replaced

    async def _withdraw_intent(self, replaced: Mapping[str, Any]) -> None:
        """Put back the desired records a refused write replaced: a weight the balancer refuses (a
        static algorithm, a missing server) is not one to re-assert every pass."""
        for key, previous in replaced.items():
            if previous is None:
                await self.store.delete(key)
            else:
                await self.store.put(key, previous)

    async def reassert(self, cluster: str, weight: int, min_healthy: int = 1) -> list[str]:
        """Put a held weight back on the instances that lost it, and only on them; returns them.

        Read again under the lock (a run may have changed the weight since the reconciler looked), and
        guarded like any change. An instance that cannot be read is left for a later pass.
        """
        async with self.lock:
            view = await self.read()
            off = sorted(view.off(cluster, weight))
            if not off:
                return []
            self._check_min_healthy(view.current, {cluster: weight}, min_healthy, force=False)
            lowest = min(view.instances[address][cluster] for address in off)
            self._check_not_raising_failed({cluster: lowest}, {cluster: weight}, force=False)
            self.fence()
            await self.balancer.set_instance_weights({cluster: weight}, off, fence=self.fence)
            log.info(
                "lb.weight_reasserted", balancer=self.name, cluster=cluster, weight=weight, instances=off
            )
            return off

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
        await self.store.delete(self._desired_key(cluster))

    async def weight_of(self, cluster: str) -> int:
        """One cluster's weight, resolved across instances as `read` does, reading only that member
        where the driver can (a step's `before`: the whole backend of 10,000 servers was read for it)."""
        by_instance = await self.balancer.get_member_weights(cluster)
        values = {w for w in by_instance.values() if not isinstance(w, OrchestratorError)}
        if not values:
            errors = [e for e in by_instance.values() if isinstance(e, OrchestratorError)]
            if errors:
                raise combined_error(errors)
            raise PermanentError(f"balancer {self.name} has no member for {cluster}")
        held = await self._held(cluster) if len(values) > 1 else None
        return held if held is not None and held in values else max(values)

    async def get_weights(self) -> dict[str, int]:
        """One weight per cluster, resolved across instances as `read` says; raises only when no
        instance answers."""
        return (await self.read()).current
