"""Who owns a survivor's scale, against sandbox Kubernetes API servers and a real NATS KV.

- Under an HPA the baseline of the absorb formula is the HPA's recorded floor (what we raise and restore),
  never the Deployment's load-driven spec.replicas (issue 11, finding 7).
- The reconciler never undoes a run's scale-down: it leaves the workloads a run names to the run, and a
  re-assertion re-reads the record under the workload's lock and stands down when a run restored the
  baseline or set another value after the pass read it (finding 8).

Interleavings are made deterministic by the sandbox itself: with a latency on a cluster's API, a restore
whose write has reached the server holds the workload's lock until that write is answered, and any
request sent after it is answered after it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.scale import Current, ScaleActuator, Superseded, Workload
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.kube.client import KubeClients
from orchestrator.playbooks.actions import REGISTRY, Services, StepContext
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.playbooks.runner import Runner
from orchestrator.runtime.reconcile import Reconciler
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)
CLUSTERS = ("eu-west", "us-east", "ap-south")
HPA_API = "autoscaling/v2"
LATENCY_S = 0.5
"""Long enough that a NATS round trip started after a write reached the sandbox ends before it is
answered (a few milliseconds against half a second): a margin, never a measured figure."""


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
        },
    }


def hpa(min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": HPA_API,
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
        },
    }


@dataclass
class Env:
    servers: dict[str, KubeApiServer]
    config: Config
    states: dict[str, str]
    scaler: ScaleActuator
    store: StateStore
    bus: Bus
    drifts: list[dict[str, Any]] = field(default_factory=list)
    soaked: bool = False

    def w(self, cluster: str) -> Workload:
        return Workload(cluster, "shop", "deployment", "web")

    def replicas(self, cluster: str) -> int:
        obj = self.servers[cluster].get_object("apps/v1", "deployments", "shop", "web")
        assert obj is not None
        return int(obj["spec"]["replicas"])

    def set_replicas(self, cluster: str, replicas: int) -> None:
        """Someone else's write (a human, a GitOps controller), straight into the API server."""
        obj = self.servers[cluster].get_object("apps/v1", "deployments", "shop", "web")
        assert obj is not None
        obj["spec"]["replicas"] = replicas
        self.servers[cluster].put_object(obj)

    def floor(self, cluster: str) -> tuple[int, int]:
        obj = self.servers[cluster].get_object(HPA_API, "horizontalpodautoscalers", "shop", "web")
        assert obj is not None
        return int(obj["spec"]["minReplicas"]), int(obj["spec"]["maxReplicas"])

    def clusters(self) -> list[dict[str, Any]]:
        return [
            {"name": c, "state": self.states[c], "labels": {}, "weight": 100, "soaked": self.soaked}
            for c in CLUSTERS
        ]

    def reconciler(self, busy: Callable[[str], bool] = lambda _cluster: False) -> Reconciler:
        async def emit(_kind: str, _reason: str, detail: dict[str, Any]) -> None:
            self.drifts.append(detail)

        return Reconciler({}, self.scaler, self.store, emit, busy, interval_s=60)

    def runner(self, tmp_path: Path, book: str) -> tuple[Runner, BusJournal]:
        (tmp_path / "books").mkdir(exist_ok=True)
        (tmp_path / "books" / "book.yaml").write_text(book)
        services = Services(self.config, {}, {}, lambda: self.states, scale=self.scaler)
        journal = BusJournal(self.bus)
        return Runner(
            services, journal, load_playbooks([tmp_path / "books"], self.config), self.clusters
        ), journal

    def writes(self, cluster: str) -> int:
        """Scale writes `cluster`'s API server has received so far (a 409 retry is one more)."""
        return len(self.servers[cluster].requests("PUT", "/scale"))

    async def write_in_flight(self, cluster: str, seen: int) -> None:
        """Until a scale write beyond the first `seen` has reached `cluster`'s API server."""
        await wait_for(lambda: self.writes(cluster) > seen, 5, f"a write to {cluster}")

    async def pass_during_write(self, reconciler: Reconciler, cluster: str) -> list[dict[str, Any]]:
        """A reconcile pass that lists the records while `cluster`'s last scale write is unanswered.

        nats-py's `kv.keys()` now and then ends before the first key (its end-of-values marker races
        the values: 1 listing in a few hundred comes back empty here), and such a pass reads nothing at
        all; it is run again while the write is still in flight, at most a few times."""
        drifts: list[dict[str, Any]] = []
        for _ in range(5):
            drifts = await reconciler.reconcile_once()
            if drifts or self.servers[cluster].requests("PUT", "/scale")[-1].status is not None:
                break
        return drifts


