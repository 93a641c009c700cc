"""API exposure (issue 12, findings 1 and 7; DESIGN §12 "API exposure"): no anonymous admin on a network
address, JSON-only mutating requests with an Origin check, DNS rebinding refused, bounded and audited
pauses, a pause record that cannot break a reader, every command audited. The shipped `deploy/` (tokens from
a Secret, no anonymous access) is checked in tests/test_deploy.py."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml

from orchestrator.api.context import ApiContext
from orchestrator.api.server import ApiServer, build_app
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.bus.state import MemoryStateStore, pause_in_force, pause_key
from orchestrator.core import subjects
from orchestrator.core.config import Config, load_config
from orchestrator.core.errors import PermanentError, ValidationFailed
from orchestrator.core.metrics import Metrics
from orchestrator.playbooks.guards import pause_reason
from orchestrator.playbooks.scheduling import Run
from orchestrator.runtime.daemon import Daemon
from tests.helpers import Fleet, collect, fleet, hook_receiver, wait_for, write_config
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = "tok-operator-4e1d0c"
TOKENS = f"[{{token: {OPERATOR}, role: operator, name: otto}}]"
SOLO = "clusters:\n  - {name: solo, probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 1}}]}\n"
JSON_HEADERS = {"Content-Type": "application/json"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def with_api(path: Path, api: str) -> Path:
    """Replace the `api:` line `write_config` wrote with `api`."""
    text = re.sub(r"^api: .*$", lambda _m: f"api: {api}", path.read_text(), count=1, flags=re.M)
    path.write_text(text)
    return path


@asynccontextmanager
async def daemon_with(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, api: str
) -> AsyncIterator[tuple[Daemon, Fleet, str]]:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = with_api(write_config(tmp_path, f, hook.url, nats_url=nats_server.url), api)
        async with running(path) as daemon:
            assert daemon.api is not None
            await wait_for(lambda: bool(daemon.leadership and daemon.leadership.is_leader), 10, "leading")
            yield daemon, f, f"127.0.0.1:{daemon.api.port}"


async def call(
    session: aiohttp.ClientSession,
    host: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    async with session.request(method, f"http://{host}{path}", headers=sent, data=data) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type == "application/json" else text


# finding 1: no anonymous admin on a network address ------------------------------------------------


def test_a_network_listen_without_tokens_is_refused_by_validate_and_at_start(tmp_path: Path) -> None:
    config = tmp_path / "failover.yaml"
    config.write_text("api:\n  listen: 0.0.0.0:8080\n" + SOLO)
    with pytest.raises(ValidationFailed) as info:
        load_config(config, env={})
    assert [str(p) for p in info.value.problems] == [
        f"{config}:2: api.listen: 0.0.0.0:8080 is not loopback and api.tokens is empty: anyone who can "
        "reach it would be admin; configure api.tokens (or api.allow_anonymous: true to accept that)"
    ]
    result = run_cli("validate", "--config", str(config), str(ROOT / "playbooks"))
    assert result.returncode == 1 and f"{config}:2: api.listen: 0.0.0.0:8080 is not loopback" in result.stderr
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 1 and "api.listen: 0.0.0.0:8080 is not loopback" in result.stderr

    # loopback without tokens stays fine for a laptop; so does a network address with tokens
    config.write_text("api:\n  listen: 127.0.0.1:8080\n" + SOLO)
    assert not load_config(config, env={}).api.tokens
    config.write_text("api:\n  listen: '[::]:8080'\n  tokens: [{token: t0k3n, role: admin}]\n" + SOLO)
    assert load_config(config, env={}).api.tokens

    # the opt-out is accepted, and validate says loudly what it means
    config.write_text("api:\n  listen: 0.0.0.0:8080\n  allow_anonymous: true\n" + SOLO)
    assert load_config(config, env={}).api.allow_anonymous
    result = run_cli("validate", "--config", str(config), str(ROOT / "playbooks" / "drain.yaml"))
    assert "warning" in result.stderr.lower() and "anonymous" in result.stderr, result.stderr
    assert "api.allow_anonymous" in result.stderr


async def test_the_server_itself_refuses_anonymous_exposure_and_warns_when_allowed() -> None:
    """A config built in code (not through `load_config`) is held to the same rule when the API starts,
    and the opt-out is said loudly in the start log."""
    for allow in (False, True):
        config = Config.model_validate(
            {
                "api": {"listen": "0.0.0.0:0", "allow_anonymous": allow},
                "clusters": yaml.safe_load(SOLO)["clusters"],
            }
        )
        ctx = ApiContext(config, Metrics(), readiness=dict, status=dict)
        server = ApiServer(build_app(ctx), "0.0.0.0", 0)
        with structlog.testing.capture_logs() as logs:
            if not allow:
                with pytest.raises(PermanentError, match=r"without api\.tokens"):
                    await server.start()
                continue
            await server.start()
        try:
            assert any(e["event"] == "api.anonymous_admin" and e["log_level"] == "warning" for e in logs), (
                logs
            )
        finally:
            await server.stop()


def test_empty_tokens_and_bad_api_names_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "failover.yaml"
    for api, where in (
        ("{listen: 0.0.0.0:8080, tokens: [{token: '', role: admin}]}", "api.tokens[0].token"),
        ("{listen: 0.0.0.0:8080, tokens: [{token: '  ', role: admin}]}", "api.tokens[0].token"),
        ("{external_url: 'ftp://failover.example.com'}", "api.external_url"),
        ("{allowed_hosts: ['evil.example:80/x']}", "api.allowed_hosts"),
    ):
        config.write_text(f"api: {api}\n" + SOLO)
        with pytest.raises(ValidationFailed) as info:
            load_config(config, env={})
        assert any(f"{config}:1: {where}" in str(p) for p in info.value.problems), info.value.problems


async def test_mutating_requests_need_json_and_their_own_origin_and_are_audited(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    api = "{listen: 127.0.0.1:0, tokens: " + TOKENS + "}"
    async with (
        daemon_with(nats_server, haproxy_binary, tmp_path, api) as (daemon, _f, host),
        aiohttp.ClientSession() as session,
    ):
        assert daemon.bus is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        pause = json.dumps({"command": "pause", "args": {"cluster": "us-east"}}).encode()
        # what a browser form or a "simple" cross-site fetch can send: refused before anything acts
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            status, body = await call(
                session, host, "POST", "/api/v1/commands", token=OPERATOR,
                headers={"Content-Type": content_type}, data=pause,
            )  # fmt: skip
            assert status == 415 and "application/json" in body["error"], (content_type, body)
        status, body = await call(session, host, "POST", "/api/v1/commands", data=pause)
        assert status == 415
        # another origin: refused even with a valid token; the API's own origin is fine
        for origin in ("http://evil.example", "null", f"https://{host}", "http://127.0.0.1:1"):
            status, body = await call(
                session, host, "POST", "/api/v1/commands", token=OPERATOR,
                headers={**JSON_HEADERS, "Origin": origin}, data=pause,
            )  # fmt: skip
            assert status == 403 and "origin" in body["error"].lower(), (origin, body)
        status, body = await call(session, host, "GET", "/api/v1/status", token=OPERATOR)
        assert status == 200 and body["paused"] == [], "no refused request paused anything"
        status, body = await call(
            session, host, "POST", "/api/v1/commands", token=OPERATOR,
            headers={**JSON_HEADERS, "Origin": f"http://{host}"}, data=pause,
        )  # fmt: skip
        assert status == 200, body

        async def audited() -> bool:
            return len(audit) >= 9

        await wait_for(audited, 5, "every refused request audited")
        results = [(a["actor"], a["command"], a["result"]) for a in audit]
        assert sum(1 for r in results if r[0] == "otto" and "application/json" in r[2]) == 3, results
        assert ("unauthenticated", "(invalid request)") in [(r[0], r[1]) for r in results]
        assert sum(1 for r in results if r[0] == "otto" and "origin" in r[2].lower()) == 4, results
        assert ("otto", "pause", "ok") in results
        assert OPERATOR not in json.dumps(audit)


async def test_anonymous_api_answers_only_to_its_own_names(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends `Host:
    evil.example`; without tokens nothing else stands between it and the API."""
    api = "{listen: 127.0.0.1:0, external_url: 'https://failover.example.com', allowed_hosts: [ops.internal]}"
    async with (
        daemon_with(nats_server, haproxy_binary, tmp_path, api) as (_daemon, _f, host),
        aiohttp.ClientSession() as session,
    ):
        port = host.rpartition(":")[2]
        for name in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil"):
            for method, path in (("GET", "/api/v1/status"), ("GET", "/"), ("POST", "/api/v1/commands")):
                status, _body = await call(
                    session, host, method, path,
                    headers={**JSON_HEADERS, "Host": name}, data=b'{"command": "status"}',
                )  # fmt: skip
                assert status == 421, (name, method, path, status)
        for name in (host, f"localhost:{port}", "failover.example.com", "ops.internal:443", f"[::1]:{port}"):
            status, body = await call(session, host, "GET", "/api/v1/status", headers={"Host": name})
            assert status == 200, (name, body)
        # open routes stay open to kubelets and scrapers, whatever name they use
        status, _body = await call(session, host, "GET", "/healthz", headers={"Host": "10-0-0-7.pod"})
        assert status == 200
        # with api.external_url set, the origin to match is that URL's
        status, body = await call(
            session, host, "POST", "/api/v1/commands",
            headers={**JSON_HEADERS, "Host": "failover.example.com", "Origin": "https://failover.example.com"},
            data=b'{"command": "status"}',
        )  # fmt: skip
        assert status == 200, body
        status, body = await call(
            session, host, "POST", "/api/v1/commands",
            headers={**JSON_HEADERS, "Origin": f"http://{host}"}, data=b'{"command": "status"}',
        )  # fmt: skip
        assert status == 403, body


