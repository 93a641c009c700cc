"""Hostile input is refused, never fatal (issue 12, findings 9, 11, 12 and 13).

- YAML: recursive aliases, alias bombs and deep nesting are refused with `file:line: path: message`, and a
  bad playbook on hot reload leaves the daemon running with its last good set.
- Signatures: `signing.verify` answers a bool for any header; signed messages carry `X-Failover-Id`,
  covered by the signature, so a receiver can drop a replayed request.
- `body_regex` runs in linear time (RE2) and is checked with RE2's syntax at config load.
- JSON: an over-deep or malformed body is a 400 from the API and an error answer on `failover.cmd`; a
  forwarded command whose answer is not a command answer is an error, not an exception.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from orchestrator.actuators.webhook import WebhookBalancer
from orchestrator.api.commands import Commands
from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import signing, subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_clusters import HttpProbe
from orchestrator.core.config_drivers import LoadBalancerConfig, NotifierConfig
from orchestrator.core.errors import ValidationFailed
from orchestrator.notifiers import Notification, build_notifier
from orchestrator.playbooks.loader import load_playbook
from orchestrator.probes.checks import check_http
from tests.helpers import collect, fleet, hook_receiver, wait_for, write_config
from tests.test_api import ADMIN, api_daemon
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(90)

PLAYBOOK_HEAD = "name: hostile\non: {event: cluster.failed}\n"


def refusals(path: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_playbook(path, None)
    return [str(p) for p in info.value.problems]


# 9. YAML ------------------------------------------------------------------------------------------------


def test_a_recursive_alias_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(PLAYBOOK_HEAD + "steps: &s [*s]\n")
    assert refusals(path) == [
        f"{path}:3: steps[0]: recursive alias *s: it refers to the value that contains it"
    ]
    merge = tmp_path / "merge.yaml"
    merge.write_text(PLAYBOOK_HEAD + "vars: &v\n  a: 1\n  <<: *v\nsteps: []\n")
    assert refusals(merge) == [
        f"{merge}:5: vars.<<: recursive alias *v: it refers to the value that contains it"
    ]


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    # 300 bytes that expand to a million values: refused at the alias that crosses the limit
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip("abcde", "bcdef", strict=True)
    ]
    path = tmp_path / "laughs.yaml"
    path.write_text(PLAYBOOK_HEAD + "vars:\n" + "".join(f"  {line}\n" for line in levels) + "steps: []\n")
    assert len(path.read_bytes()) < 400
    # a: 11 values, b: 111, c: 1111; ten *a, ten *b and eight *c make more than 10000
    assert refusals(path) == [f"{path}:7: vars.d[7]: aliases expand to more than 10000 values"]


def test_deep_nesting_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(PLAYBOOK_HEAD + "vars: {x: " + "[" * 5000 + "]" * 5000 + "}\nsteps: []\n")
    [problem] = refusals(path)
    assert problem.startswith(f"{path}:3: vars.x" + "[0]" * 62 + ": ")
    assert problem.endswith("nested deeper than 64 levels")
    config = tmp_path / "deep-config.yaml"
    config.write_text("clusters: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(ValidationFailed, match="nested deeper than 64 levels"):
        load_config(config)


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        PLAYBOOK_HEAD
        + "vars: {defaults: &d {balancer: global, cluster: '{{ event.cluster }}'}}\n"
        + "steps:\n"
        + "  - {id: one, action: lb.drain, with: *d}\n"
        + "  - {id: two, action: lb.drain, with: {<<: *d, cluster: eu-west}}\n"
    )
    loaded = load_playbook(path, None)
    assert [s.with_ for s in loaded.playbook.steps] == [
        {"balancer": "global", "cluster": "{{ event.cluster }}"},
        {"balancer": "global", "cluster": "eu-west"},
    ]


async def test_a_bad_playbook_on_hot_reload_is_refused_and_the_daemon_keeps_running(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    books = tmp_path / "books"
    shutil.copytree(Path(__file__).resolve().parents[1] / "playbooks", books)
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, playbooks=books)
        async with running(path) as daemon:
            assert daemon.bus is not None and daemon.runner is not None
            events = await collect(daemon.bus, subjects.SYSTEM_EVENTS)
            good = {name: lp.sha256 for name, lp in daemon.runner.playbooks.items()}
            (books / "loop.yaml").write_text(PLAYBOOK_HEAD + "steps: &s [*s]\n")

            async def rejected() -> bool:
                return any(e["type"] == "playbooks.rejected" for e in events)

            await wait_for(rejected, 10, "playbooks.rejected")
            problems = next(e for e in events if e["type"] == "playbooks.rejected")["detail"]["problems"]
            assert problems == [
                f"{books}/loop.yaml:3: steps[0]: recursive alias *s: it refers to the value that contains it"
            ]
            assert {name: lp.sha256 for name, lp in daemon.runner.playbooks.items()} == good

            (books / "loop.yaml").unlink()  # the watcher still works: the next good set is taken
            daemon.request_reload()

            async def reloaded() -> bool:
                return any(e["type"] == "playbooks.reloaded" for e in events)

            await wait_for(reloaded, 10, "playbooks.reloaded after the refusal")
            assert daemon.watcher is not None


# 11. Signatures -----------------------------------------------------------------------------------------


def test_verify_answers_false_for_any_malformed_header() -> None:
    body = b'{"a":1}'
    good = signing.sign("k", body, timestamp=1000)
    for header in [
        "t=1000,v1=é",
        "t=1000,v1=" + "é" * 64,
        "t=\u0661\u0660\u0660\u0660,v1=00"  # Arabic-Indic digits,
        "t=1000,v1",
        "t=" + "9" * 5000 + ",v1=00",
        "t=1e3,v1=00",
        "",
        ",,,",
        good.replace("v1=", "v1=\udcff"),
        good + "," + good,
    ]:
        assert signing.verify("k", body, header, now=1000) is False, header
        assert signing.verify("k", body, header, now=1000, message_id="x") is False, header
    assert signing.verify("k", body, good, now=1000) is True
    assert signing.verify("k", body, good + ",v2=é", now=1000, message_id="0" * 32) is False


def test_the_message_id_is_covered_by_the_signature() -> None:
    body = b'{"a":1}'
    headers = signing.sign_headers("k", body, timestamp=1000)
    message_id = headers[signing.ID_HEADER]
    signature = headers[signing.HEADER]
    assert len(message_id) == 32 and message_id != signing.sign_headers("k", body)[signing.ID_HEADER]
    assert signing.verify("k", body, signature, now=1000, message_id=message_id)
    assert not signing.verify("k", body, signature, now=1000, message_id="0" * 32)  # id swapped: refused
    assert not signing.verify(
        "k", body, signing.sign("k", body, timestamp=1000), now=1000, message_id=message_id
    )
    # a receiver written before ids keeps working: `v1` is still there and still signs "<t>.<body>"
    assert signing.verify("k", body, signature, now=1000)
    assert signature.split(",")[:2] == signing.sign("k", body, timestamp=1000).split(",")


@dataclass
class Captured:
    url: str = ""
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@asynccontextmanager
async def capturing_receiver() -> AsyncIterator[Captured]:
    """Answers the webhook balancer's GET with weights and everything else with 204, keeping what came."""
    captured = Captured()

    async def handle(request: web.Request) -> web.StreamResponse:
        captured.requests.append((request.method, dict(request.headers), await request.read()))
        if request.method == "GET":
            return web.json_response({"weights": {"eu-west": 100, "us-east": 100}})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/in", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    captured.url = f"http://127.0.0.1:{port}/in"
    try:
        yield captured
    finally:
        await runner.cleanup()