@pytest.fixture
async def env(bus: Bus, tmp_path: Path) -> AsyncIterator[Env]:
    servers = {c: KubeApiServer(c, ready_delay_s=0.05) for c in CLUSTERS}
    kube = KubeClients(timeout_s=5)
    try:
        for server in servers.values():
            await server.start()
            server.put_object(deployment(6))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", servers)
        config = Config.model_validate(
            {
                "clusters": [
                    {"name": c, "weight": 100, "kubernetes": {"kubeconfig": str(kubeconfig), "context": c}}
                    for c in CLUSTERS
                ]
            }
        )
        states = dict.fromkeys(CLUSTERS, "healthy")
        store = StateStore(bus)
        yield Env(servers, config, states, ScaleActuator(kube, config, store, lambda: states), store, bus)
    finally:
        await kube.close()
        for server in servers.values():
            await server.stop()


async def scale_out(env: Env, cluster: str, replicas: int) -> None:
    """What a failover's k8s.scale leaves behind: the baseline recorded, `replicas` set."""
    await env.scaler.scale_to(env.w(cluster), replicas, await env.scaler.read(env.w(cluster)))


async def describe(env: Env, action: str, with_: dict[str, Any]) -> list[str]:
    """What `failover plan` prints for one step."""
    act = REGISTRY[action]
    services = Services(env.config, {}, {}, lambda: env.states, scale=env.scaler)
    ctx = StepContext(services, "dry-run", "dry-run", "step", {"type": "manual"})
    return await act.describe(ctx, act.params.model_validate(with_))


# finding 7: the HPA's floor is the baseline -------------------------------------------------------

ABSORB_BOOK = """name: absorb
on: {event: cluster.failed}
steps:
  - id: scale
    action: k8s.scale
    for_each: "{{ clusters | selectattr('state', 'ne', 'failed') | map(attribute='name') | list }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, absorb: "{{ event.cluster }}"}
"""
WEB = {"namespace": "shop", "deployment": "web"}


async def test_under_an_hpa_survivors_absorb_from_the_recorded_floor_not_the_load(
    env: Env, tmp_path: Path
) -> None:
    for server in env.servers.values():  # floor 2, and the load has the autoscaler at 10
        server.put_object(hpa(2, 20))
        server.put_object(deployment(10))
    runner, journal = env.runner(tmp_path, ABSORB_BOOK)

    async def fail(cluster: str) -> dict[str, Any]:
        env.states[cluster] = "failed"
        [run_id] = await runner.on_event({"type": "cluster.failed", "cluster": cluster})
        await runner.wait_idle(20)
        record = await journal.load(run_id)
        assert record is not None and record["status"] == "succeeded", json.dumps(record)[:2000]
        return {i["result"]["workload"]: i for i in record["steps"]["scale"]["items"].values()}

    items = await fail("us-east")  # ceil(2 x 300 / 200) = 3, not ceil(10 x 300 / 200) = 15
    assert {w: i["result"]["after"] for w, i in items.items()} == {
        "eu-west/shop/deployment/web": 3,
        "ap-south/shop/deployment/web": 3,
    }
    assert items["eu-west/shop/deployment/web"]["basis"]["baseline"] == 2
    assert env.floor("eu-west") == env.floor("ap-south") == (3, 20)
    assert await env.scaler.record(env.w("eu-west")) == {
        "replicas": 10,
        "set": 3,
        "hpa": {"name": "web", "min": 2, "max": 20},
    }

    plan = await describe(env, "k8s.scale", {"cluster": "ap-south", **WEB, "absorb": "eu-west"})
    assert plan == [  # what `failover plan` shows for a second failure, in the unit it changes
        "ap-south/shop/deployment/web HPA minReplicas 3 -> 6  (absorb eu-west: ceil(2 x 300 / 100))"
    ]
    items = await fail("eu-west")  # ceil(2 x 300 / 100) = 6, not 30 (HPA max raised to 30)
    assert items["ap-south/shop/deployment/web"]["result"]["after"] == 6
    assert env.floor("ap-south") == (6, 20)

    env.states["eu-west"] = "healthy"  # one of two back: sized from the floor for 200 of 300
    plan = await describe(env, "k8s.restore_scale", {"cluster": "ap-south", **WEB})
    assert plan[0].startswith("ap-south/shop/deployment/web HPA minReplicas 6 -> 3  ("), plan
    change, why = await env.scaler.restore(env.w("ap-south"))
    assert change is not None and (change.before, change.after, change.via) == (6, 3, "hpa"), why
    assert "from baseline 2" in why
    env.states["us-east"] = "healthy"
    for cluster in ("eu-west", "ap-south"):
        change, why = await env.scaler.restore(env.w(cluster))
        assert change is not None and change.after == 2 and "record deleted" in why
        assert env.floor(cluster) == (2, 20)


