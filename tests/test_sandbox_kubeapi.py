"""The sandbox Kubernetes API server, exercised through kubernetes-asyncio over real HTTP, as the code under
test uses it: CRUD, selectors, the three patch types, conflicts, validation, watch, the controller, and
the fault hooks."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = pytest.mark.timeout(60)

NS = "shop"
GATEWAY = ("gateway.networking.k8s.io", "v1", NS, "httproutes")
ISTIO = ("networking.istio.io", "v1", NS, "virtualservices")
SMI = ("split.smi-spec.io", "v1alpha2", NS, "trafficsplits")
TARGET = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}


def deployment(name: str = "web", replicas: int = 2, labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": name, "image": "nginx:1.27"},
                        {"name": "sidecar", "image": "envoy:1.30"},
                    ]
                },
            },
        },
    }


def httproute(weights: list[int], names: list[str] | None = None) -> dict[str, Any]:
    names = names or [f"web-{n}" for n in range(len(weights))]
    refs = [{"name": n, "port": 80, "weight": w} for n, w in zip(names, weights, strict=True)]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": refs}]},
    }


def virtualservice(weights: list[int]) -> dict[str, Any]:
    route = [{"destination": {"host": f"web.c{n}.global"}, "weight": w} for n, w in enumerate(weights)]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"hosts": ["web"], "http": [{"route": route}]},
    }


def status_of(e: ApiException) -> dict[str, Any]:
    body = json.loads(e.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == e.status
    return dict(body)


async def eventually(check: Any, timeout_s: float = 5.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


@pytest.fixture
async def server() -> AsyncIterator[KubeApiServer]:
    s = KubeApiServer("eu-west", ready_delay_s=0.2)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def api(server: KubeApiServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    path = write_kubeconfig(tmp_path / "kubeconfig", {"eu-west": server})
    api_client = await config.new_client_from_config(str(path), "eu-west", persist_config=False)
    try:
        yield api_client
    finally:
        await api_client.close()


async def test_deployment_crud_and_label_selectors(api: client.ApiClient, server: KubeApiServer) -> None:
    apps = client.AppsV1Api(api)
    created = await apps.create_namespaced_deployment(
        NS, deployment("web", labels={"app": "web", "tier": "fe"})
    )
    assert created.metadata.uid and created.metadata.generation == 1
    assert created.spec.replicas == 2 and created.spec.strategy.type == "RollingUpdate"  # defaulted
    await apps.create_namespaced_deployment(NS, deployment("api", labels={"app": "api", "tier": "be"}))
    await apps.create_namespaced_deployment(NS, deployment("db", labels={"app": "db"}))

    async def names(selector: str) -> list[str]:
        found = await apps.list_namespaced_deployment(NS, label_selector=selector)
        return sorted(d.metadata.name for d in found.items)

    assert await names("") == ["api", "db", "web"]
    assert await names("app=web") == ["web"]
    assert await names("app==api") == ["api"]
    assert await names("tier!=fe") == ["api", "db"]
    assert await names("tier in (fe,be)") == ["api", "web"]
    assert await names("tier notin (fe)") == ["api", "db"]
    assert await names("tier") == ["api", "web"]
    assert await names("!tier") == ["db"]
    assert await names("app=web,tier=be") == []

    async def observed() -> bool:  # the controller writes status once: read after it, or hit a 409
        return bool((await apps.read_namespaced_deployment("web", NS)).status.observed_generation)

    assert await eventually(observed)
    everywhere = await apps.list_deployment_for_all_namespaces(field_selector="metadata.name=db")
    assert [d.metadata.name for d in everywhere.items] == ["db"]

    current = await apps.read_namespaced_deployment("web", NS)
    body = api.sanitize_for_serialization(current)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.28"
    replaced = await apps.replace_namespaced_deployment("web", NS, body)
    assert replaced.metadata.generation == 2
    assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)

    await apps.delete_namespaced_deployment("web", NS)
    with pytest.raises(ApiException) as err:
        await apps.read_namespaced_deployment("web", NS)
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'deployments.apps "web" not found'
    assert server.get_object("apps/v1", "deployments", NS, "web") is None


async def test_list_pagination_and_dry_run(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    for n in range(5):
        await apps.create_namespaced_deployment(NS, deployment(f"d{n}"))
    await apps.create_namespaced_deployment(NS, deployment("ghost"), dry_run="All")
    first = await apps.list_namespaced_deployment(NS, limit=2)
    assert [d.metadata.name for d in first.items] == ["d0", "d1"]
    assert first.metadata.remaining_item_count == 3
    rest = await apps.list_namespaced_deployment(NS, limit=10, _continue=first.metadata._continue)
    assert [d.metadata.name for d in rest.items] == ["d2", "d3", "d4"]
    assert rest.metadata._continue is None


async def test_patch_content_types(api: client.ApiClient, server: KubeApiServer) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment())

    # strategic merge (the client's choice for a dict body): containers merge by name
    patched = await apps.patch_namespaced_deployment(
        "web", NS, {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.29"}]}}}}
    )
    images = {c.name: c.image for c in patched.spec.template.spec.containers}
    assert images == {"web": "nginx:1.29", "sidecar": "envoy:1.30"}

    # merge patch: lists are replaced wholesale, null deletes
    patched = await apps.patch_namespaced_deployment(
        "web",
        NS,
        {
            "metadata": {"labels": {"tier": "fe"}},
            "spec": {"template": {"spec": {"containers": [{"name": "solo", "image": "x:1"}]}}},
        },
        _content_type="application/merge-patch+json",
    )
    assert [c.name for c in patched.spec.template.spec.containers] == ["solo"]
    assert patched.metadata.labels == {"app": "web", "tier": "fe"}

    # JSON patch (the client's choice for a list body)
    patched = await apps.patch_namespaced_deployment(
        "web",
        NS,
        [
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "remove", "path": "/metadata/labels/tier"},
        ],
    )
    assert patched.spec.replicas == 4 and patched.metadata.labels == {"app": "web"}

    with pytest.raises(ApiException) as err:
        await apps.patch_namespaced_deployment(
            "web", NS, [{"op": "test", "path": "/spec/replicas", "value": 9}]
        )
    assert err.value.status == 422

    sent = [r.content_type for r in server.requests("PATCH", "/deployments/web")]
    assert sent == [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/json-patch+json",
    ]


async def test_custom_objects_patch_trap_and_content_types(
    api: client.ApiClient, server: KubeApiServer
) -> None:
    custom = client.CustomObjectsApi(api)
    await custom.create_namespaced_custom_object(*GATEWAY, httproute([100, 0]))

    # The kubernetes-asyncio trap: a dict body without _content_type goes out as a JSON patch.
    with pytest.raises(ApiException) as err:
        await custom.patch_namespaced_custom_object(*GATEWAY, "web", {"metadata": {"labels": {"a": "b"}}})
    assert err.value.status == 400
    assert server.requests("PATCH")[-1].content_type == "application/json-patch+json"

    merged = await custom.patch_namespaced_custom_object(
        *GATEWAY, "web", {"metadata": {"labels": {"a": "b"}}}, _content_type="application/merge-patch+json"
    )
    assert merged["metadata"]["labels"] == {"a": "b"} and merged["metadata"]["generation"] == 1

    ops = [
        {"op": "test", "path": "/spec/rules/0/backendRefs/0/name", "value": "web-0"},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 0},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 100},
    ]
    patched = await custom.patch_namespaced_custom_object(*GATEWAY, "web", ops)
    assert [r["weight"] for r in patched["spec"]["rules"][0]["backendRefs"]] == [0, 100]
    assert patched["metadata"]["generation"] == 2

    # Custom resources take no strategic merge patch, as on a real API server.
    with pytest.raises(ApiException) as err:
        await custom.patch_namespaced_custom_object(
            *GATEWAY, "web", {"spec": {}}, _content_type="application/strategic-merge-patch+json"
        )
    assert err.value.status == 415
    assert status_of(err.value)["reason"] == "UnsupportedMediaType"


async def test_crd_defaults_and_served_versions(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    route = httproute([1])
    del route["spec"]["rules"][0]["backendRefs"][0]["weight"]
    created = await custom.create_namespaced_custom_object(*GATEWAY, route)
    ref = created["spec"]["rules"][0]["backendRefs"][0]
    assert ref["weight"] == 1 and ref["kind"] == "Service" and ref["group"] == ""
    assert created["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]

    await custom.create_namespaced_custom_object(*ISTIO, virtualservice([80, 20]))
    for version in ("v1", "v1beta1", "v1alpha3"):
        got = await custom.get_namespaced_custom_object(
            "networking.istio.io", version, NS, "virtualservices", "web"
        )
        assert got["apiVersion"] == f"networking.istio.io/{version}"


async def test_stale_resource_version_is_a_conflict(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment())
    stale = api.sanitize_for_serialization(await apps.read_namespaced_deployment("web", NS))
    await apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"touched": "yes"}}})
    with pytest.raises(ApiException) as err:
        await apps.replace_namespaced_deployment("web", NS, stale)
    assert err.value.status == 409
    status = status_of(err.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}

    # a merge patch carrying a resourceVersion is a precondition too
    with pytest.raises(ApiException) as err:
        precondition = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}}
        await apps.patch_namespaced_deployment(
            "web", NS, {**precondition, "spec": {"replicas": 5}}, _content_type="application/merge-patch+json"
        )
    assert err.value.status == 409

    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment(NS, deployment())
    assert err.value.status == 409
    assert status_of(err.value)["reason"] == "AlreadyExists"
    assert status_of(err.value)["message"] == 'deployments.apps "web" already exists'

    with pytest.raises(ApiException) as err:
        await apps.delete_namespaced_deployment("web", NS, body={"preconditions": {"resourceVersion": "1"}})
    assert err.value.status == 409


async def test_scale_subresource(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment(replicas=3))
    scale = await apps.read_namespaced_deployment_scale("web", NS)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 3 and scale.status.selector == "app=web"

    body = client.V1Scale(
        metadata=client.V1ObjectMeta(name="web", resource_version=scale.metadata.resource_version)
    )
    body.spec = client.V1ScaleSpec(replicas=6)
    updated = await apps.replace_namespaced_deployment_scale("web", NS, body)
    assert updated.spec.replicas == 6
    with pytest.raises(ApiException) as err:  # same, now stale, resourceVersion
        await apps.replace_namespaced_deployment_scale("web", NS, body)
    assert err.value.status == 409
    assert 'deployments.apps "web": the object has been modified' in status_of(err.value)["message"]

    patched = await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 1}})
    assert patched.spec.replicas == 1
    dep = await apps.read_namespaced_deployment("web", NS)
    assert dep.spec.replicas == 1 and dep.metadata.generation == 3

    sts = deployment("db")
    sts["kind"] = "StatefulSet"
    await apps.create_namespaced_stateful_set(NS, sts)
    patched = await apps.patch_namespaced_stateful_set_scale(
        "db", NS, [{"op": "replace", "path": "/spec/replicas", "value": 5}]
    )
    assert patched.spec.replicas == 5


REFS = "spec.rules[0].backendRefs"
VALIDATION_CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    (
        "httproute weight",
        httproute([100, 1_000_001]),
        422,
        f"{REFS}[1].weight",
        "less than or equal to 1000000",
    ),
    ("httproute 17 refs", httproute([1] * 17), 422, REFS, "Too many: 17: must have at most 16 items"),
    ("virtualservice sum", virtualservice([60, 60]), 400, "", "total destination weight 120 != 100"),
    ("virtualservice range", virtualservice([150]), 400, "", "percentage 150 is not in range 0..100"),
]


@pytest.mark.parametrize(
    ("body", "code", "field", "message"),
    [c[1:] for c in VALIDATION_CASES],
    ids=[c[0] for c in VALIDATION_CASES],
)
async def test_custom_resource_validation(
    api: client.ApiClient, body: dict[str, Any], code: int, field: str, message: str
) -> None:
    group, version = body["apiVersion"].split("/")
    plural = "httproutes" if body["kind"] == "HTTPRoute" else "virtualservices"
    with pytest.raises(ApiException) as err:
        await client.CustomObjectsApi(api).create_namespaced_custom_object(group, version, NS, plural, body)
    assert err.value.status == code
    status = status_of(err.value)
    assert message in status["message"]
    if code == 422:
        assert status["reason"] == "Invalid"
        assert field in [c["field"] for c in status["details"]["causes"]]
    else:  # a validating webhook's refusal, as the API server relays it
        assert status["message"].startswith('admission webhook "validation.istio.io" denied the request')


async def test_httproute_required_fields(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    route = httproute([50, 50])
    del route["spec"]["rules"][0]["backendRefs"][0]["name"]
    del route["spec"]["rules"][0]["backendRefs"][1]["port"]
    with pytest.raises(ApiException) as err:
        await custom.create_namespaced_custom_object(*GATEWAY, route)
    causes = {c["field"]: c for c in status_of(err.value)["details"]["causes"]}
    assert causes["spec.rules[0].backendRefs[0].name"]["reason"] == "FieldValueRequired"
    assert "Must have port for Service reference" in causes["spec.rules[0].backendRefs[1]"]["message"]
    assert err.value.status == 422


async def test_updates_are_validated_too(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    await custom.create_namespaced_custom_object(*ISTIO, virtualservice([100, 0]))
    with pytest.raises(ApiException) as err:
        await custom.patch_namespaced_custom_object(
            *ISTIO, "web", [{"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 10}]
        )
    assert (
        err.value.status == 400 and "total destination weight 110 != 100" in status_of(err.value)["message"]
    )
    ok = await custom.patch_namespaced_custom_object(
        *ISTIO,
        "web",
        [
            {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 0},
            {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 100},
        ],
    )
    assert [d["weight"] for d in ok["spec"]["http"][0]["route"]] == [0, 100]

    split = {
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {"name": "web"},
        "spec": {"service": "web", "backends": [{"service": "web-a", "weight": 1}, {"weight": -1}]},
    }
    with pytest.raises(ApiException) as err:
        await custom.create_namespaced_custom_object(*SMI, split)
    fields = {c["field"] for c in status_of(err.value)["details"]["causes"]}
    assert fields == {"spec.backends[1].service", "spec.backends[1].weight"}


async def test_builtin_validation(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    no_selector = deployment()
    del no_selector["spec"]["selector"]
    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment(NS, no_selector)
    status = status_of(err.value)
    assert err.value.status == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith('Deployment.apps "web" is invalid: [spec.selector: Required value, ')
    assert status["details"]["kind"] == "Deployment" and status["details"]["group"] == "apps"

    mismatched = deployment()
    mismatched["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment(NS, mismatched)
    assert "`selector` does not match template `labels`" in status_of(err.value)["message"]

    with pytest.raises(ApiException) as err:
        await apps.create_namespaced_deployment(NS, deployment(replicas=-1))
    assert status_of(err.value)["message"] == (
        'Deployment.apps "web" is invalid: '
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    )

    await apps.create_namespaced_deployment(NS, deployment())
    with pytest.raises(ApiException) as err:
        await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": -2}})
    assert err.value.status == 422
    assert status_of(err.value)["details"]["causes"][0]["field"] == "spec.replicas"

    hpa = client.AutoscalingV2Api(api)
    body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": TARGET, "minReplicas": 0, "maxReplicas": 5},
    }
    with pytest.raises(ApiException) as err:
        await hpa.create_namespaced_horizontal_pod_autoscaler(NS, body)
    assert "spec.minReplicas: Invalid value: 0: must be greater than 0" in status_of(err.value)["message"]
    body["spec"].update(minReplicas=4, maxReplicas=3)
    with pytest.raises(ApiException) as err:
        await hpa.create_namespaced_horizontal_pod_autoscaler(NS, body)
    assert "must be greater than or equal to `minReplicas`" in status_of(err.value)["message"]


async def test_hpa_clamps_its_target(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    hpa = client.AutoscalingV2Api(api)
    await apps.create_namespaced_deployment(NS, deployment(replicas=2))
    body = {
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": TARGET, "minReplicas": 3, "maxReplicas": 5},
    }
    await hpa.create_namespaced_horizontal_pod_autoscaler(NS, body)

    async def replicas() -> int | None:
        found = (await apps.read_namespaced_deployment("web", NS)).spec.replicas
        return int(found) if found == 3 else None

    assert await eventually(replicas) == 3
    read = await hpa.read_namespaced_horizontal_pod_autoscaler("web", NS)
    assert read.spec.min_replicas == 3 and read.status.desired_replicas == 3


async def test_watch_delivers_added_modified_deleted(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    start = (await apps.list_namespaced_deployment(NS)).metadata.resource_version
    events: list[tuple[str, str, str]] = []
    seen_all = asyncio.Event()

    async def watch_them() -> None:
        async with watch.Watch() as w:
            async for event in w.stream(
                apps.list_namespaced_deployment,
                NS,
                label_selector="app=web",
                resource_version=start,
                timeout_seconds=10,
            ):
                obj = event["raw_object"]
                events.append((event["type"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
                if event["type"] == "DELETED":
                    seen_all.set()
                    return

    task = asyncio.create_task(watch_them(), name="test-watch")
    try:
        await apps.create_namespaced_deployment(NS, deployment("other"))  # filtered out by the selector
        await apps.create_namespaced_deployment(NS, deployment())
        await apps.patch_namespaced_deployment("web", NS, {"metadata": {"annotations": {"a": "1"}}})
        await apps.delete_namespaced_deployment("web", NS)
        await asyncio.wait_for(seen_all.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    kinds = [e[0] for e in events]
    assert kinds[0] == "ADDED" and kinds[-1] == "DELETED" and "MODIFIED" in kinds
    assert {e[1] for e in events} == {"web"}
    versions = [int(e[2]) for e in events]
    assert versions == sorted(versions)

    # watching from a resourceVersion replays the history after it, then ends at timeoutSeconds
    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS, resource_version=start, timeout_seconds=1)
        replay = [(e["type"], e["raw_object"]["metadata"]["name"]) async for e in stream]
    assert ("ADDED", "other") in replay
    web = [kind for kind, name in replay if name == "web"]
    assert web[0] == "ADDED" and web[-1] == "DELETED" and "MODIFIED" in web


async def test_watch_label_change_is_seen_as_added_and_deleted(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment(labels={"app": "web"}))
    start = (await apps.list_namespaced_deployment(NS)).metadata.resource_version
    await apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"track": "canary"}}})
    await apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"track": None}}})
    async with watch.Watch() as w:
        seen = [
            e["type"]
            async for e in w.stream(
                apps.list_namespaced_deployment,
                NS,
                label_selector="track=canary",
                resource_version=start,
                timeout_seconds=1,
            )
        ]
    assert seen == ["ADDED", "DELETED"]


async def test_watch_from_expired_resource_version_is_410(tmp_path: Path) -> None:
    server = KubeApiServer("tiny", history_size=5, ready_delay_s=60)
    await server.start()
    api_client = await config.new_client_from_config(
        str(server.write_kubeconfig(tmp_path / "kubeconfig")), "tiny", persist_config=False
    )
    try:
        leases = client.CoordinationV1Api(api_client)
        for n in range(8):
            body = {
                "metadata": {"name": f"l{n}"},
                "spec": {"holderIdentity": "me", "leaseDurationSeconds": 10},
            }
            await leases.create_namespaced_lease(NS, body)
        async with watch.Watch() as w:
            with pytest.raises(ApiException) as err:
                async for _ in w.stream(
                    leases.list_namespaced_lease, NS, resource_version="2", timeout_seconds=2
                ):
                    pass
        assert err.value.status == 410
        assert "Expired: too old resource version: 2" in str(err.value.reason)
        last = int((await leases.list_namespaced_lease(NS)).metadata.resource_version)
        async with watch.Watch() as w:  # recent enough: served from history
            stream = w.stream(
                leases.list_namespaced_lease, NS, resource_version=str(last - 1), timeout_seconds=1
            )
            recent = [e["type"] async for e in stream]
        assert recent == ["ADDED"]
    finally:
        await api_client.close()
        await server.stop()


async def test_controller_makes_deployments_ready_after_the_delay(
    api: client.ApiClient, server: KubeApiServer
) -> None:
    apps = client.AppsV1Api(api)
    server.set_ready_delay(60)
    await apps.create_namespaced_deployment(NS, deployment(replicas=3))
    await apps.create_namespaced_deployment(NS, deployment("stuck", replicas=3))
    server.set_unavailable(NS, "stuck", 2)

    async def observed() -> Any:
        found = await apps.read_namespaced_deployment_status("web", NS)
        return found if found.status and found.status.observed_generation else None

    first = await eventually(observed)
    assert first.status.observed_generation == 1 and first.status.updated_replicas == 3
    assert not first.status.available_replicas  # pods not ready yet
    server.set_ready_delay(0.2)  # applies to the pending pods too

    async def available(name: str, wanted: int) -> bool:
        return (await apps.read_namespaced_deployment(name, NS)).status.available_replicas == wanted

    assert await eventually(lambda: available("web", 3))
    ready = await apps.read_namespaced_deployment("web", NS)
    assert ready.status.observed_generation == ready.metadata.generation
    assert ready.status.updated_replicas == ready.status.ready_replicas == 3
    assert await eventually(lambda: available("stuck", 1))
    await asyncio.sleep(0.4)
    stuck = await apps.read_namespaced_deployment("stuck", NS)
    assert stuck.status.available_replicas == 1 and stuck.status.unavailable_replicas == 2
    assert {c.type: c.status for c in stuck.status.conditions}["Available"] == "False"

    # scaling up takes the delay again; scaling down is immediate
    server.set_ready_delay(0.3)
    await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 5}})
    assert (await apps.read_namespaced_deployment("web", NS)).status.available_replicas == 3
    assert await eventually(lambda: available("web", 5))
    await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 1}})
    assert await eventually(lambda: available("web", 1), timeout_s=0.5)

    server.set_unavailable(NS, "stuck", 0)
    assert await eventually(lambda: available("stuck", 3))


async def test_status_subresource_owns_status(api: client.ApiClient, server: KubeApiServer) -> None:
    server.set_ready_delay(60)
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment())
    body = api.sanitize_for_serialization(await apps.read_namespaced_deployment("web", NS))
    body["status"]["readyReplicas"] = 7
    body["spec"]["replicas"] = 4
    after = await apps.replace_namespaced_deployment("web", NS, body)
    assert (
        after.spec.replicas == 4 and after.status.ready_replicas != 7
    )  # status ignored on the main resource
    after = await apps.patch_namespaced_deployment_status(
        "web", NS, {"status": {"readyReplicas": 1}, "spec": {"replicas": 9}}
    )
    assert after.status.ready_replicas == 1 and after.spec.replicas == 4  # spec ignored on /status


async def test_leases_namespaces_and_discovery(api: client.ApiClient, tmp_path: Path) -> None:
    leases = client.CoordinationV1Api(api)
    body = client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    created = await leases.create_namespaced_lease("kube-system", body)
    created.spec.holder_identity = "b"
    replaced = await leases.replace_namespaced_lease("leader", "kube-system", created)
    assert replaced.spec.holder_identity == "b"
    same = await leases.replace_namespaced_lease("leader", "kube-system", replaced)
    assert (
        same.metadata.resource_version == replaced.metadata.resource_version
    )  # a no-op write changes nothing
    with pytest.raises(ApiException) as err:
        await leases.replace_namespaced_lease("leader", "kube-system", created)
    assert err.value.status == 409

    core = client.CoreV1Api(api)
    names = [n.metadata.name for n in (await core.list_namespace()).items]
    assert "kube-system" in names  # springs into existence with its first object (strict_namespaces off)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="payments")))
    assert (await core.read_namespace("payments")).status.phase == "Active"

    groups = {
        g.name: g.preferred_version.version for g in (await client.ApisApi(api).get_api_versions()).groups
    }
    assert groups["networking.istio.io"] == "v1" and groups["split.smi-spec.io"] == "v1alpha2"
    resources = {r.name: r for r in (await client.AppsV1Api(api).get_api_resources()).resources}
    assert (
        resources["deployments/scale"].group == "autoscaling"
        and resources["deployments/scale"].kind == "Scale"
    )
    assert "watch" in resources["deployments"].verbs and "deployments/status" in resources
    version = await client.VersionApi(api).get_code()
    assert version.major == "1"

    strict = KubeApiServer("strict", strict_namespaces=True)
    await strict.start()
    strict_client = await config.new_client_from_config(
        str(strict.write_kubeconfig(tmp_path / "strict")), "strict", persist_config=False
    )
    try:
        with pytest.raises(ApiException) as err:
            await client.CoordinationV1Api(strict_client).create_namespaced_lease("nowhere", body)
        assert err.value.status == 404 and status_of(err.value)["message"] == 'namespaces "nowhere" not found'
    finally:
        await strict_client.close()
        await strict.stop()


async def test_requests_need_the_bearer_token(api: client.ApiClient, server: KubeApiServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/readyz", "/apis/apps/v1/namespaces/shop/deployments"):
            async with session.get(server.url + path) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert body["reason"] == "Unauthorized" and body["kind"] == "Status"
        headers = {"Authorization": f"Bearer {server.token}"}
        async with session.get(server.url + "/livez", headers=headers) as resp:
            assert resp.status == 200 and await resp.text() == "ok"

    wrong = copy.copy(api.configuration)
    wrong.api_key = {"BearerToken": "Bearer not-the-token"}
    async with client.ApiClient(configuration=wrong) as other:
        with pytest.raises(ApiException) as err:
            await client.AppsV1Api(other).list_namespaced_deployment(NS)
    assert err.value.status == 401


async def test_fault_hooks(api: client.ApiClient, server: KubeApiServer) -> None:
    apps = client.AppsV1Api(api)

    async def readyz(timeout_s: float = 5.0) -> str:
        return str(
            await api.call_api(
                "/readyz",
                "GET",
                auth_settings=["BearerToken"],
                response_types_map={200: "str"},
                _return_http_data_only=True,
                _request_timeout=timeout_s,
            )
        )

    assert await readyz() == "ok"

    server.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            await apps.list_namespaced_deployment(NS)
        assert err.value.status == 503 and status_of(err.value)["reason"] == "ServiceUnavailable"
    await apps.list_namespaced_deployment(NS)
    server.fail_next(1)
    with pytest.raises(ApiException) as err:
        await apps.list_namespaced_deployment(NS)
    assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"

    server.set_latency(0.3)
    started = time.monotonic()
    await apps.list_namespaced_deployment(NS)
    assert time.monotonic() - started >= 0.3
    with pytest.raises(asyncio.TimeoutError):
        await readyz(timeout_s=0.1)
    server.set_latency(0)

    server.set_not_ready(True)
    with pytest.raises(ApiException) as err:
        await readyz()
    assert err.value.status == 500 and "readyz check failed" in err.value.body
    await apps.list_namespaced_deployment(NS)  # the API still serves
    server.set_not_ready(False)

    url = server.url
    await server.set_down(True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await apps.list_namespaced_deployment(NS)
    await server.set_down(False)
    assert server.url == url
    await apps.list_namespaced_deployment(NS)
    assert await readyz() == "ok"


async def test_set_down_ends_open_watches(api: client.ApiClient, server: KubeApiServer) -> None:
    apps = client.AppsV1Api(api)

    async def watch_forever() -> list[str]:
        async with watch.Watch() as w:
            return [
                e["type"] async for e in w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=30)
            ]

    task = asyncio.create_task(watch_forever(), name="test-watch-down")
    await asyncio.sleep(0.2)
    await server.set_down(True)
    result = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert result[0] == [] or isinstance(result[0], Exception)
    await server.set_down(False)


async def test_seeding_helpers(server: KubeApiServer) -> None:
    stored = server.put_object(
        {**deployment(), "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}}
    )
    assert stored["status"]["availableReplicas"] == 2 and stored["metadata"]["resourceVersion"]
    found = server.get_object("apps/v1", "deployments", NS, "web")
    assert found is not None and found["spec"]["replicas"] == 2
    with pytest.raises(Exception, match="invalid"):
        server.put_object(httproute([2_000_000]))
    server.put_object(httproute([2_000_000]), validate=False)  # seeding may bypass validation on purpose