# finding 7: bounded, audited pauses; pause records no reader can trip over ---------------------------


async def test_pause_for_is_bounded_audited_and_a_bad_pause_record_breaks_no_reader(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    api = "{listen: 127.0.0.1:0, tokens: " + TOKENS + "}"
    async with (
        daemon_with(nats_server, haproxy_binary, tmp_path, api) as (daemon, _f, host),
        aiohttp.ClientSession() as session,
    ):
        assert daemon.bus is not None
        audit = await collect(daemon.bus, subjects.AUDIT)

        async def command(name: str, args: dict[str, Any]) -> tuple[int, Any]:
            body = json.dumps({"command": name, "args": args}).encode()
            return await call(
                session, host, "POST", "/api/v1/commands", token=OPERATOR, headers=JSON_HEADERS, data=body
            )

        for too_long in ("99999999999d", "31d", "2592001s", "1e400s"):
            status, body = await command("pause", {"for": too_long})
            assert status == 400, (too_long, body)
            assert "at most 30d" in body["error"] or "duration" in body["error"], body
        status, body = await call(session, host, "GET", "/api/v1/status", token=OPERATOR)
        assert (status, body["paused"]) == (200, []), "a refused pause stored nothing"
        status, body = await command("pause", {"cluster": "us-east", "for": "30d"})
        assert status == 200 and body["result"]["until"], body
        status, body = await command("resume", {"cluster": "us-east"})
        assert status == 200, body

        async def audited() -> bool:
            return len([a for a in audit if a["command"] in ("pause", "resume")]) >= 6

        await wait_for(audited, 5, "every pause and resume audited")
        pauses = [
            (a["actor"], a["command"], a["result"]) for a in audit if a["command"] in ("pause", "resume")
        ]
        assert sum(1 for p in pauses if p[0] == "otto" and p[2].startswith("error: ")) == 4, pauses
        assert ("otto", "pause", "ok") in pauses and ("otto", "resume", "ok") in pauses

        # a pause record as a buggy or older writer might have left it: every reader stays total
        kv = daemon.bus.kv.state
        for until in (b"8.64e15", b'"tomorrow"', b"1e308", b"true", b"-1e308"):
            await kv.put(pause_key("us-east"), b'{"by": "mallory", "at": 1, "until": ' + until + b"}")
            status, body = await call(session, host, "GET", "/api/v1/status", token=OPERATOR)
            assert status == 200, (until, body)
            assert all(p["until"] is None or p["until"].endswith("Z") for p in body["paused"]), body
            status, _page = await call(session, host, "GET", f"/?access_token={OPERATOR}")
            assert status == 200, until
        await kv.put(pause_key(None), b'{"by": "mallory", "at": "x", "until": "later"}')
        status, body = await call(session, host, "GET", "/api/v1/status", token=OPERATOR)
        assert status == 200, body


@pytest.mark.parametrize(
    ("until", "in_force"),
    [
        (None, True),
        (1e300, True),  # past year 9999: until resumed
        (8.64e15, True),
        ("tomorrow", True),  # unreadable: still a pause, until resumed (it holds automation, never runs it)
        (True, True),
        (math.nan, True),
        (math.inf, True),
        (-math.inf, True),
        (5.0, False),
        (2e9, True),
    ],
)
async def test_pause_readers_are_total(until: object, in_force: bool) -> None:
    now = 1e9
    record = {"by": "mallory", "at": now, "until": until}
    assert pause_in_force(record, now) is in_force
    store = MemoryStateStore()
    await store.put(pause_key("eu-west"), record)
    found = await store.pause_for("eu-west")
    assert (found is not None) is pause_in_force(record, time.time())
    run = Run(id="r1", playbook="p", event={"cluster": "eu-west"}, key="cluster:eu-west")
    reason = await pause_reason(store, run)  # the runner's guard formats `until`: it must not raise
    assert (reason is not None) is (found is not None)
    assert pause_in_force("not a dict", now) is False
