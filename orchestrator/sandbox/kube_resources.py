"""The resource types the sandbox API server serves, and the discovery documents that describe them.

Discovery matters because clients find subresources and preferred versions there (kubectl, dynamic
clients); the documents follow the legacy (non-aggregated) format every client still understands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = ["get", "patch", "update"]
SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourceType:
    group: str
    versions: tuple[str, ...]
    """Served versions; the first is the preferred and storage version. Conversion is None: same fields."""
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False
    scale: bool = False
    custom: bool = False
    """A CRD: no strategic merge patch, generation bumps on any non-metadata, non-status change."""

    @property
    def qualified(self) -> str:
        """`deployments.apps` as in messages; core resources have no group suffix."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        version = version or self.storage_version
        return f"{self.group}/{version}" if self.group else version


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", ("v1",), "namespaces", "namespace", "Namespace", namespaced=False, short_names=("ns",)),
    ResourceType(
        "apps",
        ("v1",),
        "deployments",
        "deployment",
        "Deployment",
        short_names=("deploy",),
        categories=("all",),
        status=True,
        scale=True,
    ),
    ResourceType(
        "apps",
        ("v1",),
        "statefulsets",
        "statefulset",
        "StatefulSet",
        short_names=("sts",),
        categories=("all",),
        status=True,
        scale=True,
    ),
    ResourceType(
        "autoscaling",
        ("v2",),
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        short_names=("hpa",),
        categories=("all",),
        status=True,
    ),
    ResourceType("coordination.k8s.io", ("v1",), "leases", "lease", "Lease"),
    ResourceType(
        "networking.k8s.io",
        ("v1",),
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        short_names=("netpol",),
    ),
    ResourceType(
        "gateway.networking.k8s.io",
        ("v1", "v1beta1"),
        "httproutes",
        "httproute",
        "HTTPRoute",
        categories=("gateway-api",),
        status=True,
        custom=True,
    ),
    ResourceType(
        "networking.istio.io",
        ("v1", "v1beta1", "v1alpha3"),
        "virtualservices",
        "virtualservice",
        "VirtualService",
        short_names=("vs",),
        categories=("istio-io", "networking-istio-io"),
        status=True,
        custom=True,
    ),
    ResourceType(
        "split.smi-spec.io",
        ("v1alpha2",),
        "trafficsplits",
        "trafficsplit",
        "TrafficSplit",
        short_names=("ts",),
        custom=True,
    ),
    ResourceType(  # stored as v2; v3alpha1 is what Emissary 3.x documents and our driver writes
        "getambassador.io",
        ("v2", "v1", "v3alpha1"),
        "mappings",
        "mapping",
        "Mapping",
        categories=("ambassador-crds",),
        status=True,
        custom=True,
    ),
    ResourceType(
        "externaldns.k8s.io",
        ("v1alpha1",),
        "dnsendpoints",
        "dnsendpoint",
        "DNSEndpoint",
        status=True,
        custom=True,
    ),
)

_BY_PATH = {(rt.group, v, rt.plural): rt for rt in RESOURCES for v in rt.versions}
_BY_KIND = {(rt.group, rt.kind): rt for rt in RESOURCES}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_api_version_kind(api_version: str, kind: str) -> tuple[ResourceType, str] | None:
    """The type and version of `apiVersion`/`kind` as written in an object, or None when not served."""
    group, _, version = api_version.rpartition("/")
    rt = _BY_KIND.get((group, kind))
    if rt is None or version not in rt.versions:
        return None
    return rt, version


def by_kind_name(kind: str) -> ResourceType | None:
    """`Deployment`, `deployment` or `deployments` → the type (case-insensitive, any group)."""
    wanted = kind.lower()
    for rt in RESOURCES:
        if wanted in (rt.kind.lower(), rt.plural, rt.singular, *rt.short_names):
            return rt
    return None


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rt in RESOURCES:
        if rt.group:
            known = groups.setdefault(rt.group, [])
            known.extend(v for v in rt.versions if v not in known)
    return groups


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list() -> dict[str, Any]:
    groups = [_group_doc(name, versions) for name, versions in _groups().items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str) -> dict[str, Any] | None:
    versions = _groups().get(name)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, versions)}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    resources: list[dict[str, Any]] = []
    for rt in RESOURCES:
        if rt.group != group or version not in rt.versions:
            continue
        main: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": VERBS,
        }
        if rt.short_names:
            main["shortNames"] = list(rt.short_names)
        if rt.categories:
            main["categories"] = list(rt.categories)
        resources.append(main)
        if rt.scale:
            resources.append(
                {
                    "name": f"{rt.plural}/scale",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": SUBRESOURCE_VERBS,
                }
            )
        if rt.status:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": SUBRESOURCE_VERBS,
                }
            )
    if not resources:
        return None
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }
