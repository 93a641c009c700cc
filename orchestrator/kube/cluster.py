"""`KubeCluster`: one cluster's API, the small typed facade the actuators and probes use.

It speaks plain dicts (camelCase, as on the wire) and our own errors (mapped in `kube.errors`). Build
it with `KubeClients.cluster` (`kube.client`), which owns the API clients and their configuration.

Traps of kubernetes-asyncio this module handles so callers need not: `CustomObjectsApi.patch_*` with a
dict body sends a JSON patch unless told otherwise, so every patch here goes through `_patch`, which sets
its content type explicitly; model classes validate responses on the client side (a Deployment without
`spec.selector` raises ValueError).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Literal, TypeVar

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.kube.errors import NotReadyError, status_message, translate

T = TypeVar("T")
PatchType = Literal["merge", "json", "strategic"]
PatchBody = dict[str, Any] | list[dict[str, Any]]
CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
DEFAULT_TIMEOUT_S = 10.0
"""Per API call: long enough for a loaded API server, short enough that a dead one fails a step fast."""


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
            raise translate(e, f"{self.name}: {what}") from e

    async def _patch(
        self,
        what: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[str, ...],
        body: PatchBody,
        patch_type: PatchType,
        timeout_s: float | None,
    ) -> Any:
        """`method(*args, body)`, one `patch_namespaced_*` call, with the patch's content type set
        explicitly (`_content_type` is missing from the client's stubs only)."""
        call = partial(
            method,
            *args,
            body,
            _content_type=CONTENT_TYPES[patch_type],
            _request_timeout=self._t(timeout_s),
        )
        return await self._call(what, call, timeout_s)

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
            message, _ = status_message(e)
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
        body: PatchBody,
        patch_type: PatchType = "strategic",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        patch = self._apps.patch_namespaced_deployment
        what = f"patch deployment {namespace}/{name}"
        return self._dict(await self._patch(what, patch, (name, namespace), body, patch_type, timeout_s))

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
        body: PatchBody,
        patch_type: PatchType = "merge",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Patch an HPA, e.g. `{"spec": {"minReplicas": 6}}`; include metadata.resourceVersion to fence."""
        patch = self._autoscaling.patch_namespaced_horizontal_pod_autoscaler
        what = f"patch HPA {namespace}/{name}"
        return self._dict(await self._patch(what, patch, (name, namespace), body, patch_type, timeout_s))

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
        body: PatchBody,
        patch_type: Literal["merge", "json"] = "merge",
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Merge patch (a dict) or JSON patch (a list of operations); CRDs take no strategic merge."""
        if (patch_type == "json") != isinstance(body, list):
            raise PermanentError(
                f"a {patch_type} patch needs a {'list' if patch_type == 'json' else 'dict'} body"
            )
        patch = self._custom.patch_namespaced_custom_object
        what = f"patch {plural}.{group} {namespace}/{name}"
        args = (group, version, namespace, plural, name)
        return dict(await self._patch(what, patch, args, body, patch_type, timeout_s))

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
            raise translate(e, f"{self.name}: watch deployment {namespace}/{name}") from e


__all__ = ["CONTENT_TYPES", "DEFAULT_TIMEOUT_S", "KubeCluster", "PatchType", "rollout_status"]