async def test_under_an_hpa_a_raised_ceiling_comes_down_with_the_floor(env: Env) -> None:
    env.servers["ap-south"].put_object(hpa(2, 4))
    env.servers["ap-south"].put_object(deployment(4))
    env.states.update({"us-east": "failed", "eu-west": "failed"})
    current = await env.scaler.read(env.w("ap-south"))
    record = await env.scaler.record(env.w("ap-south"))
    assert record is None and current.effective == 2
    total, surviving = env.scaler.weights(["us-east", "eu-west"])
    await env.scaler.scale_to(
        env.w("ap-south"), env.scaler.absorb_target(2, 2, total, surviving, None), current
    )
    assert env.floor("ap-south") == (6, 6)  # the ceiling had to rise with the floor

    env.states["eu-west"] = "healthy"  # 3 for 200 of 300: the ceiling back to the recorded 4, not 6
    change, why = await env.scaler.restore(env.w("ap-south"))
    assert change is not None and change.after == 3, why
    assert env.floor("ap-south") == (3, 4)
    env.states["us-east"] = "healthy"
    await env.scaler.restore(env.w("ap-south"))
    assert env.floor("ap-south") == (2, 4)
    assert await env.scaler.record(env.w("ap-south")) is None


async def test_an_hpa_record_written_before_this_fix_is_read_in_its_floor(env: Env) -> None:
    """Records carry the HPA's floor and ceiling since HPAs were supported: nothing new to migrate."""
    env.servers["eu-west"].put_object(hpa(2, 20))
    env.servers["eu-west"].put_object(deployment(10))
    await env.store.put(
        env.w("eu-west").key, {"replicas": 10, "set": 3, "hpa": {"name": "web", "min": 2, "max": 20}}
    )
    obj = env.servers["eu-west"].get_object(HPA_API, "horizontalpodautoscalers", "shop", "web")
    assert obj is not None
    obj["spec"]["minReplicas"] = 3
    env.servers["eu-west"].put_object(obj)
    env.states.update({"us-east": "failed", "ap-south": "failed"})
    plan = await describe(env, "k8s.scale", {"cluster": "eu-west", **WEB, "absorb": ["us-east", "ap-south"]})
    assert plan == [
        "eu-west/shop/deployment/web HPA minReplicas 3 -> 6  (absorb us-east, ap-south: ceil(2 x 300 / 100))"
    ]


# finding 8 (a): a run's workloads are the run's ---------------------------------------------------

FAILBACK_BOOK = """name: failback
on: {event: cluster.recovered}
vars:
  others: >-
    {{ clusters | selectattr('state', 'ne', 'failed') | rejectattr('name', 'eq', event.cluster)
       | map(attribute='name') | list }}
steps:
  - id: shrink
    action: k8s.restore_scale
    for_each: "{{ others }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web}
  - id: soak
    action: wait_for
    with: {expression: "clusters | selectattr('soaked') | list", poll: 50ms, timeout: 20s}
"""


async def test_a_pass_during_a_failbacks_scale_down_leaves_the_survivors_to_the_run(
    env: Env, tmp_path: Path
) -> None:
    env.states["us-east"] = "failed"
    await scale_out(env, "eu-west", 9)
    await scale_out(env, "ap-south", 9)
    runner, journal = env.runner(tmp_path, FAILBACK_BOOK)
    reconciler = env.reconciler(busy=runner.touches)
    env.states["us-east"] = "healthy"
    env.servers["eu-west"].set_latency(LATENCY_S)
    writes = env.writes("eu-west")
    [run_id] = await runner.on_event({"type": "cluster.recovered", "cluster": "us-east"})
    try:
        await env.write_in_flight("eu-west", writes)  # the run's scale-down of eu-west has reached its API
        drifts = await env.pass_during_write(reconciler, "eu-west")  # reads the record before the answer
    finally:
        env.servers["eu-west"].set_latency(0)
        env.soaked = True
        await runner.wait_idle(20)
    [drift] = [d for d in drifts if d["cluster"] == "eu-west"]
    assert (drift["expected"], drift["found"], drift["reasserted"]) == (9, 6, False), drift
    assert drift["why"] == "a run is working on this cluster"
    assert not any(d["reasserted"] for d in drifts), drifts
    assert drift in env.drifts  # reported as drift.detected all the same

    record = await journal.load(run_id)
    assert record is not None and record["status"] == "succeeded", json.dumps(record)[:2000]
    assert [env.replicas(c) for c in CLUSTERS] == [6, 6, 6]
    assert [await env.scaler.record(env.w(c)) for c in CLUSTERS] == [None, None, None]
    assert await reconciler.reconcile_once() == []


