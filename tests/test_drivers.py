"""The Gateway API, Istio and SMI balancer drivers against a sandbox API server (through a generated
kubeconfig), and the webhook driver against a local signed receiver: reads, drain and exact restore,
missing members, conflicts retried as a fresh read-modify-write, 5xx retried, unreachable servers,
Istio's sum-to-100 with relative weights kept in an annotation, and the registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator.actuators.base import Balancer
from orchestrator.actuators.gateway_api import GatewayApiBalancer
from orchestrator.actuators.haproxy import HAProxyBalancer
from orchestrator.actuators.istio import ANNOTATION, IstioBalancer, split_percent
from orchestrator.actuators.registry import build_balancer
from orchestrator.actuators.smi import SmiBalancer
from orchestrator.actuators.webhook import WebhookBalancer
from orchestrator.bus.embedded import free_port
from orchestrator.core import signing
from orchestrator.core.config import IMPLEMENTED_LB_DRIVERS
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = pytest.mark.timeout(60)

NS = "shop"
CLUSTERS = ("eu-west", "us-east", "ap-south")


# -- the three Kubernetes kinds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    driver: str
    api_version: str
    plural: str
    members: dict[str, str]
    seed: Callable[[], dict[str, Any]]
    entries: Callable[[dict[str, Any]], list[dict[str, Any]]]
    """The weighted entries of a stored object."""
    key: Callable[[dict[str, Any]], str]
    """An entry's member name."""
    section: Callable[[str], dict[str, Any]]
    """The driver's config section, given the kubeconfig path."""

    def stored(self, obj: dict[str, Any]) -> dict[str, int]:
        """cluster -> weight as stored (members only)."""
        by_name = {self.key(e): e.get("weight") for e in self.entries(obj)}
        return {cluster: by_name[member] for cluster, member in self.members.items()}


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
                        {"name": "web-us-east", "port": 80, "weight": 300_000},
                        {"name": "web-ap-south", "port": 80, "weight": 200_000},
                        {"name": "web-canary", "port": 80, "weight": 7},
                    ]
                }
            ],
        },
    }


def virtualservice(
    weights: tuple[int, ...] = (34, 33, 33), extra: dict[str, int] | None = None
) -> dict[str, Any]:
    hosts = [f"web.{c}.global" for c in CLUSTERS]
    route = [{"destination": {"host": h}, "weight": w} for h, w in zip(hosts, weights, strict=True)]
    route += [{"destination": {"host": h}, "weight": w} for h, w in (extra or {}).items()]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "hosts": ["web.example.com"],
            "http": [
                {"route": route},
                {"route": [{"destination": {"host": "static.global"}}]},
            ],
        },
    }


def trafficsplit() -> dict[str, Any]:
    return {
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "service": "web",
            "backends": [
                {"service": "web-eu-west", "weight": 600},
                {"service": "web-us-east", "weight": 300},
                {"service": "web-ap-south", "weight": 100},
                {"service": "web-canary", "weight": 5},
            ],
        },
    }


KINDS = {
    "gateway_api": Kind(
        "gateway_api",
        "gateway.networking.k8s.io/v1",
        "httproutes",
        {c: f"web-{c}" for c in CLUSTERS},
        httproute,
        lambda o: o["spec"]["rules"][0]["backendRefs"],
        lambda e: e["name"],
        lambda kc: {"kubeconfig": kc, "context": "mgmt", "namespace": NS, "route": "web", "rule": 0},
    ),
    "istio": Kind(
        "istio",
        "networking.istio.io/v1",
        "virtualservices",
        {c: f"web.{c}.global" for c in CLUSTERS},
        virtualservice,
        lambda o: o["spec"]["http"][0]["route"],
        lambda e: e["destination"]["host"],
        lambda kc: {
            "kubeconfig": kc,
            "context": "mgmt",
            "namespace": NS,
            "virtual_service": "web",
            "route": 0,
        },
    ),
    "smi": Kind(
        "smi",
        "split.smi-spec.io/v1alpha2",
        "trafficsplits",
        {c: f"web-{c}" for c in CLUSTERS},
        trafficsplit,
        lambda o: o["spec"]["backends"],
        lambda e: e["service"],
        lambda kc: {"kubeconfig": kc, "context": "mgmt", "namespace": NS, "traffic_split": "web"},
    ),
}
SEEDED = {
    "gateway_api": {"eu-west": 500_000, "us-east": 300_000, "ap-south": 200_000},
    "istio": {"eu-west": 34, "us-east": 33, "ap-south": 33},
    "smi": {"eu-west": 600, "us-east": 300, "ap-south": 100},
}


