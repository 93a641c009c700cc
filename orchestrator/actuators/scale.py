"""Scaling workloads so survivors absorb a failed cluster's load, and scaling them back (DESIGN §6b).

`absorb`: replicas = min(max_replicas, max(current, ceil(baseline x total_weight / surviving_weight)))
where `baseline` is the value recorded before our first change (KV
`orig.scale.<cluster>.<ns>.<kind>.<name>`, written with kv.create so a second failure scales from 6,
not from 9) and the weights are the clusters' nominal weights: all of them, and those still serving.
Scaling back recomputes the same target for the clusters serving now (one of two failed clusters back:
18 -> 9, not 6); the baseline itself is restored, and its record deleted, only when every cluster serves
again, and only where the current value is still the one we set (otherwise: drift, left alone).

Under an HPA we never fight the autoscaler over spec.replicas: we raise `minReplicas` (and
`maxReplicas` if needed) and restore both later. The baseline, `current` and the target are then all in
the HPA's floor, the unit we change: the record's `hpa.min` (and `hpa.max`), never its `replicas`, which
is spec.replicas as the load had set it (10 under a floor of 2: a second failure of three would ask for
30 instead of 6).

Every change to one workload (`scale_to`, `restore`, the reconciler's `reassert`) holds that workload's
lock from reading its record to updating it, so a re-assertion decided on an older read can neither
slip between a restore's write and its record update nor put back a value the restore just took away.

Fencing (DESIGN §6b): the leader's fence is checked immediately before each Kubernetes write, on every
attempt of the conflict retry (after the re-read, and after the NATS write of the baseline record), and
each write carries the resourceVersion just read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.core.errors import PermanentError
from orchestrator.kube.client import KubeClients
from orchestrator.kube.cluster import KubeCluster
from orchestrator.kube.errors import ConflictError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Workload:
    cluster: str
    namespace: str
    kind: str  # "deployment" | "statefulset"
    name: str

    @property
    def key(self) -> str:
        return f"orig.scale.{self.cluster}.{self.namespace}.{self.kind}.{self.name}"

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.kind}/{self.name}"


@dataclass(frozen=True)
class Current:
    replicas: int
    resource_version: str
    hpa: dict[str, Any] | None

    @property
    def effective(self) -> int:
        """What we control: the HPA's floor when an HPA owns the workload, else spec.replicas."""
        if self.hpa is not None:
            return int(self.hpa["spec"].get("minReplicas") or 1)
        return self.replicas


@dataclass(frozen=True)
class ScaleChange:
    workload: str
    before: int
    after: int
    via: str  # "replicas" | "hpa"
    drift: str | None = None

    def describe(self) -> str:
        what = "HPA minReplicas" if self.via == "hpa" else "replicas"
        text = f"{self.workload} {what} {self.before} -> {self.after}"
        return f"{text} (drift: {self.drift})" if self.drift else text


class Superseded(PermanentError):
    """A re-assertion stood down: since the reconciler read the record, a run restored the baseline (the
    record is gone) or set another value. The workload is the run's; putting the old value back would
    undo its scale-down."""


def recorded_baseline(record: Mapping[str, Any], current: Current) -> int:
    """The baseline in the unit we change now: the HPA's recorded floor while an HPA owns the workload,
    else the recorded spec.replicas. Records have carried `hpa.min`/`hpa.max` since HPAs were supported,
    so every record, old or new, is read the same way."""
    hpa = record.get("hpa")
    if hpa and current.hpa is not None:
        return int(hpa["min"] or 1)
    return int(record["replicas"])


