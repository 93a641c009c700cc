"""A Kubernetes API server subset over real HTTP, one per simulated cluster (DESIGN §9).

No kube-apiserver can be installed where the tests run, so this one behaves like it for what the
orchestrator uses, and kubernetes-asyncio talks to it exactly as to a real cluster: bearer-token auth
(401 Status without it), `/readyz` `/livez` `/healthz` `/version`, legacy discovery (`/api`, `/apis`,
`/apis/<group>/<version>` with the `scale` and `status` subresources), and namespaced CRUD, list
(label selectors with `=`, `==`, `!=`, `in`, `notin`, exists, `!`; `metadata.name`/`metadata.namespace`
field selectors; `limit`/`continue`), merge / JSON / strategic-merge PATCH, `dryRun=All` and watch for:
apps/v1 deployments and statefulsets (with scale and status), autoscaling/v2 horizontalpodautoscalers,
coordination.k8s.io/v1 leases, gateway.networking.k8s.io v1 (and v1beta1) httproutes,
networking.istio.io v1 (v1beta1, v1alpha3) virtualservices, split.smi-spec.io/v1alpha2 trafficsplits, and
v1 namespaces. Semantics (resourceVersion, 409/404/422 Status bodies, generation, watch history):
`kube_store`; defaults and validation: `kube_validation`; the workload/HPA controller:
`kube_controller`.

Watch: newline-delimited JSON events on a chunked response, honouring `resourceVersion`,
`timeoutSeconds` and selectors. A resourceVersion older than the kept history (`history_size` events)
gets what a real API server sends: HTTP 200 and one `ERROR` event whose object is a 410 `Expired`
Status, which kubernetes-asyncio raises as `ApiException(status=410)`.

Namespaces: by default an object may be created in a namespace that does not exist yet, which then
springs into existence (so tests need not create namespaces); `strict_namespaces=True` answers 404 as a
real server does.

Not emulated: RBAC and any authentication but one bearer token (anonymous requests are refused, like a
cluster with anonymous auth off), TLS, admission webhooks other than Istio's VirtualService validation,
server-side apply (`application/apply-patch+yaml` is a 415), field selectors other than metadata name
and namespace, field pruning of unknown fields, `deletecollection`, finalizers and graceful deletion
(a delete is immediate), watch bookmarks and `sendInitialEvents`, consistent snapshots behind
`continue` tokens, aggregated discovery and OpenAPI documents, protobuf, pods, services, events and
every resource not listed above.

Fault hooks for tests and the demo: `set_latency`, `fail_next`, `set_error_rate`, `set_down` (close the
listener and every open connection: unreachable; `set_down(False)` listens again on the same port),
`set_not_ready` (/readyz 500), `set_ready_delay`, `set_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from aiohttp import web

from orchestrator.sandbox.kube_controller import WorkloadController
from orchestrator.sandbox.kube_patch import parse_field_selector, parse_label_selector
from orchestrator.sandbox.kube_resources import (
    SERVER_VERSION,
    ResourceType,
    api_group,
    api_group_list,
    api_resource_list,
    api_versions,
    lookup,
)
from orchestrator.sandbox.kube_status import (
    ApiError,
    bad_request,
    internal_error,
    method_not_allowed,
    unauthorized,
)
from orchestrator.sandbox.kube_store import Store, Watcher
from orchestrator.sandbox.kube_validation import IstioWeights

log = structlog.get_logger(__name__)
WATCH_TIMEOUT_S = 1800.0
"""kube-apiserver's --min-request-timeout: a watch without timeoutSeconds ends after about this long."""
_FAULT_REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RequestRecord:
    """What a client sent, for tests to assert on (e.g. the PATCH content type)."""

    method: str
    path: str
    query: str
    content_type: str
    status: int | None = None


RECORD = web.RequestKey("record", RequestRecord)


def _not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


