"""The sandbox's stand-in for the deployment, statefulset and HPA controllers.

Enough behaviour for failover to be observable through the API: `status` follows `spec` the way a real
rollout looks from outside. `observedGeneration` and `replicas` follow at once; new pods become ready
`ready_delay_s` after they were asked for (a scale-down is immediate); a template change is a rollout
whose `updatedReplicas` reaches the desired count after the same delay. `unavailable` holds pods back
(a crash-looping image, an exhausted node pool) so a test can make a workload stuck. An HPA clamps its
target's `spec.replicas` into [minReplicas, maxReplicas] as the real controller does before it looks at
metrics; there are no metrics here, so within the bounds the replicas stay where they were set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from orchestrator.sandbox.kube_objects import now_rfc3339
from orchestrator.sandbox.kube_resources import RESOURCES, ResourceType, by_kind_name
from orchestrator.sandbox.kube_store import Store
from orchestrator.sandbox.kube_watch import WatchEvent

WORKLOADS = tuple(rt for rt in RESOURCES if rt.plural in ("deployments", "statefulsets"))
HPA = next(rt for rt in RESOURCES if rt.plural == "horizontalpodautoscalers")


@dataclass
class _Progress:
    template: str
    ready: int
    ready_since: float | None = None
    """When more ready pods were first wanted; they are ready at ready_since + ready_delay_s."""
    rollout_since: float | None = None


class WorkloadController:
    def __init__(self, store: Store, ready_delay_s: float, name: str = "kubeapi") -> None:
        self.store = store
        self.ready_delay_s = ready_delay_s
        self.name = name
        self.unavailable: dict[tuple[str, str, str], int] = {}
        """(plural, namespace, name) -> pods that never become ready."""
        self._progress: dict[str, _Progress] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        store.listeners.append(self._on_event)

    def _on_event(self, event: WatchEvent) -> None:
        if event.rt in WORKLOADS or event.rt is HPA:
            self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sandbox-kube-controller-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            due = self.reconcile(loop.time())
            timeout = None if due is None else max(0.0, due - loop.time()) + 0.001
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def reconcile(self, now: float) -> float | None:
        """One pass over every HPA and workload; returns when the next pending change is due."""
        self._clamp_hpas()
        next_due: float | None = None
        seen: set[str] = set()
        for rt in WORKLOADS:
            for obj in self.store.items(rt):
                seen.add(obj["metadata"]["uid"])
                due = self._reconcile_one(rt, obj, now)
                if due is not None and (next_due is None or due < next_due):
                    next_due = due
        for uid in set(self._progress) - seen:
            del self._progress[uid]
        return next_due

    def _reconcile_one(self, rt: ResourceType, obj: dict[str, Any], now: float) -> float | None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        old_status = obj.get("status") or {}
        desired = int(spec.get("replicas", 1))
        template = json.dumps(spec.get("template"), sort_keys=True)
        namespace, name = meta.get("namespace", ""), meta["name"]
        target = max(0, desired - self.unavailable.get((rt.plural, namespace, name), 0))
        p = self._progress.get(meta["uid"])
        if p is None:
            ready = int(old_status.get("readyReplicas", 0))
            p = self._progress[meta["uid"]] = _Progress(template=template, ready=ready)
        if p.template != template:
            p.template, p.rollout_since = template, now
        delay, due = self.ready_delay_s, None
        if p.rollout_since is not None:
            if now >= p.rollout_since + delay:
                p.rollout_since = None
            else:
                due = p.rollout_since + delay
        if target < p.ready:
            p.ready, p.ready_since = target, None
        elif target > p.ready:
            p.ready_since = now if p.ready_since is None else p.ready_since
            if now >= p.ready_since + delay:
                p.ready, p.ready_since = target, None
            else:
                due = min(due, p.ready_since + delay) if due is not None else p.ready_since + delay
        else:
            p.ready_since = None
        updated = 0 if p.rollout_since is not None else desired
        status = self._status(rt, obj, desired, updated, p.ready, p.rollout_since is not None)
        if status != old_status:
            self.store.write_status(rt, namespace, name, status)
        return due

    @staticmethod
    def _status(
        rt: ResourceType, obj: dict[str, Any], desired: int, updated: int, ready: int, rolling: bool
    ) -> dict[str, Any]:
        counts = {
            "replicas": desired,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if rt.kind == "Deployment":
            counts["unavailableReplicas"] = max(0, desired - ready)
        else:
            counts["currentReplicas"] = updated
        status: dict[str, Any] = {"observedGeneration": obj["metadata"].get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})  # omitempty, as the API server serializes
        if rt.kind != "Deployment":
            return status
        available = ready >= desired
        wanted = [
            (
                "Available",
                "True" if available else "False",
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
            ),
            (
                "Progressing",
                "True",
                "NewReplicaSetAvailable" if available and not rolling else "ReplicaSetUpdated",
                f'ReplicaSet "{obj["metadata"]["name"]}" is progressing.',
            ),
        ]
        previous = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
        conditions = []
        for kind, value, reason, message in wanted:
            before = previous.get(kind)
            if before and (before.get("status"), before.get("reason")) == (value, reason):
                conditions.append(before)
            else:
                stamp = now_rfc3339()
                conditions.append(
                    {
                        "type": kind,
                        "status": value,
                        "reason": reason,
                        "message": message,
                        "lastUpdateTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                )
        status["conditions"] = conditions
        return status

    def _clamp_hpas(self) -> None:
        for hpa in self.store.items(HPA):
            spec, meta = hpa.get("spec") or {}, hpa["metadata"]
            ref = spec.get("scaleTargetRef") or {}
            rt = by_kind_name(str(ref.get("kind", "")))
            namespace = meta.get("namespace", "")
            target = (
                self.store.objects.get(self.store.key(rt, namespace, str(ref.get("name")))) if rt else None
            )
            old_status = hpa.get("status") or {}
            if rt not in WORKLOADS or target is None:
                status: dict[str, Any] = {"currentReplicas": 0, "desiredReplicas": 0}
            else:
                current = int(target["spec"].get("replicas", 1))
                low, high = int(spec.get("minReplicas", 1)), int(spec.get("maxReplicas", current))
                desired = current if current == 0 else min(max(current, low), high)  # 0: scaling disabled
                status = {"desiredReplicas": desired}
                current_status = int((target.get("status") or {}).get("replicas", 0))
                if current_status:
                    status["currentReplicas"] = current_status
                if desired != current:
                    self.store.write_replicas(rt, namespace, str(ref.get("name")), desired)
                    status["lastScaleTime"] = now_rfc3339()
                elif "lastScaleTime" in old_status:
                    status["lastScaleTime"] = old_status["lastScaleTime"]
            if status != old_status:
                self.store.write_status(HPA, namespace, meta["name"], status)
