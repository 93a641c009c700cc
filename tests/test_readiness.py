"""Readiness checks and `failover check` (DESIGN §17, issue 17): real HAProxy, the sandbox Kubernetes API
(with SelfSubjectAccessReview and RBAC denials), a local webhook receiver; `failover check` run as the
command users run. Every check reads and nothing is written: HAProxy's runtime API is behind a counter
and the sandbox's request log and resourceVersions are compared before and after."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bus.embedded import free_port
from orchestrator.sandbox.kube_resources import lookup
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.helpers import MEMBERS, AdminCounter, Fleet, fleet, hook_receiver, wait_for

pytestmark = pytest.mark.timeout(90)
CLUSTERS = tuple(MEMBERS)
BOOK = """name: cluster-failover
on: {event: cluster.failed}
guards: {min_healthy_clusters: 1}
vars:
  survivors: "{{ clusters | selectattr('state', 'ne', 'failed') | map(attribute='name') | list }}"
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - id: scale
    action: k8s.scale
    for_each: "{{ survivors }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, absorb: "{{ event.cluster }}",
           max_replicas: MAX}
  - id: ready
    action: k8s.wait_ready
    for_each: "{{ survivors }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, timeout: 1m}
  - id: page
    action: notify
    with: {notifier: oncall, severity: critical,
           summary: "{{ event.cluster }} failed: {{ steps.drain.change }}"}
"""


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


@dataclass
class World:
    work: Path
    fleet: Fleet
    counter: AdminCounter
    kube: dict[str, KubeApiServer]
    kubeconfig: Path
    hook_url: str
    versions: dict[str, str] = field(default_factory=dict)

    def config(
        self,
        *,
        members: dict[str, str] | None = None,
        max_replicas: int = 12,
        notifier_url: str | None = None,
        admin: list[str] | None = None,
        nats_url: str | None = None,
        extra: str = "",
        name: str = "failover",
        readiness: str = "{interval: 1s, timeout: 2s}",
    ) -> Path:
        books = self.work / "books"
        books.mkdir(exist_ok=True)
        (books / "cluster-failover.yaml").write_text(BOOK.replace("MAX", str(max_replicas)))
        lines = [
            f"state_dir: {self.work / f'state-{name}'}",
            f"api: {{listen: 127.0.0.1:{free_port()}}}",
            *([f"nats: {{url: '{nats_url}'}}"] if nats_url else []),
            "probing: {interval: 200ms, timeout: 150ms, jitter: 0s, vantage: test}",
            "detection: {failure_threshold: 3, success_threshold: 2, quorum: 1, recovery_hold: 1s}",
            "clusters:",
        ]
        for cluster, app in self.fleet.apps.items():
            lines += [
                f"  - name: {cluster}",
                f"    kubernetes: {{kubeconfig: '{self.kubeconfig}', context: {cluster}}}",
                f"    probes: [{{name: ingress, http: {{url: '{app.url}/healthz'}}}}]",
            ]
        pairs = ", ".join(f"{c}: {s}" for c, s in (members or MEMBERS).items())
        instances = ", ".join(f"'{a}'" for a in (admin or [self.counter.url]))
        lines += [
            "load_balancers:",
            f"  - {{name: global, driver: haproxy, haproxy: {{admin: [{instances}], backend: web}}, "
            f"members: {{{pairs}}}}}",
            "notifiers:",
            f"  - {{name: oncall, driver: webhook, webhook: {{url: '{notifier_url or self.hook_url}'}}}}",
            f"playbooks: {{paths: ['{books}']}}",
            f"readiness: {readiness}",
            extra,
        ]
        path = self.work / f"{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def snapshot(self) -> dict[str, str]:
        """Every seeded object's resourceVersion: a write anywhere changes one."""
        out = {}
        for name, server in self.kube.items():
            found = server.get_object("apps/v1", "deployments", "shop", "web")
            if found is not None:
                out[name] = str(found["metadata"]["resourceVersion"])
        return out

    async def settle(self) -> None:
        """Wait for the sandbox's controller to finish the seeded rollouts (it writes their status), then
        take the resourceVersions that nothing may change from here on."""

        def settled() -> bool:
            for server in self.kube.values():
                found = server.get_object("apps/v1", "deployments", "shop", "web")
                if found is not None and (found.get("status") or {}).get("availableReplicas") != 6:
                    return False
            return True

        await wait_for(settled, 10, "the seeded deployments ready")
        await asyncio.sleep(0.2)
        self.versions = self.snapshot()

    def assert_nothing_written(self) -> None:
        assert self.counter.commands, "HAProxy was never read"
        assert not [c for c in self.counter.commands if not c.startswith(("show ", "get "))], (
            self.counter.commands
        )
        for name, server in self.kube.items():
            writes = [r for r in server.request_log if r.method in ("PUT", "PATCH", "DELETE")]
            posts = [r for r in server.requests("POST") if "selfsubjectaccessreviews" not in r.path]
            assert writes == [] and posts == [], (name, writes, posts)
        assert self.snapshot() == self.versions


@asynccontextmanager
async def world(tmp_path: Path, haproxy_binary: str) -> AsyncIterator[World]:
    kube = {c: KubeApiServer(c, ready_delay_s=0.05) for c in CLUSTERS}
    async with fleet(tmp_path, haproxy_binary) as f, hook_receiver() as hook:
        counter = AdminCounter(f.haproxy.admin_port)
        await counter.start()
        try:
            for server in kube.values():
                await server.start()
                server.put_object(deployment())
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube)
            w = World(tmp_path, f, counter, kube, kubeconfig, hook.url)
            await w.settle()
            yield w
        finally:
            for server in kube.values():
                await server.stop()
            await counter.stop()