@pytest.fixture
async def server() -> AsyncIterator[KubeApiServer]:
    api = KubeApiServer("mgmt")
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
def kubeconfig(server: KubeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kube" / "config", {"mgmt": server})


def lb_config(kind: Kind, kubeconfig: Path, members: dict[str, str] | None = None) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "edge",
            "driver": kind.driver,
            kind.driver: kind.section(str(kubeconfig)),
            "members": members or kind.members,
        }
    )


@asynccontextmanager
async def opened(balancer: Balancer) -> AsyncIterator[Balancer]:
    try:
        yield balancer
    finally:
        await balancer.close()


@asynccontextmanager
async def kube_balancer(
    kind: Kind, server: KubeApiServer, kubeconfig: Path, members: dict[str, str] | None = None
) -> AsyncIterator[Balancer]:
    server.put_object(kind.seed())
    async with opened(build_balancer(lb_config(kind, kubeconfig, members))) as balancer:
        yield balancer


def stored(kind: Kind, server: KubeApiServer) -> dict[str, Any]:
    obj = server.get_object(kind.api_version, kind.plural, NS, "web")
    assert obj is not None
    return obj


def route_weights(server: KubeApiServer) -> list[int]:
    return [d["weight"] for d in stored(KINDS["istio"], server)["spec"]["http"][0]["route"]]


async def race_with(server: KubeApiServer, write: Awaitable[None], change: Callable[[], None]) -> None:
    """Run `write`, and change the object while its PUT is in flight (held by the server's latency),
    so the PUT carries a resourceVersion that is stale by then: a real 409 from the store."""
    before = len(server.requests("PUT"))
    server.set_latency(0.3)
    task = asyncio.ensure_future(write)
    try:
        while len(server.requests("PUT")) == before:
            assert not task.done(), "the write finished without a PUT"
            await asyncio.sleep(0.005)
        change()  # the PUT now sleeps in the server's middleware, its resourceVersion stale
        server.set_latency(0)
        await task
    finally:
        server.set_latency(0)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- every Kubernetes driver ---------------------------------------------------------------------------


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


async def test_get_drain_and_restore_leave_the_others_alone(
    kind: Kind, server: KubeApiServer, kubeconfig: Path
) -> None:
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        original = await balancer.get_weights()
        assert original == SEEDED[kind.driver]
        members = set(kind.members.values())
        others = [e for e in kind.entries(stored(kind, server)) if kind.key(e) not in members]
        assert others or kind.driver == "istio"  # (Istio: its own test below) must stay as they are

        await balancer.set_weights({"us-east": 0})
        after = await balancer.get_weights()
        assert after == {**original, "us-east": 0}
        assert kind.stored(stored(kind, server))["us-east"] == 0

        await balancer.set_weights({"us-east": original["us-east"]})
        assert await balancer.get_weights() == original
        assert kind.stored(stored(kind, server)) == original  # (Istio: 34/33/33 written back exactly)
        assert [e for e in kind.entries(stored(kind, server)) if kind.key(e) not in members] == others

        rv = stored(kind, server)["metadata"]["resourceVersion"]
        await balancer.set_weights({"us-east": original["us-east"]})  # already so: no write at all
        assert stored(kind, server)["metadata"]["resourceVersion"] == rv
        await balancer.set_weights({})


