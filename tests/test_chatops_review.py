"""Review findings on chatops, each against the real daemon where the daemon is what failed: non-ASCII
credentials (a 500 without authenticating), Mattermost clicks from anywhere (any user ID), one person
asking in ctl and approving in chat, `response_url` to any host, buttons in a channel whose clicks are
refused, replays inside Slack's 5-minute window, duplicated signature headers, the unverified-audit cap,
and Block Kit sections cut mid-link."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from orchestrator.api.chatops import render
from orchestrator.api.chatops.render import Reply
from orchestrator.api.chatops.sources import client_address
from orchestrator.api.chatops.verify import (
    ReplayGuard,
    Unverified,
    sign_context,
    verify_context,
    verify_slack,
    verify_token,
)
from orchestrator.api.chatops.webapi import FollowUps, follow_up_prefixes
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_chatops import chatops_warnings
from orchestrator.core.errors import PermanentError
from orchestrator.runtime.daemon import Daemon
from tests.chatops_stand_ins import (
    Responses,
    click_body,
    command_body,
    post,
    serve,
    signed,
    texts,
)
from tests.helpers import Fleet, collect, fleet, hook_receiver, wait_for, write_config
from tests.test_chatops_slack import ALICE, BOB, chat_daemon
from tests.test_config import GOOD, problems, write
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(90)

MM_TOKEN, MM_SECRET = "mm-slash-command-t0ken", "mm-action-s3cr3t"
ANN, BEN = "a" * 26, "b" * 26
CHANNEL = "c" * 26
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are (aiohttp would refuse to send these headers); the status line back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(400), 5)
    finally:
        writer.close()
    return data.split(b"\r\n")[0]


def mm_yaml(extra: str = "") -> str:
    return (
        f"  mattermost: {{token: '{MM_TOKEN}', action_secret: '{MM_SECRET}', "
        "callback_url: 'https://failover.example.com/chatops/mattermost/actions', "
        f"users: {{{ANN}: {{role: operator, actor: ann}}, {BEN}: {{role: operator, actor: ben}}}}, "
        f"channels: ['{CHANNEL}']{extra}}}\n"
    )


@asynccontextmanager
async def mm_daemon(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, extra: str = ""
) -> AsyncIterator[tuple[Daemon, Fleet, aiohttp.ClientSession, str]]:
    async with (
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
        aiohttp.ClientSession() as session,
    ):
        path = write_config(
            tmp_path, f, hook.url, nats_url=nats_server.url, extra="chatops:\n" + mm_yaml(extra)
        )
        async with running(path) as daemon:
            assert daemon.api is not None
            yield daemon, f, session, f"http://127.0.0.1:{daemon.api.port}"


def mm_command(text: str, user: str) -> bytes:
    fields = {"token": MM_TOKEN, "channel_id": CHANNEL, "user_id": user, "user_name": "x", "text": text}
    return urlencode(fields).encode()


def mm_click(user: str, context: dict[str, Any]) -> bytes:
    body = {"user_id": user, "user_name": "x", "channel_id": CHANNEL, "post_id": "p" * 26, "context": context}
    return json.dumps(body).encode()


# P1-1 -----------------------------------------------------------------------------------------------


def test_non_ascii_credentials_are_unverified_never_an_exception() -> None:
    now = 1_700_000_000.0
    for headers in (
        {"X-Slack-Request-Timestamp": "\u00b2", "X-Slack-Signature": "v0=aa"},  # "²".isdigit() is True
        {"X-Slack-Request-Timestamp": "\u0661\u0662", "X-Slack-Signature": "v0=aa"},  # Arabic-Indic digits
        {"X-Slack-Request-Timestamp": str(int(now)), "X-Slack-Signature": "v0=\udcff"},  # lone surrogate
        {"X-Slack-Request-Timestamp": str(int(now)), "X-Slack-Signature": "v0=\u00e9"},
    ):
        with pytest.raises(Unverified):
            verify_slack("secret", headers, b"", now)
    for token in ("\udcff", "\u00e9", "t\x00"):
        with pytest.raises(Unverified):
            verify_token("token", token)
    context = sign_context("k", {"action": "failover_approve", "run": "r1", "channel": "c"}, now=now)
    for sig in ("\udcff", "\u00e9"):
        with pytest.raises(Unverified):
            verify_context("k", {**context, "sig": sig}, now)


async def test_non_ascii_headers_and_context_through_the_daemon_are_401(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with mm_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, _f, _session, _base):
        assert daemon.api is not None
        port = daemon.api.port
        end = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        requests = {
            "mattermost token": b"POST /chatops/mattermost/commands HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Token \xff\r\n" + end,
            "mattermost form token": b"POST /chatops/mattermost/commands HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 12\r\nConnection: close\r\n\r\ntoken=%C3%A9",
            "mattermost context": b"POST /chatops/mattermost/actions HTTP/1.1\r\nHost: x\r\n"
            b'Content-Length: 28\r\nConnection: close\r\n\r\n{"context":{"sig":"\\udcff"}}',
            "two Authorization headers": b"POST /chatops/mattermost/commands HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Token {MM_TOKEN}\r\nAuthorization: Token {MM_TOKEN}\r\n".encode()
            + end,
        }
        for what, request in requests.items():
            assert await raw(port, request) == b"HTTP/1.1 401 Unauthorized", what


async def test_non_ascii_slack_headers_through_the_daemon_are_401(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, _f, _s, _r, _session, _b):
        assert daemon.api is not None
        ts = str(int(daemon.chatops.chatops.clock() if daemon.chatops else 0)).encode()
        head = b"POST /chatops/slack/commands HTTP/1.1\r\nHost: x\r\n"
        end = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        cases = {
            "timestamp superscript two": b"X-Slack-Request-Timestamp: \xc2\xb2\r\n"
            b"X-Slack-Signature: v0=aa\r\n",
            "signature \\xff": b"X-Slack-Request-Timestamp: " + ts + b"\r\nX-Slack-Signature: v0=\xff\r\n",
        }
        for what, headers in cases.items():
            assert await raw(daemon.api.port, head + headers + end) == b"HTTP/1.1 401 Unauthorized", what


# P1-2 -----------------------------------------------------------------------------------------------


async def test_a_mattermost_click_from_a_source_not_allowed_is_refused(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """Mattermost's server is 192.0.2.7 behind a proxy on loopback: a context posted by someone else
    (straight from loopback, or through the proxy from 198.51.100.9 with a Mattermost address put in
    front) with Ben's user ID is refused; the same click from the Mattermost server approves."""
    extra = ", allowed_sources: ['192.0.2.7/32'], trusted_proxies: ['127.0.0.1/32']"
    async with mm_daemon(nats_server, haproxy_binary, tmp_path, extra) as (daemon, f, session, base):
        assert daemon.bus is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        via_proxy = {"X-Forwarded-For": "192.0.2.7"}
        commands, actions = f"{base}/chatops/mattermost/commands", f"{base}/chatops/mattermost/actions"
        status, answer, _ = await post(session, commands, mm_command("failover us-east", ANN), FORM)
        assert status == 403 and "allowed_sources" in answer["error"], answer
        status, answer, _ = await post(
            session, commands, mm_command("failover us-east", ANN), {**FORM, **via_proxy}
        )
        assert status == 200 and answer["response_type"] == "in_channel", answer
        context = answer["attachments"][0]["actions"][0]["integration"]["context"]
        assert daemon.chatops is not None
        assert context["exp"] <= daemon.chatops.chatops.clock() + 3600 + 5  # an hour, not a week
        run_id = context["run"]
        await wait_for(lambda: run_id in daemon.status()["waiting_approval"], 10, "waiting for approval")

        for headers, sender in (
            (JSON, "127.0.0.1"),
            ({**JSON, "X-Forwarded-For": "192.0.2.7, 198.51.100.9"}, "198.51.100.9"),
        ):
            status, answer, _ = await post(session, actions, mm_click(BEN, context), headers)
            assert (
                status == 403 and f"{sender} is not in chatops.mattermost.allowed_sources" in answer["error"]
            ), answer
        assert (await f.weights())["us-east"] == 100 and run_id in daemon.status()["waiting_approval"]

        status, answer, _ = await post(session, actions, mm_click(BEN, context), {**JSON, **via_proxy})
        assert status == 200 and "approved" in answer["update"]["message"], answer
        await wait_for(lambda: any(a["command"] == "(refused source)" for a in audit), 5, "audited")


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    from aiohttp.test_utils import make_mocked_request

    proxies = ["10.0.0.0/8"]

    def of(peer: str, xff: list[str]) -> str | None:
        headers = CIMultiDict[str]()
        for value in xff:
            headers.add("X-Forwarded-For", value)
        transport = type(
            "T", (), {"get_extra_info": lambda self, k, d=None: (peer, 1) if k == "peername" else d}
        )()
        request = make_mocked_request("POST", "/", headers=headers, transport=transport)
        address = client_address(request, proxies)
        return str(address) if address is not None else None

    assert of("192.0.2.1", ["198.51.100.1"]) == "192.0.2.1"  # not a proxy: its XFF is ignored
    assert of("10.1.1.1", ["198.51.100.1"]) == "198.51.100.1"
    assert of("10.1.1.1", ["203.0.113.9, 198.51.100.1, 10.2.2.2"]) == "198.51.100.1"  # rightmost untrusted
    assert of("10.1.1.1", ["203.0.113.9", "198.51.100.1"]) == "198.51.100.1"  # two headers: one list
    assert of("10.1.1.1", ["not-an-ip"]) is None
    assert of("10.1.1.1", []) == "10.1.1.1"


