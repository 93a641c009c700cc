"""DrainWatchdog (DESIGN §12): a failed cluster that still carries traffic gets a catch-up drain, with
backoff and a page, but never a drain the guard would refuse, never one for a cluster that recovered
while it looked, never one a run or the reconciler already owns. Pure logic: balancers are in memory."""

from __future__ import annotations

from typing import Any

from orchestrator.actuators.lb import WeightsView
from orchestrator.core.metrics import Metrics
from orchestrator.runtime.watchdog import DrainWatchdog


class MemoryBalancer:
    def __init__(self, weights: dict[str, int]) -> None:
        self.weights = weights

    async def get_weights(self) -> dict[str, int]:
        return dict(self.weights)

    async def read(self) -> WeightsView:
        return WeightsView({"memory": dict(self.weights)}, {}, dict(self.weights))


class Harness:
    def __init__(self, states: dict[str, str], weights: dict[str, int]) -> None:
        self.states = states
        self.now = 0.0
        self.busy: set[str] = set()
        self.held: set[tuple[str, str]] = set()
        self.drains: list[tuple[str, int]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.on_paused: Any = None
        self.dog = DrainWatchdog(
            {"global": MemoryBalancer(weights)},  # type: ignore[dict-item]
            lambda: dict(self.states),
            lambda c: c in self.busy,
            self.paused,
            self.held_pairs,
            self.drain,
            self.emit,
            Metrics(),
            backoff_s=2.0,
            max_backoff_s=60.0,
            page_after=3,
            clock=lambda: self.now,
        )

    async def paused(self, cluster: str) -> bool:
        if self.on_paused:
            self.on_paused()
        return False

    async def held_pairs(self) -> set[tuple[str, str]]:
        return self.held

    async def drain(self, cluster: str, serving: list[str], attempt: int) -> None:
        self.drains.append((cluster, attempt))

    async def emit(self, kind: str, reason: str, detail: dict[str, Any]) -> None:
        self.events.append((kind, detail))


async def test_retries_with_backoff_and_pages_on_the_third_attempt() -> None:
    h = Harness({"a": "failed", "b": "healthy"}, {"a": 100, "b": 100})
    for t in (0.0, 1.0, 2.0, 3.0, 6.0, 9.9, 14.0):
        h.now = t
        await h.dog.check_once()
    # at 0, 2 (+2 s), 6 (+4 s) and 14 (+8 s); nothing at 1, 3 or 9.9
    assert h.drains == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]
    assert [k for k, _ in h.events] == [
        "drain.retry",
        "drain.retry",
        "drain.retry",
        "drain.stuck",
        "drain.retry",
    ]
    assert h.dog.healthy() == {"balancers_readable": True, "failed_clusters_drained": False}


async def test_never_drains_the_last_live_traffic() -> None:
    h = Harness({"a": "failed", "b": "failed", "c": "healthy"}, {"a": 100, "b": 100, "c": 0})
    await h.dog.check_once()
    assert h.drains == [] and h.events == []  # the guard would refuse; retrying would only page
    assert h.dog.weighted == {"a": ["global"], "b": ["global"]}


async def test_a_cluster_that_recovers_while_it_looks_is_not_drained() -> None:
    h = Harness({"a": "failed", "b": "healthy"}, {"a": 100, "b": 100})

    def recover() -> None:
        h.states["a"] = "healthy"

    h.on_paused = recover  # the state changes during an await of the pass
    await h.dog.check_once()
    assert h.drains == []


async def test_what_a_run_or_the_reconciler_owns_is_left_to_them() -> None:
    h = Harness({"a": "failed", "b": "healthy"}, {"a": 100, "b": 100})
    h.busy.add("a")
    await h.dog.check_once()
    h.busy.clear()
    h.held.add(("global", "a"))  # drained before, reverted by a reload: drift, the reconciler's job
    await h.dog.check_once()
    assert h.drains == []
    h.held.clear()
    await h.dog.check_once()
    assert h.drains == [("a", 1)]


async def test_a_replica_that_stops_leading_drops_its_gauges() -> None:
    """`failover_balancer_readable` and `failover_failed_cluster_weighted` are the leader's view: a
    deposed replica kept its last values, so an alert on them fired from a follower that no longer
    looks (deploy/monitoring works around it by reading the leader's series only)."""
    import asyncio

    h = Harness({"a": "failed", "b": "healthy"}, {"a": 100, "b": 100})
    h.busy.add("a")
    await h.dog.check_once()
    text = h.dog.metrics.render().decode()
    assert 'failover_failed_cluster_weighted{cluster="a"} 1.0' in text
    assert 'failover_balancer_readable{balancer="global"} 1.0' in text
    stop = asyncio.Event()
    task = asyncio.create_task(h.dog.run(stop, active=lambda: False))
    h.dog.kick()
    for _ in range(100):  # bounded: the pass runs at the next loop turns
        await asyncio.sleep(0.01)
        if "failover_failed_cluster_weighted{" not in h.dog.metrics.render().decode():
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    text = h.dog.metrics.render().decode()
    assert "failover_failed_cluster_weighted{" not in text and "failover_balancer_readable{" not in text
    assert h.dog.healthy() == {"balancers_readable": True, "failed_clusters_drained": True}
