"""The sandbox API server's storage: objects, the global resourceVersion, the event history and watchers.

Every write goes through here so the semantics clients depend on hold in one place: a global,
monotonically increasing `resourceVersion`; 409 on a stale one; no-op writes that change nothing (and
emit no event); `generation` bumped only when something other than metadata and status changes; status
owned by the status subresource; the scale subresource as an autoscaling/v1 `Scale` view of
`spec.replicas`; watch events kept for the last `history_size` changes, older resourceVersions expire.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator.sandbox.kube_patch import apply_patch, selector_string
from orchestrator.sandbox.kube_resources import RESOURCES, ResourceType, by_api_version_kind
from orchestrator.sandbox.kube_status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    not_found,
)
from orchestrator.sandbox.kube_validation import IstioWeights, default_and_validate, validate_scale
from orchestrator.sandbox.kube_watch import Watcher, WatchEvent

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
NAMESPACES = next(rt for rt in RESOURCES if rt.plural == "namespaces")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


class Store:
    def __init__(
        self,
        history_size: int = 1000,
        strict_namespaces: bool = False,
        istio_weights: IstioWeights = "sum100",
    ) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 0
        self.history: deque[WatchEvent] = deque(maxlen=history_size)
        self.compacted_rv = 0
        """The newest resourceVersion dropped from the history: watching from before it answers 410."""
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[WatchEvent], None]] = []
        self.strict_namespaces = strict_namespaces
        self.istio_weights: IstioWeights = istio_weights
        for namespace in ("default", "kube-node-lease", "kube-public", "kube-system"):  # as in a new cluster
            self._create(NAMESPACES, "", {"metadata": {"name": namespace}}, None, dry_run=False)

    # -- plumbing ------------------------------------------------------------------------------------

    @staticmethod
    def key(rt: ResourceType, namespace: str, name: str) -> Key:
        return (rt.group, rt.plural, namespace if rt.namespaced else "", name)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(
        self, kind: str, rt: ResourceType, namespace: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        event = WatchEvent(
            int(obj["metadata"]["resourceVersion"]), kind, rt, namespace, copy.deepcopy(obj), old
        )
        if self.history.maxlen is not None and len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv
        self.history.append(event)
        for watcher in list(self.watchers):
            seen = watcher.translate(event)
            if seen is not None:
                watcher.queue.put_nowait((seen, event))
        for listener in list(self.listeners):
            listener(event)

    @staticmethod
    def render(rt: ResourceType, obj: dict[str, Any], version: str | None = None) -> dict[str, Any]:
        """A copy as served in `version`: CRD conversion is None, so only apiVersion changes."""
        out = copy.deepcopy(obj)
        out["apiVersion"] = rt.api_version(version)
        out["kind"] = rt.kind
        return out

    def _current(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get(self.key(rt, namespace, name))
        if obj is None:
            raise not_found(rt.qualified, rt.group, rt.plural, name)
        return obj

    def _ensure_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced or self.key(NAMESPACES, "", namespace) in self.objects:
            return
        if self.strict_namespaces:
            raise not_found("namespaces", "", "namespaces", namespace)
        self._create(NAMESPACES, "", {"metadata": {"name": namespace}}, None, dry_run=False)

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str, version: str | None = None) -> dict[str, Any]:
        return self.render(rt, self._current(rt, namespace, name), version)

    def find(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(self.key(rt, namespace, name))
        return None if obj is None else self.render(rt, obj)

    def items(self, rt: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored objects of one type, sorted by namespace and name (no copies: read only)."""
        found = [
            obj
            for (group, plural, ns, _), obj in self.objects.items()
            if group == rt.group and plural == rt.plural and (namespace is None or ns == namespace)
        ]
        return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        selector: Watcher,
        version: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> dict[str, Any]:
        items = [o for o in self.items(rt, namespace) if selector.matches(o)]
        if continue_token:
            try:
                start = json.loads(base64.b64decode(continue_token))["start"]
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                raise bad_request(f"continue key is not valid: {e}") from e
            items = [
                o for o in items if f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}" > start
            ]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            start = f"{last.get('namespace', '')}/{last['name']}"
            meta["continue"] = base64.b64encode(json.dumps({"rv": self.rv, "start": start}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        rendered = [self.render(rt, o, version) for o in items]
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version(version),
            "metadata": meta,
            "items": rendered,
        }

    # -- writes --------------------------------------------------------------------------------------

    def create(
        self, rt: ResourceType, namespace: str, body: Any, version: str | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(
                f"{rt.kind} in version {version!r} cannot be handled as a {rt.kind}: not an object"
            )
        self._check_type(rt, body, version)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rt.namespaced and meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(random.choices(_GENERATE_CHARS, k=5))
        if self.key(rt, namespace, str(meta.get("name", ""))) in self.objects:
            raise already_exists(rt.qualified, rt.group, rt.plural, str(meta["name"]))
        self._ensure_namespace(rt, namespace)
        return self.render(rt, self._create(rt, namespace, body, version, dry_run), version)

    def _check_type(self, rt: ResourceType, body: dict[str, Any], version: str | None) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version is not None and api_version != rt.api_version(version):
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version(version)})"
            )
        if kind is not None and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")

    def _create(
        self,
        rt: ResourceType,
        namespace: str,
        body: dict[str, Any],
        version: str | None,
        dry_run: bool,
        validate: bool = True,
    ) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version(), rt.kind
        if rt.status and rt is not NAMESPACES:
            obj.pop("status", None)  # the status subresource owns it; a create cannot set it
        if validate:
            default_and_validate(rt, obj, None, self.istio_weights)
        meta = obj["metadata"]
        for server_owned in (
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "managedFields",
        ):
            meta.pop(server_owned, None)
        if rt.namespaced:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt is NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        else:
            meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj
        meta["resourceVersion"] = self._next_rv()
        self.objects[self.key(rt, namespace, meta["name"])] = obj
        self._emit("ADDED", rt, namespace, obj, None)
        return obj

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        version: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request(
                f"{rt.kind} in version {version!r} cannot be handled as a {rt.kind}: not an object"
            )
        self._check_type(rt, body, version)
        old = self._current(rt, namespace, name)
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        return self.render(
            rt, self._commit(rt, namespace, old, copy.deepcopy(body), subresource, dry_run), version
        )

    def _commit(
        self,
        rt: ResourceType,
        namespace: str,
        old: dict[str, Any],
        new: dict[str, Any],
        subresource: str | None,
        dry_run: bool,
        validate: bool = True,
    ) -> dict[str, Any]:
        """Store `new` in place of `old` with update semantics; returns the stored object."""
        name = old["metadata"]["name"]
        wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.qualified, rt.group, rt.plural, name)
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        else:
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            meta = new.setdefault("metadata", {})
            for kept in ("uid", "creationTimestamp", "generation", "namespace", "name", "deletionTimestamp"):
                if kept in old["metadata"]:
                    meta[kept] = old["metadata"][kept]
                else:
                    meta.pop(kept, None)
            if rt.status and "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            elif rt.status:
                new.pop("status", None)
            if validate:
                default_and_validate(rt, new, old, self.istio_weights)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["metadata"].pop("managedFields", None)
        if new == old:
            return old  # a no-op write: same resourceVersion, no event, like kube-apiserver
        if rt is not NAMESPACES and _without(new, "metadata", "status") != _without(
            old, "metadata", "status"
        ):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if dry_run:
            return new
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[self.key(rt, namespace, name)] = new
        self._emit("MODIFIED", rt, namespace, new, old)
        return new

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        version: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        current = self.render(rt, self._current(rt, namespace, name), version)
        patched = apply_patch(rt.custom, content_type, current, patch)
        if not isinstance(patched, dict):
            raise bad_request("the patched object is not a JSON object")
        self._check_type(rt, patched, version)
        old = self._current(rt, namespace, name)
        return self.render(rt, self._commit(rt, namespace, old, patched, subresource, dry_run), version)

    def delete(
        self, rt: ResourceType, namespace: str, name: str, options: Any = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Delete at once (no finalizers, no grace period); answers a Success Status like most types."""
        old = self._current(rt, namespace, name)
        pre = (options.get("preconditions") or {}) if isinstance(options, dict) else {}
        meta = old["metadata"]
        for field_name, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(field_name) and pre[field_name] != meta.get(field_name):
                detail = (
                    f"Precondition failed: {label} in precondition: {pre[field_name]}, "
                    f"{label} in object meta: {meta.get(field_name)}"
                )
                raise conflict(rt.qualified, rt.group, rt.plural, name, detail)
        if rt is NAMESPACES and not dry_run:
            for key in [k for k in self.objects if k[2] == name and k[1] != "namespaces"]:
                inner = next(r for r in RESOURCES if (r.group, r.plural) == key[:2])
                self._delete(inner, key, self.objects[key])
        if not dry_run:
            self._delete(rt, self.key(rt, namespace, name), old)
        details: dict[str, Any] = {"name": name, "kind": rt.plural, "uid": meta["uid"]}
        if rt.group:
            details["group"] = rt.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _delete(self, rt: ResourceType, key: Key, old: dict[str, Any]) -> None:
        del self.objects[key]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", rt, key[2], gone, old)

    # -- scale subresource ---------------------------------------------------------------------------

    def get_scale(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self._current(rt, namespace, name)
        meta = obj["metadata"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": spec.get("replicas", 1)},
            "status": {
                "replicas": status.get("replicas", 0),
                "selector": selector_string(spec.get("selector") or {}),
            },
        }

    def update_scale(
        self, rt: ResourceType, namespace: str, name: str, body: Any, dry_run: bool = False
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request('Scale in version "v1" cannot be handled as a Scale: not an object')
        old = self._current(rt, namespace, name)
        meta = body.get("metadata") or {}
        if meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.qualified, rt.group, rt.plural, name)
        replicas = (body.get("spec") or {}).get("replicas", 0)
        validate_scale(name, replicas)
        new = copy.deepcopy(old)
        new["spec"]["replicas"] = replicas
        stored = self._commit(rt, namespace, old, new, None, dry_run, validate=False)
        scale = self.get_scale(rt, namespace, name)
        if dry_run:
            scale["spec"]["replicas"] = replicas
        scale["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
        return scale

    def patch_scale(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        patched = apply_patch(False, content_type, self.get_scale(rt, namespace, name), patch)
        return self.update_scale(rt, namespace, name, patched, dry_run)

    # -- watch ---------------------------------------------------------------------------------------

    def subscribe(self, watcher: Watcher, resource_version: str | None) -> list[tuple[str, WatchEvent]]:
        """Register `watcher`; returns the events it must see first. Raises 410 when history is gone."""
        if resource_version in (None, "", "0"):
            initial = []
            for obj in self.items(watcher.rt, watcher.namespace):
                if watcher.matches(obj):
                    ns = obj["metadata"].get("namespace", "")
                    initial.append(
                        ("ADDED", WatchEvent(self.rv, "ADDED", watcher.rt, ns, copy.deepcopy(obj)))
                    )
        else:
            try:
                since = int(str(resource_version))
            except ValueError as e:
                raise bad_request(f"invalid resource version: {resource_version}") from e
            if since < self.compacted_rv:
                raise expired(f"too old resource version: {since} ({self.compacted_rv + 1})")
            initial = []
            for event in self.history:
                seen = watcher.translate(event) if event.rv > since else None
                if seen is not None:
                    initial.append((seen, event))
        self.watchers.add(watcher)
        return initial

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def end_watches(self) -> None:
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)
        self.watchers.clear()

    # -- direct access for the controller and tests --------------------------------------------------

    def put(self, obj: dict[str, Any], validate: bool = True) -> dict[str, Any]:
        """Create or overwrite an object as given, status included (seeding for tests and the demo)."""
        found = by_api_version_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if found is None:
            raise ValueError(f"not served by the sandbox: {obj.get('apiVersion')}/{obj.get('kind')}")
        rt, _ = found
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace", "default")) if rt.namespaced else ""
        old = self.objects.get(self.key(rt, namespace, str(meta.get("name", ""))))
        status = copy.deepcopy(obj.get("status"))
        if old is None:
            self._ensure_namespace(rt, namespace)
            stored = self._create(rt, namespace, copy.deepcopy(obj), None, dry_run=False, validate=validate)
        else:
            body = copy.deepcopy(obj)
            body.setdefault("metadata", {}).pop("resourceVersion", None)
            stored = self._commit(rt, namespace, old, body, None, dry_run=False, validate=validate)
        if status is not None and rt.status:
            stored = self._commit(rt, namespace, stored, {"status": status, "metadata": {}}, "status", False)
        return self.render(rt, stored)

    def write_status(self, rt: ResourceType, namespace: str, name: str, status: dict[str, Any]) -> None:
        old = self.objects.get(self.key(rt, namespace, name))
        if old is not None:
            self._commit(rt, namespace, old, {"status": status, "metadata": {}}, "status", False)

    def write_replicas(self, rt: ResourceType, namespace: str, name: str, replicas: int) -> None:
        old = self.objects.get(self.key(rt, namespace, name))
        if old is not None:
            new = copy.deepcopy(old)
            new["spec"]["replicas"] = replicas
            self._commit(rt, namespace, old, new, None, False, validate=False)


__all__ = ["ApiError", "Store", "WatchEvent", "Watcher"]
