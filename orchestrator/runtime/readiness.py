"""Readiness (DESIGN §17): would each failover playbook work, now, for each cluster it can fire for?

A failover is needed rarely and must work the first time. Its preconditions rot quietly in between: a
server renamed in HAProxy, a workload moved to another namespace, a `max_replicas` that was enough
before the fleet shrank, a service account that lost a verb in an RBAC clean-up, a Slack token rotated.
AWS ARC checks its plans' readiness every 30 minutes; this does the same for Kubernetes failover.

For every failover playbook (triggered by `cluster.failed`, or a `manual-drain*` playbook) and every
cluster its trigger selects, the playbook is rendered into its plan exactly as a run would
(`playbooks.plan.render_plan`, the event and fleet as `failover plan` builds them, the cluster failed),
and each step's parameters are rendered and validated as at step start. Then, per step, through the
same read paths the actions use:
- `lb.*`: the balancer answers on every instance (`BalancerActuator.read`), has a member for the
  cluster, and a drain would not be refused by `min_healthy_clusters` with today's weights;
- `k8s.*`: the workload exists (`ScaleActuator.read`); `k8s.scale` computes its target as the step
  would (`K8sScale` with `max_replicas` lifted) and fails when `max_replicas` is below what absorbing the
  cluster's loss needs; checking every cluster covers the largest single-cluster loss;
- the Kubernetes verbs each step will use, asked with SelfSubjectAccessReview on the identity the step
  uses (`kube.access`): the survivors' clusters for scaling, the balancer's cluster for route weights;
- `notify` (on_failure's too: on-call must hear when the failover fails): the notifier is configured
  and reachable (`Notifier.check`, which sends nothing).

Nothing is written anywhere: no balancer lock is taken (reads only), and the fence handed to every
actuator refuses, so a write attempted by mistake fails instead of happening. Each read is bounded by
`readiness.timeout`; reads are shared by all pairs of one pass, so a pass costs one read per balancer,
workload, permission and notifier, whatever the number of playbooks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from orchestrator.actuators.base import Balancer
from orchestrator.actuators.kube_lb import KubeObjectBalancer
from orchestrator.actuators.lb import BalancerActuator, WeightsView
from orchestrator.actuators.scale import Current, ScaleActuator, Workload
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core import redact
from orchestrator.core.config import Config
from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError
from orchestrator.core.models import rfc3339
from orchestrator.kube.access import Access, Answer, can_i
from orchestrator.kube.client import KubeClients, KubernetesRefLike
from orchestrator.notifiers import Notifier, build_notifier
from orchestrator.notifiers.nats import NatsNotifier
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions import REGISTRY, Services, StepContext
from orchestrator.playbooks.loader import LoadedPlaybook
from orchestrator.playbooks.model import Playbook
from orchestrator.playbooks.plan import LATE_NAMES, render_early, render_late, render_plan
from orchestrator.runtime.dryrun import STATE_AFTER, dry_event
from orchestrator.runtime.readiness_steps import Check, step_checks

KINDS = ("plan", "balancer", "guard", "workload", "capacity", "permission", "notifier")
"""The kinds of check, in the order a failover meets them (problems are listed in this order)."""


@dataclass
class PairResult:
    """One playbook dry-run for one cluster's failure."""

    playbook: str
    cluster: str
    event: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def add(self, check: Check) -> None:
        if check not in self.checks:  # two steps needing the same thing: said once
            self.checks.append(check)

    def as_dict(self, with_checks: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "playbook": self.playbook,
            "cluster": self.cluster,
            "event": self.event,
            "ready": self.ready,
            "passed": sum(1 for c in self.checks if c.status == "ok"),
            "problems": [c.as_dict() for c in sorted(self.problems, key=lambda c: KINDS.index(c.kind))],
            "skipped": [c.as_dict() for c in self.checks if c.status == "skipped"],
        }
        if with_checks:
            out["checks"] = [{**c.as_dict(), "status": c.status} for c in self.checks]
        return out


@dataclass
class Report:
    checked_at: float
    duration_s: float
    results: list[PairResult]
    by: str | None = None

    @property
    def ready(self) -> bool:
        return all(r.ready for r in self.results)

    def as_dict(self, with_checks: bool = False) -> dict[str, Any]:
        return {
            "checked_at": rfc3339(self.checked_at),
            "duration_s": round(self.duration_s, 3),
            "by": self.by,
            "ready": self.ready,
            "not_ready": sum(1 for r in self.results if not r.ready),
            "results": [r.as_dict(with_checks) for r in self.results],
        }


def failover_playbooks(playbooks: Mapping[str, LoadedPlaybook], names: Iterable[str]) -> list[Playbook]:
    """The playbooks to check: `readiness.playbooks` when given, else every playbook that moves traffic
    away from a cluster: triggered by `cluster.failed`, or a manual drain (`manual-drain*`, the one
    `failover ctl failover` starts)."""
    wanted = list(names)
    if wanted:
        return [playbooks[n].playbook for n in wanted if n in playbooks]
    return [
        lp.playbook
        for _name, lp in sorted(playbooks.items())
        if lp.playbook.on.event == "cluster.failed"
        or (lp.playbook.on.event == "manual" and lp.playbook.name.startswith("manual-drain"))
    ]


