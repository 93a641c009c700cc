"""Kubernetes access: the only module that imports kubernetes_asyncio (STYLE §Architecture).

`KubeClients` builds one `ApiClient` per (kubeconfig, context) or in-cluster identity, each with its
own `Configuration`, so clusters never share the library's global default configuration. `KubeCluster`
is the small typed facade the actuators and probes use; it speaks plain dicts (camelCase, as on the
wire) and our own errors, mapped in one place (`_translate`):

- 409 → `ConflictError` (a stale resourceVersion: re-read and retry), a `TemporaryError`;
- 429, 5xx, 410, 408, connection errors and timeouts → `TemporaryError` (429 carries Retry-After);
- any other 4xx → `PermanentError` with the API server's Status message.

Messages name the cluster, the operation and the object, never a token or request header.

Traps of kubernetes-asyncio this module handles so callers need not: `CustomObjectsApi.patch_*` with a
dict body sends a JSON patch unless told otherwise, so every patch here sets its content type
explicitly; `load_kube_config` is a coroutine and, without `client_configuration`, overwrites a
process-wide default; an unknown context fails with a bare AssertionError; model classes validate
responses on the client side (a Deployment without `spec.selector` raises ValueError).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError

T = TypeVar("T")
PatchType = Literal["merge", "json", "strategic"]
CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
DEFAULT_TIMEOUT_S = 10.0
"""Per API call: long enough for a loaded API server, short enough that a dead one fails a step fast."""


class ConflictError(TemporaryError):
    """409: someone changed the object since we read it (or it already exists): re-read, then retry."""

    def __init__(self, message: str, reason: str = "Conflict") -> None:
        super().__init__(message)
        self.reason = reason


class NotReadyError(TemporaryError):
    """A workload did not become ready in time; `last` is the last state seen (None if never read)."""

    def __init__(self, message: str, last: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.last = last


class KubernetesRefLike(Protocol):
    """What `config.KubernetesRef` carries; a Protocol so tests and tools can pass their own."""

    @property
    def kubeconfig(self) -> str | None: ...

    @property
    def context(self) -> str | None: ...

    @property
    def in_cluster(self) -> bool: ...


def _status_message(e: ApiException) -> tuple[str, str]:
    """(message, reason) from the Status body; falls back to the HTTP reason phrase."""
    body = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else e.body
    try:
        status = json.loads(body) if body else {}
    except ValueError:
        status = {}
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"]), str(status.get("reason", ""))
    text = (body or "").strip().splitlines()
    return (text[0][:200] if text else str(e.reason or "")), str(e.reason or "")


def _translate(e: BaseException, what: str) -> OrchestratorError:
    """The one place client exceptions become ours."""
    if isinstance(e, ApiException):
        message, reason = _status_message(e)
        text = f"{what}: {e.status} {message}" if e.status else f"{what}: {message}"
        if e.status == 409:
            return ConflictError(text, reason or "Conflict")
        if e.status == 429:
            retry_after = str(e.headers.get("Retry-After", "")) if e.headers is not None else ""
            return TemporaryError(text, delay_s=float(retry_after) if retry_after.isdigit() else None)
        if e.status >= 500 or e.status in (408, 410):
            return TemporaryError(text)
        return PermanentError(text)
    if isinstance(e, TimeoutError):
        return TemporaryError(f"{what}: timed out")
    if isinstance(e, aiohttp.ClientError | OSError):
        return TemporaryError(f"{what}: {type(e).__name__}: {e}")
    if isinstance(e, ValueError | TypeError):  # client-side model validation of a request or response
        return PermanentError(f"{what}: {e}")
    return PermanentError(f"{what}: {type(e).__name__}: {e}")


def rollout_status(deployment: dict[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment (or StatefulSet) finished rolling out, by `kubectl rollout status` rules."""
    meta, spec, status = (deployment.get(k) or {} for k in ("metadata", "spec", "status"))
    generation, observed = int(meta.get("generation", 0)), int(status.get("observedGeneration", 0))
    if observed < generation:
        return False, f"waiting for generation {generation} to be observed (at {observed})"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return False, "progress deadline exceeded"
    desired = int(spec.get("replicas", 1))
    updated, replicas = int(status.get("updatedReplicas", 0)), int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < desired:
        return False, f"{updated} of {desired} new replicas have been updated"
    if replicas > updated:
        return False, f"{replicas - updated} old replicas are pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    return True, f"{available} of {desired} replicas available"


