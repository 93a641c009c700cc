"""The powerdns balancer against a real PowerDNS Authoritative (gsqlite3 backend) on loopback: drain and
restore through the HTTP API (RRset PATCH, REPLACE), what is not ours kept, a concurrent change a
conflict, the last addresses kept, errors classified and the API key never shown."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.powerdns import PowerDnsBalancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError, TemporaryError
from orchestrator.runtime.reconcile import Reconciler
from tests.conftest import require
from tests.dnsservers import NAME, ZONE, PowerDnsServer, closed_port, pdns_binary

pytestmark = pytest.mark.timeout(60)

MEMBERS = {
    "eu-west": ["192.0.2.10", "2001:db8::10"],
    "us-east": ["198.51.100.10", "198.51.100.11"],
    "ap-south": ["203.0.113.10", "2001:db8::30"],  # eu-west's AAAA is not the only one: it can be drained
}
EVERY = {a for listed in MEMBERS.values() for a in listed}


@pytest.fixture
async def pdns(tmp_path: Path) -> AsyncIterator[PowerDnsServer]:
    binary = pdns_binary()
    require("pdns_server and its SQLite schema (Debian packages pdns-server, pdns-backend-sqlite3)", binary)
    assert binary is not None
    server = PowerDnsServer(binary, tmp_path / "pdns", MEMBERS)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def config(pdns: PowerDnsServer, **overrides: Any) -> LoadBalancerConfig:
    section: dict[str, Any] = {
        "api_url": pdns.api_url,
        "api_key": pdns.api_key,
        "zone": ZONE,
        "name": NAME,
        "ttl": 30,
        "timeout": "2s",
    }
    section.update(overrides)
    return LoadBalancerConfig.model_validate(
        {"name": "pdns", "driver": "powerdns", "powerdns": section, "members": MEMBERS}
    )


@pytest.fixture
async def balancer(pdns: PowerDnsServer) -> AsyncIterator[PowerDnsBalancer]:
    b = PowerDnsBalancer(config(pdns))
    try:
        yield b
    finally:
        await b.close()


def actuator(balancer: PowerDnsBalancer, states: dict[str, str] | None = None) -> BalancerActuator:
    known = states if states is not None else dict.fromkeys(MEMBERS, "healthy")
    return BalancerActuator(balancer, dict.fromkeys(MEMBERS, 100), lambda: known, MemoryStateStore())


async def test_drain_and_restore_exactly(pdns: PowerDnsServer, balancer: PowerDnsBalancer) -> None:
    lb = actuator(balancer)
    assert await lb.get_weights() == {"eu-west": 1, "us-east": 1, "ap-south": 1}
    await lb.drain("eu-west")  # its A and its AAAA
    assert await pdns.addresses() == EVERY - {"192.0.2.10", "2001:db8::10"}
    await lb.set_weight("eu-west", await lb.target_weight("eu-west"), expect=0)
    assert await pdns.addresses() == EVERY


async def test_records_that_are_not_ours_are_kept_disabled_or_not(
    pdns: PowerDnsServer, balancer: PowerDnsBalancer
) -> None:
    body = {
        "rrsets": [
            {
                "name": NAME,
                "type": "A",
                "ttl": 300,
                "changetype": "REPLACE",
                "records": [
                    {"content": a, "disabled": False}
                    for a in ("192.0.2.10", "198.51.100.10", "198.51.100.11", "203.0.113.10")
                ]
                + [
                    {"content": "192.0.2.250", "disabled": True},
                    {"content": "192.0.2.99", "disabled": False},
                ],
            }
        ]
    }
    status, text = await pdns.api("PATCH", pdns.zone_url, body)
    assert status == 204, text
    await balancer.set_weights({"us-east": 0})
    _, zone = await pdns.api("GET", pdns.zone_url)  # whole: 4.7 hides disabled records from rrset_name
    [rrset] = [r for r in json.loads(zone)["rrsets"] if (r["name"], r["type"]) == (NAME, "A")]
    assert {(r["content"], r["disabled"]) for r in rrset["records"]} == {
        ("192.0.2.10", False),
        ("203.0.113.10", False),
        ("192.0.2.250", True),
        ("192.0.2.99", False),
    }
    assert rrset["ttl"] == 300  # only removed: the TTL stays the one served
    assert balancer.ttl_before_change_s == {"us-east": 300}  # resolvers may hold the old answer that long


async def test_a_concurrent_change_is_a_conflict_re_read(
    pdns: PowerDnsServer, balancer: PowerDnsBalancer
) -> None:
    """Someone replaces the A RRset between our read and our write: the check right before the PATCH
    sees it, nothing is written, and the drain is recomputed on top of their RRset."""
    calls = []

    def meanwhile() -> None:  # runs after our read (synchronously, as another client would)
        calls.append(1)
        if len(calls) == 1:
            records = [
                {"content": a, "disabled": False}
                for a in [*sorted(a for a in EVERY if ":" not in a), "192.0.2.99"]
            ]
            body = json.dumps(
                {
                    "rrsets": [
                        {"name": NAME, "type": "A", "ttl": 30, "changetype": "REPLACE", "records": records}
                    ]
                }
            ).encode()
            request = urllib.request.Request(
                pdns.zone_url, data=body, method="PATCH", headers={"X-API-Key": pdns.api_key}
            )
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 204

    await balancer.set_weights({"us-east": 0}, fence=meanwhile)
    assert len(calls) == 3  # conflict on the first try; the second checks, then writes
    assert await pdns.addresses() == (EVERY - set(MEMBERS["us-east"])) | {"192.0.2.99"}


async def test_the_last_addresses_are_never_removed(pdns: PowerDnsServer, balancer: PowerDnsBalancer) -> None:
    lb = actuator(balancer, {"eu-west": "failed", "us-east": "failed", "ap-south": "healthy"})
    await lb.drain("eu-west")
    await lb.drain("us-east")
    with pytest.raises(GuardRefused, match="min_healthy_clusters"):
        await lb.drain("ap-south")
    with pytest.raises(GuardRefused, match="no member's address"):
        await lb.drain("ap-south", force=True)
    assert await pdns.addresses() == {"203.0.113.10", "2001:db8::30"}


async def test_a_wrong_api_key_is_permanent_and_never_shown(pdns: PowerDnsServer) -> None:
    wrong = "wrong-api-key-0123456789"
    balancer = PowerDnsBalancer(config(pdns, api_key=wrong))
    try:
        with pytest.raises(PermanentError) as caught:
            await balancer.set_weights({"us-east": 0})
    finally:
        await balancer.close()
    message = str(caught.value)
    assert "HTTP 401" in message and "api_key" in message
    assert wrong not in message and pdns.api_key not in message and wrong not in repr(balancer)


async def test_an_unknown_zone_is_permanent(pdns: PowerDnsServer) -> None:
    balancer = PowerDnsBalancer(config(pdns, zone="nope.test.", name="www.nope.test."))
    try:
        with pytest.raises(PermanentError, match=r"HTTP 404: no zone nope\.test\."):
            await balancer.get_weights()
    finally:
        await balancer.close()


async def test_powerdns_down_is_temporary_then_works_again(
    pdns: PowerDnsServer, balancer: PowerDnsBalancer
) -> None:
    await pdns.stop()
    with pytest.raises(TemporaryError, match="failed: ClientConnectorError"):
        await balancer.set_weights({"us-east": 0})
    await pdns.start()
    await balancer.set_weights({"us-east": 0})
    assert not set(MEMBERS["us-east"]) & await pdns.addresses()
    closed = PowerDnsBalancer(config(pdns, api_url=f"http://127.0.0.1:{closed_port()}"))
    try:
        with pytest.raises(TemporaryError):
            await closed.get_weights()
    finally:
        await closed.close()


async def test_a_hand_change_is_reported_as_drift_and_left_alone(
    pdns: PowerDnsServer, balancer: PowerDnsBalancer
) -> None:
    """us-east is drained but not failed (an operator's maintenance drain): a hand change is theirs. (A
    failed cluster's addresses put back are removed again: tests/test_dns_review.py, test_dns_failover.)"""
    states = dict.fromkeys(MEMBERS, "healthy")
    lb = actuator(balancer, states)
    await lb.drain("us-east")
    emitted: list[str] = []

    async def emit(kind: str, reason: str, detail: dict[str, Any]) -> None:
        emitted.append(reason)

    reconciler = Reconciler(
        {"pdns": lb}, None, lb.store, emit, busy=lambda _c: False, failed=lambda c: states[c] == "failed"
    )
    await pdns.by_hand("A", ["192.0.2.10", "198.51.100.10", "203.0.113.10"])
    [drift] = await reconciler.reconcile_once()
    assert (drift["cluster"], drift["found"], drift["reasserted"]) == ("us-east", 1, False)
    await asyncio.sleep(0)
    assert await reconciler.reconcile_once() == []
    assert "198.51.100.10" in await pdns.addresses()
    assert emitted == [
        "pdns/us-east: expected 0, found 1; not re-asserted "
        "(the cluster is not failed, and a change made in DNS is someone's decision: reported, left as it is)"
    ]
