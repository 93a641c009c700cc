"""Slack (bot and incoming webhook) and Teams against local receivers that check the documented request
shapes and answer with the documented errors: one thread per incident, the first message kept current,
errors classified, never a token or a webhook URL in an error."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from orchestrator.bus.embedded import free_port
from orchestrator.core.config import load_config
from orchestrator.core.config_drivers import NotifierConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.notifiers import Notification, build_notifier
from tests.test_config import GOOD, problems, write

TOKEN = "xoxb-1234-5678-s3cr3tt0ken"
CHANNEL = "C0123ABC"
LINKS = {"run": "https://failover.example.com/runs/r1", "incident": "https://failover.example.com/i/1"}


@dataclass
class SlackApi:
    """`chat.postMessage` and `chat.update` as the Web API documents them: Bearer token, JSON body,
    `{"ok": false, "error": code}` on HTTP 200, 429 with Retry-After when rate limited."""

    url: str = ""
    channels: dict[str, bool] = field(default_factory=lambda: {CHANNEL: True, "C0OUTSIDE": False})
    """channel -> the bot is a member."""
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    ratelimit_s: int | None = None
    answer_error: str | None = None
    refuse_update: str | None = None
    status: int = 200

    def check(self, request: web.Request, body: dict[str, Any]) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return "not_authed"
        if auth != f"Bearer {TOKEN}":
            return "invalid_auth"
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return "invalid_arguments"
        channel = body.get("channel")
        if channel not in self.channels:
            return "channel_not_found"
        if not self.channels[channel]:
            return "not_in_channel"
        if not body.get("text") and not body.get("blocks"):
            return "no_text"
        if len(body.get("text", "")) > 40_000:
            return "msg_too_long"
        return None if _blocks_ok(body.get("blocks", [])) else "invalid_blocks"

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        if self.ratelimit_s is not None:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(self.ratelimit_s)},
            )
        if self.status != 200:
            return web.Response(status=self.status, text="upstream trouble")
        body = await request.json()
        error = self.answer_error or self.check(request, body)
        if error is None and method == "chat.postMessage":
            parent = body.get("thread_ts")
            if parent is not None and self.messages.get(parent, {}).get("channel") != body["channel"]:
                error = "thread_not_found"
            else:
                ts = f"1700000000.{len(self.messages) + 1:06d}"
                self.messages[ts] = {**body, "updates": 0}
                return web.json_response({"ok": True, "channel": body["channel"], "ts": ts, "message": {}})
        elif error is None and method == "chat.update":
            error = self.refuse_update
            message = self.messages.get(body.get("ts", ""))
            if message is None or message["channel"] != body["channel"]:
                error = "message_not_found"
            elif error is None:
                message.update(text=body["text"], blocks=body["blocks"], updates=message["updates"] + 1)
                return web.json_response({"ok": True, "channel": body["channel"], "ts": body["ts"]})
        return web.json_response({"ok": False, "error": error or "unknown_method"})

    def top_level(self) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if "thread_ts" not in m]

    def replies(self, ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m.get("thread_ts") == ts]


def _blocks_ok(blocks: list[dict[str, Any]]) -> bool:
    """Block Kit's documented limits for what we send."""
    if len(blocks) > 50:
        return False
    for block in blocks:
        limit = 150 if block["type"] == "header" else 3000
        if "text" in block and len(block["text"]["text"]) > limit:
            return False
        if len(block.get("fields", [])) > 10 or any(len(f["text"]) > 2000 for f in block.get("fields", [])):
            return False
        for element in block.get("elements", []):
            button = element["type"] == "button"
            if button and (len(element["text"]["text"]) > 75 or len(element["url"]) > 3000):
                return False
            if element["type"] == "mrkdwn" and len(element["text"]) > 3000:  # a context element
                return False
    return True


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def slack_api() -> AsyncIterator[SlackApi]:
    api = SlackApi()
    app = web.Application()
    app.router.add_post("/api/{method}", api.handle)
    async with serve(app) as base:
        api.url = f"{base}/api"
        yield api


def slack_bot(api_url: str, channel: str = CHANNEL, token: str = TOKEN) -> NotifierConfig:
    section = {"bot_token": token, "channel": channel, "api_url": api_url, "timeout": "1s"}
    return NotifierConfig.model_validate({"name": "chat", "driver": "slack", "slack": section})