async def test_a_member_missing_from_the_object_or_the_config_is_permanent(
    kind: Kind, server: KubeApiServer, kubeconfig: Path
) -> None:
    members = {**kind.members, "ap-south": "web-nowhere" if kind.driver != "istio" else "web.nowhere.global"}
    async with kube_balancer(kind, server, kubeconfig, members) as balancer:
        with pytest.raises(PermanentError, match="nowhere"):
            await balancer.get_weights()
        with pytest.raises(PermanentError, match="nowhere"):
            await balancer.set_weights({"eu-west": 0})
        assert server.requests("PUT") == []
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        with pytest.raises(PermanentError, match="no member for cluster"):
            await balancer.set_weights({"mars": 0})
        with pytest.raises(PermanentError, match="integer"):
            await balancer.set_weights({"eu-west": True})


async def test_a_missing_object_is_permanent(kind: Kind, server: KubeApiServer, kubeconfig: Path) -> None:
    async with opened(build_balancer(lb_config(kind, kubeconfig))) as balancer:
        with pytest.raises(PermanentError, match="404"):
            await balancer.get_weights()


async def test_a_conflicting_write_is_retried_from_a_fresh_read(
    kind: Kind, server: KubeApiServer, kubeconfig: Path
) -> None:
    async with kube_balancer(kind, server, kubeconfig) as balancer:

        def someone_else_writes() -> None:
            obj = stored(kind, server)
            obj["metadata"].setdefault("labels", {})["touched-by"] = "someone-else"
            server.put_object(obj)

        await race_with(server, balancer.set_weights({"eu-west": 0}), someone_else_writes)
        assert [r.status for r in server.requests("PUT")] == [409, 200]
        assert (await balancer.get_weights())["eu-west"] == 0
        # the retry started from the other writer's version: its change is still there
        assert stored(kind, server)["metadata"]["labels"] == {"touched-by": "someone-else"}


