"""Desired state includes "a failed cluster carries no traffic" (DESIGN §12, liveness).

A drain can fail: the balancer was unreachable for longer than the step's retries, a new leader took
over between the decision and the run, a run crashed before it was journalled. Before this watchdog such
a cluster stayed `failed` at full weight until the next election. Now the leader reads every balancer
every `reconcile.interval` (and when kicked: on election, after every run) and, for each `failed`
cluster that still has weight somewhere and no run working on it, starts a catch-up `cluster.failed`
run, with an exponential backoff per cluster. Every attempt is a `drain.retry` system event; from the
`page_after`-th on, also a critical `drain.stuck` one, and `failover_failed_cluster_weighted` stays 1,
which is what to page on. A balancer that cannot be read shows in `failover_balancer_readable` and in
`/readyz`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.core.aio import wait_any
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.metrics import Metrics
from orchestrator.core.models import new_id, rfc3339

log = structlog.get_logger(__name__)

Emit = Callable[[str, str, dict[str, Any]], Awaitable[None]]
StartDrain = Callable[[str, list[str], int], Awaitable[object]]


@dataclass
class Attempts:
    count: int = 0
    next_at: float = 0.0
    paged: bool = False


class DrainWatchdog:
    def __init__(
        self,
        balancers: Mapping[str, BalancerActuator],
        states: Callable[[], Mapping[str, str]],
        busy: Callable[[str], bool],
        paused: Callable[[str], Awaitable[bool]],
        held: Callable[[], Awaitable[set[tuple[str, str]]]],
        start_drain: StartDrain,
        emit: Emit,
        metrics: Metrics,
        interval_s: float = 5.0,
        read_timeout_s: float = 5.0,
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
        page_after: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.balancers = balancers
        self.states = states
        self.busy = busy
        self.paused = paused
        self.held = held
        """(balancer, cluster) pairs with a desired weight of 0 on record: a drain that succeeded and
        was reverted (an HAProxy reload, a DNS record put back) is the reconciler's to re-assert, and to
        report as drift; for a failed cluster it does so in every driver, DNS included."""
        self.start_drain = start_drain
        self.emit = emit
        self.metrics = metrics
        self.interval_s = interval_s
        self.read_timeout_s = read_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.page_after = page_after
        self.clock = clock
        self.readable: dict[str, bool] = {}
        """balancer -> whether the last read answered (empty until this replica leads)."""
        self.weighted: dict[str, list[str]] = {}
        """failed cluster -> the balancers that still send it traffic, as of the last pass."""
        self.attempts: dict[str, Attempts] = {}
        self.last_standing: set[str] = set()
        """Failed clusters that are the last live traffic in their balancers: not retried (the guard)."""
        self._kick = asyncio.Event()
        self.passes = 0

    def kick(self) -> None:
        self._kick.set()

    def healthy(self) -> dict[str, bool]:
        """For /readyz: every balancer readable, no failed cluster carrying traffic."""
        return {
            "balancers_readable": all(self.readable.values()),
            "failed_clusters_drained": not self.weighted,
        }

    async def run(self, stop: asyncio.Event, active: Callable[[], bool]) -> None:
        while not stop.is_set():
            await wait_any(self._kick, stop, timeout_s=self.interval_s)
            self._kick.clear()
            if stop.is_set():
                return
            if not active():
                self.readable.clear()
                self.weighted.clear()
                self.attempts.clear()
                self.last_standing.clear()
                # the leader's view: a follower that kept its last values would fire their alerts
                self.metrics.balancer_readable.clear()
                self.metrics.failed_cluster_weighted.clear()
                continue
            try:
                await self.check_once()
            except OrchestratorError as e:  # JetStream electing a leader: the next pass retries
                log.warning("drain_watchdog.check_failed", error=str(e))

    async def read_all(self) -> dict[str, dict[str, int]]:
        """Every balancer's weights, concurrently, each bounded; an unreadable one is left out. A
        balancer with one instance that cannot be read (of two HAProxy instances, say) still gives the
        weights of the others, but counts as not readable: `/readyz` and the metric show it."""

        async def read(name: str, actuator: BalancerActuator) -> tuple[dict[str, int] | None, bool]:
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    view = await actuator.read()
            except (OrchestratorError, TimeoutError) as e:
                log.warning("balancer.unreadable", balancer=name, error=str(e) or "timeout")
                return None, False
            for instance, error in view.unreadable.items():
                log.warning("balancer.unreadable", balancer=name, instance=instance, error=str(error))
            return view.current, not view.unreadable

        names = list(self.balancers)
        results = await asyncio.gather(*(read(n, self.balancers[n]) for n in names))
        out: dict[str, dict[str, int]] = {}
        for name, (weights, whole) in zip(names, results, strict=True):
            self.readable[name] = whole
            self.metrics.balancer_readable.labels(balancer=name).set(1 if whole else 0)
            if weights is not None:
                out[name] = weights
        return out

    @staticmethod
    def _others_serve(weights: Mapping[str, int], cluster: str, states: Mapping[str, str]) -> bool:
        """Whether a cluster other than `cluster`, and not failed, carries traffic in this balancer."""
        return any(w > 0 and states.get(c) != "failed" for c, w in weights.items() if c != cluster)

    async def check_once(self) -> list[str]:
        """One pass; returns the clusters a catch-up drain was started for."""
        self.passes += 1
        weights = await self.read_all()
        states = self.states()
        started: list[str] = []
        weighted: dict[str, list[str]] = {}
        held: set[tuple[str, str]] | None = None
        for cluster, status in states.items():
            serving = sorted(b for b, w in weights.items() if w.get(cluster, 0) > 0)
            if status != "failed" or not serving:
                self.attempts.pop(cluster, None)
                self.last_standing.discard(cluster)
                self.metrics.failed_cluster_weighted.labels(cluster=cluster).set(0)
                continue
            weighted[cluster] = serving
            self.metrics.failed_cluster_weighted.labels(cluster=cluster).set(1)
            if self.busy(cluster) or await self.paused(cluster):
                continue  # a run owns it, or a human paused it: nothing to add
            if held is None:
                held = await self.held()
            if all((b, cluster) in held for b in serving):
                continue  # drained before, reverted since: the reconciler puts it back
            if not any(self._others_serve(weights[b], cluster, states) for b in serving):
                # no other live cluster carries traffic: min_healthy_clusters refuses this drain, and
                # retrying would only page again. failover_failed_cluster_weighted stays 1 meanwhile.
                if cluster not in self.last_standing:
                    self.last_standing.add(cluster)
                    log.error("drain.last_standing", cluster=cluster, balancers=serving)
                continue
            self.last_standing.discard(cluster)
            attempt = self.attempts.setdefault(cluster, Attempts())
            now = self.clock()
            if now < attempt.next_at:
                continue
            # decided on a read that may be seconds old: look again with no await before acting
            if self.states().get(cluster) != "failed" or self.busy(cluster):
                continue
            attempt.count += 1
            attempt.next_at = now + min(self.max_backoff_s, self.backoff_s * 2 ** (attempt.count - 1))
            await self.start_drain(cluster, serving, attempt.count)
            started.append(cluster)
            reason = (
                f"{cluster} is failed yet still weighted in {', '.join(serving)}: catch-up drain, "
                f"attempt {attempt.count}"
            )
            log.warning("drain.retry", cluster=cluster, balancers=serving, attempt=attempt.count)
            detail = {"cluster": cluster, "balancers": serving, "attempt": attempt.count}
            await self.emit("drain.retry", reason, detail)
            if attempt.count >= self.page_after and not attempt.paged:
                attempt.paged = True
                log.error("drain.stuck", cluster=cluster, balancers=serving, attempts=attempt.count)
                await self.emit(
                    "drain.stuck",
                    f"{cluster} still carries traffic after {attempt.count} drain attempts",
                    {**detail, "severity": "critical"},
                )
        self.weighted = weighted
        return started


def catch_up_event(cluster: str, serving: list[str], attempt: int) -> dict[str, Any]:
    """The `cluster.failed` event of a catch-up drain (DrainWatchdog): the detector decided `failed`
    earlier, but the cluster still carries traffic (a drain that failed, a leader that changed)."""
    return {
        "type": "cluster.failed",
        "cluster": cluster,
        "from": "failed",
        "to": "failed",
        "reason": f"failed, yet still weighted in {', '.join(serving)} (catch-up drain, attempt {attempt})",
        "evidence": {},
        "id": new_id(),
        "ts": rfc3339(time.time()),  # the same shape as the detector's event: a playbook may use event.ts
        "v": 1,
        "catch_up": True,
    }
