"""Scaling survivors to absorb failed clusters' load, and back, against sandbox Kubernetes API servers
(kubernetes-asyncio over real HTTP) with baselines in a real NATS KV."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.scale import ScaleActuator, Workload
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.core.errors import PermanentError
from orchestrator.kube.client import KubeClients
from orchestrator.playbooks.actions import Services
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.playbooks.runner import Runner
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = pytest.mark.timeout(60)
CLUSTERS = ("eu-west", "us-east", "ap-south")


def deployment(replicas: int = 6) -> dict[str, Any]:
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
        "apiVersion": "autoscaling/v2",
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

    def replicas(self, cluster: str) -> int:
        return int(
            self.servers[cluster].get_object("apps/v1", "deployments", "shop", "web")["spec"]["replicas"]
        )

    def w(self, cluster: str) -> Workload:
        return Workload(cluster, "shop", "deployment", "web")


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


async def absorb(env: Env, cluster: str, failed: list[str]) -> int:
    current = await env.scaler.read(env.w(cluster))
    record = await env.scaler.record(env.w(cluster))
    baseline = int(record["replicas"]) if record else current.effective
    total, surviving = env.scaler.weights(failed)
    target = env.scaler.absorb_target(baseline, current.effective, total, surviving, None)
    await env.scaler.scale_to(env.w(cluster), target, current)
    return target


async def test_survivors_absorb_from_the_baseline_and_return_to_it(env: Env) -> None:
    env.states["us-east"] = "failed"
    assert [await absorb(env, c, ["us-east"]) for c in ("eu-west", "ap-south")] == [9, 9]
    assert (env.replicas("eu-west"), env.replicas("ap-south"), env.replicas("us-east")) == (9, 9, 6)
    env.states["eu-west"] = "failed"
    assert await absorb(env, "ap-south", ["us-east", "eu-west"]) == 18  # 6 x 300/100, not 9 x 300/200
    assert (await env.scaler.record(env.w("ap-south"))) == {"replicas": 6, "set": 18, "hpa": None}

    env.states["eu-west"] = "healthy"  # one of two back: survivors size for 200 of 300
    change, why = await env.scaler.restore(env.w("ap-south"))
    assert change is not None and (change.before, change.after) == (18, 9), why
    change, why = await env.scaler.restore(env.w("eu-west"))  # eu-west is at its (recorded) 9 already
    assert change is None and "already at 9" in why

    env.states["us-east"] = "healthy"  # everyone serves: baselines back, records deleted
    for cluster in ("ap-south", "eu-west"):
        change, why = await env.scaler.restore(env.w(cluster))
        assert change is not None and change.after == 6 and "record deleted" in why
        assert await env.scaler.record(env.w(cluster)) is None
    assert [env.replicas(c) for c in CLUSTERS] == [6, 6, 6]


async def test_a_cluster_healthy_again_but_still_drained_serves_nothing_yet(env: Env) -> None:
    """A cluster that recovered but whose traffic is not back (its failback waits for approval, or it was
    drained by hand) carries no load: the survivors keep what they absorbed. Before, another cluster's
    failback shrank them to baseline while us-east was still at weight 0 (found by `failover demo`)."""
    env.states["us-east"] = "failed"
    assert [await absorb(env, c, ["us-east"]) for c in ("eu-west", "ap-south")] == [9, 9]
    await env.store.put("desired.lb.edge.us-east", {"weight": 0})  # the drain we hold
    env.states["us-east"] = "healthy"  # recovered; its failback has not given the traffic back yet
    change, why = await env.scaler.restore(env.w("eu-west"))
    assert change is None and "already at 9" in why, why
    assert env.replicas("eu-west") == 9
    plan = await env.scaler.plan_restore(env.w("ap-south"))
    assert plan["target"] is None and not plan["restore_baseline"]
    # a cluster drained by hand for maintenance, healthy all along, is absorbed by the others as well
    assert env.scaler.weights(await env.scaler.not_serving(["eu-west"])) == (300, 100)

    await env.store.delete("desired.lb.edge.us-east")  # the failback's ramp finished: every cluster serves
    change, why = await env.scaler.restore(env.w("eu-west"))
    assert change is not None and change.after == 6 and "record deleted" in why


async def test_restore_leaves_a_humans_value_alone_and_says_so(env: Env) -> None:
    env.states["us-east"] = "failed"
    await absorb(env, "eu-west", ["us-east"])
    obj = env.servers["eu-west"].get_object("apps/v1", "deployments", "shop", "web")
    obj["spec"]["replicas"] = 12  # someone scaled by hand
    env.servers["eu-west"].put_object(obj)
    env.states["us-east"] = "healthy"
    change, why = await env.scaler.restore(env.w("eu-west"))
    assert why == "drift" and change is not None and "expected 9 (ours), found 12" in str(change.drift)
    assert env.replicas("eu-west") == 12


async def test_under_an_hpa_the_floor_is_raised_and_restored(env: Env) -> None:
    env.servers["eu-west"].put_object(hpa(2, 8))
    env.states["us-east"] = "failed"
    env.states["ap-south"] = "failed"
    current = await env.scaler.read(env.w("eu-west"))
    assert current.hpa is not None and current.effective == 2
    await env.scaler.scale_to(env.w("eu-west"), 18, current)
    obj = env.servers["eu-west"].get_object("autoscaling/v2", "horizontalpodautoscalers", "shop", "web")
    assert (obj["spec"]["minReplicas"], obj["spec"]["maxReplicas"]) == (18, 18)
    env.states.update({"us-east": "healthy", "ap-south": "healthy"})
    change, _ = await env.scaler.restore(env.w("eu-west"))
    assert change is not None and change.via == "hpa"
    obj = env.servers["eu-west"].get_object("autoscaling/v2", "horizontalpodautoscalers", "shop", "web")
    assert (obj["spec"]["minReplicas"], obj["spec"]["maxReplicas"]) == (2, 8)


async def test_no_survivor_means_no_absorb(env: Env) -> None:
    env.states.update(dict.fromkeys(CLUSTERS, "failed"))
    with pytest.raises(PermanentError, match="no cluster left serving"):
        await absorb(env, "eu-west", ["us-east"])


SCALE_BOOK = """name: absorb
on: {event: cluster.failed}
steps:
  - id: scale
    action: k8s.scale
    for_each: "{{ clusters | selectattr('state', 'ne', 'failed') | map(attribute='name') | list }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, absorb: "{{ event.cluster }}",
           max_replicas: 40}
    retry: {attempts: 4, initial: 50ms}
  - id: ready
    action: k8s.wait_ready
    for_each: "{{ clusters | selectattr('state', 'ne', 'failed') | map(attribute='name') | list }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, timeout: 10s}
  - id: mark
    action: k8s.patch
    with:
      cluster: "{{ event.cluster }}"
      api_version: apps/v1
      resource: deployments
      namespace: shop
      name: web
      patch: {metadata: {annotations: {failover.io/drained: "true"}}}
