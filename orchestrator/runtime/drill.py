"""A drill (DESIGN §15): a reversible fault in a real cluster, the orchestrator's reaction measured.

`Drill.run` checks that nothing else is going on (every cluster healthy, no run, no pause, no freeze),
announces itself (audited), injects the fault, and watches through a `DaemonView` until the cluster is
failed, its traffic is moved (every balancer reads back weight 0) and the failover run has finished;
then it removes the fault and watches the recovery: the cluster healthy again, the failback run
finished and every weight back to what it was before. The fault is removed whatever happens: on a
timeout, an error or a cancellation (Ctrl-C and SIGTERM cancel the drill; `failover drill` wires that),
with retries, and when even that fails the report says exactly what to undo by hand.

Faults:
- `scale-to-zero` records the workload's `spec.replicas`, scales it to 0 through the scale subresource
  and puts the recorded count back (only while it is still 0: a value someone else set is left alone);
- `deny-ingress` creates a NetworkPolicy selecting the workload's pods with no ingress rule (deny all)
  and deletes it.

Times come from the sources where they are exact: a run's `created_at`/`finished_at` and its event's
`ts` from the journal; traffic moved and restored are when the drill read the balancers back
(`POLL_S` resolution).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from orchestrator.core.config import Config
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.models import rfc3339
from orchestrator.kube.client import KubeClients
from orchestrator.kube.cluster import DEFAULT_TIMEOUT_S, KubeCluster
from orchestrator.kube.errors import translate

log = structlog.get_logger(__name__)

FAULTS = ("scale-to-zero", "deny-ingress")
POLICY_NAME = "failover-drill-deny-ingress"
POLL_S = 0.1
REMOVE_ATTEMPTS = 5
FINISHED = ("succeeded", "failed", "aborted", "blocked", "denied", "cancelled", "skipped")
STAGES = (
    ("fault.injected", "the fault is in place"),
    ("cluster.failed", "the detector's event"),
    ("run.started", "the failover run"),
    ("traffic.moved", "every balancer reads back weight 0"),
    ("run.finished", "the failover run"),
    ("fault.removed", "the fault is undone"),
    ("cluster.recovered", "the detector's event"),
    ("failback.started", "the failback run"),
    ("traffic.restored", "every balancer reads back its weight from before"),
    ("failback.finished", "the failback run"),
)


class DrillRefused(OrchestratorError):
    """Refused before anything was touched: another incident, a pause, a bad argument."""


class ViewError(OrchestratorError):
    """The daemon could not be read or told (its API is down, a token is refused)."""


class NotAnnounced(OrchestratorError):
    """The daemon has no `drill` command to announce a drill with: the drill goes on, and says so."""


class DaemonView(Protocol):
    """What a drill reads from the daemon and tells it: the HTTP API for `failover drill`, the leader's
    own objects for practice runs."""

    async def status(self) -> dict[str, Any]:
        """As `GET /api/v1/status`: clusters, active_runs, waiting_approval, frozen, paused."""
        ...

    async def weights(self, cluster: str) -> dict[str, int] | None:
        """balancer -> the cluster's current weight; None when a balancer cannot be read."""
        ...

    async def runs(self) -> list[dict[str, Any]]:
        """The newest runs, newest first, as `GET /api/v1/runs` lists them."""
        ...

    async def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's journal record, as `GET /api/v1/runs/{id}`: its event's `ts` is the event's time."""
        ...

    async def announce(self, phase: str, detail: dict[str, Any]) -> None:
        """Audit the drill and tell the daemon's event stream (`drill.started` / `drill.finished`);
        NotAnnounced when the daemon cannot, ViewError when it refuses (a token without the role)."""
        ...


@dataclass(frozen=True)
class DrillSpec:
    cluster: str
    fault: str
    namespace: str
    deployment: str
    timeout_s: float = 300.0
    """From the fault to the failover run's end: longer is a failed drill (the fault is removed)."""
    recovery_timeout_s: float = 300.0
    """From the fault's removal to the failback's end and every weight back."""


