"""Issue 15 against a real daemon (its real HTTP server), real NATS and a real HAProxy, with local
stand-ins for Slack's Web API and `response_url`: signatures (Slack's published vector), authorization
by user ID and channel, the two-person rule on Approve / Deny buttons, Slack failing for the button post,
and malformed requests."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from orchestrator.api.chatops.verify import Unverified, slack_signature, verify_slack
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.runtime.daemon import Daemon
from tests.chatops_stand_ins import (
    BOT_TOKEN,
    INCIDENTS,
    OPS,
    SIGNING_SECRET,
    Responses,
    SlackWebApi,
    click_body,
    command_body,
    post,
    signed,
    slack_side,
    texts,
)
from tests.helpers import Fleet, collect, fleet, hook_receiver, wait_for, write_config
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(90)

# Slack's worked example ("Verifying requests from Slack", api.slack.com / docs.slack.dev)
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TS = 1531420618
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
    b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
    b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

ALICE, BOB, CAROL, MALLORY = "U0ALICE", "U0BOB", "U0CAROL", "U0MALLORY"
TOKENS = "[{token: admin-token, role: admin, name: admin}, {token: ops-token, role: operator, name: ops}]"


def chatops_yaml(api_url: str, secret: str = SIGNING_SECRET, users: str = "", channels: str = "") -> str:
    users = users or (
        f"{{{ALICE}: {{role: operator, actor: alice}}, {BOB}: {{role: operator, actor: bob}}, "
        f"{CAROL}: viewer}}"
    )
    channels = channels or f"[{OPS}, {INCIDENTS}]"
    responses = api_url.removesuffix("/api") + "/respond/"  # the stand-in's response_url receiver
    return (
        f"chatops:\n  slack: {{signing_secret: '{secret}', bot_token: '{BOT_TOKEN}', api_url: '{api_url}', "
        f"timeout: 1s, users: {users}, channels: {channels}, response_url_prefixes: ['{responses}']}}\n"
    )


def config(tmp_path: Path, f: Fleet, hook_url: str, nats_url: str, slack: SlackWebApi, **kw: str) -> Path:
    """The fleet's config with the shipped playbooks, `oncall` a Slack bot (so an incident has a thread)
    and `chatops.slack` pointing at the stand-in."""
    path = write_config(
        tmp_path, f, hook_url, nats_url=nats_url, tokens=TOKENS, extra=chatops_yaml(slack.url, **kw)
    )
    text = re.sub(
        r"  - \{name: oncall, driver: webhook.*\n",
        f"  - {{name: oncall, driver: slack, slack: {{bot_token: '{BOT_TOKEN}', channel: {INCIDENTS}, "
        f"api_url: '{slack.url}', timeout: 1s}}}}\n",
        path.read_text(),
    )
    path.write_text(text)
    return path


@asynccontextmanager
async def chat_daemon(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, **kw: str
) -> AsyncIterator[tuple[Daemon, Fleet, SlackWebApi, Responses, aiohttp.ClientSession, str]]:
    async with (
        slack_side() as (slack, responses),
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
        aiohttp.ClientSession() as session,
    ):
        path = config(tmp_path, f, hook.url, nats_server.url, slack, **kw)
        async with running(path) as daemon:
            assert daemon.api is not None
            await wait_for(lambda: bool(daemon.leadership and daemon.leadership.is_leader), 10, "leads")
            yield daemon, f, slack, responses, session, f"http://127.0.0.1:{daemon.api.port}"


def test_slacks_published_example_verifies_and_one_changed_byte_does_not() -> None:
    assert slack_signature(DOC_SECRET, str(DOC_TS), DOC_BODY) == DOC_SIGNATURE
    headers = {"X-Slack-Request-Timestamp": str(DOC_TS), "X-Slack-Signature": DOC_SIGNATURE}
    verify_slack(DOC_SECRET, headers, DOC_BODY, now=DOC_TS + 1)
    with pytest.raises(Unverified, match="does not match"):
        verify_slack(DOC_SECRET, headers, DOC_BODY.replace(b"text=", b"text=x"), now=DOC_TS + 1)
    with pytest.raises(Unverified, match="old"):
        verify_slack(DOC_SECRET, headers, DOC_BODY, now=DOC_TS + 360)
    with pytest.raises(Unverified, match="ahead"):
        verify_slack(DOC_SECRET, headers, DOC_BODY, now=DOC_TS - 360)


async def test_signatures_through_the_daemon_vector_ok_the_rest_401_and_audited(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    kw = {"secret": DOC_SECRET, "users": "{U2CERLKJA: viewer}", "channels": "[G8PSS9T3V]"}
    async with chat_daemon(nats_server, haproxy_binary, tmp_path, **kw) as (
        daemon,
        _f,
        _s,
        _r,
        session,
        base,
    ):
        assert daemon.bus is not None and daemon.chatops is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        daemon.chatops.chatops.clock = lambda: DOC_TS + 30.0  # the daemon's clock at Slack's example time
        url = f"{base}/chatops/slack/commands"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        ok = {"X-Slack-Request-Timestamp": str(DOC_TS), "X-Slack-Signature": DOC_SIGNATURE, **form}
        status, answer, _ = await post(session, url, DOC_BODY, ok)
        assert status == 200, answer
        assert answer["response_type"] == "ephemeral" and "Failover commands" in texts(
            answer
        )  # `text=`: help

        changed = DOC_BODY.replace(b"user_name=roadrunner", b"user_name=roadrunnes")
        old = signed(DOC_BODY, DOC_SECRET, DOC_TS + 30 - 360)
        ahead = signed(DOC_BODY, DOC_SECRET, DOC_TS + 30 + 360)
        missing = {"X-Slack-Request-Timestamp": str(DOC_TS), **form}
        for body, headers, why in (
            (changed, ok, "does not match"),
            (DOC_BODY, old, "old"),
            (DOC_BODY, ahead, "ahead"),
            (DOC_BODY, missing, "missing X-Slack-Signature"),
        ):
            status, answer, _ = await post(session, url, body, headers)
            assert status == 401 and why in answer["error"], (why, answer)
        status, _, _ = await post(session, f"{base}/chatops/slack/interactions", DOC_BODY, missing)
        assert status == 401

        await wait_for(lambda: len(audit) >= 6, 5, "audit records")
        refused = [a for a in audit if a["command"] == "(unverified request)"]
        assert len(refused) == 5 and all(
            a["via"] == "slack" and a["actor"] == "unauthenticated" for a in refused
        )
        [helped] = [a for a in audit if a["command"] == "help"]
        assert helped["actor"] == "slack:U2CERLKJA" and helped["args"]["chat"] == {
            "user": "U2CERLKJA",
            "name": "roadrunner",
            "channel": "G8PSS9T3V",
        }
        assert DOC_SECRET not in json.dumps(audit)


async def test_unknown_user_and_unlisted_channel_are_refused_and_a_viewer_cannot_drain(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, f, _s, _r, session, base):
        assert daemon.bus is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        url = f"{base}/chatops/slack/commands"

        async def say(text: str, user: str, channel: str = OPS) -> dict[str, Any]:
            body = command_body(text, user, channel)
            status, answer, took = await post(session, url, body, signed(body))
            assert status == 200 and took < 3 and isinstance(answer, dict), (status, answer, took)
            return answer

        stranger = await say("failover us-east", MALLORY)
        assert stranger["response_type"] == "ephemeral"
        assert f"user {MALLORY}" in texts(stranger) and "chatops.slack.users" in texts(stranger)
        elsewhere = await say("status", ALICE, "C0RANDOM")
        assert "channel C0RANDOM" in texts(elsewhere) and "chatops.slack.channels" in texts(elsewhere)
        assert "user" not in texts(elsewhere).split("channel")[0]  # only what is missing is named
        viewer = await say("failover us-east", CAROL)
        assert viewer["response_type"] == "ephemeral" and "needs the operator role" in texts(viewer)
        status = await say("status", CAROL)
        assert "Failover status" in texts(status) and "us-east" in texts(status)
        usage = await say("failover", ALICE)
        assert "which cluster?" in texts(usage)
        assert (await f.weights())["us-east"] == 100

        await wait_for(lambda: len(audit) >= 5, 5, "audit records")
        trail = [(a["actor"], a["via"], a["command"], a["result"][:5]) for a in audit]
        assert trail == [
            (f"slack:{MALLORY}", "slack", "failover", "error"),
            ("alice", "slack", "status", "error"),
            (f"slack:{CAROL}", "slack", "failover", "error"),
            (f"slack:{CAROL}", "slack", "status", "ok"),
            ("alice", "slack", "(usage)", "error"),
        ]
        assert audit[0]["args"]["chat"] == {"user": MALLORY, "name": MALLORY.lower(), "channel": OPS}


async def test_two_person_rule_in_slack_buttons_then_drain_on_real_haproxy(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (
        daemon,
        f,
        slack,
        responses,
        session,
        base,
    ):
        assert daemon.bus is not None
        audit = await collect(daemon.bus, subjects.AUDIT)
        body = command_body("failover us-east", ALICE, response_url=responses.new())
        status, answer, took = await post(session, f"{base}/chatops/slack/commands", body, signed(body))
        assert status == 200 and took < 3, answer
        assert answer["response_type"] == "in_channel" and "another operator must approve" in texts(answer)
        [run_id] = re.findall(r"run `?([A-Za-z0-9_-]{8,})", texts(answer))[:1]

        await wait_for(lambda: len(slack.with_buttons()) == 1, 10, "the Approve / Deny buttons")
        [(ts, message)] = slack.with_buttons()
        [(thread, first)] = [(t, m) for t, m in slack.messages.items() if "thread_ts" not in m]
        assert message["thread_ts"] == thread and message["channel"] == INCIDENTS  # in the incident's thread
        assert "drain us-east" in texts(first) or "us-east" in texts(first)
        buttons = [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert [(b["action_id"], b["value"]) for b in buttons] == [
            ("failover_approve", run_id),
            ("failover_deny", run_id),
        ]

        click = f"{base}/chatops/slack/interactions"
        mine = responses.new()
        body = click_body("failover_approve", run_id, ALICE, mine)
        status, _, took = await post(session, click, body, signed(body))
        assert status == 200 and took < 3
        await wait_for(lambda: len(responses.of(mine)) == 1, 5, "the refusal to the initiator")
        [refusal] = responses.of(mine)
        assert refusal["response_type"] == "ephemeral" and refusal["replace_original"] is False
        assert "initiator cannot approve" in texts(refusal)
        assert (await f.weights())["us-east"] == 100

        theirs = responses.new()
        body = click_body("failover_approve", run_id, BOB, theirs)
        status, _, _ = await post(session, click, body, signed(body))
        assert status == 200

        async def drained() -> bool:
            return (await f.weights())["us-east"] == 0

        await wait_for(drained, 15, "us-east drained on HAProxy")
        await wait_for(lambda: slack.messages[ts]["updates"] >= 1, 10, "the approval message updated")
        updated = texts(slack.messages[ts])
        assert (
            "Approved" in updated
            and f"<@{BOB}>" in updated
            and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", updated)
        )
        assert not slack.with_buttons(), "the buttons are gone once decided"
        traffic = await f.traffic(12)
        assert "us-east" not in traffic and sum(traffic.values()) == 12

        await wait_for(lambda: sum(a["command"] == "approve" for a in audit) >= 2, 5, "approvals audited")
        approvals = [(a["actor"], a["via"], a["result"][:5]) for a in audit if a["command"] == "approve"]
        assert approvals == [("alice", "slack", "error"), ("bob", "slack", "ok")]
        [asked] = [a for a in audit if a["command"] == "failover"]
        assert asked["actor"] == "alice" and asked["runs"] == [run_id]
        assert BOT_TOKEN not in json.dumps(audit) and SIGNING_SECRET not in json.dumps(audit)


@pytest.mark.parametrize("trouble", ["ratelimited", "http500"])
async def test_slack_failing_the_button_post_never_blocks_the_approval(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, trouble: str
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (
        _daemon,
        f,
        slack,
        responses,
        session,
        base,
    ):
        body = command_body("failover us-east", ALICE, response_url=responses.new())
        _, answer, _ = await post(session, f"{base}/chatops/slack/commands", body, signed(body))
        [run_id] = re.findall(r"run `?([A-Za-z0-9_-]{8,})", texts(answer))[:1]
        await wait_for(lambda: bool(slack.messages), 10, "the incident's first message")
        if trouble == "ratelimited":
            slack.ratelimit_s = 30  # beyond what the poster waits out: it backs off
        else:
            slack.status = 500
        calls = len(slack.calls)
        await wait_for(lambda: len(slack.calls) > calls, 10, "the button post tried")
        assert not slack.with_buttons()

        # `failover ctl approve` (the same POST the CLI sends) still decides the run
        async with session.post(
            f"{base}/api/v1/commands",
            json={"command": "approve", "args": {"run": run_id}},
            headers={"Authorization": "Bearer ops-token"},
        ) as resp:
            assert resp.status == 200, await resp.text()

        async def drained() -> bool:
            return (await f.weights())["us-east"] == 0

        await wait_for(drained, 15, "us-east drained")
        slack.ratelimit_s, slack.status = None, 200
        assert not slack.with_buttons(), "a run no longer waiting gets no late buttons"


async def test_malformed_requests_are_400_never_a_crash(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with chat_daemon(nats_server, haproxy_binary, tmp_path) as (
        _daemon,
        _f,
        _s,
        _responses,
        session,
        base,
    ):
        commands, clicks = f"{base}/chatops/slack/commands", f"{base}/chatops/slack/interactions"
        bad_commands = [
            b"\xff\xfe not utf-8",
            b"user_id=U0ALICE",  # no channel
            b"user_id=&channel_id=C0OPS",
            b"user_id=U0ALICE&user_id=U0BOB&channel_id=C0OPS",
            b"%%%=&&&",
        ]
        for body in bad_commands:
            status, answer, _ = await post(session, commands, body, signed(body))
            assert status == 400 and answer["ok"] is False, (body, status, answer)
        deep = "[" * 5000 + "]" * 5000
        bad_clicks = [
            b"nopayload=1",
            b"payload=not-json",
            b"payload=" + quote("[1, 2]").encode(),
            b"payload=" + quote(deep).encode(),
            b"payload="
            + quote(
                json.dumps({"type": "block_actions", "user": "x", "channel": {}, "actions": []})
            ).encode(),
            b"payload="
            + quote(
                json.dumps(
                    {
                        "type": "block_actions",
                        "user": {"id": ALICE},
                        "channel": {"id": OPS},
                        "actions": [{"action_id": "failover_approve", "value": "../../x"}],
                    }
                )
            ).encode(),
        ]
        for body in bad_clicks:
            status, answer, _ = await post(session, clicks, body, signed(body))
            assert status == 400 and answer["ok"] is False, (body[:60], status, answer)
        long_text = command_body("x" * 2000, ALICE)
        status, answer, _ = await post(session, commands, long_text, signed(long_text))
        assert status == 200 and "at most" in texts(answer)
        other = b"payload=" + quote(json.dumps({"type": "view_closed"})).encode()
        status, _, _ = await post(session, clicks, other, signed(other))
        assert status == 200  # not ours: ignored
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
