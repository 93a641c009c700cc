"""Bus trust (DESIGN §12, issue 12 findings 2, 3 and 8): the embedded nats-server refuses anonymous
clients, the README's permission blocks hold on a real nats-server, every kind of client authentication
works against one, no bearer token travels on the bus, and no NATS password reaches an error."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import nats
import nats.errors
import nkeys
import pytest
import trustme

from orchestrator.api.commands import Commands
from orchestrator.bus import natsauth
from orchestrator.bus.client import Bus, connect_nats
from orchestrator.bus.embedded import free_port
from orchestrator.bus.state import PAUSE_ALL, StateStore
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import ApiConfig, ApiToken, NatsConfig
from orchestrator.core.errors import TemporaryError
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.runtime.prober import run_prober
from orchestrator.sandbox.app import AppServer
from tests.helpers import collect, fleet, hook_receiver, wait_for, write_config
from tests.natsauth import VANTAGE, secured_server, server_with, settle
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(60)
README = Path(__file__).resolve().parents[1] / "README.md"


# the embedded nats-server (finding 2) -----------------------------------------------------------------


async def test_embedded_nats_refuses_anonymous_clients_and_keeps_its_credentials(
    nats_binary: str, tmp_path: Path
) -> None:
    bus = await Bus.connect(NatsConfig(), tmp_path, name="daemon")
    try:
        assert bus.embedded is not None
        url = bus.embedded.url
        with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
            anonymous = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
            await anonymous.close()  # reached only when the server let an anonymous client in
        await bus.ensure_topology()
        await Bus.kv_put(bus.kv.state, "probe.key", {"ok": True})
    finally:
        await bus.close()
    auth = tmp_path / "nats" / "auth"
    files = [auth / "daemon.password", auth / "viewer.password", tmp_path / "nats" / "nats-server.conf"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    first = (auth / "daemon.password").read_text()
    bus = await Bus.connect(NatsConfig(), tmp_path, name="daemon-again")  # a restart reuses them
    try:
        await bus.ensure_topology()
        assert (await Bus.kv_get(bus.kv.state, "probe.key")) is not None
        assert (auth / "daemon.password").read_text() == first
    finally:
        await bus.close()


# the README's permission blocks on a real nats-server --------------------------------------------------


def test_the_readme_shows_exactly_the_blocks_the_code_generates() -> None:
    text = README.read_text()
    section = text[text.index("## NATS security") :]
    for role, block in natsauth.readme_blocks().items():
        found = re.search(rf"```\n# {role}\n(.*?)```", section, re.S)
        assert found, f"no {role} block in the README's NATS security section"
        assert found.group(1).strip() == block.strip(), role


async def test_a_prober_credential_writes_nothing_but_its_own_health(
    tmp_path: Path, nats_binary: str
) -> None:
    async with secured_server(tmp_path) as s:
        bus = await Bus.connect(NatsConfig(url=s.url("daemon")), tmp_path, name="daemon")
        try:
            await bus.ensure_topology()
            await Bus.kv_put(bus.kv.state, "orig.scale.eu.shop.deployment.web", {"replicas": 3})
            seen: list[str] = []

            async def spy(msg: Any) -> None:
                seen.append(msg.subject)

            await bus.subscribe("failover.>", spy)
            await bus.flush()
            prefix = natsauth.prober_inbox(VANTAGE)
            async with s.client(VANTAGE, inbox_prefix=prefix) as prober:
                js = prober.jetstream()
                # reading its baselines is allowed
                kv = await js.key_value(subjects.KV_STATE)
                assert (await kv.get("orig.scale.eu.shop.deployment.web")).value
                # writing KV is not: neither the lease nor the state
                for subject in ("$KV.failover-leader.leader", "$KV.failover-state.pause"):
                    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                        await js.publish(subject, b'{"holder": "prober"}', timeout=0.5)
                # nor events, runs, audit, another vantage's health, or a command to the leader
                for subject in (
                    "failover.events.cluster.eu",
                    "failover.runs.r1",
                    "failover.audit",
                    "failover.health.mgmt.eu.ingress",
                    subjects.COMMANDS,
                    natsauth.INTERNAL_COMMANDS,
                ):
                    await prober.publish(subject, b"{}")
                # nor answer (or even read) commands, nor eavesdrop on others' replies
                answered: list[bytes] = []

                async def impostor(msg: Any) -> None:
                    answered.append(msg.data)
                    await prober.publish(msg.reply, b'{"ok": true, "result": "forged"}')

                for subject in (subjects.COMMANDS, natsauth.INTERNAL_COMMANDS, "_INBOX.>", ">"):
                    await prober.subscribe(subject, cb=impostor)
                await prober.publish(f"failover.health.{VANTAGE}.eu.ingress", b"{}")  # its own: allowed
                await settle(prober)
            await wait_for(lambda: _has(seen, f"failover.health.{VANTAGE}.eu.ingress"), 5, "own health")
            assert seen == [f"failover.health.{VANTAGE}.eu.ingress"], seen
            for subject in (subjects.COMMANDS, natsauth.INTERNAL_COMMANDS):
                with pytest.raises(TemporaryError):  # no responders: the prober's subscription was refused
                    await bus.request(subject, b'{"command": "status"}', timeout_s=1)
            assert answered == []
            assert await Bus.kv_get(bus.kv.leader, "leader") is None
            assert await Bus.kv_get(bus.kv.state, "pause") is None
            info = await bus.js.stream_info(subjects.STREAM_EVENTS)
            assert info.state.messages == 0
            assert any("permissions violation" in e.lower() for e in s.errors), s.errors
        finally:
            await bus.close()


async def _has(seen: list[str], subject: str) -> bool:
    return subject in seen


async def test_a_viewer_credential_reads_and_writes_nothing(tmp_path: Path, nats_binary: str) -> None:
    async with secured_server(tmp_path) as s:
        bus = await Bus.connect(NatsConfig(url=s.url("daemon")), tmp_path, name="daemon")
        try:
            await bus.ensure_topology()
            await Bus.kv_put(bus.kv.runs, "run.r1", {"id": "r1"})
            async with s.client("viewer") as viewer:
                events: list[str] = []

                async def on_event(msg: Any) -> None:
                    events.append(msg.subject)

                await viewer.subscribe(subjects.EVENTS_ALL, cb=on_event)
                await viewer.subscribe(subjects.COMMANDS, cb=on_event)
                await viewer.subscribe(natsauth.INTERNAL_COMMANDS, cb=on_event)
                await settle(viewer)
                kv = await viewer.jetstream().key_value(subjects.KV_RUNS)
                assert json.loads((await kv.get("run.r1")).value or b"") == {"id": "r1"}
                with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                    await viewer.jetstream().publish("$KV.failover-runs.run.r2", b"{}", timeout=0.5)
                await viewer.publish("failover.events.cluster.eu", b"{}")
                await viewer.publish(natsauth.INTERNAL_COMMANDS, b"{}")
                await settle(viewer)
                await bus.publish(subjects.cluster_events("eu"), b"{}")
                await bus.publish(natsauth.INTERNAL_COMMANDS, b"{}")
                await bus.flush()
                await wait_for(lambda: _has(events, "failover.events.cluster.eu"), 5, "event seen")
                await settle(viewer)
                assert events == ["failover.events.cluster.eu"]  # the daemon's one, and no command
            assert await Bus.kv_get(bus.kv.runs, "run.r2") is None
            assert (await bus.js.stream_info(subjects.STREAM_EVENTS)).state.messages == 1  # the daemon's
        finally:
            await bus.close()


async def test_the_daemon_credential_runs_a_failover_end_to_end(
    tmp_path: Path, nats_binary: str, haproxy_binary: str
) -> None:
    async with (
        secured_server(tmp_path) as s,
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
    ):
        path = write_config(tmp_path, f, hook.url, nats_url=s.url("daemon"))
        async with running(path) as daemon:
            assert daemon.detection is not None

            async def healthy() -> bool:
                assert daemon.detection is not None
                return set(daemon.detection.cluster_view().values()) == {"healthy"}

            await wait_for(healthy, 10, "all clusters healthy")
            await f.apps["us-east"].stop()

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 15, "us-east drained")
        assert not [e for e in s.errors if "permissions" in e.lower()]


# each kind of client authentication against a real nats-server ----------------------------------------


async def _works(cfg: NatsConfig) -> None:
    nc = await connect_nats(str(cfg.url), cfg, name="auth-test")
    try:
        await nc.flush(timeout=2)
    finally:
        await nc.close()


async def test_user_and_password_from_a_file_and_a_refused_password_never_shown(
    tmp_path: Path, nats_binary: str
) -> None:
    async with secured_server(tmp_path) as s:
        secret = tmp_path / "pw"
        secret.write_text(s.passwords["viewer"] + "\n")
        url = f"nats://127.0.0.1:{s.server.port}"
        await _works(NatsConfig(url=url, user="viewer", password_file=str(secret)))
        await _works(NatsConfig(url=s.url("viewer")))  # user:password@ in the URL
        wrong = "hunter2-not-the-password"
        for cfg in (
            NatsConfig(url=s.url("viewer", wrong), connect_timeout="1s"),
            NatsConfig(url=url, user="viewer", password=wrong, connect_timeout="1s"),
        ):
            with pytest.raises(TemporaryError) as caught:
                await _works(cfg)
            message = str(caught.value)
            assert wrong not in message and "Authorization" in message, message


async def test_token_from_a_file(tmp_path: Path, nats_binary: str) -> None:
    token = "t0ken-" + "x" * 30
    server = await server_with(tmp_path, f'authorization {{ token: "{token}" }}\n')
    try:
        (tmp_path / "token").write_text(token)
        await _works(NatsConfig(url=server.url, token_file=str(tmp_path / "token")))
        with pytest.raises(TemporaryError):
            await _works(NatsConfig(url=server.url, token="wrong", connect_timeout="1s"))
        with pytest.raises(TemporaryError):
            await _works(NatsConfig(url=server.url, connect_timeout="1s"))  # anonymous
    finally:
        await server.stop()


async def test_nkey_seed_file_with_the_prober_block(tmp_path: Path, nats_binary: str) -> None:
    seed = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    block = natsauth.user_block("prober", VANTAGE, nkey=public)
    server = await server_with(tmp_path, natsauth.server_config([block]))
    try:
        (tmp_path / "prober.nk").write_bytes(seed)
        cfg = NatsConfig(
            url=server.url, nkey=str(tmp_path / "prober.nk"), inbox_prefix=natsauth.prober_inbox(VANTAGE)
        )
        await _works(cfg)
        with pytest.raises(TemporaryError):
            await _works(NatsConfig(url=server.url, connect_timeout="1s"))
    finally:
        await server.stop()


async def test_tls_with_a_client_certificate_and_a_server_name(tmp_path: Path, nats_binary: str) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("nats.internal.test")
    client_cert = ca.issue_cert("failover-daemon")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    config = (
        f'tls {{ cert_file: "{paths["server"]}", key_file: "{paths["server"]}", '
        f'ca_file: "{paths["ca"]}", verify: true }}\n'
    )
    server = await server_with(tmp_path, config)
    try:
        tls = {"ca": str(paths["ca"]), "cert": str(paths["client"]), "key": str(paths["client"])}
        url = f"tls://127.0.0.1:{server.port}"
        await _works(
            NatsConfig.model_validate({"url": url, "tls": {**tls, "server_name": "nats.internal.test"}})
        )
        for bad in ({**tls}, {"ca": tls["ca"], "server_name": "nats.internal.test"}):
            with pytest.raises(TemporaryError):  # name mismatch; no client certificate
                await _works(NatsConfig.model_validate({"url": url, "tls": bad, "connect_timeout": "1s"}))
    finally:
        await server.stop()


# no bearer token on the bus (finding 3) ---------------------------------------------------------------


OPERATOR = "operator-token-" + "o" * 24


def _commands(bus: Bus, leader: bool) -> Commands:
    config = SimpleNamespace(api=ApiConfig(tokens=[ApiToken(token=OPERATOR, role="operator", name="olga")]))
    none = cast(Any, None)

    async def resume(actor: str) -> None:
        return None

    return Commands(
        cast(Any, config), bus, none, StateStore(bus), ApprovalBook(), resume, dict, is_leader=lambda: leader
    )


async def test_a_follower_forwards_an_authorized_caller_never_the_token(bus: Bus) -> None:
    seen: list[bytes] = []

    async def spy(msg: Any) -> None:
        seen.append(msg.data)

    await bus.subscribe(">", spy)
    leader, follower = _commands(bus, True), _commands(bus, False)
    await leader.serve_nats()
    try:
        answer = await follower.handle("pause", {}, OPERATOR, "api")
        assert answer["ok"] is True, answer
        found = await Bus.kv_get(bus.kv.state, PAUSE_ALL)
        assert found is not None and found[0]["by"] == "olga"
        refused = await follower.handle("pause", {}, "not-a-token", "api")
        assert refused["ok"] is False and refused["status"] == 401
        await bus.flush()
        assert seen and not [m for m in seen if OPERATOR.encode() in m or b"not-a-token" in m]
        # the leader takes {actor, role} only on the internal subject, never from a token-bearing caller
        forged = json.dumps({"command": "pause", "args": {}, "actor": "root", "role": "admin"})
        reply = json.loads(await bus.request(subjects.COMMANDS, forged.encode(), timeout_s=5))
        assert reply["ok"] is False and reply["status"] == 401
    finally:
        await leader.stop_serving()


async def test_the_leader_answers_only_to_an_inbox(bus: Bus) -> None:
    """A reply subject is the asker's choice: the daemon must not publish its answer into KV or events."""
    leader = _commands(bus, True)
    await leader.serve_nats()
    try:
        body = json.dumps({"command": "status", "args": {}, "token": OPERATOR}).encode()
        await bus.nc.publish(subjects.COMMANDS, body, reply="$KV.failover-state.pause")
        await bus.request(subjects.COMMANDS, body, timeout_s=5)  # served after the first one
        assert await Bus.kv_get(bus.kv.state, "pause") is None
    finally:
        await leader.stop_serving()


