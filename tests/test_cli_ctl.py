"""`failover ctl` findings of issue 17, against a running daemon (real NATS and HAProxy): options after
the command, a blocked run reported as blocked (exit 1, naming why), `run ID --watch` following a run
to its end and exiting with its outcome, and the leader in `status`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from orchestrator.bus.embedded import EmbeddedNats
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_api import ADMIN, OPERATOR, TOKENS, VIEWER
from tests.test_ctl import ctl
from tests.test_daemon import all_healthy, running

pytestmark = pytest.mark.timeout(120)


async def test_options_after_the_command_blocked_runs_and_watch(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon:
            assert daemon.api is not None
            api = f"http://127.0.0.1:{daemon.api.port}"
            nowhere = "http://127.0.0.1:9"  # the environment's default, overridden after the command
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            # --url/--api and --token after the command win over the environment and the group's
            r = await ctl(nowhere, "status", "--url", api, "--token", VIEWER)
            assert r.code == 0, r.err
            assert "ready:" in r.out
            r = await ctl(nowhere, "--api", nowhere, "clusters", "--api", api, "--token", VIEWER, "--json")
            assert r.code == 0, r.err
            assert len(json.loads(r.out)["clusters"]) == 3
            r = await ctl(nowhere, "status", "--url", "ftp://x")
            assert r.code == 2

            # a drain of a paused cluster is blocked: exit 1 and why, not "started run"
            r = await ctl(api, "pause", "us-east", "--token", OPERATOR)
            assert r.code == 0, r.err
            r = await ctl(api, "failover", "us-east", "--token", OPERATOR)  # --force would override pause
            assert r.code == 1, r
            assert "started run" not in r.out
            blocked = r.err.split("run ")[1].split()[0]
            assert r.err.strip().startswith(f"error: failover of us-east: run {blocked} blocked: "), r.err
            assert "paused" in r.err and "otto" in r.err, r.err
            assert (await f.weights())["us-east"] == 100

            # watching a finished run: its outcome is the exit code
            r = await ctl(api, "run", blocked, "--watch", "--token", VIEWER)
            assert r.code == 1, r
            assert "status:    blocked" in r.out

            # automation paused as a whole: the same, naming it
            r = await ctl(api, "resume", "us-east", "--token", OPERATOR)
            assert r.code == 0, r.err
            r = await ctl(api, "pause", "--token", OPERATOR)
            assert r.code == 0, r.err
            r = await ctl(api, "failback", "us-east", "--token", OPERATOR)
            assert r.code == 1 and " blocked: " in r.err, r
            r = await ctl(api, "resume", "--token", OPERATOR)
            assert r.code == 0, r.err

            # a run that goes ahead is "started"; --watch follows it to the end and exits 0
            r = await ctl(api, "failover", "us-east", "--force", "--token", ADMIN)
            assert r.code == 0, r
            assert r.out.startswith("failover of us-east: started run "), r.out
            forced = r.out.split("started run ")[1].split()[0]
            r = await ctl(api, "run", forced, "--watch", "--token", VIEWER)
            assert r.code == 0, r
            assert "step drain succeeded" in r.out and "run succeeded" in r.out, r.out
            assert "status:    succeeded" in r.out
            assert (await f.weights())["us-east"] == 0


async def test_watch_ends_cleanly_on_ctrl_c(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon:
            assert daemon.api is not None
            api = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            r = await ctl(api, "--json", "failover", "us-east", "--token", OPERATOR)  # waits for approval
            assert r.code == 0, r.err
            (waiting,) = json.loads(r.out)["runs"]
            env = {**os.environ, "FAILOVER_API": api, "FAILOVER_TOKEN": VIEWER}
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orchestrator",
                "ctl",
                "run",
                waiting,
                "--watch",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)  # it is watching
            assert b"run running" in line, line
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 130
            assert err.decode().strip() == f"stopped watching run {waiting}; the run goes on"
            assert "Traceback" not in out.decode() + err.decode()


async def test_status_shows_the_leader(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon:
            assert daemon.api is not None and daemon.leadership is not None
            api = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: daemon.leadership is not None and daemon.leadership.is_leader, 10, "leads")
            r = await ctl(api, "status", "--token", VIEWER)
            assert r.code == 0, r.err
            (line,) = [x for x in r.out.splitlines() if x.startswith("leader:")]
            holder, term = daemon.leadership.holder, daemon.leadership.term
            assert line.startswith(f"leader:            {holder} (term {term}"), line
            assert line.endswith("; this replica answered)"), line