def _refuse_writes() -> None:
    raise PermanentError("readiness checks change nothing: a write was attempted and refused")


class Reads:
    """What one pass has read, shared by all its pairs: each read happens once, bounded in time."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._memo: dict[Any, asyncio.Task[Any]] = {}

    async def once(self, key: Any, read: Callable[[], Awaitable[Any]]) -> Any:
        """The value of `read()` (or the OrchestratorError it ended in), read once per key and pass."""
        task = self._memo.get(key)
        if task is None:
            task = self._memo[key] = asyncio.ensure_future(self._bounded(read))
        return await asyncio.shield(task)

    async def _bounded(self, read: Callable[[], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await read()
        except TimeoutError:
            return TemporaryError(f"no answer within {self.timeout_s:g}s")
        except OrchestratorError as e:
            return e

    async def close(self) -> None:
        for task in self._memo.values():
            task.cancel()
        await asyncio.gather(*self._memo.values(), return_exceptions=True)


class _Fleet:
    """What every pair of one pass shares, built once per pass: the states the detector sees now
    (a cluster it does not know yet counts as healthy), the cluster list the templates see, the nominal
    weights. A pair changes one cluster in them; rebuilding them per pair made a pass over 5,000
    clusters quadratic (minutes of event-loop time, measured)."""

    def __init__(self, config: Config, states: Mapping[str, str]) -> None:
        self.states = {c.name: states.get(c.name, "healthy") for c in config.clusters}
        self.clusters = [
            {"name": c.name, "state": self.states[c.name], "labels": dict(c.labels), "weight": c.weight}
            for c in config.clusters
        ]
        self.index = {c.name: i for i, c in enumerate(config.clusters)}
        self.nominal = {c.name: c.weight for c in config.clusters}
        self.kubernetes = any(c.kubernetes for c in config.clusters)

    def clusters_with(self, cluster: str, status: str) -> list[dict[str, Any]]:
        """The template's cluster list with `cluster` in `status` (a copy of the list, one entry new)."""
        out = list(self.clusters)
        at = self.index.get(cluster)
        if at is not None:
            out[at] = {**out[at], "state": status}
        return out