def incident_note(resolve: bool = False, thread: dict[str, Any] | None = None, **kw: Any) -> Notification:
    fields: dict[str, Any] = {
        "summary": "us-east recovered; traffic restored" if resolve else "us-east failed; traffic moved",
        "severity": "info" if resolve else "critical",
        "details": {"survivors": "eu-west, ap-south"},
        "run_id": "r1",
        "playbook": "failover",
        "cluster": "us-east",
        "incident": "inc-us-east-1",
        "incident_state": "resolved" if resolve else "drained",
        "resolve": resolve,
        "links": LINKS,
        "thread": thread,
    }
    return Notification(**(fields | kw))


async def test_an_incident_is_one_thread_and_its_first_message_ends_resolved() -> None:
    async with slack_api() as api, aiohttp.ClientSession() as session:
        notifier = build_notifier(slack_bot(api.url), session)
        receipt = await notifier.send(incident_note())
        assert receipt is not None and receipt["channel"] == CHANNEL and set(receipt) == {"channel", "ts"}
        [first] = api.top_level()
        fields = [f["text"] for b in first["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
        assert "*State*\ndrained" in fields and "*Incident*\ninc-us-east-1" in fields
        buttons = [e for b in first["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert {b["url"] for b in buttons} == set(LINKS.values())

        again = await notifier.send(incident_note(resolve=True, thread=receipt))
        assert again == receipt
        assert api.calls == ["chat.postMessage", "chat.update", "chat.postMessage"]
        assert len(api.top_level()) == 1, "the later message joins the thread instead of a new one"
        [reply] = api.replies(receipt["ts"])
        assert reply["reply_broadcast"] is True and "recovered" in reply["text"]
        first = api.messages[receipt["ts"]]
        assert first["updates"] == 1
        assert first["blocks"][0]["text"]["text"].startswith("RESOLVED: inc-us-east-1")
        assert "resolved" in first["text"]


async def test_a_first_message_that_cannot_be_updated_still_gets_the_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with slack_api() as api, aiohttp.ClientSession() as session:
        notifier = build_notifier(slack_bot(api.url), session)
        receipt = await notifier.send(incident_note())
        assert receipt is not None
        api.refuse_update = "cant_update_message"
        with caplog.at_level(logging.WARNING):
            assert await notifier.send(incident_note(resolve=True, thread=receipt)) == receipt
        assert api.calls[-2:] == ["chat.update", "chat.postMessage"]
        assert len(api.replies(receipt["ts"])) == 1
        assert "notifier chat" in caplog.text and "cant_update_message" in caplog.text
        assert TOKEN not in caplog.text
        api.refuse_update = "invalid_auth"  # anything else about the update stops the step
        with pytest.raises(PermanentError, match=r"chat\.update: invalid_auth"):
            await notifier.send(incident_note(resolve=True, thread=receipt))


@pytest.mark.parametrize(
    ("channel", "token", "code"),
    [
        ("C0NOPE", TOKEN, "channel_not_found"),
        ("C0OUTSIDE", TOKEN, "not_in_channel"),
        (CHANNEL, "xoxb-9999-wrong-t0ken", "invalid_auth"),
    ],
)
async def test_slack_refusals_are_permanent_with_their_code(channel: str, token: str, code: str) -> None:
    async with slack_api() as api, aiohttp.ClientSession() as session:
        with pytest.raises(PermanentError, match=f"notifier chat: Slack chat.postMessage: {code}$") as info:
            await build_notifier(slack_bot(api.url, channel, token), session).send(incident_note())
        assert token not in str(info.value) and "xoxb" not in str(info.value)


async def test_slack_rate_limits_and_outages_are_temporary_and_the_token_never_shows() -> None:
    async with slack_api() as api, aiohttp.ClientSession() as session:
        notifier = build_notifier(slack_bot(api.url), session)
        api.ratelimit_s = 7
        with pytest.raises(TemporaryError, match=r"HTTP 429 \(ratelimited\)") as limited:
            await notifier.send(incident_note())
        assert limited.value.delay_s == 7.0
        api.ratelimit_s, api.status = None, 503
        with pytest.raises(TemporaryError, match="HTTP 503") as down:
            await notifier.send(incident_note())
        api.status, api.answer_error = 200, f"echo {TOKEN}"  # a server that echoes what it was sent
        with pytest.raises(PermanentError, match="unknown_error") as echoed:
            await notifier.send(incident_note())
        url = api.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TemporaryError, match="notifier chat") as unreachable:
            await build_notifier(slack_bot(url), session).send(incident_note())
    for error in (limited, down, echoed, unreachable):
        assert TOKEN not in str(error.value) and "s3cr3t" not in str(error.value)


async def test_slack_cuts_text_and_blocks_to_the_documented_limits() -> None:
    huge = "x&<" * 20_000
    async with slack_api() as api, aiohttp.ClientSession() as session:
        notifier = build_notifier(slack_bot(api.url), session)
        receipt = await notifier.send(incident_note(summary=huge, details={"log": huge}))
        assert receipt is not None
        [first] = api.top_level()
        assert len(first["text"]) == 40_000 and first["text"].endswith("…")
        assert "&lt;" in first["text"] and "<" not in first["text"]


async def test_slack_incoming_webhook_mode_still_works_and_hides_its_url() -> None:
    received: list[dict[str, Any]] = []
    status = {"code": 200}

    async def hook(request: web.Request) -> web.Response:
        if status["code"] != 200:
            return web.Response(status=status["code"], text="no_service")
        body = await request.json()
        assert _blocks_ok(body["blocks"]) and body["text"]
        received.append(body)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/services/T000/B000/hooksecret", hook)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        url = f"{base}/services/T000/B000/hooksecret"
        config = NotifierConfig.model_validate(
            {"name": "chat", "driver": "slack", "slack": {"webhook_url": url}}
        )
        assert await build_notifier(config, session).send(incident_note()) is None
        assert "us-east failed" in received[0]["text"]
        status["code"] = 404
        with pytest.raises(PermanentError, match="HTTP 404: no_service") as info:
            await build_notifier(config, session).send(incident_note())
        assert "hooksecret" not in str(info.value)


@pytest.mark.parametrize(
    "section",
    [
        {},
        {"webhook_url": "https://hooks.slack.com/x", "bot_token": TOKEN, "channel": CHANNEL},
        {"bot_token": TOKEN},
        {"channel": CHANNEL},
    ],
)
def test_slack_config_is_a_webhook_or_a_bot(section: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        NotifierConfig.model_validate({"name": "chat", "driver": "slack", "slack": section})
    assert not any(TOKEN in err["msg"] for err in info.value.errors())  # validate prints the messages


def test_validate_accepts_a_slack_bot_and_teams_with_secrets_from_the_environment(tmp_path: Path) -> None:
    notifiers = """\
  - {name: chat, driver: slack, slack: {bot_token: "${SLACK_BOT_TOKEN}", channel: C0123ABC}}
  - {name: teams, driver: teams, teams: {webhook_url: "${TEAMS_WORKFLOW_URL}"}}
"""
    text = GOOD.split("notifiers:\n")[0] + "notifiers:\n" + notifiers
    env = {"SLACK_BOT_TOKEN": TOKEN, "TEAMS_WORKFLOW_URL": "https://example.com/flow?sig=teamssig"}
    config = load_config(write(tmp_path, text), env=env)
    chat, team = config.notifiers
    assert chat.slack is not None and chat.slack.bot_token is not None
    assert chat.slack.bot_token.get_secret_value() == TOKEN
    assert team.teams is not None and "teamssig" not in repr(team)
    half = text.replace(", channel: C0123ABC", "")
    found = problems(write(tmp_path, half), env=env)
    assert any(":21: notifiers[0].slack: a bot needs both" in line for line in found), found
    assert not any(TOKEN in line for line in found)


def test_slack_bot_config_defaults_to_slacks_api() -> None:
    config = NotifierConfig.model_validate(
        {"name": "chat", "driver": "slack", "slack": {"bot_token": TOKEN, "channel": CHANNEL}}
    )
    assert config.slack is not None and config.slack.api_url == "https://slack.com/api"


@dataclass
class Workflow:
    """A Teams Workflows trigger: 202 for an Adaptive Card message, 400 otherwise, 429 when throttled."""

    url: str = ""
    cards: list[dict[str, Any]] = field(default_factory=list)
    throttle_s: int | None = None
    card_check: bool = True

    async def handle(self, request: web.Request) -> web.Response:
        if request.query.get("sig") != "teamssig":
            return web.json_response({"error": {"code": "DirectApiAuthorizationRequired"}}, status=401)
        if self.throttle_s is not None:
            return web.Response(status=429, headers={"Retry-After": str(self.throttle_s)})
        raw = await request.read()
        if len(raw) > 28 * 1024:
            return web.Response(status=413)
        try:
            message = json.loads(raw)
            if not self.card_check:
                message["attachments"] = []  # what a flow expecting another shape refuses
            self.cards.append(_adaptive_card(message))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            return web.json_response(
                {"error": {"code": "InvalidRequestContent", "message": str(e)}}, status=400
            )
        return web.Response(status=202)


def _adaptive_card(message: dict[str, Any]) -> dict[str, Any]:
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card: dict[str, Any] = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert tuple(map(int, card["version"].split("."))) >= (1, 4)
    assert card["body"] and all(e["type"] in ("TextBlock", "FactSet") for e in card["body"])
    for element in card["body"]:
        if element["type"] == "FactSet":
            assert all(isinstance(f["title"], str) and isinstance(f["value"], str) for f in element["facts"])
    for action in card.get("actions", []):
        assert action["type"] == "Action.OpenUrl" and action["title"]
        assert action["url"].startswith("https://")
    return card


@asynccontextmanager
async def workflow() -> AsyncIterator[Workflow]:
    flow = Workflow()
    app = web.Application()
    app.router.add_post("/workflows/abc/triggers/manual/paths/invoke", flow.handle)
    async with serve(app) as base:
        flow.url = f"{base}/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=teamssig"
        yield flow


def teams(url: str) -> NotifierConfig:
    return NotifierConfig.model_validate(
        {"name": "teams", "driver": "teams", "teams": {"webhook_url": url, "timeout": "1s"}}
    )


async def test_teams_posts_an_adaptive_card_with_facts_and_links() -> None:
    async with workflow() as flow, aiohttp.ClientSession() as session:
        assert await build_notifier(teams(flow.url), session).send(incident_note()) is None
        await build_notifier(teams(flow.url), session).send(incident_note(resolve=True, links={}))
        first, resolved = flow.cards
        facts = {f["title"]: f["value"] for f in first["body"][1]["facts"]}
        assert facts["Incident"] == "inc-us-east-1" and facts["State"] == "drained"
        assert facts["Cluster"] == "us-east"
        assert {a["url"] for a in first["actions"]} == set(LINKS.values())
        assert resolved["body"][0]["color"] == "Good" and "actions" not in resolved


async def test_teams_keeps_under_its_size_limit() -> None:
    async with workflow() as flow, aiohttp.ClientSession() as session:
        big = {f"k{i}": "é" * 5000 for i in range(60)}
        await build_notifier(teams(flow.url), session).send(incident_note(details=big, summary="s" * 9000))
        [card] = flow.cards
        assert len(card["body"][0]["text"]) == 2000


async def test_teams_errors_are_classified_and_hide_the_url() -> None:
    async with workflow() as flow, aiohttp.ClientSession() as session:
        flow.throttle_s = 3
        with pytest.raises(TemporaryError, match="HTTP 429") as throttled:
            await build_notifier(teams(flow.url), session).send(incident_note())
        assert throttled.value.delay_s == 3.0
        with pytest.raises(PermanentError, match="HTTP 401") as refused:
            await build_notifier(teams(flow.url.replace("teamssig", "forged")), session).send(incident_note())
        url = flow.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TemporaryError) as unreachable:
            await build_notifier(teams(url), session).send(incident_note())
    for error in (throttled, refused, unreachable):
        assert "sig" not in str(error.value) and "127.0.0.1" not in str(error.value)


async def test_a_refused_card_is_permanent_and_bad_links_are_left_out() -> None:
    async with workflow() as flow, aiohttp.ClientSession() as session:
        await build_notifier(teams(flow.url), session).send(
            incident_note(links={"run": "javascript:alert(1)"})
        )
        assert "actions" not in flow.cards[0]
        flow.card_check = False
        with pytest.raises(PermanentError, match=r"^notifier teams: Teams workflow: HTTP 400$"):
            await build_notifier(teams(flow.url), session).send(incident_note())
