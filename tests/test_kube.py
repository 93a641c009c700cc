"""kube.client against two sandbox API servers through one generated kubeconfig with two contexts:
client caching, readyz, scale with fencing, error mapping, custom-object patches, HPAs, waiting for a
rollout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.config_clusters import KubernetesRef
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.kube.client import KubeClients
from orchestrator.kube.cluster import KubeCluster, rollout_status
from orchestrator.kube.errors import ConflictError, NotReadyError
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = pytest.mark.timeout(60)

NS = "shop"
ROUTE = ("gateway.networking.k8s.io", "v1", NS, "httproutes", "web")


def deployment(name: str = "web", replicas: int = 2, ready: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]},
            },
        },
    }
    if ready is not None:
        obj["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
    return obj


def httproute() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web-eu-west", "port": 80, "weight": 500_000},
                        {"name": "web-us-east", "port": 80, "weight": 500_000},
                    ]
                }
            ],
        },
    }


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, KubeApiServer]]:
    started = {"eu-west": KubeApiServer("eu-west", ready_delay_s=0.2), "us-east": KubeApiServer("us-east")}
    try:
        for server in started.values():
            await server.start()
        yield started
    finally:
        for server in started.values():
            await server.stop()


@pytest.fixture
def kubeconfig(servers: dict[str, KubeApiServer], tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kube" / "config", servers)


@pytest.fixture
async def clients() -> AsyncIterator[KubeClients]:
    kube = KubeClients(timeout_s=2.0)
    try:
        yield kube
    finally:
        await kube.close()


@pytest.fixture
async def eu(clients: KubeClients, kubeconfig: Path) -> KubeCluster:
    return await clients.cluster(KubernetesRef(kubeconfig=str(kubeconfig), context="eu-west"), "eu-west")


async def test_one_client_per_context_each_talking_to_its_own_cluster(
    clients: KubeClients, kubeconfig: Path, servers: dict[str, KubeApiServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(kubeconfig.parent.parent))  # so "~/kube/config" names the same file
    eu_ref = KubernetesRef(kubeconfig=str(kubeconfig), context="eu-west")
    tilde_ref = KubernetesRef(kubeconfig="~/kube/config", context="eu-west")
    us_ref = KubernetesRef(kubeconfig=str(kubeconfig), context="us-east")
    assert await clients.api_client(eu_ref) is await clients.api_client(tilde_ref)
    assert await clients.api_client(eu_ref) is not await clients.api_client(us_ref)

    servers["eu-west"].put_object(deployment(ready=2))
    eu = await clients.cluster(eu_ref, "eu-west")
    us = await clients.cluster(us_ref, "us-east")
    assert (await eu.get_deployment(NS, "web"))["spec"]["replicas"] == 2
    with pytest.raises(
        PermanentError, match=r'us-east: get deployment shop/web: 404 deployments.apps "web" not found'
    ):
        await us.get_deployment(NS, "web")


async def test_bad_kubeconfig_references_are_permanent(
    clients: KubeClients, kubeconfig: Path, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError, match="no context 'mars'"):
        await clients.cluster(KubernetesRef(kubeconfig=str(kubeconfig), context="mars"))
    with pytest.raises(PermanentError, match="does not exist"):
        await clients.cluster(KubernetesRef(kubeconfig=str(tmp_path / "missing"), context="eu-west"))


async def test_readyz(eu: KubeCluster, servers: dict[str, KubeApiServer]) -> None:
    server = servers["eu-west"]
    assert await eu.readyz() == (True, "ok")

    server.set_not_ready(True)
    ok, why = await eu.readyz()
    assert not ok and why.startswith("readyz 500")
    server.set_not_ready(False)

    server.set_latency(0.5)
    ok, why = await eu.readyz(timeout_s=0.1)
    assert not ok and "timed out" in why
    server.set_latency(0)

    await server.set_down(True)
    ok, why = await eu.readyz(timeout_s=1)
    assert not ok and why.startswith("unreachable")
    with pytest.raises(TemporaryError):
        await eu.get_deployment(NS, "web")
    await server.set_down(False)
    assert await eu.readyz() == (True, "ok")


async def test_scale_with_resource_version_fencing(
    eu: KubeCluster, servers: dict[str, KubeApiServer]
) -> None:
    servers["eu-west"].put_object(deployment(replicas=3))
    replicas, rv = await eu.get_scale(NS, "Deployment", "web")
    assert replicas == 3
    new_rv = await eu.set_scale(NS, "deployment", "web", 9, rv)
    assert int(new_rv) > int(rv)
    assert (await eu.get_scale(NS, "deployments", "web"))[0] == 9

    with pytest.raises(ConflictError, match="the object has been modified") as err:
        await eu.set_scale(NS, "Deployment", "web", 4, rv)  # stale: someone (we) changed it since
    assert isinstance(err.value, TemporaryError) and err.value.reason == "Conflict"
    await eu.set_scale(NS, "Deployment", "web", 4, None)  # unconditional
    assert (await eu.get_scale(NS, "Deployment", "web"))[0] == 4

    with pytest.raises(PermanentError, match="must be greater than or equal to 0"):
        await eu.set_scale(NS, "Deployment", "web", -1, None)
    with pytest.raises(PermanentError, match="unsupported workload kind"):
        await eu.get_scale(NS, "DaemonSet", "web")

    sts = deployment("db", replicas=1)
    sts["kind"] = "StatefulSet"
    servers["eu-west"].put_object(sts)
    _, rv = await eu.get_scale(NS, "StatefulSet", "db")
    await eu.set_scale(NS, "StatefulSet", "db", 3, rv)
    assert (await eu.get_workload(NS, "StatefulSet", "db"))["spec"]["replicas"] == 3


async def test_error_mapping(eu: KubeCluster, servers: dict[str, KubeApiServer]) -> None:
    server = servers["eu-west"]
    server.put_object(deployment(ready=2))

    server.fail_next(1, status=503)
    with pytest.raises(TemporaryError, match="503") as temporary:
        await eu.get_deployment(NS, "web")
    assert not isinstance(temporary.value, ConflictError)
    server.fail_next(1, status=500)
    with pytest.raises(TemporaryError, match="500 Internal error occurred"):
        await eu.get_scale(NS, "Deployment", "web")
    server.fail_next(1, status=429)
    with pytest.raises(TemporaryError) as throttled:
        await eu.get_deployment(NS, "web")
    assert throttled.value.delay_s == 1.0

    with pytest.raises(PermanentError) as missing:
        await eu.get_deployment(NS, "nope")
    assert str(missing.value) == 'eu-west: get deployment shop/nope: 404 deployments.apps "nope" not found'

    server.set_latency(0.5)
    with pytest.raises(TemporaryError, match="timed out"):
        await eu.get_deployment(NS, "web", timeout_s=0.1)
    server.set_latency(0)

    await server.set_down(True)
    with pytest.raises(TemporaryError) as down:
        await eu.get_scale(NS, "Deployment", "web")
    await server.set_down(False)

    for error in (temporary.value, missing.value, down.value):
        assert server.token not in str(error)


async def test_custom_object_merge_and_json_patch(eu: KubeCluster, servers: dict[str, KubeApiServer]) -> None:
    server = servers["eu-west"]
    server.put_object(httproute())

    merged = await eu.patch_custom(*ROUTE, {"metadata": {"annotations": {"failover/drained": "eu-west"}}})
    assert merged["metadata"]["annotations"] == {"failover/drained": "eu-west"}

    ops = [
        {"op": "test", "path": "/spec/rules/0/backendRefs/0/name", "value": "web-eu-west"},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 0},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 1_000_000},
    ]
    patched = await eu.patch_custom(*ROUTE, ops, patch_type="json")
    assert [r["weight"] for r in patched["spec"]["rules"][0]["backendRefs"]] == [0, 1_000_000]
    assert (await eu.get_custom(*ROUTE))["metadata"]["resourceVersion"] == patched["metadata"][
        "resourceVersion"
    ]

    assert [r.content_type for r in server.requests("PATCH", "/httproutes/web")] == [
        "application/merge-patch+json",
        "application/json-patch+json",
    ]

    too_heavy = [{"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 1_000_001}]
    with pytest.raises(
        PermanentError, match=r"backendRefs\[1\].weight in body should be less than or equal to 1000000"
    ):
        await eu.patch_custom(*ROUTE, too_heavy, patch_type="json")
    with pytest.raises(PermanentError, match="json patch needs a list"):
        await eu.patch_custom(*ROUTE, {"spec": {}}, patch_type="json")
    with pytest.raises(PermanentError, match="422"):  # a failed `test` op: someone renamed the backend
        await eu.patch_custom(*ROUTE, [{**ops[0], "value": "web-mars"}, ops[1]], patch_type="json")


async def test_replace_custom_is_fenced_by_resource_version(
    eu: KubeCluster, servers: dict[str, KubeApiServer]
) -> None:
    servers["eu-west"].put_object(httproute())
    route = await eu.get_custom(*ROUTE)
    rv = route["metadata"]["resourceVersion"]
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 0
    replaced = await eu.replace_custom(*ROUTE, route, resource_version=rv)
    assert replaced["spec"]["rules"][0]["backendRefs"][0]["weight"] == 0
    with pytest.raises(ConflictError):
        await eu.replace_custom(*ROUTE, route, resource_version=rv)


async def test_hpa_lookup_and_patch(eu: KubeCluster, servers: dict[str, KubeApiServer]) -> None:
    server = servers["eu-west"]
    server.put_object(deployment(replicas=2))
    assert await eu.get_hpa_for(NS, "Deployment", "web") is None
    server.put_object(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web-hpa", "namespace": NS},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 6,
            },
        }
    )
    hpa = await eu.get_hpa_for(NS, "deployment", "web")
    assert hpa is not None and hpa["metadata"]["name"] == "web-hpa" and hpa["spec"]["minReplicas"] == 2
    rv = hpa["metadata"]["resourceVersion"]
    patched = await eu.patch_hpa(
        NS, "web-hpa", {"metadata": {"resourceVersion": rv}, "spec": {"minReplicas": 4}}
    )
    assert patched["spec"]["minReplicas"] == 4
    with pytest.raises(ConflictError):
        await eu.patch_hpa(NS, "web-hpa", {"metadata": {"resourceVersion": rv}, "spec": {"minReplicas": 5}})
    with pytest.raises(PermanentError, match="must be greater than or equal to `minReplicas`"):
        await eu.patch_hpa(NS, "web-hpa", {"spec": {"maxReplicas": 3}})


async def test_patch_deployment_strategic(eu: KubeCluster, servers: dict[str, KubeApiServer]) -> None:
    servers["eu-west"].put_object(deployment())
    body = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}}
    patched = await eu.patch_deployment(NS, "web", body)
    assert patched["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert servers["eu-west"].requests("PATCH")[-1].content_type == "application/strategic-merge-patch+json"


async def test_wait_deployment_ready(eu: KubeCluster, servers: dict[str, KubeApiServer]) -> None:
    server = servers["eu-west"]
    server.put_object(deployment(replicas=2))
    ready = await eu.wait_deployment_ready(NS, "web", timeout_s=10)
    assert rollout_status(ready)[0] and ready["status"]["availableReplicas"] == 2

    _, rv = await eu.get_scale(NS, "Deployment", "web")
    await eu.set_scale(NS, "Deployment", "web", 5, rv)
    ready = await eu.wait_deployment_ready(NS, "web", timeout_s=10)  # waits for the scale-out, via watch
    assert ready["status"]["availableReplicas"] == 5

    server.set_unavailable(NS, "web", 2)
    server.set_ready_delay(0.05)
    _, rv = await eu.get_scale(NS, "Deployment", "web")
    await eu.set_scale(NS, "Deployment", "web", 6, rv)
    with pytest.raises(
        NotReadyError, match="not ready after 1s: 4 of 6 updated replicas are available"
    ) as err:
        await eu.wait_deployment_ready(NS, "web", timeout_s=1)
    assert isinstance(err.value, TemporaryError)
    assert err.value.last is not None and err.value.last["status"]["availableReplicas"] == 4

    with pytest.raises(PermanentError, match="404"):
        await eu.wait_deployment_ready(NS, "missing", timeout_s=2)


def test_rollout_status_rules() -> None:
    dep = deployment(replicas=3, ready=3)
    assert rollout_status(dep) == (True, "3 of 3 replicas available")
    dep["metadata"]["generation"] = 2
    assert rollout_status(dep)[1] == "waiting for generation 2 to be observed (at 1)"
    dep["status"].update(observedGeneration=2, updatedReplicas=1)
    assert rollout_status(dep)[1] == "1 of 3 new replicas have been updated"
    dep["status"].update(updatedReplicas=3, replicas=4)
    assert rollout_status(dep)[1] == "1 old replicas are pending termination"
    dep["status"].update(replicas=3, availableReplicas=2)
    assert rollout_status(dep)[1] == "2 of 3 updated replicas are available"
