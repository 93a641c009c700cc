"""The sandbox API server's storage: objects, the global resourceVersion, the event history and watchers.

Every write goes through here so the semantics clients depend on hold in one place: a global,
monotonically increasing `resourceVersion`; 409 on a stale one; no-op writes that change nothing (and
emit no event); `generation` bumped only when something other than metadata and status changes; status
owned by the status subresource; watch events kept for the last `history_size` changes, older
resourceVersions expire. Split from `kube_store`, which adds the API verbs (request checks, list paging,
delete preconditions, the scale subresource) on top of this `ObjectStore`.
"""

from __future__ import annotations

import copy
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator.sandbox.kube_resources import RESOURCES, ResourceType, by_api_version_kind
from orchestrator.sandbox.kube_status import bad_request, conflict, expired, not_found
from orchestrator.sandbox.kube_validation import IstioWeights, default_and_validate
from orchestrator.sandbox.kube_watch import Watcher, WatchEvent

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
NAMESPACES = next(rt for rt in RESOURCES if rt.plural == "namespaces")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


class ObjectStore:
    """Objects by key, with update semantics, the event history and the watchers fed from it."""

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

    # -- writes --------------------------------------------------------------------------------------

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

    def _delete(self, rt: ResourceType, key: Key, old: dict[str, Any]) -> None:
        del self.objects[key]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", rt, key[2], gone, old)

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
