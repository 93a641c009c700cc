"""The HAProxy driver against a real HAProxy in front of real HTTP servers, all on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from orchestrator.actuators.haproxy import HAProxyAdmin, HAProxyBalancer
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.sandbox.haproxy import HAProxyError, HAProxyProcess, free_port

pytestmark = pytest.mark.timeout(60)

CLUSTERS = ("a", "b", "c")
MEMBERS = {cluster: f"srv-{cluster}" for cluster in CLUSTERS}

StartHAProxy = Callable[..., Awaitable[HAProxyProcess]]


@pytest.fixture
async def app_servers() -> AsyncIterator[dict[str, tuple[str, int]]]:
    """One tiny HTTP server per cluster answering its cluster's name: server name -> (host, port)."""
    runners: list[web.AppRunner] = []
    servers: dict[str, tuple[str, int]] = {}
    try:
        for cluster in CLUSTERS:

            async def hello(request: web.Request, name: str = cluster) -> web.Response:
                return web.Response(text=name)

            app = web.Application()
            app.router.add_get("/", hello)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            servers[MEMBERS[cluster]] = ("127.0.0.1", port)
        yield servers
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def start_haproxy(
    haproxy_binary: str, app_servers: dict[str, tuple[str, int]], tmp_path: Path
) -> AsyncIterator[StartHAProxy]:
    """Start as many HAProxy instances as a test needs; every one is stopped at teardown."""
    started: list[HAProxyProcess] = []

    async def start(name: str = "lb", **kwargs: object) -> HAProxyProcess:
        process = HAProxyProcess(tmp_path / name, app_servers, binary=haproxy_binary, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        await process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            await process.stop()


@pytest.fixture
async def haproxy(start_haproxy: StartHAProxy) -> HAProxyProcess:
    return await start_haproxy()


def balancer(*admin: str, timeout_s: float = 2.0, members: dict[str, str] | None = None) -> HAProxyBalancer:
    config = LoadBalancerConfig.model_validate(
        {
            "name": "global",
            "driver": "haproxy",
            "haproxy": {"admin": list(admin), "backend": "web", "timeout": f"{timeout_s}s"},
            "members": members or MEMBERS,
        }
    )
    return HAProxyBalancer(config)


async def hits(url: str, requests: int = 30) -> list[str]:
    """Answers of `requests` fresh-connection requests through the frontend, bounded in time."""
    async with (
        asyncio.timeout(15),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
    ):
        answers = []
        for _ in range(requests):
            async with s.get(url + "/") as response:
                assert response.status == 200
                answers.append(await response.text())
        return answers


async def test_initial_weights_are_the_config_weights(haproxy: HAProxyProcess) -> None:
    assert await balancer(haproxy.admin_url).get_weights() == {"a": 100, "b": 100, "c": 100}


async def test_drain_one_cluster_moves_its_traffic(haproxy: HAProxyProcess) -> None:
    lb = balancer(haproxy.admin_url)
    assert set(await hits(haproxy.frontend_url, 9)) == {"a", "b", "c"}

    await lb.set_weights({"b": 0})

    assert await lb.get_weights() == {"a": 100, "b": 0, "c": 100}
    answers = await hits(haproxy.frontend_url)
    assert "b" not in answers
    assert {"a", "c"} <= set(answers)


async def test_two_admin_addresses_of_one_instance(haproxy: HAProxyProcess) -> None:
    lb = balancer(haproxy.admin_url, haproxy.admin_unix_url)
    await lb.set_weights({"a": 256, "c": 7})
    assert await lb.get_weights() == {"a": 256, "b": 100, "c": 7}
    assert await lb.get_instance_weights() == {
        haproxy.admin_url: {"a": 256, "b": 100, "c": 7},
        haproxy.admin_unix_url: {"a": 256, "b": 100, "c": 7},
    }


async def test_instances_that_disagree_are_named(start_haproxy: StartHAProxy) -> None:
    first, second = await start_haproxy("one"), await start_haproxy("two")
    await second.admin().set_weight("web", "srv-c", 10)
    lb = balancer(first.admin_url, second.admin_url)

    with pytest.raises(TemporaryError) as caught:
        await lb.get_weights()
    assert f"c: {first.admin_url}=100, {second.admin_url}=10" in str(caught.value)

    await lb.set_weights({"c": 50})
    assert await lb.get_weights() == {"a": 100, "b": 100, "c": 50}


async def test_admin_api_replies(haproxy: HAProxyProcess) -> None:
    admin = haproxy.admin()
    await admin.set_weight("web", "srv-a", 75)
    assert await admin.get_weight("web", "srv-a") == 75
    states = await admin.servers_state("web")
    assert set(states) == set(MEMBERS.values())
    state = states["srv-a"]
    assert (state.weight, state.initial_weight, state.addr) == (75, 100, "127.0.0.1")
    assert state.port == haproxy.servers["srv-a"][1]
    assert state.running  # no health checks: a server counts as up
    assert await admin.server_weights("web") == {name: s.weight for name, s in states.items()}
    with pytest.raises(PermanentError, match="No such server"):
        await admin.get_weight("web", "nope")
    with pytest.raises(PermanentError, match="backend"):
        await admin.servers_state("nope")
    with pytest.raises(PermanentError, match="backend"):
        await admin.server_weights("nope")
    with pytest.raises(PermanentError, match="invalid"):
        await admin.set_weight("web", "srv-a; shutdown frontend main", 0)


async def test_set_weight_on_unknown_server_is_permanent(haproxy: HAProxyProcess) -> None:
    with pytest.raises(PermanentError, match="No such server"):
        await haproxy.admin().set_weight("web", "nope", 0)
    with pytest.raises(PermanentError, match="No such backend"):
        await haproxy.admin().set_weight("nope", "srv-a", 0)


async def test_member_missing_from_backend_is_permanent(haproxy: HAProxyProcess) -> None:
    lb = balancer(haproxy.admin_url, members={**MEMBERS, "d": "srv-d"})
    with pytest.raises(PermanentError, match="srv-d"):
        await lb.get_weights()
    with pytest.raises(PermanentError, match="No such server"):
        await lb.set_weights({"d": 0})


async def test_invalid_weights_are_refused_before_any_call(haproxy: HAProxyProcess) -> None:
    lb = balancer(haproxy.admin_url)
    for weights in ({"b": 300}, {"b": -1}, {"b": True}, {"zz": 0}):
        with pytest.raises(PermanentError):
            await lb.set_weights(weights)
    assert await lb.get_weights() == {"a": 100, "b": 100, "c": 100}


async def test_unreachable_admin_is_temporary() -> None:
    with pytest.raises(TemporaryError, match="failed"):
        await balancer(f"tcp://127.0.0.1:{free_port()}").get_weights()
    with pytest.raises(TemporaryError):
        await balancer("unix:///nonexistent/admin.sock").set_weights({"a": 0})


async def test_silent_admin_times_out_as_temporary() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client gives up and closes
        finally:
            writer.close()
            handled.set()

    handled = asyncio.Event()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TemporaryError, match="no reply"):
            await HAProxyAdmin(f"tcp://127.0.0.1:{port}", timeout_s=0.2).command("show info")
        async with asyncio.timeout(5):
            await handled.wait()
    finally:
        server.close()
        await server.wait_closed()


