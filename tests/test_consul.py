"""The `consul` balancer against a local stand-in of Consul's HTTP API (tests/consul_standin.py: no Consul
server can be installed here): the weights of a service-splitter entry as relative weights written
summing to 100, drain and exact restore, check-and-set conflicts re-read instead of overwritten, the ACL
token in `X-Consul-Token` and never in a message, errors classified (unreachable, 5xx and 429 temporary;
403, 400 and Consul's validation refusals permanent), and the guard that keeps the last member serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.actuators.base import Balancer
from orchestrator.actuators.consul import META_KEY, ConsulBalancer
from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import GuardRefused, PermanentError, TemporaryError
from tests.consul_standin import ConsulStandIn

pytestmark = pytest.mark.timeout(60)

TOKEN = "6f1b2c3d-0000-4000-8000-secret-token"
READ_ONLY = "0a0a0a0a-1111-4111-8111-read-only-token"
MEMBERS = {"eu-west": "web-eu", "us-east": "web-us", "ap-south": "web-ap"}


def splitter(*weights: float, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    splits = [{"Weight": w, "Service": s} for w, s in zip(weights, MEMBERS.values(), strict=True)]
    return {"Kind": "service-splitter", "Name": "web", "Splits": splits + (extra or [])}


def config(url: str, token: str | None = TOKEN, **section: Any) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "mesh",
            "driver": "consul",
            "consul": {"address": url, "service": "web", "timeout": "1s", "token": token, **section},
            "members": MEMBERS,
        }
    )


@pytest.fixture
async def consul() -> AsyncIterator[ConsulStandIn]:
    server = ConsulStandIn(
        tokens={
            TOKEN: ("a1b2-accessor", {"service:read", "service:write"}),
            READ_ONLY: ("r0-accessor", {"service:read"}),
        }
    )
    server.put_entry(splitter(40, 30, 30))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def balancer(consul: ConsulStandIn) -> AsyncIterator[Balancer]:
    lb = build_balancer(config(consul.url))
    try:
        yield lb
    finally:
        await lb.close()


def weights(consul: ConsulStandIn) -> list[float]:
    return [s["Weight"] for s in consul.entries["web"]["Splits"]]


async def test_drain_and_exact_restore_keep_the_sum_at_100(consul: ConsulStandIn, balancer: Balancer) -> None:
    assert isinstance(balancer, ConsulBalancer)
    assert await balancer.get_weights() == {"eu-west": 40, "us-east": 30, "ap-south": 30}
    await balancer.set_weights({"eu-west": 0})
    assert weights(consul) == [0, 50, 50]  # what Consul routes by
    assert await balancer.get_weights() == {"eu-west": 0, "us-east": 30, "ap-south": 30}  # what we meant
    await balancer.set_weights({"eu-west": 40})
    assert weights(consul) == [40, 30, 30]
    assert await balancer.get_weights() == {"eu-west": 40, "us-east": 30, "ap-south": 30}
    # every write was a check-and-set on the index just read, with the token in its header
    puts = consul.puts()
    assert [p.status for p in puts] == [200, 200] and all(p.body == "true" for p in puts)
    assert all(p.query.get("cas", "").isdigit() for p in puts)
    assert {r.token for r in consul.requests} == {TOKEN}


async def test_three_equal_members_are_written_in_hundredths(
    consul: ConsulStandIn, balancer: Balancer
) -> None:
    await balancer.set_weights({"eu-west": 100, "us-east": 100, "ap-south": 100})
    assert weights(consul) == [33.34, 33.33, 33.33]  # Consul's validator accepted the sum
    assert await balancer.get_weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
    await balancer.set_weights({"us-east": 0})
    assert weights(consul) == [50, 0, 50]
    await balancer.set_weights({"us-east": 100})
    assert weights(consul) == [33.34, 33.33, 33.33]


async def test_a_concurrent_change_is_a_conflict_and_is_read_again_not_overwritten(
    consul: ConsulStandIn, balancer: Balancer
) -> None:
    def someone_adds_a_canary() -> None:
        consul.put_entry(splitter(40, 30, 20, extra=[{"Weight": 10, "Service": "web-canary"}]))

    consul.on_put = someone_adds_a_canary
    await balancer.set_weights({"eu-west": 0})
    assert [p.body for p in consul.puts()] == ["false", "true"]  # the stale index lost, the re-read won
    splits = {s["Service"]: s["Weight"] for s in consul.entries["web"]["Splits"]}
    assert splits["web-canary"] == 10  # the other writer's split is still there, with its share
    assert splits == {"web-eu": 0, "web-us": 54, "web-ap": 36, "web-canary": 10}
    assert await balancer.get_weights() == {"eu-west": 0, "us-east": 30, "ap-south": 20}


async def test_a_hand_edit_reads_as_the_actual_split(consul: ConsulStandIn, balancer: Balancer) -> None:
    await balancer.set_weights({"eu-west": 0})
    entry = consul.entries["web"]
    assert META_KEY in entry["Meta"]
    edited = {
        **entry,
        "Splits": [{**s, "Weight": w} for s, w in zip(entry["Splits"], [20, 40, 40], strict=True)],
    }
    consul.put_entry(edited)
    assert await balancer.get_weights() == {"eu-west": 20, "us-east": 40, "ap-south": 40}


async def test_an_unreachable_consul_is_temporary(consul: ConsulStandIn, balancer: Balancer) -> None:
    await consul.set_down(True)
    with pytest.raises(TemporaryError, match="ClientConnectorError"):
        await balancer.get_weights()
    with pytest.raises(TemporaryError):
        await balancer.set_weights({"eu-west": 0})
    await consul.set_down(False)
    await balancer.set_weights({"eu-west": 0})
    assert weights(consul) == [0, 50, 50]


async def test_5xx_and_429_are_retried(consul: ConsulStandIn, balancer: Balancer) -> None:
    consul.fail_next(1, 500, "No cluster leader")
    consul.fail_next(1, 429, "rate limit exceeded, try again later")
    await balancer.set_weights({"eu-west": 0})
    assert weights(consul) == [0, 50, 50]
    consul.fail_next(8, 503, "rate limit exceeded, try a different server")  # for good: gives up
    with pytest.raises(TemporaryError, match="503"):
        await balancer.set_weights({"eu-west": 40})
    assert weights(consul) == [0, 50, 50]


async def test_acl_refusals_are_permanent_and_leak_no_token(consul: ConsulStandIn) -> None:
    for token, expected in (
        (
            READ_ONLY,
            "Permission denied: token with AccessorID 'r0-accessor' lacks permission 'service:write'",
        ),
        ("wrong-secret-value", "ACL not found"),
        (None, "Permission denied: anonymous token lacks permission 'service:read'"),
    ):
        lb = build_balancer(config(consul.url, token=token))
        try:
            with pytest.raises(PermanentError) as refused:
                await lb.set_weights({"eu-west": 0})
        finally:
            await lb.close()
        assert expected in str(refused.value)
        assert "403" in str(refused.value)
        for secret in (TOKEN, READ_ONLY, "wrong-secret-value"):
            assert secret not in str(refused.value) and secret not in repr(lb)
    assert weights(consul) == [40, 30, 30]
    assert len(consul.puts()) == 1  # the read-only token's one attempt: a 403 is not retried


async def test_consuls_validation_refusals_are_permanent_with_its_message(
    consul: ConsulStandIn, balancer: Balancer
) -> None:
    consul.protocol = "tcp"  # a service that is not http-based cannot be split
    with pytest.raises(PermanentError, match='uses a protocol "tcp" that does not permit advanced routing'):
        await balancer.set_weights({"eu-west": 0})
    assert [p.status for p in consul.puts()] == [500]  # Consul's own code for it, not retried
    consul.protocol = "http"
    consul.fail_next(1, 400, 'Request decoding failed: invalid config key "Splitz"')
    with pytest.raises(PermanentError, match="Request decoding failed"):
        await balancer.get_weights()


async def test_the_standin_enforces_the_documented_rules(consul: ConsulStandIn) -> None:
    """The stand-in's own fidelity: the weight sum, a duplicate destination, CAS 0, Meta limits."""
    import aiohttp

    headers = {"X-Consul-Token": TOKEN}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def put(entry: dict[str, Any], cas: str | None = None) -> tuple[int, str]:
            params = {"cas": cas} if cas is not None else {}
            async with http.put(f"{consul.url}/v1/config", json=entry, params=params) as resp:
                return resp.status, await resp.text()

        assert await put(splitter(40, 30, 20)) == (
            500,
            "the sum of all split weights must be 100, not 90.000000",
        )
        dup = splitter(40, 30, 30)
        dup["Splits"][2]["Service"] = "web-us"
        status, text = await put(dup)
        assert status == 500 and text.startswith("split destination occurs more than once")
        assert await put(splitter(40, 30, 30), cas="0") == (200, "false")  # exists already
        index = consul.entries["web"]["ModifyIndex"]
        assert await put(splitter(40, 30, 30), cas=str(index - 1)) == (200, "false")
        assert await put(splitter(50, 25, 25), cas=str(index)) == (200, "true")
        long_meta = {**splitter(50, 25, 25), "Meta": {"k": "x" * 513}}
        status, text = await put(long_meta)
        assert status == 500 and 'Meta value for key "k" exceeds maximum length 512' in text
        assert (await put({**splitter(50, 25, 25), "Splitz": []}))[0] == 400
        async with http.get(f"{consul.url}/v1/config/service-splitter/nope") as resp:
            assert (resp.status, await resp.text()) == (
                404,
                'Config entry not found for "service-splitter" / "nope"',
            )