async def test_conflicts_without_end_give_up_with_a_temporary_error(
    kind: Kind, server: KubeApiServer, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        assert isinstance(balancer, GatewayApiBalancer | IstioBalancer | SmiBalancer)
        read = balancer.read
        count = 0

        async def read_then_someone_writes() -> dict[str, Any]:
            nonlocal count
            obj = await read()
            count += 1
            if count <= 10:
                touched = stored(kind, server)
                touched["metadata"]["labels"] = {"n": str(count)}
                server.put_object(touched)
            return obj

        monkeypatch.setattr(balancer, "read", read_then_someone_writes)
        with pytest.raises(TemporaryError, match="409"):
            await balancer.set_weights({"eu-west": 0})
        assert [r.status for r in server.requests("PUT")] == [409] * 4
        assert kind.stored(stored(kind, server))["eu-west"] == SEEDED[kind.driver]["eu-west"]


async def test_5xx_is_retried_with_backoff(kind: Kind, server: KubeApiServer, kubeconfig: Path) -> None:
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        server.fail_next(2, status=503)
        assert await balancer.get_weights() == SEEDED[kind.driver]
        server.fail_next(2, status=503)
        await balancer.set_weights({"ap-south": 0})
        assert (await balancer.get_weights())["ap-south"] == 0
        assert [r.status for r in server.request_log].count(503) == 4
        server.fail_next(4, status=500)  # for good: the write gives up with a TemporaryError
        with pytest.raises(TemporaryError, match="500"):
            await balancer.set_weights({"ap-south": 1})
        assert (await balancer.get_weights())["ap-south"] == 0


async def test_an_unreachable_api_server_is_temporary(
    kind: Kind, server: KubeApiServer, kubeconfig: Path
) -> None:
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        assert await balancer.get_weights() == SEEDED[kind.driver]
        await server.set_down(True)
        with pytest.raises(TemporaryError):
            await balancer.get_weights()
        with pytest.raises(TemporaryError):
            await balancer.set_weights({"eu-west": 0})
        await server.set_down(False)
        await balancer.set_weights({"eu-west": 0})  # the same client reconnects
        assert (await balancer.get_weights())["eu-west"] == 0


async def test_close_is_idempotent_and_the_balancer_reopens(
    kind: Kind, server: KubeApiServer, kubeconfig: Path
) -> None:
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        await balancer.get_weights()
        await balancer.close()
        await balancer.close()
        assert await balancer.get_weights() == SEEDED[kind.driver]


# -- driver specifics ----------------------------------------------------------------------------------


async def test_gateway_api_weight_out_of_range_is_refused_by_the_api_server(
    server: KubeApiServer, kubeconfig: Path
) -> None:
    async with kube_balancer(KINDS["gateway_api"], server, kubeconfig) as balancer:
        assert balancer.max_weight == 1_000_000
        with pytest.raises(
            PermanentError, match=r"422 .*weight in body should be less than or equal to 1000000"
        ):
            await balancer.set_weights({"eu-west": 1_000_001})
        assert [r.status for r in server.requests("PUT")] == [422]  # refused at once, not retried
        await balancer.set_weights({"eu-west": 1_000_000})
        assert (await balancer.get_weights())["eu-west"] == 1_000_000


async def test_gateway_api_rule_index_and_default_weight(server: KubeApiServer, kubeconfig: Path) -> None:
    route = httproute()
    del route["spec"]["rules"][0]["backendRefs"][1]["weight"]  # the CRD default: 1
    server.put_object(route)
    kind = KINDS["gateway_api"]
    async with opened(build_balancer(lb_config(kind, kubeconfig))) as balancer:
        assert (await balancer.get_weights())["us-east"] == 1
    section = {**kind.section(str(kubeconfig)), "rule": 3}
    config = LoadBalancerConfig.model_validate(
        {"name": "edge", "driver": "gateway_api", "gateway_api": section, "members": kind.members}
    )
    async with opened(build_balancer(config)) as balancer:
        with pytest.raises(PermanentError, match="no rule 3"):
            await balancer.get_weights()


async def test_smi_weights_are_checked_before_any_write(server: KubeApiServer, kubeconfig: Path) -> None:
    async with kube_balancer(KINDS["smi"], server, kubeconfig) as balancer:
        with pytest.raises(PermanentError, match=r"0\.\.1000000"):
            await balancer.set_weights({"eu-west": 1_000_001})
        with pytest.raises(PermanentError):
            await balancer.set_weights({"eu-west": -1})
        assert server.requests("PUT") == []


def test_split_percent_largest_remainder() -> None:
    assert split_percent([1, 1, 1]) == [34, 33, 33]
    assert split_percent([34, 33, 0]) == [51, 49, 0]
    assert split_percent([0, 0, 5]) == [0, 0, 100]
    assert split_percent([1, 1], 90) == [45, 45]
    assert split_percent([2, 1, 1, 0], 7) == [3, 2, 2, 0]  # 3.5 1.75 1.75
    for weights in ([3, 7, 11], [100, 1, 0, 1], [1] * 7, [99, 98, 97]):
        assert sum(split_percent(weights)) == 100
    with pytest.raises(ValueError):
        split_percent([0, 0])


async def test_istio_relative_weights_round_trip_exactly(server: KubeApiServer, kubeconfig: Path) -> None:
    async with kube_balancer(KINDS["istio"], server, kubeconfig) as balancer:
        assert balancer.max_weight == 100
        assert await balancer.get_weights() == {"eu-west": 34, "us-east": 33, "ap-south": 33}
        assert ANNOTATION not in (stored(KINDS["istio"], server)["metadata"].get("annotations") or {})

        await balancer.set_weights({"ap-south": 0})  # drain one of three: the other two share 100
        assert route_weights(server) == [51, 49, 0]
        assert await balancer.get_weights() == {"eu-west": 34, "us-east": 33, "ap-south": 0}
        annotation = json.loads(stored(KINDS["istio"], server)["metadata"]["annotations"][ANNOTATION])
        assert annotation == {
            "http[0]": {"web.eu-west.global": 34, "web.us-east.global": 33, "web.ap-south.global": 0}
        }

        await balancer.set_weights({"us-east": 0})
        assert route_weights(server) == [100, 0, 0]
        await balancer.set_weights({"us-east": 33})
        await balancer.set_weights({"ap-south": 33})  # restore: exactly what was there
        assert route_weights(server) == [34, 33, 33]
        assert await balancer.get_weights() == {"eu-west": 34, "us-east": 33, "ap-south": 33}

        await balancer.set_weights({"eu-west": 100, "us-east": 100, "ap-south": 100})  # nominal 100 each
        assert route_weights(server) == [34, 33, 33]
        assert await balancer.get_weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
        await balancer.set_weights({"eu-west": 0})
        assert route_weights(server) == [0, 50, 50]
        assert await balancer.get_weights() == {"eu-west": 0, "us-east": 100, "ap-south": 100}
        # the other http route was never touched
        assert stored(KINDS["istio"], server)["spec"]["http"][1] == {
            "route": [{"destination": {"host": "static.global"}}]
        }


async def test_istio_refuses_an_all_zero_route(server: KubeApiServer, kubeconfig: Path) -> None:
    async with kube_balancer(KINDS["istio"], server, kubeconfig) as balancer:
        with pytest.raises(PermanentError, match="refusing to set every member"):
            await balancer.set_weights({"eu-west": 0, "us-east": 0, "ap-south": 0})
        await balancer.set_weights({"eu-west": 0, "us-east": 0})
        assert route_weights(server) == [0, 0, 100]
        with pytest.raises(PermanentError, match="refusing to set every member"):
            await balancer.set_weights({"ap-south": 0})
        assert route_weights(server) == [0, 0, 100]
        with pytest.raises(PermanentError, match=r"0\.\.100"):
            await balancer.set_weights({"eu-west": 101})
        assert [r.status for r in server.requests("PUT")] == [200]


async def test_istio_hand_edit_shows_as_drift(server: KubeApiServer, kubeconfig: Path) -> None:
    kind = KINDS["istio"]
    async with kube_balancer(kind, server, kubeconfig) as balancer:
        await balancer.set_weights({"eu-west": 100, "us-east": 100, "ap-south": 100})
        assert await balancer.get_weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}

        edited = stored(kind, server)  # a human moves traffic by hand; our annotation stays behind
        for destination, weight in zip(edited["spec"]["http"][0]["route"], (50, 50, 0), strict=True):
            destination["weight"] = weight
        server.put_object(edited)
        assert await balancer.get_weights() == {"eu-west": 50, "us-east": 50, "ap-south": 0}

        await balancer.set_weights({"ap-south": 50})  # from the route as it is: 50/50/50
        assert route_weights(server) == [34, 33, 33]
        assert await balancer.get_weights() == {"eu-west": 50, "us-east": 50, "ap-south": 50}


