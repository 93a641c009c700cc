"""The leader's fence is checked immediately before every external write (issue 10, DESIGN §6b).

A replica can lose its lease at any await: while the original weight is being recorded in NATS, while
one HAProxy instance is being written, between a Kubernetes write's 409 and its retry. The fence here is
a `Lease` that the test takes away at such a moment; after that, nothing may reach a balancer or an API
server. Writes are counted where they land: HAProxy's runtime API through `AdminCounter`, the sandbox
API server's request log, the webhook receiver's POSTs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.actuators.scale import ScaleActuator, Workload
from orchestrator.bus.client import Bus
from orchestrator.bus.leadership import NotLeader
from orchestrator.bus.state import MemoryStateStore, StateStore
from orchestrator.core.config import Config
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.kube.client import KubeClients
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.helpers import MEMBERS, AdminCounter, fleet
from tests.test_drivers import KINDS, SEEDED, lb_config, opened, race_with, receiver, stored, webhook_config
from tests.test_scaling import deployment

pytestmark = pytest.mark.timeout(60)


class Lease:
    """A fence: holds for the first `checks` calls (None: until `lose()`), then raises NotLeader."""

    def __init__(self, checks: int | None = None) -> None:
        self.allowed = checks
        self.checks = 0
        self.refused = 0

    def lose(self) -> None:
        self.allowed = self.checks

    def fence(self) -> None:
        self.checks += 1
        if self.allowed is not None and self.checks > self.allowed:
            self.refused += 1
            raise NotLeader("test: the lease was lost")


class LeaseLostWhileRecording(StateStore):
    """The real KV store; the lease runs out while the original weight is being written to NATS."""

    def __init__(self, bus: Bus, lease: Lease) -> None:
        super().__init__(bus)
        self.lease = lease

    async def record_original_lb(self, balancer: str, cluster: str, weight: int) -> bool:
        created = await super().record_original_lb(balancer, cluster, weight)
        self.lease.lose()
        return created


def haproxy_config(admins: list[str]) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "global",
            "driver": "haproxy",
            "haproxy": {"admin": admins, "backend": "web"},
            "members": MEMBERS,
        }
    )


@pytest.fixture
async def two_instances(tmp_path: Path, haproxy_binary: str) -> AsyncIterator[tuple[Any, list[AdminCounter]]]:
    """One HAProxy reached as two configured instances, each through its own counting proxy."""
    async with fleet(tmp_path, haproxy_binary) as f:
        port = int(f.haproxy.admin_url.rsplit(":", 1)[1])
        counters = [AdminCounter(port), AdminCounter(port)]
        for counter in counters:
            await counter.start()
        try:
            yield f, counters
        finally:
            for counter in counters:
                await counter.stop()


def sets(counters: list[AdminCounter]) -> list[list[str]]:
    return [[c for c in counter.commands if c.startswith("set weight")] for counter in counters]


async def test_no_haproxy_write_after_the_lease_is_lost_during_the_nats_record(
    bus: Bus, two_instances: tuple[Any, list[AdminCounter]]
) -> None:
    f, counters = two_instances
    lease = Lease()
    store = LeaseLostWhileRecording(bus, lease)
    states = dict.fromkeys(MEMBERS, "healthy")
    lb = build_balancer(haproxy_config([c.url for c in counters]))
    actuator = BalancerActuator(lb, dict.fromkeys(MEMBERS, 100), lambda: states, store, fence=lease.fence)
    with pytest.raises(NotLeader):
        await actuator.drain("us-east")
    assert await store.original_lb("global", "us-east") == 100  # the NATS write did happen
    assert lease.refused >= 1
    assert sets(counters) == [[], []]  # ... and no `set weight` reached either instance after it
    assert (await f.weights())["us-east"] == 100


async def test_each_haproxy_instance_is_fenced_separately(
    bus: Bus, two_instances: tuple[Any, list[AdminCounter]]
) -> None:
    _, counters = two_instances
    lease = Lease(checks=2)  # the actuator's check and the first instance's: then the lease is gone
    states = dict.fromkeys(MEMBERS, "healthy")
    lb = build_balancer(haproxy_config([c.url for c in counters]))
    actuator = BalancerActuator(
        lb, dict.fromkeys(MEMBERS, 100), lambda: states, StateStore(bus), fence=lease.fence
    )
    with pytest.raises(NotLeader):  # as it is, not folded into a PermanentError of the instance
        await actuator.drain("us-east")
    assert sets(counters) == [["set weight web/us1 0"], []]
    assert lease.refused == 1


@pytest.mark.parametrize("driver", sorted(KINDS))
async def test_a_kubernetes_balancer_write_is_not_retried_after_the_lease_is_lost(
    driver: str, tmp_path: Path
) -> None:
    """The first PUT meets a 409 (someone else wrote meanwhile); the retry would PUT again from a
    fresh read, but the lease is gone by then: no second PUT."""
    kind = KINDS[driver]
    async with KubeApiServer("mgmt") as server:
        kubeconfig = write_kubeconfig(tmp_path / "kube" / "config", {"mgmt": server})
        server.put_object(kind.seed())
        lease = Lease(checks=2)  # the actuator's check and the first attempt's
        states = dict.fromkeys(kind.members, "healthy")
        async with opened(build_balancer(lb_config(kind, kubeconfig))) as lb:
            nominal = dict.fromkeys(kind.members, 100)
            actuator = BalancerActuator(lb, nominal, lambda: states, MemoryStateStore(), fence=lease.fence)

            def someone_else_writes() -> None:
                obj = stored(kind, server)
                obj["metadata"].setdefault("labels", {})["touched-by"] = "someone-else"
                server.put_object(obj)

            async def drain() -> None:
                await actuator.drain("eu-west")

            with pytest.raises(NotLeader):
                await race_with(server, drain(), someone_else_writes)
        assert [r.status for r in server.requests("PUT")] == [409]  # without the fence: [409, 200]
        assert lease.refused == 1
        assert kind.stored(stored(kind, server)) == SEEDED[driver]


async def test_a_webhook_balancer_post_is_not_retried_after_the_lease_is_lost() -> None:
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url))) as lb:
        lease = Lease(checks=2)
        states = dict.fromkeys(MEMBERS, "healthy")
        before = dict(hook.weights)
        hook.conflict_next.append(lambda: hook.weights.update({"ap-south": 60}))
        actuator = BalancerActuator(
            lb, dict.fromkeys(MEMBERS, 100), lambda: states, MemoryStateStore(), fence=lease.fence
        )
        with pytest.raises(NotLeader):
            await actuator.drain("us-east")
        assert hook.methods.count("POST") == 1 and hook.posts == []  # the 409'd one only
        assert hook.weights == {**before, "ap-south": 60}


async def test_a_scale_write_is_not_retried_after_the_lease_is_lost(bus: Bus, tmp_path: Path) -> None:
    """ScaleActuator answers a 409 by reading again and writing the same target: the fence is checked
    again before that second write (and after the baseline's NATS record)."""
    async with KubeApiServer("eu-west") as server:
        server.put_object(deployment(6))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"eu-west": server})
        config = Config.model_validate(
            {
                "clusters": [
                    {"name": "eu-west", "kubernetes": {"kubeconfig": str(kubeconfig), "context": "eu-west"}}
                ]
            }
        )
        kube = KubeClients(timeout_s=5)
        try:
            lease = Lease(checks=1)
            scaler = ScaleActuator(
                kube, config, StateStore(bus), lambda: {"eu-west": "healthy"}, fence=lease.fence
            )
            w = Workload("eu-west", "shop", "deployment", "web")
            current = await scaler.read(w)
            obj = server.get_object("apps/v1", "deployments", "shop", "web")
            assert obj is not None
            obj["metadata"].setdefault("labels", {})["touched-by"] = "someone-else"
            server.put_object(obj)  # `current` now carries a stale resourceVersion: the PUT is a 409
            with pytest.raises(NotLeader):
                await scaler.scale_to(w, 9, current)
        finally:
            await kube.close()
        assert [r.status for r in server.requests("PUT", "/scale")] == [409]
        assert lease.refused == 1
        assert server.get_object("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 6  # type: ignore[index]
