"""Readiness of the shipped playbooks (STYLE §15, golden examples): the Kubernetes failover
(`playbooks/kubernetes/`: a Gateway API HTTPRoute on an edge cluster, survivors scaled with
`max_replicas: 60`) and the HAProxy ones (`playbooks/`: `cluster-failover` and the `manual-drain` that
`failover ctl failover` starts). A Kubernetes balancer's own permissions are asked on its cluster, and a
backendRef missing from the route is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.check import run, table
from orchestrator.core.config import load_config
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.test_kubernetes_failover import CLUSTERS, deployment, httproute
from tests.test_readiness import world

pytestmark = pytest.mark.timeout(90)
REPO = Path(__file__).resolve().parents[1]


async def check(path: Path) -> dict[str, Any]:
    config = load_config(path)
    return await run(config, load_playbooks(config.playbook_paths(), config))


def problems(report: dict[str, Any], cluster: str, playbook: str | None = None) -> list[str]:
    [result] = [r for r in report["results"] if r["cluster"] == cluster and playbook in (None, r["playbook"])]
    return [f"{p['kind']}: {p['message']}" for p in result["problems"]]


async def test_the_kubernetes_example_with_its_gateway_route(tmp_path: Path) -> None:
    kube = {c: KubeApiServer(c, ready_delay_s=0.05) for c in (*CLUSTERS, "edge")}
    try:
        for server in kube.values():
            await server.start()
        for c in CLUSTERS:
            kube[c].put_object(deployment())
        kube["edge"].put_object(httproute())
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube)
        lines = [f"state_dir: {tmp_path / 'state'}", "clusters:"]
        for c in CLUSTERS:
            lines += [f"  - name: {c}", f"    kubernetes: {{kubeconfig: '{kubeconfig}', context: {c}}}"]
        lines += [
            "load_balancers:",
            f"  - {{name: edge, driver: gateway_api, gateway_api: {{kubeconfig: '{kubeconfig}',",
            "     context: edge, namespace: shop, route: web, rule: 0},",
            "     members: {eu-west: web-eu-west, us-east: web-us-east, ap-south: web-ap-south}}",
            "notifiers: [{name: oncall, driver: nats, nats: {subject: oncall.failover}}]",
            f"playbooks: {{paths: ['{REPO / 'playbooks' / 'kubernetes'}']}}",
        ]
        path = tmp_path / "failover.yaml"
        path.write_text("\n".join(lines) + "\n")
        report = await check(path)
        assert report["ready"] is True, table(report)
        assert {(r["playbook"], r["event"]) for r in report["results"]} == {
            ("k8s-cluster-failover", "cluster.failed")
        }
        [eu] = [r for r in report["results"] if r["cluster"] == "eu-west"]
        ok = {c["message"] for c in eu["checks"] if c["status"] == "ok"}
        assert "balancer edge may update httproutes.gateway.networking.k8s.io web in shop" in ok
        assert any(
            m.startswith("us-east/shop/deployment/web: 6 -> 9 replicas") and "max_replicas 60" in m
            for m in ok
        )
        # no NATS here: the nats notifier cannot be flushed, which is said, not failed
        assert [s["message"] for s in eu["skipped"]] == [
            "notifier oncall: no NATS connection here (no nats.url: the embedded server runs in the daemon)"
        ]

        kube["edge"].access.deny("update", "httproutes", group="gateway.networking.k8s.io")
        route = httproute()
        route["spec"]["rules"][0]["backendRefs"].pop()  # web-ap-south is gone from the route
        kube["edge"].put_object(route)
        before = kube["edge"].get_object("gateway.networking.k8s.io/v1", "httproutes", "shop", "web")
        report = await check(path)
        assert report["ready"] is False and report["not_ready"] == 3
        found = problems(report, "eu-west")
        assert (
            found[0].startswith("balancer: balancer edge cannot be read: ")
            and "has no entry 'web-ap-south'" in found[0]
        )
        assert found[1].startswith(
            "permission: balancer edge may not update httproutes.gateway.networking.k8s.io web"
        )
        after = kube["edge"].get_object("gateway.networking.k8s.io/v1", "httproutes", "shop", "web")
        assert after == before and kube["edge"].requests("PUT") == []
    finally:
        for server in kube.values():
            await server.stop()


async def test_the_shipped_haproxy_playbooks_failover_and_manual_drain(
    tmp_path: Path, haproxy_binary: str
) -> None:
    async with world(tmp_path, haproxy_binary) as w:
        path = w.config()
        text = path.read_text().replace(str(tmp_path / "books"), str(REPO / "playbooks"))
        path.write_text(text)
        report = await check(path)
        assert report["ready"] is True, table(report)
        pairs = {(r["playbook"], r["cluster"], r["event"]) for r in report["results"]}
        assert pairs == {
            (pb, c, event)
            for pb, event in (("cluster-failover", "cluster.failed"), ("manual-drain", "manual"))
            for c in CLUSTERS
        }
        # the drain of one cluster out of three is allowed; with two already at weight 0, it is not
        await w.fleet.haproxy.admin().command("set weight web/us1 0")
        await w.fleet.haproxy.admin().command("set weight web/ap1 0")
        report = await check(path)
        refused = (
            "guard: the drain would be refused: balancer global: eu-west 100 -> 0 would leave 0 serving "
            "healthy cluster(s) (none); minimum is 1"
        )
        for playbook in ("cluster-failover", "manual-drain"):
            assert problems(report, "eu-west", playbook) == [refused]
            assert problems(report, "us-east", playbook) == []  # already drained: nothing to refuse