async def test_istio_destinations_that_are_not_members_keep_their_share(
    server: KubeApiServer, kubeconfig: Path
) -> None:
    kind = KINDS["istio"]
    server.put_object(virtualservice((30, 30, 30), {"web.canary.global": 10}))
    async with opened(build_balancer(lb_config(kind, kubeconfig))) as balancer:
        assert await balancer.get_weights() == {"eu-west": 30, "us-east": 30, "ap-south": 30}
        await balancer.set_weights({"us-east": 0})
        assert route_weights(server) == [45, 0, 45, 10]
        await balancer.set_weights({"us-east": 30})
        assert route_weights(server) == [30, 30, 30, 10]
        assert await balancer.get_weights() == {"eu-west": 30, "us-east": 30, "ap-south": 30}


async def test_istio_uses_v1_and_sums_to_100_after_every_write(
    server: KubeApiServer, kubeconfig: Path
) -> None:
    async with kube_balancer(KINDS["istio"], server, kubeconfig) as balancer:
        for weights in ({"eu-west": 7}, {"us-east": 0}, {"ap-south": 99}, {"us-east": 1}, {"eu-west": 0}):
            await balancer.set_weights(weights)
            assert sum(route_weights(server)) == 100
        assert {r.path.split("/")[3] for r in server.requests(path_contains="virtualservices")} == {"v1"}


# -- webhook -------------------------------------------------------------------------------------------

SECRET = "webhook-balancer-secret"


