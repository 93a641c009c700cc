"""deploy/target-cluster: exactly what the daemon's kubeconfig user needs in a target cluster.

Least privilege both ways, against the real code: the daemon's own Kubernetes code (kube.cluster as the
scale actuator and the probes call it, a rollout wait, both drill faults, every Kubernetes balancer
driver) runs against the sandbox API server, every request it makes is checked against the rendered
Roles (an RBAC evaluator with Kubernetes' rules: resourceNames, and list/watch narrowed by a
metadata.name field selector), and every rule the Roles grant must have been used by some request.
Static checks: namespaced Roles only, no wildcard, no access to Secrets, bindings to the one
ServiceAccount.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from orchestrator.actuators.registry import build_balancer
from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.kube.client import KubeClients
from orchestrator.runtime.drill import POLICY_NAME, DrillSpec, Fault, NetworkPolicies
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.deploy_render import Doc, render, render_target_cluster_with_components
from tests.test_drivers import KINDS
from tests.test_emissary import mapping
from tests.test_external_dns import MEMBERS as DNS_MEMBERS
from tests.test_external_dns import dnsendpoint
from tests.test_kube import deployment as kube_deployment

pytestmark = pytest.mark.timeout(120)
CLUSTERS = ("eu-west", "us-east")
NON_RESOURCE = {"/readyz", "/livez", "/healthz", "/version"}
"""Every user may GET these (the built-in ClusterRole system:public-info-viewer)."""


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    namespace: str
    name: str | None


def parse(method: str, path: str, query: str) -> Request | str:
    """An API request as RBAC sees it, or the path of a non-resource request."""
    match = re.fullmatch(
        r"/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<res>[^/]+)"
        r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?",
        path,
    )
    if not match:
        return path
    args = {k: v[-1] for k, v in parse_qs(query).items()}
    name = match["name"]
    if name is None:
        verb = {
            "GET": "watch" if args.get("watch", "").lower() in ("true", "1") else "list",
            "POST": "create",
        }[method]
        selector = re.fullmatch(r"metadata\.name=([^,]+)", args.get("fieldSelector", ""))
        name = selector.group(1) if selector else None  # list/watch narrowed to one name
    else:
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
    return Request(verb, match["group"] or "", resource, match["ns"], name)


def rules_for(documents: list[Doc], account: tuple[str, str]) -> list[tuple[str, Doc]]:
    """(namespace, rule) of every Role bound to the ServiceAccount `account` (namespace, name)."""
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in documents if d["kind"] == "Role"}
    out = []
    for binding in (d for d in documents if d["kind"] == "RoleBinding"):
        subjects = {
            (s.get("namespace"), s["name"]) for s in binding["subjects"] if s["kind"] == "ServiceAccount"
        }
        if account in subjects and binding["roleRef"]["kind"] == "Role":
            role = roles[(binding["metadata"]["namespace"], binding["roleRef"]["name"])]
            out += [(role["metadata"]["namespace"], rule) for rule in role["rules"]]
    return out


def allowing(rules: list[tuple[str, Doc]], request: Request) -> list[int]:
    """The indexes of the rules that allow `request` (Kubernetes RBAC semantics)."""
    found = []
    for i, (namespace, rule) in enumerate(rules):
        if (
            namespace == request.namespace
            and request.group in rule["apiGroups"]
            and request.resource in rule["resources"]
            and request.verb in rule["verbs"]
            and ("resourceNames" not in rule or request.name in rule["resourceNames"])
        ):
            found.append(i)
    return found


def _placed(obj: Doc, namespace: str, name: str) -> Doc:
    obj = copy.deepcopy(obj)
    obj["metadata"].update(namespace=namespace, name=name)
    return obj


def _role(documents: list[Doc], name: str) -> Doc:
    return next(d for d in documents if d["kind"] == "Role" and d["metadata"]["name"] == name)


@pytest.fixture
async def server() -> AsyncIterator[KubeApiServer]:
    api = KubeApiServer("eu-west")
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_the_daemon_needs_every_granted_rule_and_nothing_more(
    server: KubeApiServer, tmp_path: Path
) -> None:
    documents = render_target_cluster_with_components(tmp_path / "all")
    account = next(
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in documents
        if d["kind"] == "ServiceAccount"
    )
    rules = rules_for(documents, account)

    # the objects the Roles name, where they name them
    workloads = _role(documents, "failover-workloads")
    ns, web = workloads["metadata"]["namespace"], workloads["rules"][0]["resourceNames"][0]
    server.put_object(_placed(kube_deployment(ready=2), ns, web))
    server.put_object(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": web, "namespace": ns},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": web},
                "minReplicas": 2,
                "maxReplicas": 10,
            },
        }
    )
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"eu-west": server})
    ref = KubernetesRef(kubeconfig=str(kubeconfig), context="eu-west")
    sections: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for driver, component in (("gateway_api", "gateway-api"), ("istio", "istio"), ("smi", "smi")):
        role = _role(documents, f"failover-{component}")
        rns, name = role["metadata"]["namespace"], role["rules"][0]["resourceNames"][0]
        kind = KINDS[driver]
        server.put_object(_placed(kind.seed(), rns, name))
        section = {**kind.section(str(kubeconfig)), "context": "eu-west", "namespace": rns}
        section[{"gateway_api": "route", "istio": "virtual_service", "smi": "traffic_split"}[driver]] = name
        sections[driver] = (driver, section, {c: kind.members[c] for c in CLUSTERS})
    role = _role(documents, "failover-emissary")
    for cluster in CLUSTERS:
        server.put_object(_placed(mapping(cluster, 50), role["metadata"]["namespace"], f"web-{cluster}"))
    assert set(role["rules"][0]["resourceNames"]) == {f"web-{c}" for c in CLUSTERS}
    sections["emissary"] = (
        "emissary",
        {"kubeconfig": str(kubeconfig), "context": "eu-west", "namespace": role["metadata"]["namespace"]},
        {c: f"web-{c}" for c in CLUSTERS},
    )
    role = _role(documents, "failover-external-dns")
    rns, name = role["metadata"]["namespace"], role["rules"][0]["resourceNames"][0]
    # a second IPv6 member: draining one never empties the AAAA targets (the per-type guard)
    server.put_object(_placed(dnsendpoint(aaaa=["2001:db8::10", "2001:db8::11"]), rns, name))
    sections["external_dns"] = (
        "external_dns",
        {
            "kubeconfig": str(kubeconfig),
            "context": "eu-west",
            "namespace": rns,
            "dns_endpoint": name,
            "dns_name": "www.example.com.",
        },
        {c: DNS_MEMBERS[c] for c in CLUSTERS}
        | {"us-east": ["198.51.100.10", "198.51.100.11", "2001:db8::11"]},
    )
    drills = _role(documents, "failover-drills")
    assert drills["metadata"]["namespace"] == ns

    server.request_log.clear()
    kube = KubeClients(timeout_s=5)
    try:
        cluster = await kube.cluster(ref, "eu-west")
        # kube_api and kube_workload probes
        assert (await cluster.readyz())[0]
        await cluster.get_deployment(ns, web)
        # k8s.scale / k8s.restore_scale (the scale actuator's calls), k8s.wait_ready
        replicas, version = await cluster.get_scale(ns, "Deployment", web)
        hpa = await cluster.get_hpa_for(ns, "Deployment", web)
        assert hpa is not None
        await cluster.patch_hpa(ns, hpa["metadata"]["name"], {"spec": {"minReplicas": 4}})
        replicas, version = await cluster.get_scale(ns, "Deployment", web)  # the HPA acted meanwhile
        await cluster.set_scale(ns, "Deployment", web, replicas + 2, version)
        _, version = await cluster.get_scale(ns, "Deployment", web)
        await cluster.set_scale(ns, "Deployment", web, replicas, version)
        server.put_object(_placed(kube_deployment(ready=2), ns, web))
        await cluster.wait_deployment_ready(ns, web, timeout_s=5)
        # both drill faults, injected and removed
        policies = NetworkPolicies(await kube.api_client(ref), "eu-west")
        for fault in ("scale-to-zero", "deny-ingress"):
            drill = Fault(cluster, policies, DrillSpec("eu-west", fault, ns, web))
            await drill.inject()
            await drill.remove()
        assert server.get_object("networking.k8s.io/v1", "networkpolicies", ns, POLICY_NAME) is None
        # every Kubernetes balancer: read, drain one cluster, restore it
        for driver, section, members in sections.values():
            config = LoadBalancerConfig.model_validate(
                {"name": driver.replace("_", "-"), "driver": driver, driver: section, "members": members}
            )
            balancer = build_balancer(config)
            try:
                weights = await balancer.get_weights()
                await balancer.set_weights({"eu-west": 0})
                await balancer.set_weights({"eu-west": weights["eu-west"]})
            finally:
                await balancer.close()
    finally:
        await kube.close()

    requests = []
    for record in server.request_log:
        request = parse(record.method, record.path, record.query)
        if isinstance(request, str):
            assert request in NON_RESOURCE, f"{record.method} {request}: no rule grants it"
        else:
            requests.append(request)
    refused = [r for r in requests if not allowing(rules, r)]
    assert not refused, f"the daemon's calls the Roles refuse: {refused}"
    # every permission granted (each verb on each resource, and each name) is one the daemon used
    unused = [grant for grant in grants(rules) if not any(matches(grant, r) for r in requests)]
    assert not unused, f"granted, and nothing the daemon does needs it: {unused}"


def grants(rules: list[tuple[str, Doc]]) -> list[Request]:
    """Each rule expanded into single permissions (name None: any name)."""
    return [
        Request(verb, group, resource, namespace, name)
        for namespace, rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [None]
    ]


def matches(grant: Request, request: Request) -> bool:
    return (grant.verb, grant.group, grant.resource, grant.namespace) == (
        request.verb,
        request.group,
        request.resource,
        request.namespace,
    ) and grant.name in (None, request.name)


def test_the_evaluator_applies_resource_names_and_field_selectors() -> None:
    rules = [
        (
            "web",
            {
                "apiGroups": ["apps"],
                "resources": ["deployments"],
                "verbs": ["get", "watch"],
                "resourceNames": ["web"],
            },
        )
    ]
    assert allowing(rules, parse("GET", "/apis/apps/v1/namespaces/web/deployments/web", ""))  # type: ignore[arg-type]
    assert not allowing(rules, parse("GET", "/apis/apps/v1/namespaces/web/deployments/db", ""))  # type: ignore[arg-type]
    assert not allowing(rules, parse("GET", "/apis/apps/v1/namespaces/shop/deployments/web", ""))  # type: ignore[arg-type]
    watch = parse(
        "GET", "/apis/apps/v1/namespaces/web/deployments", "watch=true&fieldSelector=metadata.name%3Dweb"
    )
    assert allowing(rules, watch)  # type: ignore[arg-type]
    unnarrowed = parse("GET", "/apis/apps/v1/namespaces/web/deployments", "watch=true")
    assert not allowing(rules, unnarrowed)  # type: ignore[arg-type]
    scale = parse("PUT", "/apis/apps/v1/namespaces/web/deployments/web/scale", "")
    assert scale == Request("update", "apps", "deployments/scale", "web", "web")


def test_the_roles_are_namespaced_narrow_and_bound_to_one_account(tmp_path: Path) -> None:
    for documents in (render("target-cluster"), render_target_cluster_with_components(tmp_path / "all")):
        kinds = {d["kind"] for d in documents}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide"
        accounts = [d for d in documents if d["kind"] == "ServiceAccount"]
        assert len(accounts) == 1 and accounts[0]["automountServiceAccountToken"] is False
        for role in (d for d in documents if d["kind"] == "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], role["metadata"][
                    "name"
                ]
                assert not {"secrets", "pods/exec", "serviceaccounts/token"} & set(rule["resources"])
                assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
                # a rule without names only where Kubernetes cannot narrow by name (list, create)
                if "resourceNames" not in rule:
                    assert set(rule["verbs"]) <= {"list", "create"}, (role["metadata"]["name"], rule)
        for binding in (d for d in documents if d["kind"] == "RoleBinding"):
            assert binding["subjects"] == [
                {
                    "kind": "ServiceAccount",
                    "name": accounts[0]["metadata"]["name"],
                    "namespace": accounts[0]["metadata"]["namespace"],
                }
            ]
