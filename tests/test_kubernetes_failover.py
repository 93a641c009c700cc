"""Issue 5's scenario end to end: three sandbox clusters (kube API servers with `web` at 6 replicas),
their applications probed over HTTP, and an edge cluster whose HTTPRoute spreads traffic 100/100/100.
The daemon runs the Kubernetes example playbooks (shortened waits)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.runtime.daemon import Daemon
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.helpers import HOOK_SECRET, collect, hook_receiver, wait_for

pytestmark = pytest.mark.timeout(120)
CLUSTERS = ("eu-west", "us-east", "ap-south")
REPO = Path(__file__).resolve().parents[1]


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
        },
    }


def httproute() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "rules": [{"backendRefs": [{"name": f"web-{c}", "port": 80, "weight": 100} for c in CLUSTERS]}],
        },
    }


@asynccontextmanager
async def world(tmp_path: Path, nats: EmbeddedNats) -> AsyncIterator[dict[str, Any]]:
    kube = {c: KubeApiServer(c, ready_delay_s=0.3) for c in (*CLUSTERS, "edge")}
    apps = {c: AppServer(c, free_port()) for c in CLUSTERS}
    (tmp_path / "books").mkdir()
    for name in ("cluster-failover", "cluster-failback"):  # the examples, with short waits
        text = (REPO / "playbooks" / "kubernetes" / f"{name}.yaml").read_text()
        (tmp_path / "books" / f"{name}.yaml").write_text(
            text.replace("interval: 10s", "interval: 400ms").replace("duration: 30s", "duration: 500ms")
        )
    async with hook_receiver() as hook:
        try:
            for server in kube.values():
                await server.start()
            for c in CLUSTERS:
                kube[c].put_object(deployment())
                await apps[c].start()
            kube["edge"].put_object(httproute())
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube)
            lines = [
                f"nats: {{url: '{nats.url}'}}",
                f"state_dir: {tmp_path / 'state'}",
                f"api: {{listen: 127.0.0.1:{free_port()}}}",
                "probing: {interval: 200ms, timeout: 150ms, jitter: 0s, vantage: test}",
                "detection: {failure_threshold: 3, success_threshold: 2, quorum: 1, recovery_hold: 1s}",
                "reconcile: {interval: 500ms}",
                "clusters:",
            ]
            for c in CLUSTERS:
                lines += [
                    f"  - name: {c}",
                    "    weight: 100",
                    f"    kubernetes: {{kubeconfig: '{kubeconfig}', context: {c}}}",
                    f"    probes: [{{name: ingress, http: {{url: '{apps[c].url}/healthz'}}}}]",
                ]
            lines += [
                "load_balancers:",
                "  - name: edge",
                "    driver: gateway_api",
                f"    gateway_api: {{kubeconfig: '{kubeconfig}', context: edge,",
                "                  namespace: shop, route: web, rule: 0}",
                "    members: {eu-west: web-eu-west, us-east: web-us-east, ap-south: web-ap-south}",
                "notifiers:",
                "  - name: oncall",
                "    driver: webhook",
                f"    webhook: {{url: '{hook.url}', secret: {HOOK_SECRET}}}",
                f"playbooks: {{paths: ['{tmp_path / 'books'}']}}",
            ]
            (tmp_path / "failover.yaml").write_text("\n".join(lines) + "\n")
            daemon = Daemon(load_config(tmp_path / "failover.yaml"))
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            await asyncio.wait_for(daemon.ready.wait(), 20)
            try:
                yield {"kube": kube, "apps": apps, "daemon": daemon, "hook": hook}
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
        finally:
            for app in apps.values():
                await app.stop()
            for server in kube.values():
                await server.stop()


def weights(kube: dict[str, KubeApiServer]) -> dict[str, int]:
    route = kube["edge"].get_object("gateway.networking.k8s.io/v1", "httproutes", "shop", "web")
    return {
        ref["name"].removeprefix("web-"): ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]
    }


def replicas(kube: dict[str, KubeApiServer]) -> dict[str, tuple[int, int]]:
    out = {}
    for c in CLUSTERS:
        d = kube[c].get_object("apps/v1", "deployments", "shop", "web")
        out[c] = (d["spec"]["replicas"], (d.get("status") or {}).get("availableReplicas", 0))
    return out


async def test_capacity_follows_failures_and_recoveries(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with world(tmp_path, nats_server) as w:
        kube, apps, daemon = w["kube"], w["apps"], w["daemon"]
        never_drained: list[dict[str, int]] = []

        async def watch_ap_south() -> None:
            while True:
                never_drained.append(weights(kube))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_ap_south())
        system: list[dict[str, Any]] = []

        async def on_system(msg: Any) -> None:
            system.append(json.loads(msg.data))

        await daemon.bus.subscribe("failover.events.system", on_system)
        try:
            await wait_for(lambda: _all(daemon, "healthy"), 10, "all clusters healthy")

            async def state(
                expected_weights: dict[str, int], expected_replicas: dict[str, tuple[int, int]]
            ) -> bool:
                return weights(kube) == expected_weights and replicas(kube) == expected_replicas

            await apps["eu-west"].stop()
            await wait_for(lambda: weights(kube)["eu-west"] == 0, 5, "eu-west drained")
            await wait_for(
                lambda: state(
                    {"eu-west": 0, "us-east": 100, "ap-south": 100},
                    {"eu-west": (6, 6), "us-east": (9, 9), "ap-south": (9, 9)},
                ),
                15,
                "survivors at 9 and ready",
            )

            # a GitOps self-heal puts the route back by hand: the leader re-asserts the drain and says so
            route = kube["edge"].get_object("gateway.networking.k8s.io/v1", "httproutes", "shop", "web")
            route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 100
            kube["edge"].put_object(route)
            assert weights(kube)["eu-west"] == 100
            await wait_for(lambda: weights(kube)["eu-west"] == 0, 5, "the drain re-asserted")

            # a pass that ran while the failover's last step (the page) was still running reports the
            # drift as not re-asserted yet ("a run is working on this cluster"); the next one re-asserts
            def reasserted() -> list[dict[str, Any]]:
                return [
                    e["detail"] for e in system if e["type"] == "drift.detected" and e["detail"]["reasserted"]
                ]

            await wait_for(lambda: bool(reasserted()), 5, "drift.detected, re-asserted")
            drift = reasserted()[0]
            assert (drift["balancer"], drift["cluster"], drift["found"], drift["reasserted"]) == (
                "edge",
                "eu-west",
                100,
                True,
            )

            await apps["us-east"].stop()
            await wait_for(
                lambda: state(
                    {"eu-west": 0, "us-east": 0, "ap-south": 100},
                    {"eu-west": (6, 6), "us-east": (9, 9), "ap-south": (18, 18)},
                ),
                15,
                "the last survivor at 18, from its baseline of 6",
            )

            await apps["eu-west"].start()  # one of two back: it serves at 9, the survivor goes 18 -> 9
            await wait_for(
                lambda: state(
                    {"eu-west": 100, "us-east": 0, "ap-south": 100},
                    {"eu-west": (9, 9), "us-east": (9, 9), "ap-south": (9, 9)},
                ),
                20,
                "eu-west back at 9, ap-south down to 9",
            )

            await apps["us-east"].start()  # everyone serves: every baseline restored
            await wait_for(
                lambda: state(
                    {"eu-west": 100, "us-east": 100, "ap-south": 100},
                    {"eu-west": (6, 6), "us-east": (6, 6), "ap-south": (6, 6)},
                ),
                20,
                "everything back to 6 and 100",
            )
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert all(snapshot["ap-south"] == 100 for snapshot in never_drained)
        assert any(snapshot["eu-west"] == 10 for snapshot in never_drained)  # the ramp was seen
        summaries = [n["summary"] for n in w["hook"].received]
        assert any(
            s.startswith("eu-west failed: edge/eu-west weight 100 -> 0; survivors scaled:") for s in summaries
        )
        assert w["hook"].rejected == 0


async def _all(daemon: Daemon, status: str) -> bool:
    assert daemon.detection is not None
    return set(daemon.detection.cluster_view().values()) == {status}


async def test_a_failure_during_a_failbacks_readiness_wait_is_acted_on_at_once(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Issue 11, finding 1: the failback waits up to 5 min for the recovered cluster's workload; a new
    failure of that cluster preempts the wait instead of queueing the failover behind it."""
    async with world(tmp_path, nats_server) as w:
        kube, apps, daemon = w["kube"], w["apps"], w["daemon"]
        await wait_for(lambda: _all(daemon, "healthy"), 10, "all clusters healthy")
        await apps["eu-west"].stop()
        await wait_for(lambda: weights(kube)["eu-west"] == 0, 5, "eu-west drained")
        kube["eu-west"].set_unavailable("shop", "web", 6)  # its workload will not become ready
        await apps["eu-west"].start()

        def failback_waiting() -> bool:
            assert daemon.runner is not None
            return any(
                r.playbook == "k8s-cluster-failback"
                and (r.record or {}).get("steps", {}).get("ready", {}).get("status") == "running"
                for r in daemon.runner.active.values()
            )

        await wait_for(failback_waiting, 10, "the failback waiting for readiness")
        [failback] = [r.id for r in daemon.runner.active.values()]  # type: ignore[union-attr]
        assert daemon.bus is not None
        runs = await collect(daemon.bus, subjects.RUNS_ALL)
        await apps["eu-west"].stop()

        def failover_finished() -> bool:  # (the incident is still open and drained: no second page)
            return any(
                e["type"] == "finished" and e["playbook"] == "k8s-cluster-failover"
                and e["detail"].get("status") == "succeeded"
                for e in runs
            )  # fmt: skip

        await wait_for(failover_finished, 8, "the failover of eu-west ran (not queued behind the wait)")
        assert daemon.journal is not None
        record = await daemon.journal.load(failback)
        assert record is not None and record["status"] == "preempted", record
        assert weights(kube)["eu-west"] == 0
