"""Mattermost against a real daemon, real NATS and a real HAProxy: the slash command verified by its token,
Approve / Deny buttons whose signed `context` comes back on the actions route, the two-person rule, and
forged or malformed callbacks refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from tests.chatops_stand_ins import post
from tests.helpers import collect, fleet, hook_receiver, wait_for, write_config
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(90)

TOKEN = "mm-slash-command-t0ken"
SECRET = "mm-action-s3cr3t"
ANN, BEN, VIC = "a" * 26, "b" * 26, "v" * 26
CHANNEL, OTHER = "c" * 26, "o" * 26


def command(text: str, user: str, channel: str = CHANNEL, token: str = TOKEN) -> bytes:
    fields = {
        "token": token,
        "team_id": "t" * 26,
        "channel_id": channel,
        "channel_name": "ops",
        "user_id": user,
        "user_name": {ANN: "ann", BEN: "ben"}.get(user, "someone"),
        "command": "/failover",
        "text": text,
        "response_url": "",
    }
    return urlencode(fields).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_mattermost_commands_buttons_and_two_person_rule(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with (
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
        aiohttp.ClientSession() as session,
    ):
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        with path.open("a") as out:
            out.write(
                f"chatops:\n  mattermost: {{token: '{TOKEN}', action_secret: '{SECRET}', "
                f"callback_url: 'https://failover.example.com/chatops/mattermost/actions', "
                f"users: {{{ANN}: {{role: operator, actor: ann}}, {BEN}: {{role: operator, actor: ben}}, "
                f"{VIC}: viewer}}, "
                f"channels: ['{CHANNEL}'], allowed_sources: [127.0.0.1]}}\n"
            )
        async with running(path) as daemon:
            assert daemon.api is not None and daemon.bus is not None
            audit = await collect(daemon.bus, subjects.AUDIT)
            base = f"http://127.0.0.1:{daemon.api.port}"
            commands, actions = f"{base}/chatops/mattermost/commands", f"{base}/chatops/mattermost/actions"

            status, answer, _ = await post(session, commands, command("status", ANN, token="wrong"), FORM)
            assert status == 401 and "token" in answer["error"]
            status, answer, _ = await post(session, commands, command("status", ANN), FORM)
            assert (
                status == 200 and answer["response_type"] == "ephemeral" and "**us-east**" in answer["text"]
            )
            status, answer, _ = await post(session, commands, command("status", ANN, channel=OTHER), FORM)
            assert status == 200 and "chatops.mattermost.channels" in answer["text"]
            header = {**FORM, "Authorization": f"Token {TOKEN}"}
            status, answer, _ = await post(
                session, commands, command("failover us-east", VIC, token=""), header
            )
            assert status == 200 and "needs the operator role" in answer["text"]

            status, answer, _ = await post(session, commands, command("failover us-east", ANN), FORM)
            assert status == 200 and answer["response_type"] == "in_channel", answer
            [attachment] = answer["attachments"]
            approve, deny = attachment["actions"]
            assert approve["integration"]["url"].endswith("/chatops/mattermost/actions")
            context: dict[str, Any] = approve["integration"]["context"]
            run_id = context["run"]
            assert (
                context["channel"] == CHANNEL
                and "sig" in context
                and deny["integration"]["context"]["run"] == run_id
            )

            def click(user: str, ctx: dict[str, Any], channel: str = CHANNEL) -> bytes:
                body = {
                    "user_id": user,
                    "user_name": "x",
                    "channel_id": channel,
                    "post_id": "p" * 26,
                    "context": ctx,
                }
                return json.dumps(body).encode()

            js = {"Content-Type": "application/json"}
            await wait_for(lambda: run_id in daemon.status()["waiting_approval"], 10, "waiting for approval")
            status, answer, _ = await post(session, actions, click(ANN, context), js)
            assert status == 200 and "initiator cannot approve" in answer["ephemeral_text"], answer
            assert "update" not in answer

            forged = {**context, "run": "someone-elses-run"}
            status, answer, _ = await post(session, actions, click(BEN, forged), js)
            assert status == 401 and "signature" in answer["error"]
            status, answer, _ = await post(session, actions, click(BEN, context, channel=OTHER), js)
            assert status == 200 and "another channel" in answer["ephemeral_text"]
            for bad in (b"not json", b"[]", b'{"context": 5}', b"[" * 4000):
                status, answer, _ = await post(session, actions, bad, js)
                assert status in (400, 401) and answer["ok"] is False, (bad[:20], status)

            status, answer, _ = await post(session, actions, click(BEN, context), js)
            assert status == 200 and "approved" in answer["update"]["message"], answer
            assert answer["update"]["props"] == {"attachments": []}  # the buttons are gone

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 15, "us-east drained")
            await wait_for(lambda: sum(a["command"] == "approve" for a in audit) >= 2, 5, "approvals audited")
            trail = [(a["actor"], a["via"], a["result"][:5]) for a in audit if a["command"] == "approve"]
            assert trail == [
                ("ann", "mattermost", "error"),
                ("ben", "mattermost", "ok"),
            ]
            assert any(a["command"] == "(unverified request)" for a in audit)
            assert TOKEN not in json.dumps(audit) and SECRET not in json.dumps(audit)