class ScaleActuator:
    def __init__(
        self,
        kube: KubeClients,
        config: Config,
        store: StateStore,
        states: Callable[[], Mapping[str, str]],
        fence: Callable[[], None] = lambda: None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.store = store
        self.states = states
        self.fence = fence
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, w: Workload) -> asyncio.Lock:
        """Held by every change to `w`, from reading its record to updating it (see the module doc)."""
        found = self._locks.get(w.key)
        if found is None:
            found = self._locks[w.key] = asyncio.Lock()
        return found

    async def cluster(self, name: str) -> KubeCluster:
        try:
            ref = self.config.cluster(name).kubernetes
        except KeyError:
            raise PermanentError(f"unknown cluster {name!r}") from None
        if ref is None:
            raise PermanentError(f"cluster {name} has no 'kubernetes:' section")
        return await self.kube.cluster(ref, name)

    async def read(self, w: Workload) -> Current:
        kube = await self.cluster(w.cluster)
        replicas, rv = await kube.get_scale(w.namespace, w.kind, w.name)
        hpa = await kube.get_hpa_for(w.namespace, w.kind, w.name)
        return Current(replicas, rv, hpa)

    async def record(self, w: Workload) -> dict[str, Any] | None:
        value = await self.store.get(w.key)
        return dict(value) if value else None

    # the formula ---------------------------------------------------------------------------------

    async def not_serving(self, absent: Iterable[str] = (), sizing: str | None = None) -> list[str]:
        """`absent` and every cluster whose drain we hold (`desired.lb.*.<cluster>` at 0): a cluster
        that recovered but whose failback has not given its traffic back yet (waiting for approval, in
        its readiness wait), or one drained by hand, carries none of the load. `sizing`, the cluster
        whose workload is being sized, counts as serving: a failback sizes it for when it serves."""
        held = {c for (_balancer, c), weight in (await self.store.desired_weights()).items() if weight == 0}
        return sorted({*absent, *(held - {sizing})})

    def weights(self, absent: Iterable[str]) -> tuple[int, int]:
        """(total nominal weight of all clusters, nominal weight of those serving), where serving means
        not failed and not in `absent` (the clusters whose load is being absorbed)."""
        states = self.states()
        gone = set(absent)
        total = sum(c.weight for c in self.config.clusters)
        surviving = sum(
            c.weight for c in self.config.clusters if c.name not in gone and states.get(c.name) != "failed"
        )
        return total, surviving

    @staticmethod
    def absorb_target(
        baseline: int, current: int, total: int, surviving: int, max_replicas: int | None
    ) -> int:
        if surviving <= 0:
            raise PermanentError("no cluster left serving: nothing can absorb the load")
        target = max(current, math.ceil(baseline * total / surviving))
        return min(max_replicas, target) if max_replicas is not None else target

    # effects -------------------------------------------------------------------------------------

    async def scale_to(self, w: Workload, target: int, current: Current) -> ScaleChange:
        """Absolute target; records the baseline first (kv.create, never overwritten), then the value set."""
        async with self.lock(w):
            return await self._scale_to(w, target, current)

    async def _scale_to(self, w: Workload, target: int, current: Current) -> ScaleChange:
        baseline_record = {
            "replicas": current.replicas,
            "set": None,
            "hpa": (
                {
                    "name": current.hpa["metadata"]["name"],
                    "min": current.hpa["spec"].get("minReplicas") or 1,
                    "max": current.hpa["spec"]["maxReplicas"],
                }
                if current.hpa
                else None
            ),
        }
        await self.store.create_if_absent(w.key, baseline_record)
        change = await self._apply(w, target, current)
        record = await self.record(w) or baseline_record
        record["set"] = target
        await self.store.put(w.key, record)
        return change

    async def _apply(
        self, w: Workload, target: int, current: Current, ceiling: int | None = None
    ) -> ScaleChange:
        return await self._conflict_retry(w, current, lambda now: self._write(w, target, now, ceiling))

    async def _conflict_retry(
        self,
        w: Workload,
        current: Current,
        write: Callable[[Current], Awaitable[ScaleChange]],
        conflicts: int = 3,
    ) -> ScaleChange:
        """Write with the resourceVersion just read. A 409 (most often the workload's controller updating
        status in between) is answered by reading again and writing the same absolute values, a bounded
        number of times."""
        for _ in range(conflicts):
            try:
                return await write(current)
            except ConflictError:
                current = await self.read(w)
        return await write(current)

    async def _write(
        self, w: Workload, target: int, current: Current, ceiling: int | None = None
    ) -> ScaleChange:
        """Under an HPA, `target` is the floor; the ceiling rises with it when it must, and with `ceiling`
        (the recorded one, when scaling back) comes down as far as the floor allows."""
        kube = await self.cluster(w.cluster)
        if current.hpa is not None:
            spec = current.hpa["spec"]
            before = int(spec.get("minReplicas") or 1)
            now_max = int(spec["maxReplicas"])
            new_max = max(target, now_max if ceiling is None else min(now_max, ceiling))
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": current.hpa["metadata"]["resourceVersion"]},
                "spec": {"minReplicas": target},
            }
            if new_max != now_max:
                patch["spec"]["maxReplicas"] = new_max
            if before != target or "maxReplicas" in patch["spec"]:
                self.fence()  # right before the write, on every attempt
                await kube.patch_hpa(w.namespace, current.hpa["metadata"]["name"], patch)
            log.info("k8s.scaled", workload=str(w), via="hpa", before=before, after=target)
            return ScaleChange(str(w), before, target, "hpa")
        if current.replicas != target:
            # the resourceVersion read under this step: a concurrent change is a 409, and we re-read
            self.fence()
            await kube.set_scale(w.namespace, w.kind, w.name, target, current.resource_version)
        log.info("k8s.scaled", workload=str(w), via="replicas", before=current.replicas, after=target)
        return ScaleChange(str(w), current.replicas, target, "replicas")

    async def reassert(self, w: Workload, target: int, current: Current) -> ScaleChange:
        """Put back a value we set that something reverted (the reconciler's use): `target` is the `set`
        the reconcile pass read. The record is read again under the workload's lock, and a record gone or
        holding another value raises Superseded instead of writing: a pass that read it before a run's
        scale-down would otherwise undo it, and once the record is gone nothing would ever restore it."""
        async with self.lock(w):
            record = await self.record(w)
            if record is None:
                raise Superseded(
                    f"{w}: the scale-out ended after this pass read it (baseline restored, record deleted)"
                )
            held = record.get("set")
            if held is None or int(held) != target:
                raise Superseded(
                    f"{w}: the record now holds {held}, set by a run after this pass read {target}"
                )
            return await self._apply(w, target, current)

    async def plan_restore(self, w: Workload, max_replicas: int | None = None) -> dict[str, Any]:
        """What `restore` would do, read-only: {current, record, baseline, target (None: nothing),
        restore_baseline, reason, drift}."""
        record = await self.record(w)
        current = await self.read(w)
        plan: dict[str, Any] = {
            "current": current,
            "record": record,
            "target": None,
            "drift": None,
            "baseline": recorded_baseline(record, current) if record else current.effective,
            "restore_baseline": False,
        }
        if record is not None and record.get("set") is not None and current.effective != int(record["set"]):
            plan["drift"] = f"expected {record['set']} (ours), found {current.effective}; left as it is"
            plan["reason"] = "drift"
            return plan
        total, surviving = self.weights(await self.not_serving(sizing=w.cluster))
        if surviving == total:
            if record is None:
                plan["reason"] = "nothing to restore: no scale-out was recorded"
            else:
                plan["target"] = plan["baseline"]
                plan["restore_baseline"] = True
                plan["reason"] = "every cluster serves again: baseline restored, record deleted"
            return plan
        if surviving <= 0:
            plan["reason"] = "no cluster serves: nothing to size for"
            return plan
        target = math.ceil(plan["baseline"] * total / surviving)
        if max_replicas is not None:
            target = min(max_replicas, target)
        if target == current.effective:
            plan["reason"] = f"already at {target} for the clusters serving now"
            return plan
        plan["target"] = target
        plan["reason"] = (
            f"{surviving} of {total} nominal weight serving: sized from baseline {plan['baseline']}"
        )
        return plan

    async def restore(self, w: Workload, max_replicas: int | None = None) -> tuple[ScaleChange | None, str]:
        """Scale back to what the clusters serving now need; the baseline once every cluster serves.

        Returns (change or None, explanation)."""
        async with self.lock(w):
            return await self._restore(w, max_replicas)

    async def _restore(self, w: Workload, max_replicas: int | None) -> tuple[ScaleChange | None, str]:
        plan = await self.plan_restore(w, max_replicas)
        current: Current = plan["current"]
        record = plan["record"]
        if plan["drift"]:
            return (
                ScaleChange(
                    str(w),
                    current.effective,
                    current.effective,
                    "hpa" if current.hpa else "replicas",
                    drift=plan["drift"],
                ),
                "drift",
            )
        if plan["target"] is None:
            return None, str(plan["reason"])
        if plan["restore_baseline"]:  # decided with the plan: the cluster states are read once
            change = await self._restore_baseline(w, record, current)
            await self.store.delete(w.key)
            return change, str(plan["reason"])
        if record is None:
            return await self._scale_to(w, int(plan["target"]), current), str(plan["reason"])
        ceiling = int(record["hpa"]["max"]) if record.get("hpa") else None
        change = await self._apply(w, int(plan["target"]), current, ceiling)
        record["set"] = plan["target"]
        await self.store.put(w.key, record)
        return change, str(plan["reason"])

    async def _restore_baseline(self, w: Workload, record: dict[str, Any], current: Current) -> ScaleChange:
        return await self._conflict_retry(w, current, lambda now: self._write_baseline(w, record, now))

    async def _write_baseline(self, w: Workload, record: dict[str, Any], current: Current) -> ScaleChange:
        kube = await self.cluster(w.cluster)
        hpa = record.get("hpa")
        if hpa and current.hpa is not None:
            before = current.effective
            self.fence()
            await kube.patch_hpa(
                w.namespace,
                hpa["name"],
                {
                    "metadata": {"resourceVersion": current.hpa["metadata"]["resourceVersion"]},
                    "spec": {"minReplicas": int(hpa["min"]), "maxReplicas": int(hpa["max"])},
                },
            )
            return ScaleChange(str(w), before, int(hpa["min"]), "hpa")
        baseline = int(record["replicas"])
        if current.replicas != baseline:
            self.fence()
            await kube.set_scale(w.namespace, w.kind, w.name, baseline, current.resource_version)
        return ScaleChange(str(w), current.replicas, baseline, "replicas")