@dataclass
class Receiver:
    """A webhook balancer receiver: checks signatures, keeps weights, fails on demand."""

    url: str = ""
    weights: dict[str, int] = field(default_factory=lambda: {"eu-west": 100, "us-east": 100, "ap-south": 50})
    posts: list[dict[str, Any]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    """Statuses for the next requests (GET or POST)."""
    conflict_next: list[Callable[[], None]] = field(default_factory=list)
    """Before answering the next POSTs 409: a change by someone else."""
    rejected: int = 0
    delay_s: float = 0.0
    report: Callable[[dict[str, int]], dict[str, Any]] | None = None
    methods: list[str] = field(default_factory=list)


@asynccontextmanager
async def receiver(secret: str = SECRET, port: int | None = None) -> AsyncIterator[Receiver]:
    hook = Receiver()

    async def handle(request: web.Request) -> web.Response:
        hook.methods.append(request.method)
        body = await request.read()
        if not signing.verify(secret, body, request.headers.get(signing.HEADER, "")):
            hook.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if hook.delay_s:
            await asyncio.sleep(hook.delay_s)
        if hook.fail_next:
            return web.json_response({"error": "injected"}, status=hook.fail_next.pop(0))
        if request.method == "GET":
            return web.json_response(hook.report(hook.weights) if hook.report else {"weights": hook.weights})
        data = json.loads(body)
        if hook.conflict_next:
            hook.conflict_next.pop(0)()
            return web.json_response({"error": "changed meanwhile"}, status=409)
        hook.posts.append(data)
        hook.weights = dict(data["weights"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/lb/weights", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hook.url = f"http://127.0.0.1:{port}/lb/weights?token=query-token"
    try:
        yield hook
    finally:
        await runner.cleanup()


def webhook_config(url: str, secret: str | None = SECRET, timeout: str = "2s") -> LoadBalancerConfig:
    target: dict[str, Any] = {"url": url, "timeout": timeout, "headers": {"X-Tenant": "shop"}}
    if secret is not None:
        target["secret"] = secret
    return LoadBalancerConfig.model_validate(
        {"name": "external", "driver": "webhook", "webhook": target, "members": {c: c for c in CLUSTERS}}
    )


async def test_webhook_get_drain_restore_with_term_and_signature() -> None:
    terms = iter([7, 8])
    async with (
        receiver() as hook,
        opened(build_balancer(webhook_config(hook.url), term=lambda: next(terms))) as balancer,
    ):
        assert isinstance(balancer, WebhookBalancer)
        assert balancer.max_weight == 1_000_000
        original = await balancer.get_weights()
        assert original == {"eu-west": 100, "us-east": 100, "ap-south": 50}

        await balancer.set_weights({"us-east": 0})
        assert await balancer.get_weights() == {**original, "us-east": 0}
        assert hook.posts == [
            {"v": 1, "balancer": "external", "weights": {**original, "us-east": 0}, "term": 7}
        ]
        await balancer.set_weights({"us-east": 100})
        assert await balancer.get_weights() == original
        assert hook.posts[-1]["term"] == 8
        assert hook.rejected == 0

        posts = len(hook.posts)
        await balancer.set_weights({"us-east": 100})  # already so: no POST
        assert len(hook.posts) == posts


async def test_webhook_without_term_or_secret() -> None:
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url, secret=None))) as balancer:
        with pytest.raises(PermanentError, match="HTTP 401"):
            await balancer.get_weights()
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url))) as balancer:
        await balancer.set_weights({"eu-west": 1})
        assert hook.posts[-1]["term"] is None


async def test_webhook_bad_secret_is_permanent_and_leaks_nothing() -> None:
    async with (
        receiver() as hook,
        opened(build_balancer(webhook_config(hook.url, secret="wrong-secret"))) as balancer,
    ):
        with pytest.raises(PermanentError, match="HTTP 401") as refused:
            await balancer.set_weights({"eu-west": 0})
        message = str(refused.value)
        for secret_part in ("wrong-secret", "query-token", "/lb/weights"):
            assert secret_part not in message
        assert hook.rejected == 1  # a refusal is not retried
        assert hook.weights["eu-west"] == 100


async def test_webhook_other_4xx_is_permanent_with_its_status() -> None:
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url))) as balancer:
        hook.fail_next = [403]
        with pytest.raises(PermanentError, match=r"HTTP 403: .*injected"):
            await balancer.get_weights()
        hook.fail_next = [404]
        with pytest.raises(PermanentError, match="HTTP 404"):
            await balancer.set_weights({"eu-west": 0})
        assert hook.weights["eu-west"] == 100


