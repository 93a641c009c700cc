"""A Kubernetes API server subset over real HTTP, one per simulated cluster (DESIGN §9).

No kube-apiserver can be installed where the tests run, so this one behaves like it for what the
orchestrator uses, and kubernetes-asyncio talks to it exactly as to a real cluster: bearer-token auth
(401 Status without it), `/readyz` `/livez` `/healthz` `/version`, legacy discovery (`/api`, `/apis`,
`/apis/<group>/<version>` with the `scale` and `status` subresources), and namespaced CRUD, list
(label selectors with `=`, `==`, `!=`, `in`, `notin`, exists, `!`; `metadata.name`/`metadata.namespace`
field selectors; `limit`/`continue`), merge / JSON / strategic-merge PATCH, `dryRun=All` and watch for:
apps/v1 deployments and statefulsets (with scale and status), autoscaling/v2 horizontalpodautoscalers,
coordination.k8s.io/v1 leases, networking.k8s.io/v1 networkpolicies (whose effect on a sandbox
application `kube_serving` models), gateway.networking.k8s.io v1 (and v1beta1) httproutes,
networking.istio.io v1 (v1beta1, v1alpha3) virtualservices, split.smi-spec.io/v1alpha2 trafficsplits,
and v1 namespaces. Semantics (resourceVersion, 409/404/422 Status bodies, generation, watch history):
`kube_objects` and `kube_store`; defaults and validation: `kube_validation`; the workload/HPA
controller: `kube_controller`.

Watch: newline-delimited JSON events on a chunked response, honouring `resourceVersion`,
`timeoutSeconds` and selectors. A resourceVersion older than the kept history (`history_size` events)
gets what a real API server sends: HTTP 200 and one `ERROR` event whose object is a 410 `Expired`
Status, which kubernetes-asyncio raises as `ApiException(status=410)`.

Namespaces: by default an object may be created in a namespace that does not exist yet, which then
springs into existence (so tests need not create namespaces); `strict_namespaces=True` answers 404 as a
real server does.

Authorization: one identity that may do everything unless `access.deny(...)` takes a permission away
(`kube_access`: SelfSubjectAccessReview answers, and 403 Forbidden on the request itself).

Not emulated: RBAC objects and any authentication but one bearer token (anonymous requests are refused, like a
cluster with anonymous auth off), TLS, admission webhooks other than Istio's VirtualService validation,
server-side apply (`application/apply-patch+yaml` is a 415), field selectors other than metadata name
and namespace, field pruning of unknown fields, `deletecollection`, finalizers and graceful deletion
(a delete is immediate), watch bookmarks and `sendInitialEvents`, consistent snapshots behind
`continue` tokens, aggregated discovery and OpenAPI documents, protobuf, pods, services, events and
every resource not listed above.

Fault hooks for tests and the demo: `set_latency`, `fail_next`, `set_error_rate`, `set_down` (close the
listener and every open connection: unreachable; `set_down(False)` listens again on the same port),
`set_not_ready` (/readyz 500), `set_ready_delay`, `set_unavailable`.

The HTTP handling (auth, faults, routing, watch streaming) is in `kube_http`.
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from orchestrator.sandbox.kube_access import AccessRules
from orchestrator.sandbox.kube_controller import WorkloadController
from orchestrator.sandbox.kube_http import KubeApiHttp, RequestRecord
from orchestrator.sandbox.kube_resources import lookup
from orchestrator.sandbox.kube_store import Store
from orchestrator.sandbox.kube_validation import IstioWeights


class KubeApiServer(KubeApiHttp):
    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_delay_s: float = 0.5,
        *,
        token: str | None = None,
        history_size: int = 1000,
        strict_namespaces: bool = False,
        istio_weights: IstioWeights = "sum100",
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.store = Store(history_size, strict_namespaces, istio_weights)
        self.access = AccessRules()
        """Permissions taken away from this server's identity (`kube_access`): reviews and requests."""
        self.controller = WorkloadController(self.store, ready_delay_s, name)
        self.request_log: deque[RequestRecord] = deque(maxlen=10_000)
        self.latency_s = 0.0
        self.error_rate = 0.0
        self.error_status = 500
        self.not_ready = False
        self.not_live = False
        self._fail_next: list[int] = []
        self._runner: web.AppRunner | None = None
        self._down = False

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the port is known once the server has started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        self.controller.start()
        if not self._down:
            try:
                await self._listen()
            except BaseException:
                await self.controller.stop()
                raise

    async def stop(self) -> None:
        await self._unlisten()
        await self.controller.stop()

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # A short shutdown: set_down must drop in-flight requests like a dead server, not drain them.
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.1, handler_cancellation=True
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port or 0, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def _unlisten(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self.store.end_watches()
            await runner.cleanup()

    # -- fault hooks ---------------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every answer (health checks included) by this long."""
        self.latency_s = seconds

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` requests (any path) with this 5xx/429 and an InternalError-like Status."""
        self._fail_next.extend([status] * n)

    def set_error_rate(self, rate: float, status: int = 500) -> None:
        """Fail this fraction of requests at random."""
        self.error_rate, self.error_status = rate, status

    async def set_down(self, down: bool) -> None:
        """Down: close the listener and every open connection (refused, like an unreachable server)."""
        self._down = down
        if down:
            await self._unlisten()
        else:
            await self._listen()

    def set_not_ready(self, not_ready: bool = True) -> None:
        """/readyz and /healthz answer 500 while the API keeps serving (e.g. etcd trouble)."""
        self.not_ready = not_ready

    def set_not_live(self, not_live: bool = True) -> None:
        self.not_live = not_live

    def set_ready_delay(self, seconds: float) -> None:
        """How long new pods take to become ready; applies to pods still pending too."""
        self.controller.ready_delay_s = seconds
        self.controller.poke()

    def set_unavailable(self, namespace: str, name: str, count: int, kind: str = "deployments") -> None:
        """Hold `count` pods of a workload unready (0 heals): a stuck rollout or scale-out."""
        self.controller.unavailable[(kind, namespace, name)] = count
        self.controller.poke()

    async def heal(self) -> None:
        self.latency_s = 0.0
        self.error_rate = 0.0
        self._fail_next.clear()
        self.not_ready = self.not_live = False
        self.controller.unavailable.clear()
        self.controller.poke()
        if self._down:
            await self.set_down(False)

    # -- seeding and inspection ----------------------------------------------------------------------

    def put_object(self, obj: dict[str, Any], validate: bool = True) -> dict[str, Any]:
        """Create or overwrite an object directly (status included); returns it as stored."""
        return self.store.put(obj, validate=validate)

    def get_object(self, api_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        group, _, version = api_version.rpartition("/")
        rt = lookup(group, version, plural)
        if rt is None:
            raise ValueError(f"not served by the sandbox: {api_version} {plural}")
        obj = self.store.find(rt, namespace, name)
        if obj is not None:
            obj["apiVersion"] = api_version
        return obj

    def requests(self, method: str | None = None, path_contains: str = "") -> list[RequestRecord]:
        return [
            r for r in self.request_log if (method is None or r.method == method) and path_contains in r.path
        ]

    # -- kubeconfig ----------------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, context: str | None = None) -> Path:
        return write_kubeconfig(path, {context or self.name: self})


def kubeconfig_dict(
    servers: Mapping[str, KubeApiServer], current_context: str | None = None
) -> dict[str, Any]:
    """One kubeconfig with a context (cluster + token user, namespace default) per server."""
    if not servers:
        raise ValueError("a kubeconfig needs at least one server")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": ctx, "cluster": {"server": s.url}} for ctx, s in servers.items()],
        "users": [{"name": f"{ctx}-user", "user": {"token": s.token}} for ctx, s in servers.items()],
        "contexts": [
            {"name": ctx, "context": {"cluster": ctx, "user": f"{ctx}-user", "namespace": "default"}}
            for ctx in servers
        ],
        "current-context": current_context or next(iter(servers)),
    }


def write_kubeconfig(
    path: Path, servers: Mapping[str, KubeApiServer], current_context: str | None = None
) -> Path:
    """Write the kubeconfig for `servers` (context name -> server), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(kubeconfig_dict(servers, current_context), f, sort_keys=False)
    return path


__all__ = ["KubeApiServer", "RequestRecord", "kubeconfig_dict", "write_kubeconfig"]