def failover_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`failover check`, as users run it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "--log-level",
            "error",
            "check",
            "--config",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def run_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(failover_check, config, *args)


async def test_all_ready_exits_0_and_touches_nothing(tmp_path: Path, haproxy_binary: str) -> None:
    async with world(tmp_path, haproxy_binary) as w:
        done = await run_check(w.config())
        assert done.returncode == 0, done.stdout + done.stderr
        assert "every failover plan is ready" in done.stdout
        for cluster in CLUSTERS:
            assert f"cluster-failover  {cluster}" in done.stdout
        as_json = await run_check(w.config(), "--json")
        report = json.loads(as_json.stdout)
        assert as_json.returncode == 0 and report["ready"] is True and report["not_ready"] == 0
        [eu] = [r for r in report["results"] if r["cluster"] == "eu-west"]
        kinds = {c["kind"] for c in eu["checks"] if c["status"] == "ok"}
        assert kinds == {"balancer", "guard", "workload", "permission", "capacity", "notifier"}, eu
        capacity = [c["message"] for c in eu["checks"] if c["kind"] == "capacity"]
        assert (
            "us-east/shop/deployment/web: 6 -> 9 replicas to absorb eu-west: ceil(6 x 300 / 200)"
            in capacity[0]
        )
        w.assert_nothing_written()


async def test_each_problem_is_reported_and_exits_1(tmp_path: Path, haproxy_binary: str) -> None:
    """A balancer missing a member (HAProxy has no server ap9), a workload missing (us-east has no
    `web`), a `max_replicas` too small (8 < 9), a permission missing (ap-south may not update
    deployments/scale), an unreachable notifier: each is named, and the command exits 1."""
    async with world(tmp_path, haproxy_binary) as w:
        deployments = lookup("apps", "v1", "deployments")
        assert deployments is not None
        w.kube["us-east"].store.delete(deployments, "shop", "web", None, False)  # a cluster without `web`
        w.kube["ap-south"].access.deny("update", "deployments", group="apps", subresource="scale")
        await w.settle()
        config = w.config(
            members={**MEMBERS, "ap-south": "ap9"},
            max_replicas=8,
            notifier_url=f"http://127.0.0.1:{free_port()}/x",
        )
        done = await run_check(config, "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(done.stdout)
        by = {r["cluster"]: r for r in report["results"]}
        assert report["ready"] is False and report["not_ready"] == 3

        def problems(cluster: str, kind: str) -> list[str]:
            return [p["message"] for p in by[cluster]["problems"] if p["kind"] == kind]

        for cluster in CLUSTERS:  # the balancer is read once per pass: every pair sees its missing server
            [lb] = problems(cluster, "balancer")
            assert "backend 'web' has no server 'ap9' (member for cluster 'ap-south')" in lb, lb
            [note] = problems(cluster, "notifier")
            assert note.startswith(
                "notifier oncall unreachable: notifier oncall: webhook: ClientConnector"
            ), note
        # eu-west fails: us-east's workload is missing, ap-south's cannot absorb with max_replicas 8
        assert any("us-east/shop/deployment/web" in m and "404" in m for m in problems("eu-west", "workload"))
        [cap] = problems("eu-west", "capacity")
        assert cap.startswith(
            "ap-south/shop/deployment/web: max_replicas 8 is below the 9 replicas needed"
        ), cap
        [perm] = problems("eu-west", "permission")
        assert perm.startswith("ap-south may not update deployments/scale.apps web in shop"), perm
        assert 'cannot update resource "deployments/scale" in API group "apps"' in perm
        # the table names the same, one line each
        table = await run_check(config)
        assert table.returncode == 1
        assert (
            "NOT ready" in table.stdout
            and "capacity: ap-south/shop/deployment/web: max_replicas 8" in table.stdout
        )
        assert "permission: ap-south may not update deployments/scale.apps web in shop" in table.stdout
        w.assert_nothing_written()
        # and what the check predicted is what a failover would meet: the sandbox refuses the write
        denied = w.kube["ap-south"].access.check("update", "apps", "deployments", "scale", "shop", "web")
        assert denied is not None


async def test_an_unreachable_instance_is_named(tmp_path: Path, haproxy_binary: str) -> None:
    """Two instances of one balancer; the second does not answer: not ready, and the instance named."""
    async with world(tmp_path, haproxy_binary) as w:
        dead = f"tcp://127.0.0.1:{free_port()}"
        done = await run_check(w.config(admin=[w.counter.url, dead]), "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        for result in json.loads(done.stdout)["results"]:
            [lb] = [p["message"] for p in result["problems"] if p["kind"] == "balancer"]
            assert lb.startswith(f"balancer global: haproxy {dead}: "), lb
        # the whole balancer unreachable
        done = await run_check(w.config(admin=[dead]), "--json")
        [lb, *_] = [p["message"] for p in json.loads(done.stdout)["results"][0]["problems"]]
        assert done.returncode == 1 and lb.startswith("balancer global cannot be read: haproxy"), lb
        w.assert_nothing_written()


async def test_usage_and_config_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("clusters: []\n")
    done = await run_check(tmp_path / "bad.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"{tmp_path / 'bad.yaml'}:1: clusters: "), done.stderr  # file:line: path
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
