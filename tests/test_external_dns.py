"""The `external_dns` balancer against the sandbox API server serving external-dns's DNSEndpoint CRD:
a drain removes the cluster's targets (A and AAAA alike), a restore puts back exactly the configured ones,
the name's last targets are never removed, a concurrent change is a 409 and a fresh read, an unreachable
API server is temporary; the members are validated and canonical; and the sandbox accepts and refuses
DNSEndpoints as a real API server with the official CRD (../shared/crds) does."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.actuators.base import Balancer
from orchestrator.actuators.external_dns import ExternalDnsBalancer
from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config import load_config
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError, TemporaryError, ValidationFailed
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.sandbox.kube_status import ApiError
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.crd_schema import crd_validator
from tests.test_drivers import race_with

pytestmark = pytest.mark.timeout(60)

API_VERSION = "externaldns.k8s.io/v1alpha1"
MEMBERS: dict[str, Any] = {
    "eu-west": ["192.0.2.10", "2001:DB8::10"],
    "us-east": ["198.51.100.10", "198.51.100.11"],
    "ap-south": "203.0.113.20",
}


def dnsendpoint(a: list[str] | None = None, aaaa: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DNSEndpoint",
        "metadata": {"name": "www", "namespace": "dns"},
        "spec": {
            "endpoints": [
                {
                    "dnsName": "www.example.com",
                    "recordType": "A",
                    "recordTTL": 30,
                    "targets": a
                    if a is not None
                    else ["192.0.2.10", "198.51.100.10", "198.51.100.11", "203.0.113.20"],
                },
                {
                    "dnsName": "www.example.com",
                    "recordType": "AAAA",
                    "recordTTL": 30,
                    "targets": aaaa or ["2001:db8::10"],
                },
                {"dnsName": "api.example.com", "recordType": "A", "targets": ["192.0.2.10"]},  # not ours
            ]
        },
    }


def config(kubeconfig: Path, members: dict[str, Any] | None = None, **section: Any) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "dns",
            "driver": "external_dns",
            "external_dns": {
                "kubeconfig": str(kubeconfig),
                "namespace": "dns",
                "dns_endpoint": "www",
                "dns_name": "www.example.com.",
                **section,
            },
            "members": members or MEMBERS,
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
    server.put_object(dnsendpoint())
    lb = build_balancer(config(kubeconfig))
    try:
        yield lb
    finally:
        await lb.close()


def targets(server: KubeApiServer, name: str = "www.example.com") -> dict[str, list[str]]:
    obj = server.get_object(API_VERSION, "dnsendpoints", "dns", "www")
    assert obj is not None
    return {e["recordType"]: e["targets"] for e in obj["spec"]["endpoints"] if e["dnsName"] == name}


async def test_drain_removes_the_clusters_targets_and_restore_puts_them_back(
    server: KubeApiServer, balancer: Balancer
) -> None:
    assert isinstance(balancer, ExternalDnsBalancer)
    assert await balancer.get_weights() == {"eu-west": 1, "us-east": 1, "ap-south": 1}
    await balancer.set_weights({"us-east": 0})
    assert targets(server) == {"A": ["192.0.2.10", "203.0.113.20"], "AAAA": ["2001:db8::10"]}
    assert targets(server, "api.example.com") == {"A": ["192.0.2.10"]}  # another name is left alone
    assert await balancer.get_weights() == {"eu-west": 1, "us-east": 0, "ap-south": 1}
    await balancer.set_weights({"ap-south": 0})
    assert targets(server)["A"] == ["192.0.2.10"]
    await balancer.set_weights({"us-east": 1, "ap-south": 1})
    assert targets(server) == {
        "A": ["192.0.2.10", "198.51.100.10", "198.51.100.11", "203.0.113.20"],
        "AAAA": ["2001:db8::10"],
    }
    assert await balancer.get_weights() == {"eu-west": 1, "us-east": 1, "ap-south": 1}
    puts = len(server.requests("PUT"))
    await balancer.set_weights({"eu-west": 1})  # already there: nothing written, nothing reordered
    assert len(server.requests("PUT")) == puts
    assert balancer.member_label("eu-west") == "192.0.2.10, 2001:db8::10"


async def test_the_last_targets_are_never_removed(server: KubeApiServer, balancer: Balancer) -> None:
    server.put_object(dnsendpoint(aaaa=["2001:db8::10", "2001:db8::99"]))  # ::99 is no member's
    await balancer.set_weights({"us-east": 0})
    with pytest.raises(GuardRefused, match=r"leave the A targets of www\.example\.com\. with no member"):
        await balancer.set_weights({"eu-west": 0, "ap-south": 0})
    assert targets(server)["A"] == ["192.0.2.10", "203.0.113.20"]
    # the AAAA endpoint keeps an address, but no member's: IPv6-only clients would have nothing
    with pytest.raises(GuardRefused, match="AAAA targets"):
        await balancer.set_weights({"eu-west": 0})
    assert targets(server)["AAAA"] == ["2001:db8::10", "2001:db8::99"]
    # through the actuator: eu-west still serves (over IPv6), so its guard lets the drain through and the
    # driver refuses to empty the A targets, forced or not
    server.put_object(dnsendpoint(a=["198.51.100.10", "203.0.113.20"]))
    states = dict.fromkeys(MEMBERS, "healthy")
    actuator = BalancerActuator(balancer, dict.fromkeys(MEMBERS, 100), lambda: states, MemoryStateStore())
    await actuator.drain("us-east")
    for force in (False, True):
        with pytest.raises(GuardRefused, match="no member's address"):
            await actuator.drain("ap-south", force=force)
    assert targets(server)["A"] == ["203.0.113.20"]


async def test_a_partly_removed_cluster_still_reads_as_serving_and_is_drained_whole(
    server: KubeApiServer, balancer: Balancer
) -> None:
    server.put_object(dnsendpoint(a=["192.0.2.10", "198.51.100.11", "203.0.113.20"]))  # a hand edit
    assert await balancer.get_weights() == {"eu-west": 1, "us-east": 1, "ap-south": 1}
    await balancer.set_weights({"us-east": 0})
    assert targets(server)["A"] == ["192.0.2.10", "203.0.113.20"]
    await balancer.set_weights({"us-east": 1})
    assert targets(server)["A"] == ["192.0.2.10", "203.0.113.20", "198.51.100.10", "198.51.100.11"]


async def test_a_concurrent_change_is_a_conflict_and_a_fresh_read(
    server: KubeApiServer, balancer: Balancer
) -> None:
    def someone_adds_a_target() -> None:
        obj = server.get_object(API_VERSION, "dnsendpoints", "dns", "www")
        assert obj is not None
        obj["spec"]["endpoints"][0]["targets"].append("203.0.113.99")
        server.put_object(obj)

    await race_with(server, balancer.set_weights({"us-east": 0}), someone_adds_a_target)
    assert [r.status for r in server.requests("PUT")] == [409, 200]
    assert targets(server)["A"] == ["192.0.2.10", "203.0.113.20", "203.0.113.99"]


async def test_an_unreachable_api_server_is_temporary(server: KubeApiServer, balancer: Balancer) -> None:
    await server.set_down(True)
    with pytest.raises(TemporaryError):
        await balancer.get_weights()
    with pytest.raises(TemporaryError):
        await balancer.set_weights({"us-east": 0})
    await server.set_down(False)
    await balancer.set_weights({"us-east": 0})
    assert targets(server)["A"] == ["192.0.2.10", "203.0.113.20"]


async def test_a_missing_endpoint_or_object_is_permanent(server: KubeApiServer, kubeconfig: Path) -> None:
    obj = dnsendpoint()
    del obj["spec"]["endpoints"][1]  # no AAAA record for eu-west's IPv6 address
    server.put_object(obj)
    lb = build_balancer(config(kubeconfig))
    try:
        with pytest.raises(PermanentError, match=r"no AAAA endpoint for www\.example\.com\., where eu-west"):
            await lb.get_weights()
    finally:
        await lb.close()
    lb = build_balancer(config(kubeconfig, dns_endpoint="nope"))
    try:
        with pytest.raises(PermanentError, match="404"):
            await lb.get_weights()
    finally:
        await lb.close()
    obj = dnsendpoint()
    obj["spec"]["endpoints"][0]["setIdentifier"] = "eu"
    obj["spec"]["endpoints"].append({**copy.deepcopy(obj["spec"]["endpoints"][0]), "setIdentifier": "us"})
    server.put_object(obj)
    lb = build_balancer(config(kubeconfig))
    try:
        with pytest.raises(PermanentError, match="several A endpoints"):
            await lb.get_weights()
    finally:
        await lb.close()
    lb = build_balancer(config(kubeconfig, set_identifier="eu"))
    try:
        with pytest.raises(PermanentError, match="no AAAA endpoint"):  # the AAAA one has no identifier
            await lb.get_weights()
    finally:
        await lb.close()


def test_members_are_validated_and_canonical(tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "kubeconfig", {"eu-west": ["192.0.2.10", "EU.lb.Example.com."], "us-east": "2001:DB8:0::1"}
    )
    assert cfg.addresses == {"eu-west": ["192.0.2.10", "eu.lb.example.com"], "us-east": ["2001:db8::1"]}
    assert cfg.members == {"eu-west": "192.0.2.10, eu.lb.example.com", "us-east": "2001:db8::1"}
    for members, message in (
        ({"eu-west": ["192.0.2.10"], "us-east": ["192.0.2.10"]}, "also a target of eu-west"),
        ({"eu-west": []}, "expected a list"),
        ({"eu-west": ["not a name!"]}, "neither an IP address nor a host name"),
    ):
        with pytest.raises(ValidationError, match=message):
            config(tmp_path / "kubeconfig", members)


# -- the sandbox against the official CRD ----------------------------------------------------------------


def _endpoint(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DNSEndpoint",
        "metadata": {"name": "x", "namespace": "dns"},
        **fields,
    }


CASES: dict[str, dict[str, Any]] = {
    "valid": dnsendpoint(),
    "no spec": _endpoint(),
    "no endpoints": _endpoint(spec={}),
    "empty targets": _endpoint(
        spec={"endpoints": [{"dnsName": "a.example.com", "recordType": "A", "targets": []}]}
    ),
    "everything": _endpoint(
        spec={
            "endpoints": [
                {
                    "dnsName": "a.example.com",
                    "recordType": "CNAME",
                    "recordTTL": 60,
                    "setIdentifier": "eu",
                    "labels": {"owner": "failover"},
                    "providerSpecific": [{"name": "aws/weight", "value": "10"}],
                    "targets": ["lb.example.com"],
                }
            ]
        },
        status={"observedGeneration": 3},
    ),
    "unknown field": _endpoint(spec={"endpoints": [{"dnsName": "a.example.com", "ttl": 5}], "extra": 1}),
    "spec not an object": _endpoint(spec=["x"]),
    "endpoints not a list": _endpoint(spec={"endpoints": {"dnsName": "a"}}),
    "endpoint not an object": _endpoint(spec={"endpoints": ["a.example.com"]}),
    "target not a string": _endpoint(spec={"endpoints": [{"dnsName": "a", "targets": ["192.0.2.1", 7]}]}),
    "targets a string": _endpoint(spec={"endpoints": [{"dnsName": "a", "targets": "192.0.2.1"}]}),
    "ttl a string": _endpoint(spec={"endpoints": [{"dnsName": "a", "recordTTL": "30"}]}),
    "ttl fractional": _endpoint(spec={"endpoints": [{"dnsName": "a", "recordTTL": 1.5}]}),
    "dnsName a number": _endpoint(spec={"endpoints": [{"dnsName": 5}]}),
    "recordType a list": _endpoint(spec={"endpoints": [{"recordType": ["A"]}]}),
    "labels not strings": _endpoint(spec={"endpoints": [{"labels": {"a": 1}}]}),
    "providerSpecific value a number": _endpoint(
        spec={"endpoints": [{"providerSpecific": [{"name": "w", "value": 1}]}]}
    ),
    "setIdentifier a bool": _endpoint(spec={"endpoints": [{"setIdentifier": True}]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_sandbox_accepts_what_the_official_crd_accepts(case: str) -> None:
    obj = copy.deepcopy(CASES[case])
    official = crd_validator("externaldns.k8s.io_dnsendpoints.yaml", "v1alpha1")
    errors = sorted(e.message for e in official.iter_errors(obj))
    server = KubeApiServer("crd")
    try:
        server.put_object(obj)
        refused: str | None = None
    except ApiError as e:
        assert e.code == 422, e
        refused = str(e)
    assert (refused is None) == (not errors), f"sandbox: {refused}; official CRD: {errors}"


def test_a_ramp_is_refused_at_validation(tmp_path: Path) -> None:
    """A DNSEndpoint's targets have no weights: a ramped restore cannot be honoured (DESIGN §16)."""
    (tmp_path / "books").mkdir()
    (tmp_path / "kubeconfig").write_text("")
    (tmp_path / "failover.yaml").write_text(
        f"state_dir: {tmp_path}/state\n"
        "clusters:\n"
        "  - {name: eu-west, probes: [{name: i, http: {url: 'http://127.0.0.1:1/healthz'}}]}\n"
        "  - {name: us-east, probes: [{name: i, http: {url: 'http://127.0.0.1:2/healthz'}}]}\n"
        f"playbooks: {{paths: ['{tmp_path}/books']}}\n"
        "load_balancers:\n"
        "  - name: edns\n"
        "    driver: external_dns\n"
        f"    external_dns: {{kubeconfig: '{tmp_path}/kubeconfig', namespace: dns, dns_endpoint: www,\n"
        "                   dns_name: www.example.com.}\n"
        "    members: {eu-west: [192.0.2.10], us-east: [198.51.100.10]}\n"
    )
    (tmp_path / "books" / "back.yaml").write_text(
        "name: back\non: {event: cluster.recovered}\nsteps:\n"
        "  - {id: restore, action: lb.restore,\n"
        "     with: {balancer: edns, cluster: '{{ event.cluster }}', ramp: [25, 100], interval: 1s}}\n"
    )
    config = load_config(tmp_path / "failover.yaml")
    with pytest.raises(ValidationFailed) as caught:
        load_playbooks(config.playbook_paths(), config)
    [problem] = [str(p) for p in caught.value.problems]
    assert "back.yaml:5: steps[0].with.ramp: balancer edns (external_dns) has no weights" in problem
