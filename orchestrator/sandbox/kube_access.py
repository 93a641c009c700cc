"""Authorization in the sandbox API server: `SelfSubjectAccessReview` and the RBAC denials behind it.

A real cluster answers `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` (what `kubectl auth
can-i` and `failover check` ask) from its RBAC rules, and refuses a request the rules do not allow with
403 `Forbidden`. The sandbox has one identity (its bearer token) that may do everything, unless a test
or the demo takes permissions away with `AccessRules.deny`: the review then answers `allowed: false`
with the reason RBAC gives, and the request itself is refused with the same 403 Status kube-apiserver
sends, so what a readiness check predicts is what a failover would meet.

Not emulated: Roles and bindings as objects, `nonResourceAttributes` (always allowed), label and field
selector attributes of a review (ignored, as authorizers that do not support them do).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from orchestrator.sandbox.kube_status import ApiError, bad_request

REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
USER = "system:serviceaccount:failover:orchestrator"
"""Who the sandbox's token is, as RBAC messages name it."""


@dataclass(frozen=True)
class Rule:
    """One denial; every field is a glob (`*` matches anything, the empty group is the core group)."""

    verb: str = "*"
    group: str = "*"
    resource: str = "*"
    subresource: str = "*"
    namespace: str = "*"
    name: str = "*"

    def matches(
        self, verb: str, group: str, resource: str, subresource: str, namespace: str, name: str
    ) -> bool:
        pairs = (
            (self.verb, verb),
            (self.group, group),
            (self.resource, resource),
            (self.subresource, subresource),
            (self.namespace, namespace),
            (self.name, name),
        )
        return all(fnmatch.fnmatchcase(value, pattern) for pattern, value in pairs)


class AccessRules:
    """What the sandbox's identity may not do (empty: everything is allowed)."""

    def __init__(self) -> None:
        self.denied: list[Rule] = []

    def deny(
        self,
        verb: str = "*",
        resource: str = "*",
        *,
        group: str = "*",
        subresource: str = "*",
        namespace: str = "*",
        name: str = "*",
    ) -> Rule:
        """Take a permission away, e.g. `deny("update", "deployments", subresource="scale")`."""
        rule = Rule(verb, group, resource, subresource, namespace, name)
        self.denied.append(rule)
        return rule

    def allow_all(self) -> None:
        self.denied.clear()

    def check(
        self, verb: str, group: str, resource: str, subresource: str = "", namespace: str = "", name: str = ""
    ) -> str | None:
        """None when allowed; else RBAC's reason, as kube-apiserver words it."""
        for rule in self.denied:
            if rule.matches(verb, group, resource, subresource, namespace, name):
                what = f"{resource}/{subresource}" if subresource else resource
                where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                api_group = f'"{group}"' if group else '""'
                return (
                    f'User "{USER}" cannot {verb} resource "{what}" in API group {api_group}{where}'
                    " (denied by the sandbox's access rules)"
                )
        return None

    def enforce(
        self, verb: str, group: str, resource: str, subresource: str, namespace: str, name: str
    ) -> None:
        """Refuse a request like RBAC does: 403 with a `Forbidden` Status."""
        why = self.check(verb, group, resource, subresource, namespace, name)
        if why is None:
            return
        what = f"{resource}/{subresource}" if subresource else resource
        kind = f"{what}.{group}" if group else what
        target = f' "{name}"' if name else ""
        details: dict[str, Any] = {"kind": resource, **({"group": group} if group else {})}
        if name:
            details["name"] = name
        raise ApiError(403, "Forbidden", f"{kind}{target} is forbidden: {why}", details)


def request_verb(method: str, named: bool, watch: bool) -> str:
    """The RBAC verb of a resource request, as kube-apiserver's request info derives it."""
    if method == "GET":
        return "get" if named else ("watch" if watch else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, method.lower()
    )


def review(rules: AccessRules, body: Any) -> dict[str, Any]:
    """The answer to a SelfSubjectAccessReview: the request with `status` filled in (HTTP 201)."""
    if not isinstance(body, dict) or body.get("kind") not in (None, "SelfSubjectAccessReview"):
        raise bad_request("expected a SelfSubjectAccessReview")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise _invalid("spec", "Required value")
    attrs = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if (attrs is None) == (non_resource is None):
        raise _invalid("spec", "exactly one of nonResourceAttributes or resourceAttributes must be specified")
    status: dict[str, Any] = {"allowed": True}
    if isinstance(attrs, dict):
        fields = {
            k: attrs.get(k) or "" for k in ("verb", "group", "resource", "subresource", "namespace", "name")
        }
        if not all(isinstance(v, str) for v in fields.values()):
            raise _invalid("spec.resourceAttributes", "fields must be strings")
        why = rules.check(**fields)
        if why is not None:
            status = {"allowed": False, "reason": why}
    elif not isinstance(non_resource, dict):
        raise _invalid("spec.nonResourceAttributes", "must be an object")
    return {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: {field}: {message}',
        {
            "group": "authorization.k8s.io",
            "kind": "SelfSubjectAccessReview",
            "causes": [{"field": field, "message": message}],
        },
    )
