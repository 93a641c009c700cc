"""The API verbs of the sandbox API server's storage: what a request may ask, checked as kube-apiserver does.

Split from `kube_objects` (the objects, resourceVersions, history and watchers with their write
semantics): `Store` adds the request-level checks (apiVersion, kind, name and namespace must match the
URL), list with `limit`/`continue`, `generateName`, delete with preconditions and the namespace cascade,
and the scale subresource as an autoscaling/v1 `Scale` view of `spec.replicas`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
from typing import Any

from orchestrator.sandbox.kube_objects import NAMESPACES, ObjectStore
from orchestrator.sandbox.kube_patch import apply_patch, selector_string
from orchestrator.sandbox.kube_resources import RESOURCES, ResourceType
from orchestrator.sandbox.kube_status import ApiError, already_exists, bad_request, conflict
from orchestrator.sandbox.kube_validation import validate_scale
from orchestrator.sandbox.kube_watch import Watcher, WatchEvent

_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


class Store(ObjectStore):
    """The storage as the HTTP layer calls it: one method per API verb and subresource."""

    # -- reads ---------------------------------------------------------------------------------------

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


__all__ = ["ApiError", "Store", "WatchEvent", "Watcher"]
