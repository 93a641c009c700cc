"""The link between a sandbox cluster's application and its workload: no pods, no answers.

In a real cluster an ingress reaches the application only through ready pods that no NetworkPolicy
isolates. The sandbox has no pods and no network, so `ServingLink` stands for that path: it keeps an
`AppServer` listening while the workload has available replicas and no NetworkPolicy denies ingress to
its pods, and closes the listener (connection refused, as from an ingress with no endpoints) otherwise.
A drill that scales the workload to zero or applies a deny-all policy is then seen by the probes the
same way a real one would be.

Policy semantics, reduced to a caller outside the cluster (the probes): a pod selected by any policy
whose `policyTypes` include Ingress is isolated, and then only a rule with neither `from` nor `ports`
(allow everything) lets the caller in. Rules with peers or ports are taken as not admitting it: the
sandbox has no addresses or ports to match them against, and refusing is the side a drill expects.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.kube_patch import selector_matches
from orchestrator.sandbox.kube_resources import lookup
from orchestrator.sandbox.kube_store import Store
from orchestrator.sandbox.kube_watch import WatchEvent

_DEPLOYMENTS = lookup("apps", "v1", "deployments")
_POLICIES = lookup("networking.k8s.io", "v1", "networkpolicies")


def serving(store: Store, namespace: str, deployment: str) -> tuple[bool, str]:
    """Whether the workload can answer from outside, and why not."""
    assert _DEPLOYMENTS is not None and _POLICIES is not None
    obj = store.find(_DEPLOYMENTS, namespace, deployment)
    if obj is None:
        return False, f"no deployment {namespace}/{deployment}"
    if not int((obj.get("status") or {}).get("availableReplicas", 0)):
        return False, "no available replicas"
    labels = dict((((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})
    isolating, allowed = [], False
    for policy in store.items(_POLICIES, namespace):
        spec = policy.get("spec") or {}
        if "Ingress" not in (spec.get("policyTypes") or []):
            continue
        if not selector_matches(spec.get("podSelector") or {}, labels):
            continue
        isolating.append(policy["metadata"]["name"])
        allowed = allowed or any(
            not (rule or {}).get("from") and not (rule or {}).get("ports")
            for rule in spec.get("ingress") or []
        )
    if isolating and not allowed:
        return False, f"ingress denied by NetworkPolicy {', '.join(sorted(isolating))}"
    return True, "serving"


class ServingLink:
    """Starts and stops `app` as `serving()` changes; `start()` applies the current state at once."""

    def __init__(self, store: Store, app: AppServer, namespace: str, deployment: str) -> None:
        self.store = store
        self.app = app
        self.namespace = namespace
        self.deployment = deployment
        self.reason = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on_event(self, event: WatchEvent) -> None:
        if event.rt in (_DEPLOYMENTS, _POLICIES) and event.namespace == self.namespace:
            self._wake.set()

    async def apply(self) -> None:
        up, self.reason = serving(self.store, self.namespace, self.deployment)
        if up and not self.app.running:
            await self.app.start()
        elif not up and self.app.running:
            await self.app.stop()

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.apply()
        self.store.listeners.append(self._on_event)
        self._wake.set()  # once more: a change made while the app was starting
        self._task = asyncio.create_task(self._run(), name=f"sandbox-serving-{self.app.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        with contextlib.suppress(ValueError):
            self.store.listeners.remove(self._on_event)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.apply()

    async def __aenter__(self) -> ServingLink:
        await self.start()
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.stop()
