"""The rfc2136 balancer against a real BIND 9 on loopback (DESIGN §16): drain and restore through
TSIG-signed updates, A and AAAA, the prerequisite that turns a concurrent change into a conflict, the
last addresses kept, errors classified, and a change by hand reported as drift and left alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.update
import pytest

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.rfc2136 import Rfc2136Balancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError, TemporaryError
from orchestrator.runtime.reconcile import Reconciler
from tests.conftest import require
from tests.dnsservers import KEY_NAME, NAME, ZONE, BindServer, closed_port, named_binary

pytestmark = pytest.mark.timeout(60)

MEMBERS = {
    "eu-west": ["192.0.2.10", "2001:db8::10"],
    "us-east": ["198.51.100.10", "198.51.100.11"],
    "ap-south": ["203.0.113.10", "2001:db8::30"],  # eu-west's AAAA is not the only one: it can be drained
}
EVERY = {a for listed in MEMBERS.values() for a in listed}


@pytest.fixture
async def bind(tmp_path: Path) -> AsyncIterator[BindServer]:
    binary = named_binary()
    require("named (Debian package bind9)", binary)
    assert binary is not None
    server = BindServer(binary, tmp_path / "bind", MEMBERS)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def config(bind: BindServer, **overrides: Any) -> LoadBalancerConfig:
    section: dict[str, Any] = {
        "server": bind.server,
        "zone": ZONE,
        "name": NAME,
        "ttl": 30,
        "timeout": "1s",
        "tsig": {"name": KEY_NAME, "algorithm": "hmac-sha256", "secret": bind.secret},
    }
    section.update(overrides)
    return LoadBalancerConfig.model_validate(
        {"name": "dns", "driver": "rfc2136", "rfc2136": section, "members": MEMBERS}
    )


def actuator(balancer: Rfc2136Balancer, states: dict[str, str] | None = None) -> BalancerActuator:
    known = states if states is not None else dict.fromkeys(MEMBERS, "healthy")
    return BalancerActuator(balancer, dict.fromkeys(MEMBERS, 100), lambda: known, MemoryStateStore())


@pytest.mark.parametrize("read", ["query", "axfr"])
async def test_drain_and_restore_exactly(bind: BindServer, read: str) -> None:
    balancer = Rfc2136Balancer(config(bind, read=read))
    lb = actuator(balancer)
    assert await lb.get_weights() == {"eu-west": 1, "us-east": 1, "ap-south": 1}

    change = await lb.drain("eu-west")  # one A and one AAAA leave
    assert (change.before, change.after) == (1, 0)
    assert await bind.addresses() == EVERY - {"192.0.2.10", "2001:db8::10"}
    assert await lb.get_weights() == {"eu-west": 0, "us-east": 1, "ap-south": 1}

    target = await lb.target_weight("eu-west")
    assert target == 1  # the recorded original
    await lb.set_weight("eu-west", target, expect=0)
    assert await bind.addresses() == EVERY
    assert await bind.ttl_of("AAAA") == 30


async def test_weights_other_than_0_and_1_are_refused_before_any_write(bind: BindServer) -> None:
    balancer = Rfc2136Balancer(config(bind))
    with pytest.raises(PermanentError, match="DNS has no weights"):
        await balancer.set_weights({"us-east": 100})
    assert await bind.addresses() == EVERY


async def test_the_last_addresses_are_never_removed(bind: BindServer) -> None:
    balancer = Rfc2136Balancer(config(bind))
    lb = actuator(balancer, {"eu-west": "failed", "us-east": "failed", "ap-south": "healthy"})
    await lb.drain("eu-west")
    await lb.drain("us-east")
    with pytest.raises(GuardRefused, match="min_healthy_clusters"):
        await lb.drain("ap-south")
    # the driver keeps the name answering even when the guard is overridden (--force)
    with pytest.raises(GuardRefused, match="no member's address"):
        await lb.drain("ap-south", force=True)
    assert await bind.addresses() == {"203.0.113.10", "2001:db8::30"}


async def test_a_concurrent_change_is_a_conflict_re_read_never_an_overwrite(bind: BindServer) -> None:
    """Someone adds an address between our read and our UPDATE: the prerequisite (the RRset as read)
    fails, nothing is written, the RRset is read again and the drain applied on top of their change."""
    balancer = Rfc2136Balancer(config(bind))
    calls = []

    def meanwhile() -> None:  # the fence runs right after the read, before the UPDATE is sent
        calls.append(1)
        if len(calls) == 1:
            update = dns.update.UpdateMessage(
                ZONE, keyring=bind.keyring(), keyname=dns.name.from_text(KEY_NAME)
            )
            update.add(NAME, 30, "A", "192.0.2.99")
            assert dns.query.tcp(update, "127.0.0.1", port=bind.port, timeout=2).rcode() == 0

    await balancer.set_weights({"us-east": 0}, fence=meanwhile)
    assert len(calls) == 2  # the first UPDATE was refused (NXRRSET), the second went through
    assert await bind.addresses() == (EVERY - set(MEMBERS["us-east"])) | {"192.0.2.99"}


async def test_bind_down_is_temporary(bind: BindServer) -> None:
    balancer = Rfc2136Balancer(config(bind))
    await bind.stop()
    with pytest.raises(TemporaryError, match="ConnectionRefusedError"):
        await balancer.set_weights({"us-east": 0})
    await bind.start()  # the step's retry (or the watchdog's) then goes through
    await balancer.set_weights({"us-east": 0})
    assert not set(MEMBERS["us-east"]) & await bind.addresses()


async def test_nothing_listening_is_temporary(bind: BindServer) -> None:
    broken = Rfc2136Balancer(config(bind, server=f"127.0.0.1:{closed_port()}"))
    with pytest.raises(TemporaryError):
        await broken.get_weights()


async def test_a_wrong_tsig_secret_is_permanent_and_never_shown(bind: BindServer) -> None:
    wrong = "c2VjcmV0LXRoYXQtYmluZC1kb2VzLW5vdC1rbm93LXh5eg=="
    balancer = Rfc2136Balancer(config(bind, tsig={"name": KEY_NAME, "secret": wrong}))
    with pytest.raises(PermanentError) as caught:
        await balancer.set_weights({"us-east": 0})
    message = str(caught.value)
    assert "BADSIG" in message and "tsig.secret" in message
    assert wrong not in message and bind.secret not in message
    assert await bind.addresses() == EVERY


async def test_an_unknown_key_name_and_a_missing_key_are_permanent(bind: BindServer) -> None:
    unknown = Rfc2136Balancer(config(bind, tsig={"name": "someone-else.", "secret": bind.secret}))
    with pytest.raises(PermanentError, match="BADKEY"):
        await unknown.get_weights()
    unsigned = Rfc2136Balancer(config(bind, tsig=None))
    with pytest.raises(PermanentError, match="REFUSED: allow-update"):
        await unsigned.set_weights({"us-east": 0})
    axfr = Rfc2136Balancer(config(bind, tsig=None, read="axfr"))
    with pytest.raises(PermanentError, match="zone transfer with REFUSED"):
        await axfr.get_weights()


async def test_a_hand_change_is_reported_as_drift_and_left_alone(bind: BindServer) -> None:
    """us-east is drained (we hold 0) for maintenance, not failed; an operator puts one of its addresses
    back with nsupdate. The reconciler reports the drift, once, and does not overwrite the operator's
    decision. (A failed cluster's addresses are removed again: tests/test_dns_review.py.)"""
    states = dict.fromkeys(MEMBERS, "healthy")
    balancer = Rfc2136Balancer(config(bind))
    lb = actuator(balancer, states)
    await lb.drain("us-east")
    emitted: list[tuple[str, str, dict[str, Any]]] = []

    async def emit(kind: str, reason: str, detail: dict[str, Any]) -> None:
        emitted.append((kind, reason, detail))

    reconciler = Reconciler(
        {"dns": lb}, None, lb.store, emit, busy=lambda _c: False, failed=lambda c: states[c] == "failed"
    )
    assert await reconciler.reconcile_once() == []
    await bind.by_hand(add=["198.51.100.10"])
    [drift] = await reconciler.reconcile_once()
    assert (drift["balancer"], drift["cluster"], drift["expected"], drift["found"]) == (
        "dns",
        "us-east",
        0,
        1,
    )
    assert drift["reasserted"] is False and "left as it is" in drift["why"]
    assert "198.51.100.10" in await bind.addresses()
    assert await reconciler.reconcile_once() == []  # said once, not every pass
    assert "198.51.100.10" in await bind.addresses()
    assert [kind for kind, _, _ in emitted] == ["drift.detected"]


async def test_a_query_to_a_server_that_is_not_authoritative_is_refused(bind: BindServer) -> None:
    elsewhere = LoadBalancerConfig.model_validate(
        {
            "name": "dns",
            "driver": "rfc2136",
            "rfc2136": {"server": bind.server, "zone": "example.org", "name": "www.example.org"},
            "members": MEMBERS,
        }
    )
    with pytest.raises(PermanentError, match="REFUSED"):
        await Rfc2136Balancer(elsewhere).get_weights()
