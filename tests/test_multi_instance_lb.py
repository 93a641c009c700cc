"""One balancer, two real HAProxy instances (as deploy/ ships it): a reloaded, unreachable or hand-edited
instance must not block the balancer (issue 11, finding 4).

Before: one reload made every read fail with "instances disagree", so the reconciler re-asserted nothing
and every later drain or restore on that balancer failed; a drain that reached one instance and not the
other recorded no desired weight, so nothing ever completed it. Now intent is recorded before the write,
a read that disagrees resolves to one value per cluster, and the reconciler writes to the instances that
differ, and only to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.core.metrics import Metrics
from orchestrator.runtime.reconcile import Reconciler
from orchestrator.runtime.watchdog import DrainWatchdog
from tests.helpers import MEMBERS, HAProxyPair, haproxy_pair

pytestmark = pytest.mark.timeout(60)


@dataclass
class Setup:
    pair: HAProxyPair
    admin: list[str]
    """The admin addresses the balancer is configured with, in the order of `pair.instances`."""
    actuator: BalancerActuator
    reconciler: Reconciler
    store: StateStore
    states: dict[str, str]
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


@asynccontextmanager
async def setup(tmp_path: Path, binary: str, bus: Bus, *, counted: bool) -> AsyncIterator[Setup]:
    """The actuator and reconciler of the daemon over two instances; `counted` puts each instance's
    AdminCounter in between (a counter whose instance is down answers with an empty reply, which the
    runtime API means as success: the unreachable-instance scenario talks to the instances directly)."""
    async with haproxy_pair(tmp_path, binary) as pair:
        admin = [c.url for c in pair.counters] if counted else [i.admin_url for i in pair.instances]
        config = LoadBalancerConfig.model_validate(
            {
                "name": "global",
                "driver": "haproxy",
                "haproxy": {"admin": admin, "backend": "web", "timeout": "500ms"},
                "members": MEMBERS,
            }
        )
        states = dict.fromkeys(MEMBERS, "healthy")
        store = StateStore(bus)
        actuator = BalancerActuator(
            build_balancer(config), dict.fromkeys(MEMBERS, 100), lambda: states, store
        )
        events: list[tuple[str, str, dict[str, Any]]] = []

        async def emit(kind: str, reason: str, detail: dict[str, Any]) -> None:
            events.append((kind, reason, detail))

        reconciler = Reconciler({"global": actuator}, None, store, emit, busy=lambda cluster: False)
        try:
            yield Setup(pair, admin, actuator, reconciler, store, states, events)
        finally:
            await actuator.balancer.close()


async def no_pause(cluster: str) -> bool:
    return False


async def held_none() -> set[tuple[str, str]]:
    return set()


async def no_drain(cluster: str, serving: list[str], attempt: int) -> None:
    raise AssertionError("no catch-up drain expected")


def writes(s: Setup, index: int) -> list[str]:
    return [c for c in s.pair.counters[index].commands if c.startswith("set weight")]


async def test_a_reloaded_instance_blocks_nothing_and_only_it_is_reasserted(
    bus: Bus, haproxy_binary: str, tmp_path: Path
) -> None:
    async with setup(tmp_path, haproxy_binary, bus, counted=True) as s:
        await s.actuator.drain("us-east")
        assert [await s.pair.weights(i) for i in (0, 1)] == [
            {"eu-west": 100, "us-east": 0, "ap-south": 100}
        ] * 2

        await s.pair.instances[1].reload()  # no saved state: back to the config's weights
        assert (await s.pair.weights(1))["us-east"] == 100

        # the held 0 is what we read (the reloaded instance is drift), and reads do not raise
        assert await s.actuator.get_weights() == {"eu-west": 100, "us-east": 0, "ap-south": 100}
        # another cluster's drain on that balancer works meanwhile
        change = await s.actuator.drain("ap-south")
        assert (change.before, change.after) == (100, 0)
        assert (await s.pair.weights(0))["ap-south"] == (await s.pair.weights(1))["ap-south"] == 0

        before = [len(writes(s, i)) for i in (0, 1)]
        [drift] = await s.reconciler.reconcile_once()
        assert drift["reasserted"] is True, drift
        assert drift["instances"] == {s.admin[1]: 100}
        assert (drift["cluster"], drift["expected"], drift["found"]) == ("us-east", 0, 100)
        assert len(writes(s, 0)) == before[0]  # the instance that kept the drain is sent nothing
        assert writes(s, 1)[before[1] :] == ["set weight web/us1 0"]
        assert (await s.pair.weights(1))["us-east"] == 0
        [(kind, _, detail)] = s.events
        assert kind == "drift.detected" and detail["instances"] == {s.admin[1]: 100}
        assert await s.reconciler.reconcile_once() == []  # settled: nothing more to say or write

        # and the restore of the other cluster works too
        target = await s.actuator.target_weight("ap-south")
        restored = await s.actuator.set_weight("ap-south", target, expect=0)
        assert (restored.before, restored.after, restored.drift) == (0, 100, None)
        await s.actuator.finish_restore("ap-south")
        assert [await s.pair.weights(i) for i in (0, 1)] == [
            {"eu-west": 100, "us-east": 0, "ap-south": 100}
        ] * 2


async def test_a_drain_with_one_instance_down_drains_the_other_and_completes_when_it_is_back(
    bus: Bus, haproxy_binary: str, tmp_path: Path
) -> None:
    async with setup(tmp_path, haproxy_binary, bus, counted=False) as s:
        down = s.pair.instances[1]
        await down.stop()

        with pytest.raises(TemporaryError, match=str(down.admin_port)):
            await s.actuator.drain("us-east")
        assert (await s.pair.weights(0))["us-east"] == 0  # the reachable instance is drained at once
        # the intent is on record although the write failed half-way
        assert await s.store.desired_weights() == {("global", "us-east"): 0}
        assert await s.store.original_lb("global", "us-east") == 100
        assert (await s.actuator.get_weights())["us-east"] == 0
        # the drain watchdog (and so /readyz and failover_balancer_readable) sees the instance down
        dog = DrainWatchdog(
            {"global": s.actuator},
            lambda: dict(s.states),
            lambda cluster: False,
            no_pause,
            held_none,
            no_drain,
            s.reconciler.emit,
            Metrics(),
        )
        assert (await dog.read_all())["global"]["us-east"] == 0 and dog.readable == {"global": False}
        # a retry of the step fails again while the instance is down (the run goes on to page)
        with pytest.raises(TemporaryError, match=str(down.admin_port)):
            await s.actuator.drain("us-east")

        # the instance that answers is still reconciled while the other one cannot be read
        await s.pair.instances[0].reload()
        [drift] = await s.reconciler.reconcile_once()
        assert drift["reasserted"] is True, drift
        assert drift["instances"] == {s.admin[0]: 100}
        assert list(drift["unreadable"]) == [s.admin[1]]
        assert (await s.pair.weights(0))["us-east"] == 0

        await down.start()  # restarted: the config's weights again
        assert (await s.pair.weights(1))["us-east"] == 100
        [drift] = await s.reconciler.reconcile_once()
        assert drift["reasserted"] is True, drift
        assert drift["instances"] == {s.admin[1]: 100}
        assert "unreadable" not in drift
        assert [await s.pair.weights(i) for i in (0, 1)] == [
            {"eu-west": 100, "us-east": 0, "ap-south": 100}
        ] * 2
        # and the step's next attempt now succeeds
        assert (await s.actuator.drain("us-east")).after == 0


async def test_instances_that_disagree_do_not_block_a_drain(
    bus: Bus, haproxy_binary: str, tmp_path: Path
) -> None:
    async with setup(tmp_path, haproxy_binary, bus, counted=True) as s:
        await s.pair.instances[1].admin().set_weight("web", "ap1", 10)  # by hand, on one instance
        # nothing of ours is held for ap-south: the highest is read, "serving somewhere"
        assert await s.actuator.get_weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}

        change = await s.actuator.drain("us-east")
        assert (change.before, change.after) == (100, 0)
        assert await s.pair.weights(0) == {"eu-west": 100, "us-east": 0, "ap-south": 100}
        assert await s.pair.weights(1) == {"eu-west": 100, "us-east": 0, "ap-south": 10}
        assert await s.reconciler.reconcile_once() == []  # not ours to re-assert
        assert await s.actuator.get_weights() == {"eu-west": 100, "us-east": 0, "ap-south": 100}


async def test_a_weight_the_balancer_refuses_is_not_held(
    bus: Bus, haproxy_binary: str, tmp_path: Path
) -> None:
    """Intent is recorded before the write; a refusal takes it back, so the reconciler does not try a
    value the balancer will never take on every pass, and the drain held before it stands."""
    async with setup(tmp_path, haproxy_binary, bus, counted=True) as s:
        await s.actuator.drain("us-east")
        with pytest.raises(PermanentError, match=r"0\.\.256"):
            await s.actuator.set_weight("us-east", 300)
        with pytest.raises(PermanentError, match=r"0\.\.256"):
            await s.actuator.set_weight("eu-west", 300)
        assert await s.store.desired_weights() == {("global", "us-east"): 0}
        assert await s.reconciler.reconcile_once() == []