def refusal(status: dict[str, Any], cluster: str) -> str | None:
    """Why a drill must not start now, or None."""
    states: dict[str, str] = status.get("clusters") or {}
    if cluster not in states:
        return f"unknown cluster {cluster!r} (known: {', '.join(sorted(states))})"
    if status.get("frozen"):
        return "automation is frozen by the observer guard: `failover ctl resume` lifts it"
    pauses = status.get("paused") or []
    if pauses:
        scopes = ", ".join(f"{p.get('scope')} (by {p.get('by') or '?'})" for p in pauses)
        return f"automation is paused: {scopes}; a drill would measure nothing (`failover ctl resume`)"
    unhealthy = {name: state for name, state in states.items() if state != "healthy"}
    if unhealthy:
        listed = ", ".join(f"{name} is {state}" for name, state in sorted(unhealthy.items()))
        return f"another incident is open: {listed}"
    active = status.get("active_runs") or {}
    if active:
        return f"a run is active: {', '.join(f'{k} ({v})' for k, v in sorted(active.items()))}"
    if status.get("waiting_approval"):
        return f"a run waits for approval: {', '.join(status['waiting_approval'])}"
    return None


def _ts(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Report:
    spec: DrillSpec
    stages: dict[str, tuple[float, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def mark(self, stage: str, at: float | None, detail: str = "") -> None:
        if stage not in self.stages and at is not None:
            self.stages[stage] = (at, detail)

    @property
    def passed(self) -> bool:
        return not self.problems and not self.interrupted and all(s in self.stages for s, _ in STAGES)

    def since_fault(self, stage: str) -> float | None:
        if stage not in self.stages or "fault.injected" not in self.stages:
            return None
        return round(self.stages[stage][0] - self.stages["fault.injected"][0], 3)

    def as_dict(self) -> dict[str, Any]:
        timeline = [
            {
                "stage": stage,
                "at": rfc3339(self.stages[stage][0]) if stage in self.stages else None,
                "since_fault_s": self.since_fault(stage),
                "detail": self.stages[stage][1] if stage in self.stages else "",
            }
            for stage, _ in STAGES
        ]
        return {
            "cluster": self.spec.cluster,
            "fault": self.spec.fault,
            "workload": f"{self.spec.namespace}/{self.spec.deployment}",
            "outcome": "passed" if self.passed else "interrupted" if self.interrupted else "failed",
            "recovery_s": self.since_fault("traffic.moved"),
            "problems": list(self.problems),
            "notes": list(self.notes),
            "timeline": timeline,
        }


class NetworkPolicies:
    """Create and delete one NetworkPolicy: the only networking.k8s.io calls the orchestrator makes, kept
    here next to their one user; errors become ours through `kube.errors.translate` as everywhere."""

    def __init__(self, api_client: Any, cluster: str) -> None:
        from kubernetes_asyncio import client

        self._api = client.NetworkingV1Api(api_client)
        self.cluster = cluster

    async def _call(self, what: str, call: Callable[[], Any]) -> None:
        try:
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                await call()
        except Exception as e:  # the client raises ApiException, aiohttp and OS errors: all translated
            raise translate(e, f"{self.cluster}: {what}") from e

    async def create(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        wire: Any = body  # the client serializes a plain dict as it is (camelCase, as on the wire)
        await self._call(
            f"create networkpolicy {namespace}/{name}",
            lambda: self._api.create_namespaced_network_policy(namespace, wire),
        )

    async def delete(self, namespace: str, name: str) -> None:
        await self._call(
            f"delete networkpolicy {namespace}/{name}",
            lambda: self._api.delete_namespaced_network_policy(name, namespace),
        )


class Fault:
    """One reversible fault on one workload; `remove` is idempotent."""

    def __init__(self, kube: KubeCluster, policies: NetworkPolicies, spec: DrillSpec) -> None:
        self.kube = kube
        self.policies = policies
        self.spec = spec
        self.replicas: int | None = None
        self.injected = False

    @property
    def undo_by_hand(self) -> str:
        s = self.spec
        if s.fault == "scale-to-zero":
            return f"kubectl -n {s.namespace} scale deployment/{s.deployment} --replicas={self.replicas}"
        return f"kubectl -n {s.namespace} delete networkpolicy {POLICY_NAME}"

    async def inject(self) -> str:
        s = self.spec
        if s.fault == "scale-to-zero":
            self.replicas, version = await self.kube.get_scale(s.namespace, "Deployment", s.deployment)
            if self.replicas == 0:
                raise DrillRefused(f"{s.namespace}/{s.deployment} already has 0 replicas: nothing to drill")
            self.injected = True  # from here on `remove` puts the count back, even if this call fails
            await self.kube.set_scale(s.namespace, "Deployment", s.deployment, 0, version)
            return f"{s.namespace}/{s.deployment} replicas {self.replicas} -> 0"
        deployment = await self.kube.get_deployment(s.namespace, s.deployment)
        selector = (deployment.get("spec") or {}).get("selector") or {}
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": POLICY_NAME,
                "namespace": s.namespace,
                "labels": {"app.kubernetes.io/managed-by": "failover-drill"},
            },
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"]},
        }
        await self.policies.create(s.namespace, policy)
        self.injected = True
        return f"NetworkPolicy {s.namespace}/{POLICY_NAME} denies ingress to {s.deployment}"

    async def remove(self) -> str:
        s = self.spec
        if not self.injected:
            return "nothing to remove"
        if s.fault == "scale-to-zero":
            assert self.replicas is not None
            current, version = await self.kube.get_scale(s.namespace, "Deployment", s.deployment)
            if current != 0:  # someone else set it meanwhile: theirs to keep
                self.injected = False
                return f"{s.namespace}/{s.deployment} is at {current} replicas (not ours): left alone"
            await self.kube.set_scale(s.namespace, "Deployment", s.deployment, self.replicas, version)
            self.injected = False
            return f"{s.namespace}/{s.deployment} replicas 0 -> {self.replicas}"
        await self.policies.delete(s.namespace, POLICY_NAME)
        self.injected = False
        return f"NetworkPolicy {s.namespace}/{POLICY_NAME} deleted"


class Drill:
    def __init__(
        self,
        config: Config,
        spec: DrillSpec,
        view: DaemonView,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if spec.fault not in FAULTS:
            raise DrillRefused(f"unknown fault {spec.fault!r} (known: {', '.join(FAULTS)})")
        try:
            self.cluster = config.cluster(spec.cluster)
        except KeyError:
            names = ", ".join(c.name for c in config.clusters)
            raise DrillRefused(f"unknown cluster {spec.cluster!r} (known: {names})") from None
        if self.cluster.kubernetes is None:
            raise DrillRefused(
                f"cluster {spec.cluster!r} has no `kubernetes:` section: nothing to inject into"
            )
        self.spec = spec
        self.view = view
        self.clock = clock
        self.report = Report(spec)

    async def run(self) -> Report:
        """The whole drill; the fault is removed on every way out (cancellation included)."""
        status = await self.view.status()
        why = refusal(status, self.spec.cluster)
        if why:
            raise DrillRefused(why)
        before = await self.view.weights(self.spec.cluster)
        if before is None or not before:
            raise DrillRefused(f"the balancers' weights of {self.spec.cluster} cannot be read")
        if not any(before.values()):
            raise DrillRefused(f"{self.spec.cluster} carries no traffic (weights {before}): nothing to move")
        async with KubeClients() as clients:
            assert self.cluster.kubernetes is not None
            ref, name = self.cluster.kubernetes, self.spec.cluster
            policies = NetworkPolicies(await clients.api_client(ref), name)
            fault = Fault(await clients.cluster(ref, name), policies, self.spec)
            await self._announce("started", self._detail())
            try:
                try:
                    self.report.mark("fault.injected", self.clock(), await fault.inject())
                    if not await self._watch(self._failover_seen):
                        self.report.problems.append(
                            f"not failed over within {self.spec.timeout_s:g}s: missing "
                            + ", ".join(s for s, _ in STAGES[1:5] if s not in self.report.stages)
                        )
                finally:
                    await self._remove(fault)
                if not await self._watch(lambda: self._recovery_seen(before), self.spec.recovery_timeout_s):
                    self.report.problems.append(
                        f"not recovered within {self.spec.recovery_timeout_s:g}s: missing "
                        + ", ".join(s for s, _ in STAGES[6:] if s not in self.report.stages)
                    )
            except asyncio.CancelledError:
                self.report.interrupted = True
                raise
            except OrchestratorError as e:
                self.report.problems.append(str(e))
            finally:
                with contextlib.suppress(OrchestratorError, asyncio.CancelledError):
                    await asyncio.shield(self._announce("finished", self._detail(final=True)))
        return self.report

    async def _announce(self, phase: str, detail: dict[str, Any]) -> None:
        try:
            await self.view.announce(phase, detail)
        except NotAnnounced as e:
            if str(e) not in self.report.notes:
                self.report.notes.append(str(e))

    def _detail(self, final: bool = False) -> dict[str, Any]:
        detail: dict[str, Any] = {"cluster": self.spec.cluster, "fault": self.spec.fault}
        if final:
            report = self.report.as_dict()
            detail.update(outcome=report["outcome"], recovery_s=report["recovery_s"])
            detail["timeline"] = {t["stage"]: t["since_fault_s"] for t in report["timeline"]}
        return detail

    async def _remove(self, fault: Fault) -> None:
        """Bounded retries, shielded from a second cancellation; on failure the report says what to undo."""
        last = ""
        for attempt in range(REMOVE_ATTEMPTS):
            try:
                detail = await asyncio.shield(fault.remove())
                self.report.mark("fault.removed", self.clock(), detail)
                return
            except OrchestratorError as e:
                last = str(e)
                log.warning("drill.remove_failed", attempt=attempt + 1, error=last)
                await asyncio.shield(asyncio.sleep(min(0.5 * 2**attempt, 4.0)))
        self.report.problems.append(
            f"the fault could not be removed ({last}): undo it by hand: {fault.undo_by_hand}"
        )

    async def _watch(self, seen: Callable[[], Any], timeout_s: float | None = None) -> bool:
        """Poll `seen` until it holds or the time is up; a daemon briefly unreadable is polled again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.spec.timeout_s if timeout_s is None else timeout_s)
        last_error = ""
        while True:
            try:
                if await seen():
                    return True
            except ViewError as e:
                last_error = str(e)
            if loop.time() >= deadline:
                if last_error:
                    self.report.problems.append(f"the daemon was not readable: {last_error}")
                return False
            await asyncio.sleep(POLL_S)

    def _our_runs(self, runs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
        since = self.report.stages["fault.injected"][0] - 1.0
        return [
            r
            for r in runs
            if r.get("cluster") == self.spec.cluster
            and r.get("event") == event
            and (_ts(r.get("created_at")) or 0) >= since
        ]

    async def _mark_runs(self, event: str, started: str, finished: str) -> bool:
        """Mark the event (its time from the run's journal), the run's start and end; True once every
        run the event started has finished."""
        ours = self._our_runs(await self.view.runs(), event)
        if ours and self.report.stages.get(event, (0.0, "observed"))[1].startswith("observed"):
            record = await self.view.run(str(ours[-1].get("id")))
            when = _ts(((record or {}).get("event") or {}).get("ts"))
            if when is not None:  # exact, where the poll only saw it up to POLL_S late
                self.report.stages[event] = (when, "its time in the run's journal")
        for run in reversed(ours):  # the oldest first: the run the event started
            self.report.mark(started, _ts(run.get("created_at")), f"{run.get('playbook')} {run.get('id')}")
        done = [r for r in ours if r.get("status") in FINISHED]
        for run in reversed(done):
            self.report.mark(finished, _ts(run.get("finished_at")), f"{run.get('status')}")
        return bool(ours) and len(done) == len(ours)

    async def _failover_seen(self) -> bool:
        finished = await self._mark_runs("cluster.failed", "run.started", "run.finished")
        status = await self.view.status()
        if (status.get("clusters") or {}).get(self.spec.cluster) == "failed":
            self.report.mark("cluster.failed", self.clock(), "observed (no run's event yet)")
        weights = await self.view.weights(self.spec.cluster)
        if weights and not any(weights.values()):
            self.report.mark("traffic.moved", self.clock(), ", ".join(f"{lb} 0" for lb in sorted(weights)))
        return finished and all(s in self.report.stages for s in ("cluster.failed", "traffic.moved"))

    async def _recovery_seen(self, before: dict[str, int]) -> bool:
        finished = await self._mark_runs("cluster.recovered", "failback.started", "failback.finished")
        status = await self.view.status()
        if (status.get("clusters") or {}).get(self.spec.cluster) == "healthy":
            self.report.mark("cluster.recovered", self.clock(), "observed (no run's event yet)")
        weights = await self.view.weights(self.spec.cluster)
        if weights == before:
            self.report.mark(
                "traffic.restored", self.clock(), ", ".join(f"{lb} {w}" for lb, w in sorted(weights.items()))
            )
        idle = not (status.get("active_runs") or {})
        return (
            finished
            and idle
            and all(s in self.report.stages for s in ("cluster.recovered", "traffic.restored"))
        )
