"""deploy/nats (values for the official NATS Helm chart) and deploy/prober (a stand-alone prober with a
NATS leaf node beside it).

No Helm binary can be installed here, so the chart is not rendered. What can be tested is: the
permission blocks in the values are exactly the ones orchestrator/bus/natsauth.py generates (and the
README documents); every password comes from the Secret the template describes; and a real
nats-server runs the configuration those values make (as the chart renders `config.merge`: JSON,
`<< $VAR >>` unquoted into an environment reference), a real leaf node runs the prober's shipped
leafnode.conf connecting to it over TLS as the prober's hub user, and `failover probe` publishes
through that leaf: its own health reaches the daemon, anything else it sends is dropped by the hub.
A 3-node cluster with R3 is what the values ask for; one node stands in for it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import trustme
import yaml

from orchestrator.bus import natsauth
from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import find_nats_server, free_port
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.runtime.prober import run_prober
from orchestrator.sandbox.app import AppServer
from tests.deploy_render import DEPLOY, config_map_data, render
from tests.helpers import collect, wait_for

VALUES = DEPLOY / "nats" / "values.yaml"
ENV_REF = re.compile(r"^<< \$([A-Z0-9_]+) >>$")


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def _users() -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = _values()["config"]["merge"]["accounts"]["FAILOVER"]["users"]
    return users


def _role(user: str) -> tuple[str, str | None]:
    if user == "failover":
        return "daemon", None
    if user == "viewer":
        return "viewer", None
    assert user.endswith("-prober"), f"{user}: a user is the daemon, the viewer, or one prober's vantage"
    return "prober", user


def test_the_permission_blocks_are_the_ones_natsauth_generates() -> None:
    users = _users()
    assert {u["user"] for u in users} >= {"failover", "viewer", "eu-prober"}
    for user in users:
        role, vantage = _role(user["user"])
        assert user["permissions"] == natsauth.permissions(role, vantage), user["user"]
    # the prober's config replies on the one inbox its hub user may receive
    prober = yaml.safe_load((DEPLOY / "prober" / "failover.yaml").read_text())
    vantage = prober["probing"]["vantage"]
    assert vantage in {u["user"] for u in users}
    assert prober["nats"].get("inbox_prefix", "_INBOX") in ("_INBOX", natsauth.prober_inbox(vantage))


def test_the_values_ask_for_jetstream_r3_leaf_tls_and_no_anonymous_client() -> None:
    values = _values()
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True
    assert config["leafnodes"]["enabled"] is True and config["leafnodes"]["tls"]["enabled"] is True
    merge = config["merge"]
    assert "no_auth_user" not in merge and "authorization" not in merge
    assert merge["accounts"]["FAILOVER"]["jetstream"] == "enabled"
    daemon = yaml.safe_load(config_map_data(render("overlays/ha"), "failover-config-")["failover.yaml"])
    assert daemon["nats"]["replicas"] == config["cluster"]["replicas"]
    assert daemon["nats"]["user"] == "failover"
    assert daemon["nats"]["url"].startswith("nats://nats.nats.svc:")


def test_every_password_comes_from_the_secret_the_template_describes() -> None:
    values = _values()
    env = values["container"]["env"]
    template = yaml.safe_load((DEPLOY / "nats" / "secret.example.yaml").read_text())
    references = set()
    for account in values["config"]["merge"]["accounts"].values():
        for user in account["users"]:
            match = ENV_REF.match(user["password"])
            assert match, f"{user['user']}: a password is an environment reference, never a value"
            ref = env[match.group(1)]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == template["metadata"]["name"]
            assert ref["key"] in template["stringData"]
            references.add(ref["key"])
    assert references == set(template["stringData"]), "every key of the template is one user's password"


def chart_config(values: dict[str, Any], extra: dict[str, Any]) -> str:
    """`config.merge` as the chart renders it into nats.conf (JSON; `<< X >>` becomes a bare X)."""
    text = json.dumps({**values["config"]["merge"], **extra}, indent=2)
    return re.sub(r'"<< (.*?) >>"', r"\1", text)


@contextlib.asynccontextmanager
async def nats_server(conf: Path, env: dict[str, str], port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    log = conf.with_suffix(".log")
    cmd = [find_nats_server(), "-c", str(conf), "--log", str(log)]
    check = subprocess.run(
        [*cmd[:-2], "-t"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, f"nats-server -t {conf.name}: {check.stdout}{check.stderr}"
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        async def listening() -> bool:
            assert process.poll() is None, log.read_text() if log.exists() else "exited"
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_for(listening, 10, f"nats-server {conf.name} listening")
        yield process
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


def _leafnodes(monitor_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/leafz", timeout=2) as answer:
        return int(json.load(answer)["leafnodes"])


async def test_a_prober_publishes_through_its_leaf_node_as_the_values_permit(tmp_path: Path) -> None:
    values = _values()
    passwords = {
        # hex, as the README says: nats-server parses an environment reference's value as a config token,
        # so a urlsafe token that starts with "-" or with digits and a "-" failed as a date (seen in CI)
        key: secrets.token_hex(24)
        for key in ("sys", "failover", "viewer", "eu-prober", "us-prober")
    }
    env_names = {
        name: ref["valueFrom"]["secretKeyRef"]["key"] for name, ref in values["container"]["env"].items()
    }
    hub_env = {name: passwords[key] for name, key in env_names.items()}
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "hub.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "hub.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))

    hub_port, leaf_port, local_port, monitor_port = free_port(), free_port(), free_port(), free_port()
    hub_conf = tmp_path / "hub.conf"
    hub_conf.write_text(
        chart_config(
            values,
            {
                "server_name": "nats-0",
                "listen": f"127.0.0.1:{hub_port}",
                "jetstream": {"store_dir": str(tmp_path / "js")},
                "leafnodes": {
                    "listen": f"127.0.0.1:{leaf_port}",
                    "tls": {"cert_file": str(tmp_path / "hub.crt"), "key_file": str(tmp_path / "hub.key")},
                },
            },
        )
    )
    prober_docs = render("prober")
    leaf_text = config_map_data(prober_docs, "failover-prober-leafnode-")["leafnode.conf"]
    leaf_text = leaf_text.replace("listen: 127.0.0.1:4222", f"listen: 127.0.0.1:{local_port}")
    leaf_text = leaf_text.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{monitor_port}")
    leaf_text = leaf_text.replace("/etc/nats-leaf/tls/ca.crt", str(tmp_path / "ca.crt"))
    (tmp_path / "leaf.conf").write_text(leaf_text)
    leaf_env = {
        "POD_NAME": "failover-prober-0",
        "HUB_LEAF_URL": f"nats-leaf://eu-prober:{passwords['eu-prober']}@127.0.0.1:{leaf_port}",
    }
    app = AppServer("eu", free_port())
    await app.start()
    stop = asyncio.Event()
    try:
        async with (
            nats_server(hub_conf, hub_env, hub_port),
            nats_server(tmp_path / "leaf.conf", leaf_env, local_port),
        ):
            hub = f"nats://127.0.0.1:{hub_port}"
            with pytest.raises(Exception, match=r"(?i)authorization"):  # no anonymous client on the hub
                await nats.connect(hub, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
            daemon_nats = NatsConfig(url=hub, user="failover", password=passwords["failover"])
            bus = await Bus.connect(daemon_nats, tmp_path / "daemon", name="daemon")
            try:
                await bus.ensure_topology()
                everything = await collect(bus, "failover.>")
                await wait_for(
                    lambda: _leafnodes(monitor_port) == 1, 10, "the leaf node connected to the hub"
                )

                # `failover probe` with the shipped prober config, pointed at this leaf and a local app
                config = yaml.safe_load(
                    config_map_data(prober_docs, "failover-prober-config-")["failover.yaml"]
                )
                config["nats"]["url"] = f"nats://127.0.0.1:{local_port}"
                config["state_dir"] = str(tmp_path / "prober")
                config["probing"] = {
                    **config["probing"],
                    "interval": "200ms",
                    "timeout": "150ms",
                    "jitter": "0s",
                }
                for cluster in config["clusters"]:
                    cluster["probes"][0]["http"]["url"] = f"{app.url}/healthz"
                (tmp_path / "prober.yaml").write_text(yaml.safe_dump(config))
                vantage = config["probing"]["vantage"]
                prober = asyncio.create_task(run_prober(load_config(tmp_path / "prober.yaml"), None, stop))

                def reports() -> list[dict[str, Any]]:
                    return [m for m in everything if m.get("vantage") == vantage]

                await wait_for(lambda: len(reports()) >= 4, 15, "the prober's reports through the leaf node")
                assert not prober.done(), prober
                assert {r["cluster"] for r in reports()} == {c["name"] for c in config["clusters"]}

                # anything else sent to the leaf is dropped by the hub (the leaf user's permissions)
                leaf = await nats.connect(f"nats://127.0.0.1:{local_port}", allow_reconnect=False)
                try:
                    forged = {"vantage": "us-prober", "cluster": "eu-west", "probe": "ingress", "ok": False}
                    for subject in (
                        "failover.health.us-prober.eu-west.ingress",  # another vantage
                        "failover.events.cluster",  # an event
                        "failover.audit",
                        "failover.internal.cmd",
                        "$KV.failover-leader.leader",  # the lease
                    ):
                        await leaf.publish(subject, json.dumps(forged).encode())
                    marker = {"vantage": vantage, "cluster": "marker", "probe": "marker", "ok": True}
                    await leaf.publish(
                        f"failover.health.{vantage}.marker.marker", json.dumps(marker).encode()
                    )
                    await leaf.flush(timeout=2)
                    await wait_for(
                        lambda: any(m.get("cluster") == "marker" for m in everything),
                        5,
                        "the leaf's own health",
                    )
                finally:
                    await leaf.close()
                assert not [m for m in everything if m.get("vantage") == "us-prober"]
                lease = await bus.js.stream_info("KV_failover-leader")
                assert lease.state.messages == 0, "the leaf's write to the lease bucket was dropped"
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(prober, 5)
                await bus.close()
    finally:
        await app.stop()
