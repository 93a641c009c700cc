"""The sandbox API server's HTTP layer: auth, injected faults, the request log, routing and watch.

Split from `kubeapi` so the request handling reads on its own: `KubeApiHttp` checks the bearer token,
applies the fault hooks' state (latency, `fail_next`, error rate), records every request, answers the
health and discovery paths, maps resource paths onto `Store` calls, and streams watch events.
`kubeapi.KubeApiServer` owns that state, the listener and the fault hooks that set it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from orchestrator.sandbox.kube_access import REVIEW_PATH, AccessRules, request_verb, review
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
from orchestrator.sandbox.kube_store import Store
from orchestrator.sandbox.kube_watch import Watcher

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


class KubeApiHttp:
    """The request handlers; `KubeApiServer` sets these attributes and serves `_dispatch` behind
    `_middleware`."""

    name: str
    host: str
    port: int | None
    token: str
    store: Store
    access: AccessRules
    request_log: deque[RequestRecord]
    latency_s: float
    error_rate: float
    error_status: int
    not_ready: bool
    not_live: bool
    _fail_next: list[int]

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
        if path == REVIEW_PATH and request.method == "POST":  # `kube_access`: what may this token do
            return web.json_response(review(self.access, await self._body(request)), status=201)
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
        verb = request_verb(method, name is not None, query.get("watch") in _TRUE)
        self.access.enforce(verb, group, plural, sub or "", ns, name or "")  # 403 like RBAC
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