async def test_a_stand_alone_prober_runs_with_the_prober_credential(tmp_path: Path, nats_binary: str) -> None:
    """`failover probe` opens the state bucket read-only and replies on its own inbox: it starts and
    reports with exactly the prober block (before, it created streams at start and was refused)."""
    app = AppServer("eu", free_port())
    await app.start()
    async with secured_server(tmp_path) as s:
        bus = await Bus.connect(NatsConfig(url=s.url("daemon")), tmp_path, name="daemon")
        stop = asyncio.Event()
        try:
            await bus.ensure_topology()
            reports = await collect(bus, f"failover.health.{VANTAGE}.>")
            (tmp_path / "probe.yaml").write_text(
                f"state_dir: {tmp_path / 'state'}\n"
                f"nats: {{url: '{s.url(VANTAGE)}'}}\n"
                f"probing: {{interval: 200ms, timeout: 150ms, jitter: 0s, vantage: {VANTAGE}}}\n"
                f"detection: {{vantages: [{VANTAGE}]}}\n"
                "clusters:\n"
                f"  - {{name: eu, probes: [{{name: ingress, http: {{url: '{app.url}/healthz'}}}}]}}\n"
                "load_balancers: []\nnotifiers: []\n"
            )
            prober = asyncio.create_task(run_prober(load_config(tmp_path / "probe.yaml"), VANTAGE, stop))
            await wait_for(lambda: _count(reports, 2), 10, "two reports from the prober")
            assert not prober.done(), prober
            assert not [e for e in s.errors if "permissions violation" in e.lower()], s.errors
        finally:
            stop.set()
            await bus.close()
            await app.stop()