class KubeApiServer:
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

    # -- HTTP ----------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RequestRecord(
            request.method, request.path, request.query_string, request.headers.get("Content-Type", "")
        )
        self.request_log.append(record)
        request[RECORD] = record
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if request.headers.get("Authorization", "") != f"Bearer {self.token}":
                raise unauthorized()
            status = self._fail_next.pop(0) if self._fail_next else None
            if status is None and self.error_rate and random.random() < self.error_rate:
                status = self.error_status
            if status is not None:
                raise self._fault(status)
            response = await handler(request)
        except ApiError as e:
            response = web.json_response(e.status(), status=e.code)
            if e.code == 429:
                response.headers["Retry-After"] = "1"
        except Exception as e:  # a sandbox bug: answer like kube-apiserver's panic handler, and say so
            log.exception("sandbox_kubeapi_handler_failed", cluster=self.name, path=request.path)
            response = web.json_response(internal_error(f"Internal error occurred: {e}").status(), status=500)
        if record.status is None:
            record.status = response.status
        return response

    @staticmethod
    def _fault(status: int) -> ApiError:
        reason = _FAULT_REASONS.get(status, "InternalError")
        message = "Internal error occurred: injected fault" if status == 500 else f"injected fault: {reason}"
        return internal_error(message, status) if status == 500 else ApiError(status, reason, message, {})

    def _health(self, path: str) -> web.Response:
        failing = self.not_live if path.startswith("/livez") else self.not_ready
        if failing:
            check = "etcd" if not path.startswith("/livez") else "ping"
            text = f"[-]{check} failed: reason withheld\n{path.strip('/').split('/')[0]} check failed\n"
            return web.Response(status=500, text=text)
        return web.Response(text="ok")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.path.strip("/")
        if path.startswith(("/readyz", "/livez", "/healthz")):
            return self._health(path)
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            return await self._resource(request, "", parts[1], parts[2:])
        if parts[0] == "apis" and len(parts) >= 4:
            return await self._resource(request, parts[1], parts[2], parts[3:])
        if request.method != "GET":
            raise method_not_allowed(
                f"the server does not allow this method on the requested resource ({path})"
            )
        doc: dict[str, Any] | None = None
        if path == "/version":
            doc = SERVER_VERSION
        elif path == "/api":
            doc = api_versions(f"{self.host}:{self.port}")
        elif path == "/apis":
            doc = api_group_list()
        elif parts[0] == "apis" and len(parts) == 2:
            doc = api_group(parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            doc = api_resource_list(parts[1], parts[2])
        elif parts[0] == "api" and len(parts) == 2:
            doc = api_resource_list("", parts[1])
        if doc is None:
            raise _not_found()
        return web.json_response(doc)

    async def _resource(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise _not_found()
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        rt = lookup(group, version, plural)
        if rt is None or (rt.namespaced and namespace is None and name is not None):
            raise _not_found()
        if not rt.namespaced and namespace is not None:
            raise _not_found()
        if sub is not None and not ((sub == "status" and rt.status) or (sub == "scale" and rt.scale)):
            raise _not_found()
        ns = namespace or ""
        query = request.query
        dry_run = bool(query.get("dryRun"))
        method = request.method
        if name is None:
            if method == "GET":
                watcher = self._watcher(rt, namespace, query)
                if query.get("watch") in _TRUE:
                    return await self._watch(request, watcher, version)
                limit = int(query["limit"]) if query.get("limit", "").isdigit() else None
                body = self.store.list_objects(rt, namespace, watcher, version, limit, query.get("continue"))
                return web.json_response(body)
            if method == "POST" and (namespace is not None or not rt.namespaced):
                created = self.store.create(rt, ns, await self._body(request), version, dry_run)
                return web.json_response(created, status=201)
            raise method_not_allowed(
                f"{method} is not supported on {rt.qualified} collections by the sandbox"
            )
        if method == "GET":
            found = (
                self.store.get_scale(rt, ns, name)
                if sub == "scale"
                else self.store.get(rt, ns, name, version)
            )
            return web.json_response(found)
        if method == "PUT":
            body = await self._body(request)
            if sub == "scale":
                return web.json_response(self.store.update_scale(rt, ns, name, body, dry_run))
            return web.json_response(self.store.update(rt, ns, name, body, version, sub, dry_run))
        if method == "PATCH":
            body = await self._body(request)
            content_type = request.headers.get("Content-Type", "")
            if sub == "scale":
                return web.json_response(self.store.patch_scale(rt, ns, name, content_type, body, dry_run))
            return web.json_response(
                self.store.patch(rt, ns, name, content_type, body, version, sub, dry_run)
            )
        if method == "DELETE" and sub is None:
            options = await self._body(request, required=False)
            return web.json_response(self.store.delete(rt, ns, name, options, dry_run))
        raise method_not_allowed(f"{method} is not supported on this resource")

    @staticmethod
    async def _body(request: web.Request, required: bool = True) -> Any:
        raw = await request.read()
        if not raw:
            if required:
                raise bad_request("the request body is empty")
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise bad_request(f"the body of the request is not valid JSON: {e}") from e

    @staticmethod
    def _watcher(rt: ResourceType, namespace: str | None, query: Mapping[str, str]) -> Watcher:
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as e:
            raise bad_request(str(e)) from e
        return Watcher(rt, namespace, labels, fields)

    async def _watch(self, request: web.Request, watcher: Watcher, version: str) -> web.StreamResponse:
        timeout_s = WATCH_TIMEOUT_S
        if request.query.get("timeoutSeconds", "").isdigit():
            timeout_s = float(request.query["timeoutSeconds"])
        error: ApiError | None = None
        try:
            initial = self.store.subscribe(watcher, request.query.get("resourceVersion"))
        except ApiError as e:
            if e.code != 410:
                raise
            initial, error = [], e
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        request[RECORD].status = 200
        rt = watcher.rt
        try:
            await response.prepare(request)
            if error is not None:
                await response.write(json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n")
                return response
            for kind, event in initial:
                line = {"type": kind, "object": Store.render(rt, event.obj, version)}
                await response.write(json.dumps(line).encode() + b"\n")
            deadline = asyncio.get_running_loop().time() + timeout_s
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    break
                kind, event = item
                line = {"type": kind, "object": Store.render(rt, event.obj, version)}
                await response.write(json.dumps(line).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self.store.unsubscribe(watcher)
        return response

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