async def test_every_member_at_zero_is_refused_before_any_write(
    consul: ConsulStandIn, balancer: Balancer
) -> None:
    await balancer.set_weights({"eu-west": 0, "us-east": 0})
    with pytest.raises(PermanentError, match="refusing to set every member to 0"):
        await balancer.set_weights({"ap-south": 0})
    assert weights(consul) == [0, 0, 100]
    assert len(consul.puts()) == 1


async def test_a_missing_entry_or_member_is_permanent(consul: ConsulStandIn) -> None:
    lb = build_balancer(config(consul.url, service="api"))
    try:
        with pytest.raises(PermanentError, match='Config entry not found for "service-splitter" / "api"'):
            await lb.get_weights()
    finally:
        await lb.close()
    consul.put_entry(
        {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100, "Service": "web-eu"}]}
    )
    lb = build_balancer(config(consul.url))
    try:
        with pytest.raises(PermanentError, match="no split 'web-us'"):
            await lb.get_weights()
    finally:
        await lb.close()


async def test_subsets_are_members_too(consul: ConsulStandIn) -> None:
    consul.put_entry(
        {
            "Kind": "service-splitter",
            "Name": "web",
            "Splits": [
                {"Weight": 90, "ServiceSubset": "eu"},
                {"Weight": 10, "Service": "web", "ServiceSubset": "us"},
            ],
        }
    )
    cfg = LoadBalancerConfig.model_validate(
        {
            "name": "mesh",
            "driver": "consul",
            "consul": {"address": consul.url, "service": "web", "token": TOKEN},
            "members": {"eu-west": "web/eu", "us-east": "web/us"},
        }
    )
    lb = build_balancer(cfg)
    try:
        assert await lb.get_weights() == {"eu-west": 90, "us-east": 10}
        await lb.set_weights({"us-east": 0})
        assert weights(consul) == [100, 0]
    finally:
        await lb.close()