# P1-3 -----------------------------------------------------------------------------------------------

SLACK_OPERATOR_NO_ACTOR = """chatops:
  slack:
    signing_secret: s
    users:
      U0ALICE: operator
      U0CAROL: viewer
    channels: [C0OPS]
"""


def test_an_operator_chat_user_without_actor_is_refused_naming_the_user(tmp_path: Path) -> None:
    found = problems(write(tmp_path, GOOD + SLACK_OPERATOR_NO_ACTOR), {"HOOK_SECRET": "s"})
    [problem] = [p for p in found if "chatops" in p]
    assert re.search(r"\.yaml:\d+: chatops\.slack\.users\.U0ALICE: an operator needs actor", problem), found
    assert "two-person rule" in problem and "U0CAROL" not in problem
    admin = SLACK_OPERATOR_NO_ACTOR.replace("U0ALICE: operator", "U0ALICE: {role: admin}")
    assert any(
        "an admin needs actor" in p for p in problems(write(tmp_path, GOOD + admin), {"HOOK_SECRET": "s"})
    )


async def test_asking_with_a_token_and_approving_in_chat_as_the_same_actor_is_refused(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    users = f"{{{ALICE}: {{role: operator, actor: alice}}, {BOB}: {{role: operator, actor: ops}}}}"
    async with chat_daemon(nats_server, haproxy_binary, tmp_path, users=users) as (
        daemon,
        f,
        _slack,
        responses,
        session,
        base,
    ):
        async with session.post(
            f"{base}/api/v1/commands",
            json={"command": "failover", "args": {"cluster": "us-east"}},
            headers={"Authorization": "Bearer ops-token"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            [run_id] = (await resp.json())["result"]["runs"]
        await wait_for(lambda: run_id in daemon.status()["waiting_approval"], 10, "waiting for approval")
        mine = responses.new()
        body = click_body("failover_approve", run_id, BOB, mine)
        status, _, _ = await post(session, f"{base}/chatops/slack/interactions", body, signed(body))
        assert status == 200
        await wait_for(lambda: bool(responses.of(mine)), 5, "the answer to the click")
        assert "initiator cannot approve" in texts(responses.of(mine)[0])
        assert (await f.weights())["us-east"] == 100


# P2-6 -----------------------------------------------------------------------------------------------


async def test_follow_ups_go_only_to_allowed_prefixes() -> None:
    async with aiohttp.ClientSession() as session:
        follow = FollowUps(session, prefixes=("https://hooks.slack.com/",))
        for url in (
            "http://169.254.169.254/latest/meta-data",
            "http://hooks.slack.com/commands/T/1/x",  # not https
            "https://hooks.slack.com.evil.example/commands",
            "https://hooks.slack.com\\@evil.example/",
            "http://[::1/x",
        ):
            with pytest.raises(PermanentError, match="response_url"):
                await follow.post(url, {"text": "x"})
        assert follow.allowed("https://hooks.slack.com/commands/T1/2/abc")


async def test_a_click_with_a_response_url_elsewhere_is_not_followed(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    elsewhere = Responses()
    app = web.Application()
    app.router.add_post("/respond/{key}", elsewhere.handle)
    async with (
        serve(app) as other,
        chat_daemon(nats_server, haproxy_binary, tmp_path) as (_d, _f, _slack, responses, session, base),
    ):
        elsewhere.base = f"{other}/respond"
        stolen, mine = elsewhere.new(), responses.new()
        click = f"{base}/chatops/slack/interactions"
        for url in (stolen, mine):  # both refused (no such run): the answer goes to response_url
            body = click_body("failover_approve", "0123456789abcdef", ALICE, url)
            status, _, _ = await post(session, click, body, signed(body))
            assert status == 200
        await wait_for(lambda: bool(responses.of(mine)), 5, "the answer on the allowed response_url")
        await asyncio.sleep(0.3)
        assert elsewhere.of(stolen) == []


def test_response_url_prefixes_default_and_must_name_a_host_and_path(tmp_path: Path) -> None:
    env = {"HOOK_SECRET": "s"}
    section = (
        "chatops:\n  slack: {signing_secret: s, channels: [C0OPS]}\n"
        "  mattermost: {token: t, action_secret: a}\n"
    )
    config = load_config(write(tmp_path, GOOD + section), env=env)
    assert config.chatops.slack is not None and config.chatops.mattermost is not None
    assert config.chatops.slack.response_url_prefixes == ["https://hooks.slack.com/"]
    assert follow_up_prefixes(config.chatops.mattermost) == ()
    site = section.replace("action_secret: a}", "action_secret: a, site_url: 'https://chat.example.com'}")
    mm = load_config(write(tmp_path, GOOD + site), env=env).chatops.mattermost
    assert mm is not None and follow_up_prefixes(mm) == ("https://chat.example.com/",)
    bad = section.replace(
        "channels: [C0OPS]", "channels: [C0OPS], response_url_prefixes: ['https://hooks.slack.com']"
    )
    assert any("must end with /" in p for p in problems(write(tmp_path, GOOD + bad), env))


# P2-7 -----------------------------------------------------------------------------------------------


def test_approval_channels_outside_channels_are_refused_or_warned(tmp_path: Path) -> None:
    env = {"HOOK_SECRET": "s"}
    section = "chatops:\n  slack: {signing_secret: s, channel: C0APPROVE, channels: [C0OPS]}\n"
    found = problems(write(tmp_path, GOOD + section), env)
    assert any("chatops.slack: channel C0APPROVE is not in channels" in p for p in found), found
    anywhere = section.replace("[C0OPS]", "['*']")
    load_config(write(tmp_path, GOOD + anywhere), env=env)
    notifier = "  - {name: chat, driver: slack, slack: {bot_token: xoxb-1, channel: C0INCIDENT}}\n"
    text = GOOD.replace("notifiers:\n", "notifiers:\n" + notifier, 1) + section.replace(
        "channel: C0APPROVE, ", ""
    )
    config = load_config(write(tmp_path, text), env=env)
    [warning] = chatops_warnings(config.chatops, {"chat": "C0INCIDENT"})
    assert (
        "C0INCIDENT" in warning[1]
        and "notifier chat" in warning[1]
        and warning[0] == ("chatops", "slack", "channels")
    )
    assert chatops_warnings(config.chatops, {"chat": "C0OPS"}) == []


# P2-10 and P3 (duplicated headers, dropped audits) -------------------------------------------------


def test_replay_guard_is_bounded_and_forgets_after_the_window() -> None:
    guard = ReplayGuard(window_s=300.0, max_entries=3)
    guard.check("1", "a", now=1000.0)
    with pytest.raises(Unverified, match="replayed"):
        guard.check("1", "a", now=1001.0)
    for sig in ("b", "c", "d"):
        guard.check("1", sig, now=1002.0)
    assert len(guard) == 3
    guard.check("1", "a", now=1400.0)  # long gone: the timestamp window refuses it anyway


async def test_a_replayed_slack_request_is_refused(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, _f, _s, _r, session, base):
        assert daemon.bus is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        url = f"{base}/chatops/slack/commands"
        body = command_body("failover us-east --force", ALICE)
        headers = signed(body)
        status, _, _ = await post(session, url, body, headers)
        assert status == 200
        status, answer, _ = await post(session, url, body, headers)
        assert status == 401 and "replayed" in answer["error"], answer
        await wait_for(lambda: any("replayed" in a["result"] for a in audit), 5, "the replay audited")
        assert sum(a["command"] == "failover" for a in audit) == 1


async def test_duplicated_credential_headers_are_refused(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (_d, _f, _s, _r, session, base):
        url = f"{base}/chatops/slack/commands"
        for name, extra in (
            ("X-Slack-Signature", "v0=" + "0" * 64),
            ("X-Slack-Request-Timestamp", "1"),
        ):
            body = command_body("clusters", ALICE)
            headers = CIMultiDict(signed(body))
            headers.add(name, extra)
            async with session.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 401 and f"more than one {name}" in answer["error"], answer


async def test_unverified_requests_not_audited_are_counted_in_the_next_record(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, _f, _s, _r, session, base):
        assert daemon.bus is not None and daemon.chatops is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        url = f"{base}/chatops/slack/commands"
        start = daemon.chatops.chatops.clock()
        daemon.chatops.chatops.clock = lambda: start
        for _ in range(37):  # 30 audited, 7 only counted
            status, _, _ = await post(session, url, b"x", {})
            assert status == 401
        daemon.chatops.chatops.clock = lambda: start + 61
        status, _, _ = await post(session, url, b"x", {})
        assert status == 401
        await wait_for(lambda: len(audit) >= 31, 5, "the audit records")
        assert [a["args"].get("not_audited") for a in audit] == [None] * 30 + [7]


def test_a_long_line_is_never_split_inside_a_link_or_an_entity() -> None:
    link = "<https://failover.example.com/runs/abc|run abc>"
    for pad in range(2880, 2905, 3):
        line = "x" * pad + link + " &amp; " + "y" * 400
        message = render.slack_message(Reply("t", [line, "next"]))
        sections = [b["text"]["text"] for b in message["blocks"][1:]]
        for text in sections:
            assert len(text) <= 3000
            assert text.count("<") == text.count(">"), (pad, text[-60:])
            assert not re.search(r"&[a-z]*$", text) and not re.match(r"^[a-z]*;", text), pad
        assert "".join(sections).replace("\n", "").replace("…", "") == (line + "next").replace("…", "")


def test_mattermost_without_allowed_sources_is_warned_about(tmp_path: Path) -> None:
    env = {"HOOK_SECRET": "s"}
    section = "chatops:\n  mattermost: {token: t, action_secret: a}\n"
    config = load_config(write(tmp_path, GOOD + section), env=env)
    [(where, warning)] = chatops_warnings(config.chatops, {})
    assert where == ("chatops", "mattermost") and "allowed_sources is not set" in warning
    limited = section.replace("a}", "a, allowed_sources: [192.0.2.7]}")
    assert chatops_warnings(load_config(write(tmp_path, GOOD + limited), env=env).chatops, {}) == []
    bad = section.replace("a}", "a, allowed_sources: [mattermost.internal]}")
    assert any("is not an IP address or CIDR" in p for p in problems(write(tmp_path, GOOD + bad), env))