async def test_signed_webhooks_carry_an_id_that_a_receiver_can_dedupe_on() -> None:
    async with capturing_receiver() as rx, aiohttp.ClientSession() as session:
        notifier = NotifierConfig.model_validate(
            {"name": "hook", "driver": "webhook", "webhook": {"url": rx.url, "secret": "s3"}}
        )
        await build_notifier(notifier, session).send(Notification("eu failed", "critical"))
        balancer = WebhookBalancer(
            LoadBalancerConfig.model_validate(
                {
                    "name": "ext",
                    "driver": "webhook",
                    "webhook": {"url": rx.url, "secret": "s3"},
                    "members": {"eu-west": "eu-west", "us-east": "us-east"},
                }
            )
        )
        try:
            await balancer.set_weights({"us-east": 100})  # already so: a GET, and the GET that checks
        finally:
            await balancer.close()
    ids = []
    for method, headers, body in rx.requests:
        message_id = headers.get(signing.ID_HEADER, "")
        assert signing.verify("s3", body, headers[signing.HEADER], message_id=message_id), method
        ids.append(message_id)
    assert [m for m, _h, _b in rx.requests] == ["POST", "GET", "GET"]
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)


# 12. body_regex -----------------------------------------------------------------------------------------


def test_body_regex_is_checked_with_re2_syntax(tmp_path: Path) -> None:
    for pattern, why in [
        (r"(a)\1", "invalid escape sequence"),
        (r"ok(?=x)", "invalid perl operator"),
        (r"[", "missing ]"),
    ]:
        with pytest.raises(ValueError, match="body_regex") as info:
            HttpProbe.model_validate({"url": "http://127.0.0.1/", "body_regex": pattern})
        assert why in str(info.value)
        assert "RE2" in str(info.value)
    assert HttpProbe.model_validate({"url": "http://127.0.0.1/", "body_regex": r"(?i)\bstatus\W+ok"})
    config = tmp_path / "c.yaml"
    config.write_text(
        "clusters:\n  - name: eu\n    probes:\n"
        "      - {name: ingress, http: {url: 'http://127.0.0.1/', body_regex: '(?<=x)ok'}}\n"
    )
    with pytest.raises(ValidationFailed) as refused:
        load_config(config)
    assert f"{config}:4: clusters[0].probes[0].http.body_regex: " in str(refused.value)