class _OneChanged(Mapping[str, str]):
    """`base` with one cluster's status replaced, without copying the fleet."""

    def __init__(self, base: Mapping[str, str], cluster: str, status: str) -> None:
        self.base, self.cluster, self.status = base, cluster, status

    def __getitem__(self, key: str) -> str:
        return self.status if key == self.cluster else self.base[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        if self.cluster not in self.base:
            yield self.cluster

    def __len__(self) -> int:
        return len(self.base) + (self.cluster not in self.base)


class ReadinessChecker:
    """Runs the checks; built by the daemon (the leader's drivers and clients) or by `failover check`."""

    def __init__(
        self,
        config: Config,
        playbooks: Callable[[], Mapping[str, LoadedPlaybook]],
        drivers: Mapping[str, Balancer],
        kube: KubeClients,
        store: StateStore,
        notifiers: Mapping[str, Notifier],
        states: Callable[[], Mapping[str, str]] = dict,
        skipped_notifiers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.playbooks = playbooks
        self.drivers = drivers
        self.kube = kube
        self.store = store
        self.notifiers = notifiers
        self.states = states
        """The fleet as the detector sees it (the daemon); `failover check` takes every cluster healthy."""
        self.skipped_notifiers = dict(skipped_notifiers or {})
        """notifier -> why it cannot be checked from here (a NATS notifier without a connection)."""

    async def run_once(self, by: str | None = None) -> Report:
        settings = self.config.readiness
        started, wall = time.monotonic(), time.time()
        reads = Reads(settings.timeout_s)
        loaded = self.playbooks()
        pairs: list[PairResult] = []
        fleet = _Fleet(self.config, self.states())
        try:
            jobs = []
            for name in settings.playbooks:
                if name not in loaded:
                    pair = PairResult(name, "*", "-")
                    pair.add(Check("plan", name, "failed", f"readiness.playbooks names {name!r}: not loaded"))
                    pairs.append(pair)
            for pb in failover_playbooks(loaded, settings.playbooks):
                for c in self.config.clusters:
                    if pb.on.clusters is None or pb.on.clusters.matches(c.name, dict(c.labels)):
                        pair = PairResult(pb.name, c.name, pb.on.event)
                        pairs.append(pair)
                        jobs.append(self._pair(pb, pair, reads, fleet))
            limit = asyncio.Semaphore(8)

            async def bounded(job: Awaitable[None]) -> None:
                async with limit:
                    await job

            await asyncio.gather(*(bounded(j) for j in jobs))
        finally:
            await reads.close()
        pairs.sort(key=lambda p: (p.playbook, p.cluster))
        return Report(wall, time.monotonic() - started, pairs, by)

    async def _pair(self, pb: Playbook, pair: PairResult, reads: Reads, fleet: _Fleet) -> None:
        config = self.config
        status = STATE_AFTER.get(pb.on.event, "healthy")
        states = _OneChanged(fleet.states, pair.cluster, status)
        event = dry_event(pb.on.event, pair.cluster, status, "readiness")
        try:
            rendered = render_plan(pb, event, fleet.clusters_with(pair.cluster, status))
        except templates.TemplateError as e:
            pair.add(Check("plan", pb.name, "failed", f"{pb.name} does not render for {pair.cluster}: {e}"))
            return
        nominal = fleet.nominal
        services = Services(
            config,
            {
                name: BalancerActuator(driver, nominal, lambda: states, self.store, fence=_refuse_writes)
                for name, driver in self.drivers.items()
            },
            dict(self.notifiers),
            lambda: states,
            dry_run=True,
            scale=ScaleActuator(
                self.kube, config, store=self.store, states=lambda: states, fence=_refuse_writes
            )
            if fleet.kubernetes
            else None,
            fence=_refuse_writes,
        )
        context = {
            "event": event,
            "clusters": rendered["clusters"],
            **rendered["vars"],
            "vars": rendered["vars"],
        }
        failure = {"failed_step": "<failed step>", "error": "<its error>"}
        min_healthy = pb.guards.min_healthy_clusters
        for steps, extra in ((rendered["steps"], {}), (rendered["on_failure"], failure)):
            for step in steps:
                if step.get("when") is False:
                    continue  # e.g. a forced manual drain's approval: not part of this path
                items = step.get("for_each")
                if isinstance(items, str):
                    continue  # its items come from earlier steps' results: known at step start only
                for item in items if isinstance(items, list) else [None]:
                    item_context = {**context, **extra, **({"item": item} if item is not None else {})}
                    params = self._params(step, item_context, pair)
                    if params is None:
                        continue
                    ctx = StepContext(
                        services,
                        "readiness",
                        pb.name,
                        str(step["id"]),
                        event,
                        min_healthy_clusters=min_healthy,
                    )
                    for check in await step_checks(self, ctx, step["action"], params, reads):
                        pair.add(check)

    def _params(self, step: dict[str, Any], context: dict[str, Any], pair: PairResult) -> Any:
        """The step's parameters as at step start; None when they depend on earlier steps' results."""
        action = REGISTRY[step["action"]]
        try:
            try:
                raw = render_late(step["with"], step.get("late"), context)
            except templates.TemplateError:
                raw = render_early(redact.unseal(step["with"]), context, LATE_NAMES)
            return action.params.model_validate(raw)
        except ValidationError:
            return None  # parameters from `steps.<id>`: known when the step starts
        except templates.TemplateError as e:
            pair.add(Check("plan", str(step["id"]), "failed", f"step {step['id']} does not render: {e}"))
            return None

    # the reads, shared by the pairs of one pass ------------------------------------------------------

    async def balancer_view(
        self, reads: Reads, actuator: BalancerActuator
    ) -> WeightsView | OrchestratorError:
        result: WeightsView | OrchestratorError = await reads.once(("lb", actuator.name), actuator.read)
        return result

    async def workload(self, reads: Reads, scaler: ScaleActuator, w: Workload) -> Current | OrchestratorError:
        result: Current | OrchestratorError = await reads.once(("workload", w), lambda: scaler.read(w))
        return result

    async def access(
        self, reads: Reads, ref: KubernetesRefLike, access: Access
    ) -> Answer | OrchestratorError:
        key = ("can-i", ref.kubeconfig, ref.context, ref.in_cluster, access)
        result: Answer | OrchestratorError = await reads.once(
            key, lambda: can_i(self.kube, ref, access, reads.timeout_s)
        )
        return result

    async def notifier(self, reads: Reads, name: str) -> str | OrchestratorError | None:
        """What the notifier's check proved, its error, or None when it cannot be checked from here."""
        notifier = self.notifiers.get(name)
        if notifier is None or name in self.skipped_notifiers:
            return None

        async def check() -> str | None:
            try:
                return await notifier.check()
            except NotImplementedError:
                return None

        result: str | OrchestratorError | None = await reads.once(("notifier", name), check)
        return result

    def kube_balancer(self, name: str) -> KubeObjectBalancer | None:
        driver = self.drivers.get(name)
        return driver if isinstance(driver, KubeObjectBalancer) else None


def build_notifiers(
    config: Config, session: aiohttp.ClientSession, bus: Bus | None
) -> tuple[dict[str, Notifier], dict[str, str]]:
    """The configured notifiers, for checking (they send nothing unless asked to), and those that cannot
    be checked from this process, with why: a `nats` notifier needs a connection to flush."""
    notifiers: dict[str, Notifier] = {}
    skipped: dict[str, str] = {}
    for n in config.notifiers:
        try:
            notifier = build_notifier(n, session, bus.publish if bus is not None else None)
        except PermanentError as e:
            skipped[n.name] = str(e)
            continue
        if isinstance(notifier, NatsNotifier):
            if bus is None:
                skipped[n.name] = (
                    "no NATS connection here (no nats.url: the embedded server runs in the daemon)"
                )
            else:
                notifier.flush = bus.flush
        notifiers[n.name] = notifier
    return notifiers, skipped
