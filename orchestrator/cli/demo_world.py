"""The world `failover demo` runs in: every part real, on loopback, started and stopped here.

- a nats-server with JetStream and the three bus roles of DESIGN §12 (the daemon, two probers that may
  publish only their own vantage's health subjects, a viewer), passwords in 0600 files;
- three sandbox Kubernetes API servers (`eu-west`, `us-east`, `ap-south`), each with `shop/web` at 6
  replicas, and each cluster's application (a small HTTP server) that the probes check;
- a real HAProxy in front of the three applications: the `edge` balancer;
- a signed-webhook receiver standing in for on-call;
- the daemon's configuration (probing from the management cluster as vantage `mgmt`, quorum 2 of three
  vantages), the two stand-alone probers' configurations, and the demo's playbooks: the Kubernetes
  examples (drain, scale the survivors to absorb the load, wait until ready, page) with a failback that
  asks a human before it gives traffic back.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.bus import natsauth
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import signing
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.haproxy import HAProxyProcess
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from orchestrator.sandbox.proxy import TcpProxy

CLUSTERS = {"eu-west": "eu1", "us-east": "us1", "ap-south": "ap1"}  # cluster -> HAProxy server
PROBERS = ("eu-prober", "us-prober")
VANTAGES = ("mgmt", *PROBERS)
BASE_REPLICAS = 6
HOOK_SECRET = "demo-secret"  # a local demo receiver's secret, not a credential

FAILOVER = """\
name: demo-failover
description: >-
  The failed cluster's traffic is already failing: drain it from the edge first (protective, never
  waits), then scale the survivors so they absorb its share, wait until they are ready, and page.
on:
  event: cluster.failed
guards:
  min_healthy_clusters: 1
vars:
  survivors: >-
    {{ clusters | selectattr('state', 'ne', 'failed') | rejectattr('name', 'eq', event.cluster)
       | map(attribute='name') | list }}
steps:
  - id: drain
    action: lb.drain
    with: {balancer: edge, cluster: "{{ event.cluster }}"}
    timeout: 10s
    retry: {attempts: 5, backoff: exponential, initial: 200ms, max: 2s}
  - id: scale
    action: k8s.scale
    for_each: "{{ survivors }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, absorb: "{{ event.cluster }}",
           max_replicas: 30}
    retry: {attempts: 5, initial: 200ms, max: 2s}
  - id: ready
    action: k8s.wait_ready
    for_each: "{{ survivors }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web, timeout: 1m}
  - id: page
    action: notify
    with:
      notifier: oncall
      severity: critical
      state: scaled
      summary: >-
        {{ event.cluster }} failed: {{ steps.drain.change }}; survivors scaled:
        {{ steps.scale | map(attribute='change') | join(', ') }}
on_failure:
  steps:
    - action: notify
      with: {notifier: oncall, severity: critical,
             summary: "failover of {{ event.cluster }} failed at {{ failed_step }}: {{ error }}"}
"""

FAILBACK = """\
name: demo-failback
description: >-
  Give a recovered cluster its traffic back safely: size its workload and wait until it is ready, ask a
  person, ramp its weight with a health gate at each step, then scale the survivors back to baseline.
on:
  event: cluster.recovered
vars:
  others: >-
    {{ clusters | selectattr('state', 'ne', 'failed') | rejectattr('name', 'eq', event.cluster)
       | map(attribute='name') | list }}
steps:
  - id: size
    action: k8s.restore_scale
    with: {cluster: "{{ event.cluster }}", namespace: shop, deployment: web}
  - id: ready
    action: k8s.wait_ready
    with: {cluster: "{{ event.cluster }}", namespace: shop, deployment: web, timeout: 1m}
  - id: ask
    action: approval
    when: "event.get('from') == 'failed'"   # a cluster that was only degraded kept its traffic
    with: {approvers: ["role:operator"], timeout: 10m,
           summary: "give {{ event.cluster }} its traffic back?"}
  - id: ramp
    action: lb.restore
    with: {balancer: edge, cluster: "{{ event.cluster }}", ramp: [25, 50, 100], interval: 1s, gate: true}
  - id: shrink
    action: k8s.restore_scale
    for_each: "{{ others }}"
    with: {cluster: "{{ item }}", namespace: shop, deployment: web}
  - id: tell
    action: notify
    with: {notifier: oncall, resolve: true,
           summary: "{{ event.cluster }} is back: {{ steps.ramp.changes | join('; ') }}"}
on_failure:
  steps:
    - action: notify
      with: {notifier: oncall, severity: critical,
             summary: "failback of {{ event.cluster }} stopped at {{ failed_step }}: {{ error }}"}
