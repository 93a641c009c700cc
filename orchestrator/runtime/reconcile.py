"""Desired state is held, not just set (DESIGN §2.6).

While a drain or a scale-out is in force (KV `desired.lb.<balancer>.<cluster>`, and `orig.scale.*`
records with the value we `set`), the leader re-reads the balancers and workloads every
`reconcile.interval` and after every run, and re-asserts what it set when something reverted it: an
HAProxy reload resets runtime weights, Argo CD or Flux self-heal puts route weights back. Every
difference is a `drift.detected` system event saying what was expected, what was found and whether it
was re-asserted. While automation is paused, or a run is working on that cluster, drift is only reported.
Re-assertions go through the same actuators, so `min_healthy_clusters` still holds.
A DNS balancer's drift is reported once and left alone (`reassert_drift` False): a change in a zone is
usually an operator's (or another tool's) decision, not ours to undo; `failover_balancer_drift` stays 1
while it lasts. Except for a cluster that is *failed*: desired state includes "a failed cluster carries
no traffic" (DESIGN §12, liveness), and zones do get reverted (a Terraform or octoDNS sync, another
external-dns, a zone file reloaded), so a failed cluster's addresses put back are removed again at every
pass until the removal holds, like an HAProxy reload's revert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.scale import Current, ScaleActuator, Workload
from orchestrator.bus.state import StateStore
from orchestrator.core.aio import wait_any
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.metrics import Metrics

log = structlog.get_logger(__name__)

Emit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class Reconciler:
    def __init__(
        self,
        balancers: Mapping[str, BalancerActuator],
        scale: ScaleActuator | None,
        store: StateStore,
        emit: Emit,
        busy: Callable[[str], bool],
        interval_s: float = 5.0,
        failed: Callable[[str], bool] = lambda _cluster: False,
        metrics: Metrics | None = None,
    ) -> None:
        self.balancers = balancers
        self.scale = scale
        self.store = store
        self.emit = emit
        self.busy = busy
        """Whether a run is working on this cluster right now (it owns the values meanwhile)."""
        self.interval_s = interval_s
        self.failed = failed
        """Whether the detector holds this cluster `failed` now: its drift is always re-asserted."""
        self.metrics = metrics
        self._kick = asyncio.Event()
        self.passes = 0
        self._gauged: set[tuple[str, str]] = set()
        """(balancer, cluster) pairs with a `failover_balancer_drift` series: removed with their hold."""
        self._left: dict[tuple[str, str], int] = {}
        """(balancer, cluster) -> the value found, for drift reported and left alone (DNS balancers)."""

    def kick(self) -> None:
        """Reconcile now (after a run, on resume, on unfreeze)."""
        self._kick.set()

    async def run(self, stop: asyncio.Event, active: Callable[[], bool] = lambda: True) -> None:
        while not stop.is_set():
            await wait_any(self._kick, stop, timeout_s=self.interval_s)
            self._kick.clear()
            if stop.is_set() or not active():
                continue
            try:
                await self.reconcile_once()
            except OrchestratorError as e:
                log.warning("reconcile.failed", error=str(e))

    async def reconcile_once(self) -> list[dict[str, Any]]:
        """One pass; returns the drifts found (for tests and the API)."""
        self.passes += 1
        drifts: list[dict[str, Any]] = []
        by_balancer: dict[str, dict[str, int]] = {}
        held = await self.store.desired_weights()
        for (balancer, cluster), weight in held.items():
            by_balancer.setdefault(balancer, {})[cluster] = weight
        for balancer, cluster in self._gauged - set(held):  # restored: nothing held, nothing to drift from
            self._gauged.discard((balancer, cluster))
            self._left.pop((balancer, cluster), None)
            if self.metrics is not None:
                self.metrics.balancer_drift.remove(balancer, cluster)
        for name, wanted in by_balancer.items():
            actuator = self.balancers.get(name)
            if actuator is None:
                continue
            try:
                view = await actuator.read()
            except OrchestratorError as e:
                log.warning("reconcile.read_failed", balancer=name, error=str(e))
                continue
            # an instance that cannot be read is said so, and the others are reconciled all the same
            unreadable = {address: str(error) for address, error in view.unreadable.items()}
            for address, error in unreadable.items():
                log.warning("reconcile.read_failed", balancer=name, instance=address, error=error)
            for cluster, weight in wanted.items():
                off = view.off(cluster, weight)  # compared per instance: a reload reverts one only
                if not off:
                    self._left.pop((name, cluster), None)
                    self._gauge(name, cluster, 0)
                    continue
                drift = {
                    "kind": "lb",
                    "balancer": name,
                    "cluster": cluster,
                    "expected": weight,
                    "found": max(off.values()),
                    "instances": off,
                    **({"unreadable": unreadable} if unreadable else {}),
                }
                if actuator.balancer.reassert_drift or (weight == 0 and self.failed(cluster)):
                    self._left.pop((name, cluster), None)
                    done = await self._reassert(drift, self._reweigh(actuator, cluster, weight))
                    self._gauge(name, cluster, 0 if done["reasserted"] else 1)
                    drifts.append(done)
                    continue
                self._gauge(name, cluster, 1)
                if self._left.get((name, cluster)) != (found := max(off.values())):
                    # a DNS zone changed by someone is their decision, not a revert: said once, left alone
                    self._left[(name, cluster)] = found
                    drifts.append(await self._reassert(drift, None))
        if self.scale is not None:
            for key, record in (await self.store.items("orig.scale.")).items():
                if record.get("set") is None:
                    continue
                _, _, cluster, namespace, kind, name = key.split(".", 5)
                w = Workload(cluster, namespace, kind, name)
                try:
                    now = await self.scale.read(w)
                except OrchestratorError as e:
                    log.warning("reconcile.read_failed", workload=str(w), error=str(e))
                    continue
                wanted_replicas = int(record["set"])
                if now.effective == wanted_replicas:
                    continue
                drift = {
                    "kind": "scale",
                    "workload": str(w),
                    "cluster": cluster,
                    "expected": wanted_replicas,
                    "found": now.effective,
                }
                drifts.append(await self._reassert(drift, self._rescale(w, wanted_replicas, now)))
        return drifts

    def _gauge(self, balancer: str, cluster: str, value: int) -> None:
        if self.metrics is not None:
            self._gauged.add((balancer, cluster))
            self.metrics.balancer_drift.labels(balancer=balancer, cluster=cluster).set(value)

    @staticmethod
    def _reweigh(actuator: BalancerActuator, cluster: str, weight: int) -> Callable[[], Awaitable[Any]]:
        """Write the held weight to the instances that differ (read again under the balancer's lock),
        not to every instance: the ones that kept it are sent nothing."""

        async def apply() -> Any:
            return await actuator.reassert(cluster, weight)

        return apply

    def _rescale(self, w: Workload, replicas: int, now: Current) -> Callable[[], Awaitable[Any]]:
        """Put back the `set` this pass read. The actuator checks it again under the workload's lock and
        raises Superseded (reported as not re-asserted) when a run restored the baseline or set another
        value since: this pass's read is older than that run's write."""
        scaler = self.scale
        assert scaler is not None

        async def apply() -> Any:
            return await scaler.reassert(w, replicas, now)

        return apply

    async def _reassert(
        self, drift: dict[str, Any], apply: Callable[[], Awaitable[Any]] | None
    ) -> dict[str, Any]:
        """Re-assert with `apply` and report; `apply` None: report only (a balancer that leaves drift)."""
        cluster = str(drift["cluster"])
        if apply is None:
            drift["reasserted"] = False
            drift["why"] = (
                "the cluster is not failed, and a change made in DNS is someone's decision: "
                "reported, left as it is"
            )
        elif self.busy(cluster):
            drift["reasserted"] = False
            drift["why"] = "a run is working on this cluster"
        elif await self.store.pause_for(cluster) is not None:
            drift["reasserted"] = False
            drift["why"] = "automation is paused"
        else:
            try:
                await apply()
                drift["reasserted"] = True
            except OrchestratorError as e:
                drift["reasserted"] = False
                drift["why"] = str(e)
        what = drift.get("workload") or f"{drift.get('balancer')}/{cluster}"
        reason = f"{what}: expected {drift['expected']}, found {drift['found']}; " + (
            "re-asserted" if drift["reasserted"] else f"not re-asserted ({drift['why']})"
        )
        log.warning("drift.detected", **{k: v for k, v in drift.items() if k != "why"}, reason=reason)
        await self.emit("drift.detected", reason, drift)
        return drift