def _workload_kind(kind: str) -> str:
    """`Deployment`, `deployments`, `deploy`... → the fragment of AppsV1Api's method names."""
    normalized = kind.lower().replace("_", "").rstrip("s")
    if normalized in ("deployment", "deploy"):
        return "deployment"
    if normalized in ("statefulset", "st"):
        return "stateful_set"
    raise PermanentError(f"unsupported workload kind {kind!r}: expected Deployment or StatefulSet")


class KubeCluster:
    """One cluster's API, typed for what the orchestrator needs. Build it with `KubeClients.cluster`."""

    def __init__(self, api_client: client.ApiClient, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._api = api_client
        self._apps = client.AppsV1Api(api_client)
        self._autoscaling = client.AutoscalingV2Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Run one API call under a timeout; `call` is a factory so argument errors are translated too."""
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                return await call()
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError, TypeError) as e:
            raise _translate(e, f"{self.name}: {what}") from e

    def _dict(self, obj: Any) -> dict[str, Any]:
        result = self._api.sanitize_for_serialization(obj)
        if not isinstance(result, dict):
            raise PermanentError(f"{self.name}: unexpected response {type(result).__name__}")
        return result

    def _t(self, timeout_s: float | None) -> float:
        return timeout_s or self.timeout_s

    async def readyz(self, timeout_s: float | None = None) -> tuple[bool, str]:
        """GET /readyz: (True, "ok"), or (False, why) for any answer but 200 and for no answer at all."""
        t = self._t(timeout_s)
        try:
            async with asyncio.timeout(t):
                body = await self._api.call_api(
                    "/readyz",
                    "GET",
                    auth_settings=["BearerToken"],
                    response_types_map={200: "str"},
                    _return_http_data_only=True,
                    _request_timeout=t,
                )
            return True, str(body).strip() or "ok"
        except ApiException as e:
            message, _ = _status_message(e)
            return False, f"readyz {e.status}: {message}"
        except TimeoutError:
            return False, f"readyz timed out after {t:g}s"
        except (aiohttp.ClientError, OSError) as e:
            return False, f"unreachable: {type(e).__name__}: {e}"

    async def get_deployment(
        self, namespace: str, name: str, timeout_s: float | None = None
    ) -> dict[str, Any]:
        call = partial(
            self._apps.read_namespaced_deployment, name, namespace, _request_timeout=self._t(timeout_s)
        )
        return self._dict(await self._call(f"get deployment {namespace}/{name}", call, timeout_s))

    async def get_workload(
        self, namespace: str, kind: str, name: str, timeout_s: float | None = None
    ) -> dict[str, Any]:
        kind = _workload_kind(kind)
        read = getattr(self._apps, f"read_namespaced_{kind}")
        call = partial(read, name, namespace, _request_timeout=self._t(timeout_s))
        return self._dict(
            await self._call(f"get {kind.replace('_', '')} {namespace}/{name}", call, timeout_s)
        )

    async def patch_deployment(
        self,
        namespace: str,
        name: str,
        body: dict[str, Any] | list[dict[str, Any]],
        patch_type: PatchType = "strategic",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        call = partial(
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            body,
            _content_type=CONTENT_TYPES[patch_type],  # type: ignore[call-arg]  # missing from the stubs only
            _request_timeout=self._t(timeout_s),
        )
        return self._dict(await self._call(f"patch deployment {namespace}/{name}", call, timeout_s))

    async def get_scale(
        self, namespace: str, kind: str, name: str, timeout_s: float | None = None
    ) -> tuple[int, str]:
        """(spec.replicas, resourceVersion) of a Deployment's or StatefulSet's scale subresource."""
        kind = _workload_kind(kind)
        read = getattr(self._apps, f"read_namespaced_{kind}_scale")
        call = partial(read, name, namespace, _request_timeout=self._t(timeout_s))
        scale = await self._call(f"get scale of {kind.replace('_', '')} {namespace}/{name}", call, timeout_s)
        return int(scale.spec.replicas or 0), str(scale.metadata.resource_version)

    async def set_scale(
        self,
        namespace: str,
        kind: str,
        name: str,
        replicas: int,
        resource_version: str | None,
        timeout_s: float | None = None,
    ) -> str:
        """Replace the scale subresource; with a resourceVersion a concurrent change is a ConflictError.

        Returns the new resourceVersion.
        """
        kind = _workload_kind(kind)
        body = client.V1Scale(
            api_version="autoscaling/v1",
            kind="Scale",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, resource_version=resource_version),
            spec=client.V1ScaleSpec(replicas=replicas),
        )
        replace = getattr(self._apps, f"replace_namespaced_{kind}_scale")
        call = partial(replace, name, namespace, body, _request_timeout=self._t(timeout_s))
        scale = await self._call(
            f"scale {kind.replace('_', '')} {namespace}/{name} to {replicas}", call, timeout_s
        )
        return str(scale.metadata.resource_version)

    async def get_hpa_for(
        self, namespace: str, kind: str, name: str, timeout_s: float | None = None
    ) -> dict[str, Any] | None:
        """The HorizontalPodAutoscaler (autoscaling/v2) whose scaleTargetRef is this workload, if any."""
        wanted = _workload_kind(kind)
        call = partial(
            self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
            namespace,
            _request_timeout=self._t(timeout_s),
        )
        hpas = await self._call(f"list HPAs in {namespace}", call, timeout_s)
        for hpa in hpas.items:
            ref = hpa.spec.scale_target_ref
            if ref.name == name and (ref.kind or "").lower() == wanted.replace("_", ""):
                return self._dict(hpa)
        return None

    async def patch_hpa(
        self,
        namespace: str,
        name: str,
        body: dict[str, Any] | list[dict[str, Any]],
        patch_type: PatchType = "merge",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Patch an HPA, e.g. `{"spec": {"minReplicas": 6}}`; include metadata.resourceVersion to fence."""
        call = partial(
            self._autoscaling.patch_namespaced_horizontal_pod_autoscaler,
            name,
            namespace,
            body,
            _content_type=CONTENT_TYPES[patch_type],  # type: ignore[call-arg]  # missing from the stubs only
            _request_timeout=self._t(timeout_s),
        )
        return self._dict(await self._call(f"patch HPA {namespace}/{name}", call, timeout_s))

    async def get_custom(
        self, group: str, version: str, namespace: str, plural: str, name: str, timeout_s: float | None = None
    ) -> dict[str, Any]:
        call = partial(
            self._custom.get_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
            _request_timeout=self._t(timeout_s),
        )
        result = await self._call(f"get {plural}.{group} {namespace}/{name}", call, timeout_s)
        return dict(result)

    async def patch_custom(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: dict[str, Any] | list[dict[str, Any]],
        patch_type: Literal["merge", "json"] = "merge",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Merge patch (a dict) or JSON patch (a list of operations); CRDs take no strategic merge."""
        if (patch_type == "json") != isinstance(body, list):
            raise PermanentError(
                f"a {patch_type} patch needs a {'list' if patch_type == 'json' else 'dict'} body"
            )
        call = partial(
            self._custom.patch_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
            body,
            _content_type=CONTENT_TYPES[patch_type],  # type: ignore[call-arg]  # missing from the stubs only
            _request_timeout=self._t(timeout_s),
        )
        result = await self._call(f"patch {plural}.{group} {namespace}/{name}", call, timeout_s)
        return dict(result)

    async def replace_custom(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: dict[str, Any],
        resource_version: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """PUT the whole object; with `resource_version` (or one in the body) a concurrent change is a 409."""
        body = {**body, "metadata": {**(body.get("metadata") or {}), "name": name, "namespace": namespace}}
        if resource_version is not None:
            body["metadata"]["resourceVersion"] = resource_version
        call = partial(
            self._custom.replace_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
            body,
            _request_timeout=self._t(timeout_s),
        )
        result = await self._call(f"replace {plural}.{group} {namespace}/{name}", call, timeout_s)
        return dict(result)

    async def wait_deployment_ready(self, namespace: str, name: str, timeout_s: float) -> dict[str, Any]:
        """Wait until the Deployment has rolled out (see `rollout_status`); returns it.

        Reads it, then watches it (fieldSelector on the name, from the read's resourceVersion) so a
        change is seen at once; transient errors and expired watches fall back to a fresh read.
        Raises NotReadyError at the deadline (with the last state seen), PermanentError when it does
        not exist or access is refused.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: dict[str, Any] | None = None
        why = "never read"
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    last = await self.get_deployment(
                        namespace, name, timeout_s=min(self.timeout_s, remaining)
                    )
                    ready, why = rollout_status(last)
                    if ready:
                        return last
                    async for event in self._watch_deployment(namespace, name, last, remaining):
                        if event is None:
                            break  # deleted: the next read says whether it came back
                        last = event
                        ready, why = rollout_status(last)
                        if ready:
                            return last
            except TimeoutError:
                break
            except TemporaryError as e:
                why = str(e)
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
        raise NotReadyError(
            f"{self.name}: deployment {namespace}/{name} not ready after {timeout_s:g}s: {why}", last
        )

    async def _watch_deployment(
        self, namespace: str, name: str, seen: dict[str, Any], remaining_s: float
    ) -> AsyncIterator[dict[str, Any] | None]:
        """The Deployment's states after `seen` (None when it is deleted) until the server ends the watch."""
        try:
            async with watch.Watch() as w:
                stream = w.stream(
                    self._apps.list_namespaced_deployment,
                    namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=seen["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, math.ceil(remaining_s)),
                )
                async for event in stream:
                    yield None if event["type"] == "DELETED" else event["raw_object"]
        except (ApiException, aiohttp.ClientError, OSError, ValueError) as e:
            raise _translate(e, f"{self.name}: watch deployment {namespace}/{name}") from e


class KubeClients:
    """One ApiClient per (kubeconfig, context) or in-cluster identity, built on first use; `close()` all."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._clients: dict[tuple[str | None, str | None, bool], client.ApiClient] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _key(ref: KubernetesRefLike) -> tuple[str | None, str | None, bool]:
        if ref.in_cluster:
            return (None, None, True)
        path = ref.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        expanded = os.pathsep.join(os.path.expanduser(p) for p in path.split(os.pathsep))
        return (expanded, ref.context, False)

    async def api_client(self, ref: KubernetesRefLike) -> client.ApiClient:
        key = self._key(ref)
        async with self._lock:
            if key not in self._clients:
                self._clients[key] = await self._build(*key)
            return self._clients[key]

    async def cluster(self, ref: KubernetesRefLike, name: str | None = None) -> KubeCluster:
        """The facade for one cluster; `name` (e.g. the cluster's name in our config) labels errors."""
        label = name or ref.context or ("in-cluster" if ref.in_cluster else "default")
        return KubeCluster(await self.api_client(ref), label, self.timeout_s)

    @staticmethod
    async def _build(path: str | None, context: str | None, in_cluster: bool) -> client.ApiClient:
        configuration = client.Configuration()
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                return client.ApiClient(configuration=configuration)
            assert path is not None
            if os.pathsep not in path and not os.path.exists(path):
                raise PermanentError(f"kubeconfig {path} does not exist")
            contexts, _ = config.list_kube_config_contexts(path)
            if context is not None and context not in [c["name"] for c in contexts]:
                raise PermanentError(f"kubeconfig {path} has no context {context!r}")
            loader = await config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        except config.ConfigException as e:
            raise PermanentError(f"kubernetes config: {e}") from e
        if hasattr(loader, "exec_plugin_expiry"):
            # exec credentials (EKS, GKE plugins) expire: re-run the plugin when the token is near expiry
            async def refresh(cfg: client.Configuration) -> None:
                await loader.load_from_exec_plugin()
                cfg.api_key["BearerToken"] = loader.token

            configuration.refresh_api_key_hook = refresh
        return client.ApiClient(configuration=configuration)

    async def close(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for api_client in clients:
            await api_client.close()

    async def __aenter__(self) -> KubeClients:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


__all__ = [
    "ConflictError",
    "KubeClients",
    "KubeCluster",
    "KubernetesRefLike",
    "NotReadyError",
    "rollout_status",
]