# finding 8 (b): a re-assertion re-checks the record under the workload's lock -----------------------


async def test_a_pass_that_read_the_record_before_a_restore_does_not_undo_it(env: Env) -> None:
    env.states["us-east"] = "failed"
    await scale_out(env, "eu-west", 9)
    reconciler = env.reconciler()  # no run: only the lock and the record stand in the way
    env.states["us-east"] = "healthy"
    env.servers["eu-west"].set_latency(LATENCY_S)
    writes = env.writes("eu-west")
    restore = asyncio.create_task(env.scaler.restore(env.w("eu-west")))
    await env.write_in_flight("eu-west", writes)  # the baseline write holds the lock until it is answered
    drifts = await env.pass_during_write(reconciler, "eu-west")
    change, why = await restore
    env.servers["eu-west"].set_latency(0)
    assert change is not None and change.after == 6 and "record deleted" in why
    [drift] = drifts
    assert (drift["expected"], drift["found"], drift["reasserted"]) == (9, 6, False), drift
    assert "record deleted" in drift["why"], drift
    assert env.replicas("eu-west") == 6 and await env.scaler.record(env.w("eu-west")) is None
    assert await reconciler.reconcile_once() == []
    assert env.replicas("eu-west") == 6


async def test_a_pass_that_read_the_scale_out_before_a_partial_restore_keeps_the_new_value(env: Env) -> None:
    env.states.update({"us-east": "failed", "ap-south": "failed"})
    await scale_out(env, "eu-west", 18)
    reconciler = env.reconciler()
    env.states["ap-south"] = "healthy"  # one of two back: 18 -> 9
    env.servers["eu-west"].set_latency(LATENCY_S)
    writes = env.writes("eu-west")
    restore = asyncio.create_task(env.scaler.restore(env.w("eu-west")))
    await env.write_in_flight("eu-west", writes)
    drifts = await env.pass_during_write(reconciler, "eu-west")
    change, _ = await restore
    env.servers["eu-west"].set_latency(0)
    assert change is not None and (change.before, change.after) == (18, 9)
    [drift] = drifts
    assert (drift["expected"], drift["found"], drift["reasserted"]) == (18, 9, False), drift
    assert "now holds 9" in drift["why"], drift
    assert env.replicas("eu-west") == 9
    assert (await env.scaler.record(env.w("eu-west")) or {}).get("set") == 9


async def test_a_reassertion_waits_for_a_restore_holding_the_workloads_lock(env: Env) -> None:
    """The reconciler decided on what it read earlier (ours 9, found 7); meanwhile the value came back to
    9 and a failback started restoring the baseline. Re-checking the record is not enough without the
    lock: read while the restore's write is in flight, it still says 9."""
    env.states["us-east"] = "failed"
    await scale_out(env, "eu-west", 9)
    env.set_replicas("eu-west", 7)
    seen: Current = await env.scaler.read(env.w("eu-west"))  # the pass's view: expected 9, found 7
    env.set_replicas("eu-west", 9)
    env.states["us-east"] = "healthy"
    env.servers["eu-west"].set_latency(LATENCY_S)
    writes = env.writes("eu-west")
    restore = asyncio.create_task(env.scaler.restore(env.w("eu-west")))
    await env.write_in_flight("eu-west", writes)
    try:
        with pytest.raises(Superseded, match="record deleted"):
            await env.scaler.reassert(env.w("eu-west"), 9, seen)
    finally:
        change, _ = await restore
        env.servers["eu-west"].set_latency(0)
    assert change is not None and change.after == 6
    assert env.replicas("eu-west") == 6 and await env.scaler.record(env.w("eu-west")) is None