"""


async def test_the_playbook_actions_journal_their_numbers_and_retry_a_conflict(
    env: Env, tmp_path: Path
) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "absorb.yaml").write_text(SCALE_BOOK)
    env.servers["eu-west"].fail_next(1, status=409)  # a concurrent writer: the step re-reads and retries
    env.servers["ap-south"].fail_next(2, status=503)
    services = Services(env.config, {}, {}, lambda: env.states, scale=env.scaler)

    def clusters() -> list[dict[str, Any]]:
        return [{"name": c, "state": env.states[c], "labels": {}, "weight": 100} for c in CLUSTERS]

    journal = BusJournal(env.bus)
    runner = Runner(services, journal, load_playbooks([tmp_path / "books"], env.config), clusters)
    env.states["us-east"] = "failed"
    [run_id] = await runner.on_event({"type": "cluster.failed", "cluster": "us-east"})
    await runner.wait_idle(30)
    record = await journal.load(run_id)
    assert record is not None and record["status"] == "succeeded", json.dumps(record)[:2000]
    items = record["steps"]["scale"]["items"]
    assert {i["result"]["workload"]: i["result"]["after"] for i in items.values()} == {
        "eu-west/shop/deployment/web": 9,
        "ap-south/shop/deployment/web": 9,
    }
    assert items["0"]["basis"] == {
        "baseline": 6,
        "total_weight": 300,
        "surviving_weight": 200,
        "absorb": ["us-east"],
    }
    assert items["0"]["attempts"] == 2 and items["1"]["attempts"] >= 2
    assert record["steps"]["mark"]["before"] == {"metadata": {"annotations": None}}
    obj = env.servers["us-east"].get_object("apps/v1", "deployments", "shop", "web")
    assert obj["metadata"]["annotations"]["failover.io/drained"] == "true"
    assert all(ready["result"]["available"] == 9 for ready in record["steps"]["ready"]["items"].values())
