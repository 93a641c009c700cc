"""Review findings on the DNS balancers (issue 18): the last addresses guarded per record type, a failed
cluster put back in DNS by someone drained again (other drift reported and left, with a gauge while it
lasts), PowerDNS answers that are not JSON or too big, the TTL resolvers cached taken from the read
before the write, and the RFC 2136 details (a CNAME at the name, no secret in any log or error)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.name
import dns.update
import pytest
import structlog
from aiohttp import web

from orchestrator.actuators.dns_rrset import RRsetView
from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.powerdns import MAX_BODY_BYTES, PowerDnsBalancer
from orchestrator.actuators.rfc2136 import Rfc2136Balancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError, TemporaryError
from orchestrator.core.metrics import Metrics
from orchestrator.playbooks.actions.lb import dns_timing
from orchestrator.runtime.reconcile import Reconciler
from tests.conftest import require
from tests.dnsservers import KEY_NAME, NAME, ZONE, BindServer, named_binary

pytestmark = pytest.mark.timeout(60)

MEMBERS = {
    "eu-west": ["192.0.2.10", "2001:db8::10"],
    "us-east": ["198.51.100.10", "198.51.100.11"],
    "ap-south": ["203.0.113.10"],
}


def rfc2136_config(
    server: str, members: dict[str, list[str]], secret: str = "", **section: Any
) -> LoadBalancerConfig:
    settings: dict[str, Any] = {"server": server, "zone": ZONE, "name": NAME, "ttl": 30, "timeout": "1s"}
    if secret:
        settings["tsig"] = {"name": KEY_NAME, "algorithm": "hmac-sha256", "secret": secret}
    settings.update(section)
    return LoadBalancerConfig.model_validate(
        {"name": "dns", "driver": "rfc2136", "rfc2136": settings, "members": members}
    )


def pdns_config(api_url: str, members: dict[str, list[str]]) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "pdns",
            "driver": "powerdns",
            "powerdns": {"api_url": api_url, "api_key": "k3y", "zone": ZONE, "name": NAME, "timeout": "2s"},
            "members": members,
        }
    )


def view(**records: list[str]) -> RRsetView:
    return RRsetView({t: frozenset(a) for t, a in records.items()}, dict.fromkeys(records, 30))


# P1-4: the last addresses of each record type, foreign addresses not counting


@pytest.mark.parametrize("driver", ["rfc2136", "powerdns"])
def test_draining_the_last_member_of_one_record_type_is_refused(driver: str) -> None:
    members = {"us-east": ["198.51.100.10"], "eu-west": ["2001:db8::10"]}
    balancer = (
        Rfc2136Balancer(rfc2136_config("127.0.0.1:53", members))
        if driver == "rfc2136"
        else PowerDnsBalancer(pdns_config("http://127.0.0.1:8081", members))
    )
    both = view(A=["198.51.100.10"], AAAA=["2001:db8::10"])
    with pytest.raises(GuardRefused, match="A records") as refused:
        balancer.delta(both, {"us-east": 0})  # IPv4-only clients would get NODATA
    assert refused.value.rule == "min_healthy_clusters"
    with pytest.raises(GuardRefused, match="AAAA records"):
        balancer.delta(both, {"eu-west": 0})


def test_an_address_that_is_not_a_member_does_not_count_as_left() -> None:
    members = {"us-east": ["198.51.100.10"], "eu-west": ["192.0.2.10"]}
    balancer = Rfc2136Balancer(rfc2136_config("127.0.0.1:53", members))
    served = view(A=["198.51.100.10", "192.0.2.10", "192.0.2.99"])  # .99: a maintenance page left behind
    assert balancer.delta(served, {"us-east": 0}) == (set(), {"198.51.100.10"})
    with pytest.raises(GuardRefused, match="no member's address"):
        balancer.delta(served, {"us-east": 0, "eu-west": 0})
    # a type that only holds addresses that are not ours is not ours to guard
    assert balancer.delta(view(A=["198.51.100.10", "192.0.2.10"], AAAA=["2001:db8::99"]), {"us-east": 0})


# P1-5: a failed cluster put back in DNS is drained again; other drift is reported and left


@pytest.fixture
async def bind(tmp_path: Path) -> AsyncIterator[BindServer]:
    binary = named_binary()
    require("named (Debian package bind9)", binary)
    assert binary is not None
    server = BindServer(binary, tmp_path / "bind", MEMBERS, ttl=300)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def actuator(balancer: Rfc2136Balancer, states: dict[str, str]) -> BalancerActuator:
    return BalancerActuator(balancer, dict.fromkeys(MEMBERS, 100), lambda: states, MemoryStateStore())


def drift_gauge(metrics: Metrics, cluster: str) -> float | None:
    return metrics.balancer_drift.get("dns", cluster)  # a per-cluster family (core/metrics_fast)


async def test_a_failed_cluster_put_back_by_hand_is_drained_again(bind: BindServer) -> None:
    states = {"eu-west": "healthy", "us-east": "failed", "ap-south": "healthy"}
    lb = actuator(Rfc2136Balancer(rfc2136_config(bind.server, MEMBERS, bind.secret)), states)
    await lb.drain("us-east")
    emitted: list[dict[str, Any]] = []

    async def emit(kind: str, reason: str, detail: dict[str, Any]) -> None:
        emitted.append(detail)

    metrics = Metrics()
    reconciler = Reconciler(
        {"dns": lb},
        None,
        lb.store,
        emit,
        busy=lambda _c: False,
        failed=lambda c: states.get(c) == "failed",
        metrics=metrics,
    )
    await bind.by_hand(add=["198.51.100.10"])  # a zone reload, an octoDNS sync: the failed cluster is back
    [drift] = await reconciler.reconcile_once()
    assert drift["reasserted"] is True, drift
    assert "198.51.100.10" not in await bind.addresses()
    assert drift_gauge(metrics, "us-east") == 0
    await bind.by_hand(add=["198.51.100.11"])  # again, and again: retried until it holds
    [drift] = await reconciler.reconcile_once()
    assert drift["reasserted"] is True
    assert not {"198.51.100.10", "198.51.100.11"} & await bind.addresses()


async def test_drift_of_a_cluster_that_is_not_failed_is_reported_left_and_gauged(bind: BindServer) -> None:
    states = dict.fromkeys(MEMBERS, "healthy")
    lb = actuator(Rfc2136Balancer(rfc2136_config(bind.server, MEMBERS, bind.secret)), states)
    await lb.drain("us-east")  # an operator's drain, for maintenance: the cluster is healthy

    async def emit(kind: str, reason: str, detail: dict[str, Any]) -> None:
        return None

    metrics = Metrics()
    reconciler = Reconciler(
        {"dns": lb},
        None,
        lb.store,
        emit,
        busy=lambda _c: False,
        failed=lambda c: states.get(c) == "failed",
        metrics=metrics,
    )
    await reconciler.reconcile_once()
    assert drift_gauge(metrics, "us-east") == 0
    await bind.by_hand(add=["198.51.100.10"])  # the operator put it back by hand: their decision
    [drift] = await reconciler.reconcile_once()
    assert drift["reasserted"] is False
    assert "198.51.100.10" in await bind.addresses()
    assert await reconciler.reconcile_once() == []  # reported once ...
    assert drift_gauge(metrics, "us-east") == 1  # ... and visible for as long as it lasts
    await bind.by_hand(remove=["198.51.100.10"])
    assert await reconciler.reconcile_once() == []
    assert drift_gauge(metrics, "us-east") == 0
    await bind.by_hand(add=["198.51.100.10"])
    await reconciler.reconcile_once()
    assert drift_gauge(metrics, "us-east") == 1
    await lb.set_weight("us-east", await lb.target_weight("us-east"), expect=0)  # the failback
    await lb.finish_restore("us-east")  # nothing held any more: no series left behind at 1
    assert await reconciler.reconcile_once() == []
    assert drift_gauge(metrics, "us-east") is None


# P2-9: the TTL resolvers cached is the one read before the write


async def test_the_ttl_recorded_is_the_one_served_before_the_change(bind: BindServer) -> None:
    states = dict.fromkeys(MEMBERS, "healthy")
    balancer = Rfc2136Balancer(rfc2136_config(bind.server, MEMBERS, bind.secret))
    lb = actuator(balancer, states)
    await lb.drain("us-east")
    assert dns_timing(lb, ["us-east"]) == {"ttl_s": 300}
    await lb.set_weight("us-east", 1)  # BIND gives the whole A RRset our TTL (30) with the add
    assert await bind.ttl_of("A") == 30
    await balancer.get_weights()  # a reconcile or readiness read meanwhile changes nothing
    assert dns_timing(lb, ["us-east"]) == {"ttl_s": 300}  # resolvers cached the answer at 300 s


# P3: a CNAME at the name; secrets never in logs or errors


async def test_a_cname_at_the_name_is_a_clear_configuration_error(bind: BindServer) -> None:
    update = dns.update.UpdateMessage(ZONE, keyring=bind.keyring(), keyname=dns.name.from_text(KEY_NAME))
    update.delete(NAME)
    update.add(NAME, 30, "CNAME", f"elsewhere.{ZONE}")
    assert (await dns.asyncquery.tcp(update, "127.0.0.1", port=bind.port, timeout=2)).rcode() == 0
    for read in ("query", "axfr"):
        balancer = Rfc2136Balancer(rfc2136_config(bind.server, MEMBERS, bind.secret, read=read))
        with pytest.raises(PermanentError, match="is a CNAME"):
            await balancer.set_weights({"us-east": 0})


async def test_the_tsig_secret_is_in_no_log_field_and_no_error(bind: BindServer) -> None:
    wrong = base64.b64encode(b"w" * 32).decode()
    states = dict.fromkeys(MEMBERS, "healthy")
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        good = actuator(Rfc2136Balancer(rfc2136_config(bind.server, MEMBERS, bind.secret)), states)
        await good.drain("us-east")
        await good.set_weight("us-east", 1)
        texts.append(repr(good.balancer))
        bad = Rfc2136Balancer(rfc2136_config(bind.server, MEMBERS, wrong))
        with pytest.raises(PermanentError) as refused:
            await bad.set_weights({"us-east": 0})
        texts += [str(refused.value), repr(refused.value.__cause__), repr(bad)]
    texts += [repr(entry) for entry in logs]
    assert logs
    for secret in (bind.secret, wrong):
        raw = base64.b64decode(secret)
        assert not [t for t in texts if secret in t or repr(raw) in t or raw.hex() in t]
    assert not [t for t in texts if "tsig.Key" in t or "keyring" in t.lower()]


# P2-8: PowerDNS answers that are not JSON, or too big


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A stand-in for what sits in front of PowerDNS: answers with whatever the test sets."""
    answer: dict[str, Any] = {"status": 200, "body": b"", "type": "text/html"}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=answer["status"], body=answer["body"], content_type=answer["type"])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", answer
    finally:
        await runner.cleanup()