async def test_webhook_missing_member_is_permanent() -> None:
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url))) as balancer:
        hook.report = lambda w: {"weights": {c: v for c, v in w.items() if c != "ap-south"}}
        with pytest.raises(PermanentError, match="no weight for cluster 'ap-south'"):
            await balancer.get_weights()
        with pytest.raises(PermanentError, match="no weight for cluster 'ap-south'"):
            await balancer.set_weights({"eu-west": 0})
        hook.report = lambda w: {"nothing": 1}
        with pytest.raises(PermanentError, match='no "weights"'):
            await balancer.get_weights()
        with pytest.raises(PermanentError, match="no member for cluster"):
            await balancer.set_weights({"mars": 0})
        with pytest.raises(PermanentError, match=r"must be in 0\.\.1000000"):
            await balancer.set_weights({"eu-west": 1_000_001})
        assert hook.posts == []


async def test_webhook_conflict_is_retried_from_a_fresh_read() -> None:
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url))) as balancer:

        def someone_else_drains_ap_south() -> None:
            hook.weights = {**hook.weights, "ap-south": 0}

        hook.conflict_next = [someone_else_drains_ap_south]
        await balancer.set_weights({"eu-west": 0})
        # our retry read the other writer's change and kept it
        assert hook.weights == {"eu-west": 0, "us-east": 100, "ap-south": 0}
        assert hook.posts[-1]["weights"] == {"eu-west": 0, "us-east": 100, "ap-south": 0}


async def test_webhook_5xx_is_retried_and_temporary_when_it_persists() -> None:
    async with receiver() as hook, opened(build_balancer(webhook_config(hook.url))) as balancer:
        hook.fail_next = [503, 503]
        assert (await balancer.get_weights())["eu-west"] == 100
        hook.fail_next = [503, 502]
        await balancer.set_weights({"eu-west": 0})
        assert hook.weights["eu-west"] == 0
        hook.fail_next = [500] * 4
        with pytest.raises(TemporaryError, match="HTTP 500"):
            await balancer.set_weights({"eu-west": 5})
        hook.fail_next = [429]
        await balancer.set_weights({"eu-west": 5})
        assert hook.weights["eu-west"] == 5


async def test_webhook_unreachable_or_slow_is_temporary() -> None:
    port = free_port()
    async with receiver(port=port) as hook:
        url = hook.url
    async with opened(build_balancer(webhook_config(url))) as balancer:
        with pytest.raises(TemporaryError, match="ClientConnectorError"):
            await balancer.get_weights()
        with pytest.raises(TemporaryError):
            await balancer.set_weights({"eu-west": 0})
    async with (
        receiver() as hook,
        opened(build_balancer(webhook_config(hook.url, timeout="100ms"))) as balancer,
    ):
        hook.delay_s = 0.5
        with pytest.raises(TemporaryError, match=r"timed out after 0\.1s"):
            await balancer.get_weights()


# -- registry ------------------------------------------------------------------------------------------


async def test_registry_builds_every_driver(kubeconfig: Path) -> None:
    assert {"haproxy", "gateway_api", "istio", "smi", "webhook"} <= IMPLEMENTED_LB_DRIVERS
    expected = {"gateway_api": GatewayApiBalancer, "istio": IstioBalancer, "smi": SmiBalancer}
    for name, kind in KINDS.items():
        balancer = build_balancer(lb_config(kind, kubeconfig), term=lambda: 3)
        assert type(balancer) is expected[name]
        await balancer.close()
    haproxy = LoadBalancerConfig.model_validate(
        {
            "name": "global",
            "driver": "haproxy",
            "haproxy": {"admin": ["tcp://127.0.0.1:1"], "backend": "web"},
            "members": {"eu-west": "eu1"},
        }
    )
    assert isinstance(build_balancer(haproxy, term=lambda: 3), HAProxyBalancer)
    webhook = build_balancer(webhook_config("http://127.0.0.1:1/x"), term=lambda: 3)
    assert isinstance(webhook, WebhookBalancer) and webhook.term is not None and webhook.term() == 3
