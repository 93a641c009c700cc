"""`failover drill` end to end (DESIGN §15): three sandbox clusters whose applications serve only while
their `web` deployment has available pods and no NetworkPolicy denies them (`sandbox.kube_serving`), an
edge HTTPRoute, a real daemon with the Kubernetes example playbooks, and the command as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.bus.state import StateStore
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import DrillScheduleConfig
from orchestrator.runtime.daemon import Daemon
from orchestrator.runtime.drills import DrillScheduler, LocalView, due
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.kube_resources import lookup
from orchestrator.sandbox.kube_serving import ServingLink, serving
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.helpers import HOOK_SECRET, hook_receiver, wait_for
from tests.test_kubernetes_failover import deployment, httproute, weights

pytestmark = pytest.mark.timeout(150)
CLUSTERS = ("eu-west", "us-east", "ap-south")
REPO = Path(__file__).resolve().parents[1]
DENY_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny", "namespace": "shop"},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}}},
}


async def refused(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=1)):
            return False
    except aiohttp.ClientConnectionError:
        return True


async def test_network_policies_and_the_serving_link(tmp_path: Path) -> None:
    """The sandbox serves networking.k8s.io/v1 NetworkPolicies to kubernetes-asyncio, defaults and
    validates them like kube-apiserver, and its application stops answering while its workload has no
    available pod or a policy isolates its pods without a rule that lets everyone in."""
    async with AsyncExitStack() as stack:
        kube = await stack.enter_async_context(KubeApiServer("c1", ready_delay_s=0.2))
        kube.put_object(deployment())
        app = AppServer("c1", free_port())
        stack.push_async_callback(app.stop)
        link = await stack.enter_async_context(ServingLink(kube.store, app, "shop", "web"))
        await wait_for(lambda: app.running, 5, "the app serving once its pods are ready")
        cfg = client.Configuration()
        await config.load_kube_config(str(kube.write_kubeconfig(tmp_path / "kc")), client_configuration=cfg)
        async with client.ApiClient(cfg) as api_client:
            net = client.NetworkingV1Api(api_client)
            created = await net.create_namespaced_network_policy("shop", DENY_ALL)
            assert created.spec.policy_types == ["Ingress"]  # defaulted as the API server does
            await wait_for(lambda: not app.running, 5, "a deny-all policy closing the app")
            assert await refused(f"{app.url}/healthz")
            assert link.reason == "ingress denied by NetworkPolicy deny"
            listed = await net.list_namespaced_network_policy("shop")
            assert [p.metadata.name for p in listed.items] == ["deny"]

            allow = {**DENY_ALL, "metadata": {"name": "allow", "namespace": "shop"}}
            await net.create_namespaced_network_policy("shop", {**allow, "spec": {"ingress": [{}]}})
            await wait_for(lambda: app.running, 5, "an allow-all rule letting callers in again")
            await net.delete_namespaced_network_policy("allow", "shop")
            await wait_for(lambda: not app.running, 5, "denied again")
            await net.delete_namespaced_network_policy("deny", "shop")
            await wait_for(lambda: app.running, 5, "the app back once the policy is gone")

            bad = {**DENY_ALL, "spec": {"policyTypes": ["Sideways"]}}
            with pytest.raises(client.ApiException) as e:
                await net.create_namespaced_network_policy("shop", bad)
            assert e.value.status == 422
            assert 'Unsupported value: "Sideways"' in json.loads(e.value.body)["message"]

            apps = client.AppsV1Api(api_client)
            await apps.patch_namespaced_deployment_scale("web", "shop", {"spec": {"replicas": 0}})
            await wait_for(lambda: not app.running, 5, "no available replicas closing the app")
            assert serving(kube.store, "shop", "web") == (False, "no available replicas")
            await apps.patch_namespaced_deployment_scale("web", "shop", {"spec": {"replicas": 2}})
            await wait_for(lambda: app.running, 5, "the app back once a pod is ready")


@asynccontextmanager
async def world(tmp_path: Path, nats: EmbeddedNats) -> AsyncIterator[dict[str, Any]]:
    """test_kubernetes_failover's world with each application tied to its cluster's deployment."""
    kube = {c: KubeApiServer(c, ready_delay_s=0.3) for c in (*CLUSTERS, "edge")}
    apps = {c: AppServer(c, free_port()) for c in CLUSTERS}
    (tmp_path / "books").mkdir()
    for name in ("cluster-failover", "cluster-failback"):
        text = (REPO / "playbooks" / "kubernetes" / f"{name}.yaml").read_text()
        (tmp_path / "books" / f"{name}.yaml").write_text(
            text.replace("interval: 10s", "interval: 300ms").replace("duration: 30s", "duration: 300ms")
        )
    async with AsyncExitStack() as stack:
        hook = await stack.enter_async_context(hook_receiver())
        for c, server in kube.items():
            await stack.enter_async_context(server)
            if c in apps:
                server.put_object(deployment())
                stack.push_async_callback(apps[c].stop)
                await stack.enter_async_context(ServingLink(server.store, apps[c], "shop", "web"))
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
                f"    probes: [{{name: ingress, http: {{url: '{apps[c].url}/healthz'}}}},",
                "             {name: web, kube_workload: {namespace: shop, deployment: web}}]",
            ]
        lines += [
            "load_balancers:",
            "  - name: edge",
            "    driver: gateway_api",
            f"    gateway_api: {{kubeconfig: '{kubeconfig}', context: edge, namespace: shop, route: web}}",
            "    members: {eu-west: web-eu-west, us-east: web-us-east, ap-south: web-ap-south}",
            "notifiers:",
            f"  - {{name: oncall, driver: webhook, webhook: {{url: '{hook.url}', secret: {HOOK_SECRET}}}}}",
            f"playbooks: {{paths: ['{tmp_path / 'books'}']}}",
        ]
        path = tmp_path / "failover.yaml"
        path.write_text("\n".join(lines) + "\n")
        daemon = Daemon(load_config(path))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.wait_for(daemon.ready.wait(), 20)
        audit: list[dict[str, Any]] = []

        async def on_audit(msg: Any) -> None:
            audit.append(json.loads(msg.data))

        assert daemon.bus is not None
        await daemon.bus.subscribe("failover.audit", on_audit)
        try:
            await wait_for(lambda: all(_states(daemon).get(c) == "healthy" for c in CLUSTERS), 15, "healthy")
            yield {"kube": kube, "apps": apps, "daemon": daemon, "config": path, "audit": audit}
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def _states(daemon: Daemon) -> dict[str, str]:
    return dict(daemon.status()["clusters"])


def replicas(kube: KubeApiServer) -> tuple[int, int]:
    d = kube.get_object("apps/v1", "deployments", "shop", "web")
    assert d is not None
    return d["spec"]["replicas"], (d.get("status") or {}).get("availableReplicas", 0)


def policies(kube: KubeApiServer) -> list[str]:
    netpol = lookup("networking.k8s.io", "v1", "networkpolicies")
    assert netpol is not None, "the sandbox serves no NetworkPolicies"
    return sorted(o["metadata"]["name"] for o in kube.store.items(netpol, "shop"))


async def drill(cfg: Path, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NO_COLOR": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "drill",
        "--config",
        str(cfg),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def finished(proc: asyncio.subprocess.Process, timeout_s: float = 90) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def stable(w: dict[str, Any]) -> bool:
    """The world as it was: weights 100 everywhere, every deployment back at 6 and ready, no policy."""
    return (
        weights(w["kube"]) == {c: 100 for c in CLUSTERS}
        and all(replicas(w["kube"][c]) == (6, 6) for c in CLUSTERS)
        and not any(policies(w["kube"][c]) for c in CLUSTERS)
    )


@pytest.mark.parametrize("fault", ["scale-to-zero", "deny-ingress"])
async def test_drill_fails_over_recovers_and_leaves_the_cluster_as_it_was(
    nats_server: EmbeddedNats, tmp_path: Path, fault: str
) -> None:
    async with world(tmp_path, nats_server) as w:
        args = ["--cluster", "eu-west", "--fault", fault, "--yes", "--timeout", "30s"]
        code, out, err = await finished(await drill(w["config"], *args, "--recovery-timeout", "60s"))
        print(out, err)
        assert code == 0, err
        assert f"drill: {fault} on eu-west (shop/web): PASSED" in out
        for stage in ("fault.injected", "cluster.failed", "run.started", "traffic.moved", "run.finished"):
            assert stage in out
        for stage in ("fault.removed", "cluster.recovered", "failback.started", "traffic.restored"):
            assert stage in out
        assert "traffic moved" in out and "after the fault" in out
        await wait_for(lambda: stable(w), 15, "the cluster as it was")
        # announced through the API: audited, and drill.started / drill.finished system events
        drills = [a for a in w["audit"] if a["command"] == "drill"]
        assert [a["args"]["phase"] for a in drills] == ["started", "finished"]
        assert [a["result"] for a in drills] == ["ok", "ok"]
        assert drills[1]["args"]["outcome"] == "passed" and drills[1]["args"]["recovery_s"] > 0
        assert "not announced" not in out


async def test_drill_json_refusals_and_interruption(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with world(tmp_path, nats_server) as w:
        kube, cfg, daemon = w["kube"], w["config"], w["daemon"]
        base = ["--cluster", "eu-west", "--fault", "scale-to-zero"]

        code, _out, err = await finished(await drill(cfg, *base))
        assert code == 2
        assert "would scale deployment shop/web in cluster eu-west to 0 replicas" in err
        assert "--yes" in err and replicas(kube["eu-west"]) == (6, 6)

        commands = daemon.commands
        assert commands is not None
        answer = await commands.handle("pause", {"for": "1h"}, None, "test")
        assert answer["ok"], answer
        code, _out, err = await finished(await drill(cfg, *base, "--yes"))
        assert code == 1 and "drill refused: automation is paused: all" in err, err
        assert (await commands.handle("resume", {}, None, "test"))["ok"]

        await w["apps"]["us-east"].stop()  # an incident: us-east fails (its link keeps it down: no event)
        await wait_for(lambda: _states(daemon)["us-east"] == "failed", 10, "us-east failed")
        code, _out, err = await finished(await drill(cfg, *base, "--yes"))
        assert code == 1 and "drill refused: another incident is open: us-east is failed" in err, err
        assert replicas(kube["eu-west"])[0] == 9  # scaled up by the failover, not touched by the drill
        await w["apps"]["us-east"].start()
        await wait_for(lambda: stable(w) and not daemon.status()["active_runs"], 30, "us-east back")
        await wait_for(lambda: _states(daemon)["us-east"] == "healthy", 10, "us-east healthy")

        # Ctrl-C once the fault is in: the drill removes it, reports what it saw, and exits 1
        proc = await drill(cfg, *base, "--yes", "--json")
        await wait_for(lambda: replicas(kube["eu-west"])[0] == 0, 20, "the fault injected")
        proc.send_signal(signal.SIGINT)
        code, out, err = await finished(proc)
        assert code == 1, err
        assert "interrupted: removing the fault" in err
        report = json.loads(out)
        assert report["outcome"] == "interrupted"
        removed = next(t for t in report["timeline"] if t["stage"] == "fault.removed")
        assert removed["detail"] == "shop/web replicas 0 -> 6"
        assert replicas(kube["eu-west"])[0] == 6
        await wait_for(lambda: stable(w), 30, "the cluster as it was after the interrupted drill")


# practice runs (`drills:`) ---------------------------------------------------------------------------


def schedule(**fields: Any) -> DrillScheduleConfig:
    base: dict[str, Any] = {
        "name": "weekly",
        "clusters": ["eu-west", "us-east"],
        "every": "7d",
        "window": {"start": "10:00", "end": "16:00", "timezone": "Europe/Paris", "days": ["tue", "wed"]},
        "blocked_dates": ["2026-12-23"],
        "timeout": "30s",
        "recovery_timeout": "60s",
    }
    return DrillScheduleConfig.model_validate({**base, **fields})


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_drill_is_due_only_inside_its_window_on_its_days_and_not_on_blocked_dates() -> None:
    s = schedule()
    assert due(s, at("2026-12-01T10:30:00+01:00"), None) == (True, "")  # a Tuesday in Paris
    assert due(s, at("2026-12-01T09:30:00Z"), None) == (True, "")  # 10:30 in Paris
    assert due(s, at("2026-12-01T09:59:00+01:00"), None) == (
        False,
        "09:59 Europe/Paris is outside 10:00-16:00",
    )
    assert due(s, at("2026-12-01T16:00:00+01:00"), None)[0] is False  # the end is not in the window
    assert due(s, at("2026-12-03T11:00:00+01:00"), None) == (False, "thu is not a drill day")
    assert due(s, at("2026-12-23T11:00:00+01:00"), None) == (False, "2026-12-23 is a blocked date")
    last = at("2026-12-01T10:30:00+01:00")
    assert due(s, at("2026-12-08T10:29:00+01:00"), last) == (
        False,
        "the last drill was at 2026-12-01T09:30:00.000Z",
    )
    assert due(s, at("2026-12-08T10:30:00+01:00"), last) == (True, "")


def test_drills_config_is_checked(tmp_path: Path) -> None:
    from orchestrator.core.errors import ValidationFailed

    def load(drills: str) -> list[str]:
        path = tmp_path / "f.yaml"
        path.write_text(
            "clusters:\n"
            "  - {name: a, probes: [{name: p, tcp: {host: 127.0.0.1, port: 1}}]}\n"
            "  - name: b\n"
            "    kubernetes: {context: b}\n"
            "    probes: [{name: p, tcp: {host: 127.0.0.1, port: 1}}]\n" + drills
        )
        try:
            load_config(path)
        except ValidationFailed as e:
            return [str(p) for p in e.problems]
        return []

    problems = load("drills: [{name: d, clusters: [a, b, c]}]\n")
    assert any("drills[0].clusters[0]: a cluster without `kubernetes:` 'a'" in p for p in problems), problems
    assert any("drills[0].clusters[1]: 'b' has no kube_workload probe" in p for p in problems), problems
    assert any("drills[0].clusters[2]: unknown cluster 'c'" in p for p in problems), problems
    one = "drills: [{name: d, clusters: [b], namespace: s, deployment: w, "
    bad = one + "window: {start: '16:00', end: '10:00'}}]\n"
    assert any("window.start must be before window.end" in p for p in load(bad))
    zone = (
        "drills: [{name: d, clusters: [b], namespace: s, deployment: w, window: {timezone: Mars/Olympus}}]\n"
    )
    assert any("unknown time zone 'Mars/Olympus'" in p for p in load(zone))
    good = "drills: [{name: d, clusters: [b], namespace: s, deployment: w, blocked_dates: [2026-12-24]}]\n"
    assert load(good) == []


async def test_practice_runs_skip_while_an_incident_is_open_then_drill_in_turn(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with world(tmp_path, nats_server) as w:
        daemon = w["daemon"]
        assert daemon.bus is not None and daemon.journal is not None
        config = daemon.config.model_copy(update={"drills": [schedule()]})
        events: list[dict[str, Any]] = []

        async def publish(kind: str, reason: str, detail: dict[str, Any]) -> None:
            events.append({"type": kind, "reason": reason, "detail": detail})
            await daemon._system_event(kind, reason, detail)

        now = [at("2026-12-03T11:00:00+01:00")]  # a Thursday: not a drill day
        store = StateStore(daemon.bus)
        drills = DrillScheduler(
            config,
            LocalView(daemon.status, daemon.current_weights, store, daemon.journal, publish, config),
            store,
            publish,
            clock=lambda: now[0],
        )
        assert await drills.tick() == [] and events == []

        now[0] = at("2026-12-08T11:00:00+01:00")  # Tuesday, in the window: due, but us-east is failing
        await w["apps"]["us-east"].stop()
        await wait_for(lambda: _states(daemon)["us-east"] == "failed", 10, "us-east failed")
        assert await drills.tick() == [] and await drills.tick() == []
        assert [e["type"] for e in events] == ["drill.skipped"]  # said once, not at every check
        assert events[0]["reason"] == (
            "practice run weekly on eu-west skipped: another incident is open: us-east is failed"
        )
        assert replicas(w["kube"]["eu-west"])[0] > 0  # no drill
        await w["apps"]["us-east"].start()
        await wait_for(lambda: stable(w) and not daemon.status()["active_runs"], 30, "us-east back")
        await wait_for(lambda: _states(daemon)["us-east"] == "healthy", 10, "us-east healthy")

        reports = await drills.tick()
        assert [r["outcome"] for r in reports] == ["passed"], reports
        assert reports[0]["cluster"] == "eu-west" and reports[0]["recovery_s"] > 0
        assert [e["type"] for e in events] == ["drill.skipped", "drill.started", "drill.finished"]
        finished = events[-1]["detail"]
        assert (finished["outcome"], finished["fault"]) == ("passed", "scale-to-zero")
        assert finished["timeline"]["traffic.moved"] > 0 and finished["timeline"]["failback.finished"] > 0
        await wait_for(lambda: stable(w), 15, "the cluster as it was")

        assert await drills.tick() == []  # done for this week
        now[0] = at("2026-12-15T11:00:00+01:00")
        await wait_for(lambda: not daemon.status()["active_runs"], 15, "idle")
        reports = await drills.tick()
        assert [(r["cluster"], r["outcome"]) for r in reports] == [("us-east", "passed")]  # in turn
        await wait_for(lambda: stable(w), 15, "the cluster as it was")
