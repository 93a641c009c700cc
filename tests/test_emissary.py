"""The `emissary` balancer against the sandbox API server serving Emissary's Mapping CRD: one Mapping per
cluster sharing a prefix, relative weights written summing to 100 (lowered weights first, so the group
never goes over 100 mid-change), exact restore, hand edits read as drift, conflicts re-read, an
unreachable API server temporary; the sandbox accepts and refuses Mappings as a real API server with
the official CRD (../shared/crds) does; and a daemon fails a dead cluster over and back through it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.base import Balancer
from orchestrator.actuators.emissary import ANNOTATION, EmissaryBalancer
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core.config import load_config
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.runtime.daemon import Daemon
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.kube_status import ApiError
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.crd_schema import crd_validator
from tests.helpers import HOOK_SECRET, hook_receiver, wait_for
from tests.test_drivers import race_with

pytestmark = pytest.mark.timeout(90)

API_VERSION = "getambassador.io/v3alpha1"
CLUSTERS = ("eu-west", "us-east", "ap-south")
MEMBERS = {c: f"web-{c}" for c in CLUSTERS}
REPO = Path(__file__).resolve().parents[1]


def mapping(cluster: str, weight: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"hostname": "*", "prefix": "/web/", "service": f"web.{cluster}:80"}
    if weight is not None:
        spec["weight"] = weight
    return {
        "apiVersion": API_VERSION,
        "kind": "Mapping",
        "metadata": {"name": f"web-{cluster}", "namespace": "edge"},
        "spec": spec,
    }


def config(kubeconfig: Path) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "ingress",
            "driver": "emissary",
            "emissary": {"kubeconfig": str(kubeconfig), "namespace": "edge"},
            "members": MEMBERS,
        }
    )


@pytest.fixture
async def server() -> AsyncIterator[KubeApiServer]:
    api = KubeApiServer("edge")
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
def kubeconfig(server: KubeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", {"edge": server})


@pytest.fixture
async def balancer(server: KubeApiServer, kubeconfig: Path) -> AsyncIterator[Balancer]:
    for cluster, weight in zip(CLUSTERS, (50, 30, 20), strict=True):
        server.put_object(mapping(cluster, weight))
    lb = build_balancer(config(kubeconfig))
    try:
        yield lb
    finally:
        await lb.close()


def stored(server: KubeApiServer, cluster: str) -> dict[str, Any]:
    obj = server.get_object(API_VERSION, "mappings", "edge", f"web-{cluster}")
    assert obj is not None
    return obj


def weights(server: KubeApiServer) -> dict[str, int | None]:
    return {c: stored(server, c)["spec"].get("weight") for c in CLUSTERS}


def put_order(server: KubeApiServer, since: int) -> list[str]:
    return [r.path.rsplit("/", 1)[1].removeprefix("web-") for r in server.requests("PUT")[since:]]


async def test_drain_and_exact_restore_sum_to_100_and_never_exceed_it(
    server: KubeApiServer, balancer: Balancer
) -> None:
    assert isinstance(balancer, EmissaryBalancer)
    assert await balancer.get_weights() == {"eu-west": 50, "us-east": 30, "ap-south": 20}
    await balancer.set_weights({"eu-west": 0})
    assert weights(server) == {"eu-west": 0, "us-east": 60, "ap-south": 40}
    assert put_order(server, 0)[0] == "eu-west"  # the lowered weight first: never over 100 in between
    assert await balancer.get_weights() == {"eu-west": 0, "us-east": 30, "ap-south": 20}
    assert stored(server, "us-east")["metadata"]["annotations"][ANNOTATION] == "30"
    puts = len(server.requests("PUT"))
    await balancer.set_weights({"eu-west": 50})
    assert weights(server) == {"eu-west": 50, "us-east": 30, "ap-south": 20}
    assert put_order(server, puts)[-1] == "eu-west"  # the raised weight last
    assert await balancer.get_weights() == {"eu-west": 50, "us-east": 30, "ap-south": 20}
    assert balancer.member_label("us-east") == "edge/web-us-east"


async def test_weightless_mappings_read_as_emissary_shares_them(
    server: KubeApiServer, kubeconfig: Path
) -> None:
    for cluster in CLUSTERS:
        server.put_object(mapping(cluster, None))
    lb = build_balancer(config(kubeconfig))
    try:
        assert await lb.get_weights() == {"eu-west": 33, "us-east": 33, "ap-south": 34}
        await lb.set_weights({"eu-west": 100, "us-east": 100, "ap-south": 100})
        assert weights(server) == {"eu-west": 34, "us-east": 33, "ap-south": 33}
        await lb.set_weights({"ap-south": 0})
        assert weights(server) == {"eu-west": 50, "us-east": 50, "ap-south": 0}
        assert await lb.get_weights() == {"eu-west": 100, "us-east": 100, "ap-south": 0}
    finally:
        await lb.close()


async def test_a_hand_edit_reads_as_the_actual_weights(server: KubeApiServer, balancer: Balancer) -> None:
    await balancer.set_weights({"eu-west": 0})
    edited = stored(server, "eu-west")
    edited["spec"]["weight"] = 10
    server.put_object(edited)
    other = stored(server, "us-east")
    other["spec"]["weight"] = 50
    server.put_object(other)
    assert await balancer.get_weights() == {"eu-west": 10, "us-east": 50, "ap-south": 40}


async def test_every_member_at_zero_or_a_split_group_is_refused(
    server: KubeApiServer, balancer: Balancer
) -> None:
    await balancer.set_weights({"eu-west": 0, "us-east": 0})
    assert weights(server) == {"eu-west": 0, "us-east": 0, "ap-south": 100}
    with pytest.raises(PermanentError, match="refusing to set every member to 0"):
        await balancer.set_weights({"ap-south": 0})
    other = stored(server, "ap-south")
    other["spec"]["prefix"] = "/other/"
    server.put_object(other)
    with pytest.raises(PermanentError, match="differ in prefix"):
        await balancer.get_weights()


async def test_a_concurrent_change_is_a_conflict_and_a_fresh_read(
    server: KubeApiServer, balancer: Balancer
) -> None:
    def someone_else_writes() -> None:
        obj = stored(server, "eu-west")
        obj["metadata"]["labels"] = {"touched-by": "someone-else"}
        server.put_object(obj)

    await race_with(server, balancer.set_weights({"eu-west": 0}), someone_else_writes)
    assert [r.status for r in server.requests("PUT")][:2] == [409, 200]
    assert weights(server) == {"eu-west": 0, "us-east": 60, "ap-south": 40}
    assert stored(server, "eu-west")["metadata"]["labels"] == {"touched-by": "someone-else"}


async def test_an_unreachable_api_server_is_temporary_and_5xx_retried(
    server: KubeApiServer, balancer: Balancer
) -> None:
    await server.set_down(True)
    with pytest.raises(TemporaryError):
        await balancer.get_weights()
    with pytest.raises(TemporaryError):
        await balancer.set_weights({"eu-west": 0})
    await server.set_down(False)
    server.fail_next(2, status=503)
    await balancer.set_weights({"eu-west": 0})
    assert weights(server) == {"eu-west": 0, "us-east": 60, "ap-south": 40}


async def test_the_sandbox_refuses_what_the_crd_refuses_through_the_api(
    server: KubeApiServer, balancer: Balancer
) -> None:
    bad = stored(server, "eu-west")
    bad["spec"]["weight"] = "50"
    with pytest.raises(ApiError) as refused:
        server.put_object(bad)
    assert refused.value.code == 422
    assert 'spec.weight in body must be of type integer: "string"' in str(refused.value.details)


# -- the sandbox against the official CRD ----------------------------------------------------------------


def _mapping(api_version: str = API_VERSION, **spec: Any) -> dict[str, Any]:
    body = {"prefix": "/web/", "service": "web:80", **spec}
    return {
        "apiVersion": api_version,
        "kind": "Mapping",
        "metadata": {"name": "m", "namespace": "edge"},
        "spec": body,
    }


def _without(field: str) -> dict[str, Any]:
    obj = _mapping()
    del obj["spec"][field]
    return obj


CASES: dict[str, dict[str, Any]] = {
    "valid": mapping("eu-west", 30),
    "valid v2": _mapping("getambassador.io/v2", weight=10, host="a.example.com", v3StatsName="x"),
    "no spec": {"apiVersion": API_VERSION, "kind": "Mapping", "metadata": {"name": "m", "namespace": "edge"}},
    "many fields": _mapping(
        weight=0,
        hostname="*.example.com",
        timeout_ms=3000,
        allow_upgrade=["websocket"],
        add_request_headers={"x-a": {"value": "b"}},
        headers={"x-canary": "1"},
        labels={"ambassador": [{"request_label_group": [{"generic_key": {"value": "g"}}]}]},
        load_balancer={"policy": "ring_hash", "header": "x-user"},
        cors={"origins": ["*"]},
        redirect_response_code=308,
        envoy_override={"anything": {"goes": 1}},
        grpc=False,
    ),
    "unknown field": _mapping(colour="blue"),
    "weight a string": _mapping(weight="50"),
    "weight fractional": _mapping(weight=0.5),
    "no prefix": _without("prefix"),
    "no service": _without("service"),
    "prefix a number": _mapping(prefix=5),
    "spec a list": {**_mapping(), "spec": ["prefix"]},
    "hostname a list": _mapping(hostname=["a"]),
    "timeout a string": _mapping(timeout_ms="3s"),
    "grpc a string": _mapping(grpc="yes"),
    "allow_upgrade a string": _mapping(allow_upgrade="websocket"),
    "headers not strings": _mapping(headers={"x": 1}),
    "redirect code not allowed": _mapping(redirect_response_code=300),
    "load_balancer without policy": _mapping(load_balancer={"header": "x"}),
    "load_balancer bad policy": _mapping(load_balancer={"policy": "random"}),
    "empty error overrides": _mapping(error_response_overrides=[]),
    "cors a string": _mapping(cors="*"),
    "circuit_breakers an object": _mapping(circuit_breakers={"max_connections": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_sandbox_accepts_what_the_official_crd_accepts(case: str) -> None:
    obj = copy.deepcopy(CASES[case])
    version = obj["apiVersion"].rpartition("/")[2]
    official = crd_validator("getambassador.io_mappings.yaml", version)
    errors = sorted(e.message for e in official.iter_errors(obj))
    server = KubeApiServer("crd")
    try:
        server.put_object(obj)
        refused: str | None = None
    except ApiError as e:
        assert e.code == 422, e
        refused = str(e.details)
    assert (refused is None) == (not errors), f"sandbox: {refused}; official CRD: {errors}"


# -- a daemon fails a dead cluster over and back through Emissary -----------------------------------------


async def test_a_daemon_drains_a_dead_cluster_and_restores_it(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    edge = KubeApiServer("edge")
    apps = {c: AppServer(c, free_port()) for c in CLUSTERS}
    books = tmp_path / "books"
    books.mkdir()
    for name in ("cluster-failover", "cluster-failback"):
        text = (REPO / "playbooks" / f"{name}.yaml").read_text()
        (books / f"{name}.yaml").write_text(text.replace("interval: 3s", "interval: 200ms"))
    async with hook_receiver() as hook:
        await edge.start()
        try:
            for cluster in CLUSTERS:
                edge.put_object(mapping(cluster, None))
                await apps[cluster].start()
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"edge": edge})
            lines = [
                f"nats: {{url: '{nats_server.url}'}}",
                f"state_dir: {tmp_path / 'state'}",
                f"api: {{listen: 127.0.0.1:{free_port()}}}",
                "probing: {interval: 200ms, timeout: 150ms, jitter: 0s, vantage: test}",
                "detection: {failure_threshold: 3, success_threshold: 2, quorum: 1, recovery_hold: 1s}",
                "reconcile: {interval: 500ms}",
                "clusters:",
            ]
            for cluster in CLUSTERS:
                lines += [
                    f"  - name: {cluster}",
                    "    weight: 100",
                    f"    probes: [{{name: ingress, http: {{url: '{apps[cluster].url}/healthz'}}}}]",
                ]
            lines += [
                "load_balancers:",
                "  - name: global",
                "    driver: emissary",
                f"    emissary: {{kubeconfig: '{kubeconfig}', namespace: edge}}",
                "    members: {" + ", ".join(f"{c}: web-{c}" for c in CLUSTERS) + "}",
                "notifiers:",
                "  - name: oncall",
                "    driver: webhook",
                f"    webhook: {{url: '{hook.url}', secret: {HOOK_SECRET}}}",
                f"playbooks: {{paths: ['{books}']}}",
            ]
            (tmp_path / "failover.yaml").write_text("\n".join(lines) + "\n")
            daemon = Daemon(load_config(tmp_path / "failover.yaml"))
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                await asyncio.wait_for(daemon.ready.wait(), 20)
                sums: list[int] = []

                async def watch() -> None:
                    while True:
                        sums.append(sum(w or 0 for w in weights(edge).values()))
                        await asyncio.sleep(0.02)

                watcher = asyncio.create_task(watch())
                try:
                    await apps["us-east"].stop()
                    # Emissary shared the weightless Mappings 33/33/34: the survivors keep that ratio
                    drained = {"eu-west": 49, "us-east": 0, "ap-south": 51}
                    await wait_for(lambda: weights(edge) == drained, 10, "us-east drained")
                    await apps["us-east"].start()
                    restored = {"eu-west": 33, "us-east": 33, "ap-south": 34}  # exactly as before
                    await wait_for(lambda: weights(edge) == restored, 15, "us-east restored")
                finally:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                assert max(sums) <= 100  # Emissary would drop a group over 100

                def told(prefix: str) -> bool:
                    return any(n["summary"].startswith(prefix) for n in hook.received)

                await wait_for(lambda: told("us-east failed; traffic moved to"), 5, "on-call paged")
                await wait_for(lambda: told("us-east recovered"), 5, "on-call told of the recovery")
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
        finally:
            for app in apps.values():
                await app.stop()
            await edge.stop()