async def test_static_algorithm_accepts_only_zero_or_initial(start_haproxy: StartHAProxy) -> None:
    haproxy = await start_haproxy(balance="static-rr")
    lb = balancer(haproxy.admin_url)
    with pytest.raises(PermanentError, match="static"):
        await lb.set_weights({"b": 50})
    await lb.set_weights({"b": 0})
    await lb.set_weights({"b": 100})
    assert await lb.get_weights() == {"a": 100, "b": 100, "c": 100}


async def test_reload_resets_weights_unless_state_saved(haproxy: HAProxyProcess) -> None:
    lb = balancer(haproxy.admin_url, haproxy.admin_unix_url)
    await lb.set_weights({"b": 0})
    await haproxy.reload()
    assert (await lb.get_weights())["b"] == 100

    await lb.set_weights({"b": 0})
    await haproxy.save_state()
    await haproxy.reload()
    assert (await lb.get_weights())["b"] == 0
    assert "b" not in await hits(haproxy.frontend_url, 9)


async def test_start_failure_reports_the_log(haproxy_binary: str, tmp_path: Path) -> None:
    process = HAProxyProcess(tmp_path, {"srv-a": ("127.0.0.1", 1)}, balance="nonsense", binary=haproxy_binary)
    with pytest.raises(HAProxyError, match="exited") as caught:
        await process.start(timeout_s=5)
    assert "balance only supports" in str(caught.value)
    assert process.pid is None