@pytest.mark.timeout(30)
async def test_a_catastrophic_body_regex_does_not_hold_the_event_loop() -> None:
    """`(a+)+$` against 64 KiB of `a` ending in `b`: backtracking takes longer than the universe; a
    linear-time engine answers at once. Before: the probe never returned (the test timed out)."""
    body = b"a" * (64 * 1024 - 1) + b"b"

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        spec = HttpProbe.model_validate({"url": f"http://127.0.0.1:{port}/", "body_regex": "(a+)+$"})
        async with aiohttp.ClientSession() as session:
            result = await check_http(session, spec, 5.0)
            assert not result.ok and "body does not match" in result.detail
            ok = HttpProbe.model_validate({"url": f"http://127.0.0.1:{port}/", "body_regex": "a{100}b$"})
            assert (await check_http(session, ok, 5.0)).ok
    finally:
        await runner.cleanup()


# 13. JSON bodies and failover.cmd -----------------------------------------------------------------------


class _AnyStr(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_STR = _AnyStr()


async def post(base: str, body: bytes, token: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/api/v1/commands", data=body, headers=headers) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type == "application/json" else text


async def test_deep_or_malformed_json_is_a_400_and_an_error_answer_never_a_crash(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with api_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, _f, api):
        assert daemon.bus is not None
        deep = b"[" * 60_000
        for token in (None, ADMIN):
            for body in (deep, b'{"command": "status", "args": ' + b"[" * 40 + b"]" * 40 + b"}"):
                status, answer = await post(api.base, body, token)
                assert status == 400, (token, status, answer)
                assert answer["ok"] is False and "nested deeper than 32" in answer["error"]
        assert await post(api.base, b"\xff{", ADMIN) == (400, {"ok": False, "error": ANY_STR})
        status, answer = await post(api.base, b'{"command": "status"}', ADMIN)
        assert status == 200 and answer["ok"] is True

        async def ask(payload: bytes) -> dict[str, Any]:
            assert daemon.bus is not None
            reply = await daemon.bus.request(subjects.COMMANDS, payload, timeout_s=5)
            answer: dict[str, Any] = json.loads(reply)
            return answer

        admin = ADMIN.encode()
        for payload in [
            deep,
            b'{"command": "status", "args": {"x": ' + b"[" * 100 + b"]" * 100 + b"}}",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"command": "status", "token": ["not", "a", "string"]}',
            b'{"command": "pause", "args": {"for": ["1s"]}, "token": "%s"}' % admin,
            b'{"command": "status", "token": "%s", "args": {"x": %s}}'
            % (ADMIN.encode(), b"[" * 33 + b"]" * 33),
            b" " * (70 * 1024),
        ]:
            answer = await ask(payload)
            assert answer["ok"] is False and answer["status"] == 400, (payload[:60], answer)
        assert (await ask(b'{"command": "status", "token": "%s"}' % admin))["ok"] is True  # still answering


async def test_a_forwarded_command_with_an_answer_that_is_not_one_is_an_error(bus: Bus) -> None:
    async def impostor(msg: Any) -> None:
        reply = {b"1": b"not json {", b"2": b"[1, 2]", b"3": b'{"ok": false, "status": "x"}'}
        await bus.publish(msg.reply, reply[json.loads(msg.data)["args"]["n"].encode()])

    sub = await bus.subscribe(subjects.INTERNAL_COMMANDS, impostor)  # where followers forward to
    none = cast(Any, None)  # a follower's forward uses the bus and the token list alone
    config = cast(Any, SimpleNamespace(api=SimpleNamespace(tokens=[])))
    follower = Commands(config, bus, none, none, none, none, dict, is_leader=lambda: False)
    try:
        for n in ("1", "2", "3"):
            answer = await follower.handle("failover", {"n": n}, None, "api")
            assert answer["ok"] is False and answer["status"] == 503, answer
            assert "not a command answer" in answer["error"]
    finally:
        await sub.unsubscribe()
