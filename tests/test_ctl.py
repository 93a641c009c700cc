"""`failover ctl` as a person runs it: a subprocess against a running daemon (real NATS and HAProxy),
with the exit codes of DESIGN §3 (0 done, 1 refused or failed, 2 usage)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.bus.embedded import EmbeddedNats, free_port
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_api import ADMIN, OPERATOR, SECRETS, TOKENS, VIEWER
from tests.test_daemon import all_healthy, running

pytestmark = pytest.mark.timeout(90)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def ctl(api: str, *args: str, token: str | None = None) -> Result:
    """`failover ctl --api API ARGS`, the token through FAILOVER_TOKEN as a script would pass it."""
    env = {k: v for k, v in os.environ.items() if k not in ("FAILOVER_TOKEN", "FAILOVER_API")}
    if token:
        env["FAILOVER_TOKEN"] = token
    env["FAILOVER_API"] = api
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "ctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    result = Result(proc.returncode or 0, out.decode(), err.decode())
    for secret in SECRETS:
        assert secret not in result.out + result.err
    return result


async def test_ctl_reads_pause_and_resume(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon:
            assert daemon.api is not None
            api = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            r = await ctl(api, "status", token=VIEWER)
            assert r.code == 0, r.err
            assert "ready:             yes" in r.out and "paused:            no" in r.out
            for name in ("eu-west", "us-east", "ap-south"):
                assert name in r.out

            r = await ctl(api, "clusters", token=VIEWER)
            assert r.code == 0, r.err
            header, *rows = [line.split() for line in r.out.splitlines() if line.strip() and "──" not in line]
            assert header == ["CLUSTER", "STATE", "NOMINAL", "GLOBAL", "LABELS"]
            assert rows == [
                ["eu-west", "healthy", "100", "100"],
                ["us-east", "healthy", "100", "100"],
                ["ap-south", "healthy", "100", "100"],
            ]

            r = await ctl(api, "runs", token=VIEWER)
            assert (r.code, r.out.strip()) == (0, "no runs")

            r = await ctl(api, "pause", "us-east", "--for", "1h", token=OPERATOR)
            assert r.code == 0, r.err
            assert r.out.startswith("paused automation for us-east until 20"), r.out
            r = await ctl(api, "status", token=VIEWER)
            assert "paused:            us-east by otto until 20" in r.out, r.out
            r = await ctl(api, "resume", "us-east", token=OPERATOR)
            assert (r.code, r.out.strip()) == (0, "resumed automation for us-east")
            r = await ctl(api, "--json", "status", token=VIEWER)
            assert r.code == 0 and json.loads(r.out)["paused"] == []

            # --json before or after the command; the output parses
            r = await ctl(api, "--json", "clusters", token=VIEWER)
            assert [c["weights"] for c in json.loads(r.out)["clusters"]] == [{"global": 100}] * 3
            r = await ctl(api, "runs", "--json", "--limit", "5", token=VIEWER)
            assert json.loads(r.out) == {"runs": [], "next": None}

            # refused: exit 1 and the daemon's reason; usage errors: exit 2
            r = await ctl(api, "pause", "us-east", token=VIEWER)
            assert (r.code, r.err.strip()) == (
                1,
                "error: pause needs the operator role; vera has viewer (HTTP 403)",
            )
            r = await ctl(api, "status", token="wrong")
            assert (r.code, r.err.strip()) == (1, "error: a valid token is required (HTTP 401)")
            r = await ctl(api, "status")
            assert r.code == 1
            r = await ctl(api, "run", "0123456789abcdef", token=VIEWER)
            assert (r.code, r.err.strip()) == (1, "error: no run 0123456789abcdef (HTTP 404)")
            r = await ctl(api, "pause", "atlantis", token=OPERATOR)
            assert (r.code, r.err.strip()) == (1, "error: unknown cluster 'atlantis' (HTTP 404)")
            for usage in (["failover"], ["runs", "--limit", "0"], ["reboot"], ["--api", "ftp://x", "status"]):
                r = await ctl(api, *usage, token=OPERATOR)
                assert r.code == 2, (usage, r)


async def test_ctl_failover_drains_and_approvals(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon:
            assert daemon.api is not None and daemon.approvals is not None
            api = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            r = await ctl(api, "failover", "us-east", token=VIEWER)
            assert (r.code, r.err.strip()) == (
                1,
                "error: failover needs the operator role; vera has viewer (HTTP 403)",
            )
            r = await ctl(api, "failover", "us-east", "--force", token=OPERATOR)
            assert (r.code, r.err.strip()) == (
                1,
                "error: failover needs the admin role; otto has operator (HTTP 403)",
            )
            assert await f.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}

            # an operator's drain waits for an approval; a denial ends it and nothing moves
            r = await ctl(api, "--json", "failover", "us-east", token=OPERATOR)
            assert r.code == 0, r.err
            (asked,) = json.loads(r.out)["runs"]

            async def waiting() -> bool:
                status = await ctl(api, "--json", "status", token=VIEWER)
                return asked in json.loads(status.out)["waiting_approval"]

            await wait_for(waiting, 10, "the run waits for an approval")
            r = await ctl(api, "deny", asked, token=OPERATOR)
            assert (r.code, r.out.strip()) == (0, f"run {asked} denied")
            r = await ctl(api, "approve", asked, token=OPERATOR)
            assert r.code == 1 and "is not waiting for an approval (HTTP 409)" in r.err

            async def settled(run_id: str, status: str) -> bool:
                r = await ctl(api, "--json", "run", run_id, token=VIEWER)
                return r.code == 0 and json.loads(r.out)["status"] == status

            await wait_for(lambda: settled(asked, "failed"), 10, "the denied run failed")
            assert (await f.weights())["us-east"] == 100

            # an admin's --force drains at once
            r = await ctl(api, "failover", "us-east", "--force", token=ADMIN)
            assert r.code == 0, r.err
            assert r.out.startswith("failover of us-east: started run "), r.out
            forced = r.out.split("started run ")[1].split()[0]

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 10, "us-east drained")
            await wait_for(lambda: settled(forced, "succeeded"), 10, "the forced run succeeded")
            r = await ctl(api, "run", forced, token=VIEWER)
            assert r.code == 0
            assert "playbook:  manual-drain" in r.out and "actor:     ada" in r.out
            steps = {
                line.split()[0]: line.split()[1:]
                for line in r.out.splitlines()
                if line.startswith(("approve", "drain"))
            }
            assert steps["approve"][:2] == ["approval", "skipped"]
            assert steps["drain"][:3] == ["lb.drain", "succeeded", "1"]
            assert "global/us-east weight 100 -> 0" in r.out

            r = await ctl(api, "runs", token=VIEWER)
            lines = r.out.splitlines()
            assert any(forced in line and "manual-drain" in line and "succeeded" in line for line in lines), (
                r.out
            )
            r = await ctl(api, "clusters", token=VIEWER)
            assert any(
                line.split()[:4] == ["us-east", "healthy", "100", "0"] for line in r.out.splitlines()
            ), r.out


def test_ctl_without_a_daemon_fails_with_exit_1() -> None:
    port = free_port()
    env = {**os.environ, "FAILOVER_API": f"http://127.0.0.1:{port}"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "ctl", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: cannot reach the API at http://127.0.0.1:{port}")