async def test_a_prober_started_before_the_daemon_probes_at_once_and_finds_the_baselines_later(
    tmp_path: Path, nats_binary: str
) -> None:
    """Probers run in the workload clusters and start in any order with the management cluster: one
    that starts before the daemon has created its KV buckets must not exit (it did: `BucketNotFound`)."""
    app = AppServer("eu", free_port())
    await app.start()
    async with secured_server(tmp_path) as s:
        stop = asyncio.Event()
        bus = await Bus.connect(NatsConfig(url=s.url("daemon")), tmp_path, name="daemon")
        try:
            reports = await collect(bus, f"failover.health.{VANTAGE}.>")
            (tmp_path / "probe.yaml").write_text(
                f"state_dir: {tmp_path / 'state'}\n"
                f"nats: {{url: '{s.url(VANTAGE)}'}}\n"
                f"probing: {{interval: 200ms, timeout: 150ms, jitter: 0s, vantage: {VANTAGE}}}\n"
                f"detection: {{vantages: [{VANTAGE}]}}\n"
                "clusters:\n"
                f"  - {{name: eu, probes: [{{name: ingress, http: {{url: '{app.url}/healthz'}}}}]}}\n"
            )
            prober = asyncio.create_task(run_prober(load_config(tmp_path / "probe.yaml"), VANTAGE, stop))
            await wait_for(lambda: _count(reports, 2), 10, "reports before the daemon's buckets exist")
            assert not prober.done(), prober
            await bus.ensure_topology()  # the daemon starts
            seen = len(reports)
            await wait_for(lambda: _count(reports, seen + 2), 10, "reports after")
            assert not prober.done(), prober
        finally:
            stop.set()
            await bus.close()
            await app.stop()


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n