async def test_the_actuator_never_drains_the_last_serving_member(
    consul: ConsulStandIn, balancer: Balancer
) -> None:
    states = {"eu-west": "failed", "us-east": "failed", "ap-south": "healthy"}
    actuator = BalancerActuator(balancer, dict.fromkeys(MEMBERS, 100), lambda: states, MemoryStateStore())
    await actuator.drain("eu-west")
    await actuator.drain("us-east")
    with pytest.raises(GuardRefused, match="min_healthy_clusters"):
        await actuator.drain("ap-south")
    assert weights(consul) == [0, 0, 100]
    states["eu-west"] = "healthy"
    await actuator.set_weight("eu-west", await actuator.target_weight("eu-west"))
    assert await balancer.get_weights() == {"eu-west": 40, "us-east": 0, "ap-south": 30}
    assert weights(consul) == [57.14, 0, 42.86]


def test_only_consuls_own_meta_validation_texts_are_permanent() -> None:
    """An unrelated RPC failure that happens to say "Meta " is a 500 like any other: temporary."""
    balancer = ConsulBalancer(config("http://127.0.0.1:8500"))
    unrelated = balancer._error("PUT", 500, "rpc error: Meta store unavailable, retry", None)
    assert isinstance(unrelated, TemporaryError) and not isinstance(unrelated, PermanentError)
    for refusal in (
        "1 error occurred:\n\t* Meta exceeds maximum element count 64\n\n",
        '1 error occurred:\n\t* Meta key "k" exceeds maximum length 128\n\n',
        '1 error occurred:\n\t* Meta value for key "k" exceeds maximum length 512\n\n',
    ):
        assert isinstance(balancer._error("PUT", 500, refusal, None), PermanentError), refusal