async def test_a_powerdns_answer_that_is_not_json_is_temporary(proxy: tuple[str, dict[str, Any]]) -> None:
    url, answer = proxy
    answer["body"] = b"<html><body>502 Bad Gateway, served as 200 by a captive proxy</body></html>"
    balancer = PowerDnsBalancer(pdns_config(url, MEMBERS))
    try:
        with pytest.raises(TemporaryError, match="not JSON"):
            await balancer.read_rrset()
    finally:
        await balancer.close()


async def test_a_powerdns_answer_above_the_limit_is_refused_naming_it(
    proxy: tuple[str, dict[str, Any]],
) -> None:
    url, answer = proxy
    record = {"content": "192.0.2.1", "disabled": False}
    rrset = {"name": "x.example.test.", "type": "A", "ttl": 30, "records": [record]}
    zone = {"rrsets": [rrset] * (MAX_BODY_BYTES // len(json.dumps(rrset)) + 10), "serial": 1}
    answer.update(body=json.dumps(zone).encode(), type="application/json")
    assert len(answer["body"]) > MAX_BODY_BYTES
    balancer = PowerDnsBalancer(pdns_config(url, MEMBERS))
    try:
        with pytest.raises(PermanentError, match="16 MiB"):
            await balancer.read_rrset()
    finally:
        await balancer.close()