"""


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": BASE_REPLICAS,
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
    nats: EmbeddedNats
    haproxy: HAProxyProcess
    kube: dict[str, KubeApiServer]
    apps: dict[str, AppServer]
    api_url: str
    tokens: dict[str, str]  # name -> token: alice (admin), bob (operator), viewer
    proxies: dict[str, dict[str, TcpProxy]]  # prober -> cluster -> its network path to the application
    config_path: Path
    prober_configs: dict[str, Path]
    notes: list[dict[str, Any]] = field(default_factory=list)

    def replicas(self) -> dict[str, tuple[int, int]]:
        """(spec, available) replicas of `shop/web` in each cluster."""
        out: dict[str, tuple[int, int]] = {}
        for name, server in self.kube.items():
            obj = server.get_object("apps/v1", "deployments", "shop", "web") or {}
            status = obj.get("status") or {}
            out[name] = (int(obj.get("spec", {}).get("replicas", 0)), int(status.get("availableReplicas", 0)))
        return out


@contextlib.asynccontextmanager
async def world(work: Path, recovery_hold: str) -> AsyncIterator[World]:
    """Start everything, yield the world, and stop everything (in reverse) however the demo ends."""
    work.mkdir(parents=True, exist_ok=True)
    auth = work / "auth"
    passwords = {user: secrets.token_urlsafe(24) for user in ("daemon", *PROBERS, "viewer")}
    for user, password in passwords.items():
        natsauth.write_secret(auth / f"{user}.password", password + "\n")
    users = [natsauth.user_block("daemon", user="daemon", password=passwords["daemon"])]
    users += [natsauth.user_block("prober", p, user=p, password=passwords[p]) for p in PROBERS]
    users.append(natsauth.user_block("viewer", user="viewer", password=passwords["viewer"]))
    nats = EmbeddedNats(work / "nats", config=natsauth.server_config(users))
    kube = {name: KubeApiServer(name, ready_delay_s=0.5) for name in CLUSTERS}
    apps = {name: AppServer(name, free_port()) for name in CLUSTERS}
    haproxy = HAProxyProcess(work / "haproxy", {CLUSTERS[n]: ("127.0.0.1", a.port) for n, a in apps.items()})
    proxies = {
        p: {name: TcpProxy(free_port(), "127.0.0.1", app.port) for name, app in apps.items()} for p in PROBERS
    }
    notes: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        await nats.start()
        stack.push_async_callback(nats.stop)
        for server in kube.values():
            await server.start()
            stack.push_async_callback(server.stop)
            server.put_object(deployment())
        for app in apps.values():
            await app.start()
            stack.push_async_callback(app.stop)
        await haproxy.start()
        stack.push_async_callback(haproxy.stop)
        for paths in proxies.values():
            for proxy in paths.values():
                await proxy.start()
                stack.push_async_callback(proxy.stop)
        hook_runner, hook_url = await _start_hook(notes)
        stack.push_async_callback(hook_runner.cleanup)
        kubeconfig = write_kubeconfig(work / "kubeconfig", kube)
        tokens = {name: secrets.token_urlsafe(24) for name in ("alice", "bob", "viewer")}
        api_port = free_port()
        own_urls = {name: app.url for name, app in apps.items()}
        common = _common_config(own_urls, kubeconfig, recovery_hold)
        books = work / "playbooks"
        books.mkdir(exist_ok=True)
        (books / "demo-failover.yaml").write_text(FAILOVER)
        (books / "demo-failback.yaml").write_text(FAILBACK)
        config_path = work / "failover.yaml"
        natsauth.write_secret(
            config_path,
            "\n".join(
                [
                    f"state_dir: {work / 'state'}",
                    f"nats: {{url: '{nats.url}', user: daemon, password_file: '{auth / 'daemon.password'}'}}",
                    f"api: {{listen: '127.0.0.1:{api_port}', tokens: [",
                    f"  {{name: alice, role: admin, token: '{tokens['alice']}'}},",
                    f"  {{name: bob, role: operator, token: '{tokens['bob']}'}},",
                    f"  {{name: viewer, role: viewer, token: '{tokens['viewer']}'}}]}}",
                    *common,
                    "load_balancers:",
                    "  - name: edge",
                    "    driver: haproxy",
                    f"    haproxy: {{admin: ['{haproxy.admin_url}'], backend: web}}",
                    "    members: {" + ", ".join(f"{n}: {s}" for n, s in CLUSTERS.items()) + "}",
                    "notifiers:",
                    f"  - {{name: oncall, driver: webhook, webhook: {{url: '{hook_url}', "
                    f"secret: '${{DEMO_HOOK_SECRET:-{HOOK_SECRET}}}'}}}}",
                    f"playbooks: {{paths: ['{books}']}}",
                ]
            )
            + "\n",
        )
        prober_configs: dict[str, Path] = {}
        for prober in PROBERS:
            path = work / f"probe-{prober}.yaml"
            natsauth.write_secret(
                path,
                "\n".join(
                    [
                        f"state_dir: {work / prober}",
                        f"nats: {{url: '{nats.url}', user: {prober}, "
                        f"password_file: '{auth / (prober + '.password')}'}}",
                        *_common_config(
                            {name: proxy.url for name, proxy in proxies[prober].items()},
                            kubeconfig,
                            recovery_hold,
                        ),
                    ]
                )
                + "\n",
            )
            prober_configs[prober] = path
        yield World(
            work=work,
            nats=nats,
            haproxy=haproxy,
            kube=kube,
            apps=apps,
            api_url=f"http://127.0.0.1:{api_port}",
            tokens=tokens,
            proxies=proxies,
            config_path=config_path,
            prober_configs=prober_configs,
            notes=notes,
        )


def _common_config(urls: dict[str, str], kubeconfig: Path, recovery_hold: str) -> list[str]:
    """What the daemon and the probers share: the clusters, their probes (each vantage by its own network
    path, `urls`), and the detector's settings."""
    lines = [
        "probing: {interval: 500ms, timeout: 400ms, jitter: 0s, vantage: mgmt}",
        f"detection: {{vantages: [{', '.join(VANTAGES)}], quorum: 2, failure_threshold: 3, "
        f"success_threshold: 3, recovery_hold: {recovery_hold}}}",
        "reconcile: {interval: 2s}",
        "clusters:",
    ]
    for name, url in urls.items():
        lines += [
            f"  - name: {name}",
            "    weight: 100",
            f"    kubernetes: {{kubeconfig: '{kubeconfig}', context: {name}}}",
            f"    probes: [{{name: ingress, http: {{url: '{url}/healthz'}}}}]",
        ]
    return lines


async def _start_hook(notes: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not signing.verify(HOOK_SECRET, body, request.headers.get(signing.HEADER, "")):
            return web.Response(status=401)
        notes.append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"
