"""Local stand-ins for what chatops talks to and what talks to it: Slack's Web API (`chat.postMessage`,
`chat.update`, with 429 + Retry-After and 5xx on demand), `response_url` receivers, and signed Slack
requests (slash commands and `block_actions` clicks) as Slack sends them."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from orchestrator.api.chatops.verify import slack_signature
from orchestrator.bus.embedded import free_port

BOT_TOKEN = "xoxb-chatops-s3cr3t-t0ken"
SIGNING_SECRET = "chatops-signing-s3cr3t"
INCIDENTS = "C0INCIDENT"
OPS = "C0OPS"
_TRIGGERS = itertools.count(1)
"""Slack gives every request a fresh `trigger_id`: two identical requests are a replay."""


@dataclass
class SlackWebApi:
    """`chat.postMessage` / `chat.update` as documented: Bearer token, JSON body, `{"ok": false, "error"}`
    on HTTP 200; `ratelimit_s` answers 429 with Retry-After, `status` another HTTP status."""

    url: str = ""
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    ratelimit_s: int | None = None
    status: int = 200

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
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        body = await request.json()
        channel = body.get("channel")
        if channel not in (INCIDENTS, OPS) or not (body.get("text") or body.get("blocks")):
            return web.json_response({"ok": False, "error": "channel_not_found"})
        for block in body.get("blocks", []):
            if block["type"] == "section" and "text" in block and len(block["text"]["text"]) > 3000:
                return web.json_response({"ok": False, "error": "invalid_blocks"})
        if method == "chat.postMessage":
            parent = body.get("thread_ts")
            if parent is not None and self.messages.get(parent, {}).get("channel") != channel:
                return web.json_response({"ok": False, "error": "thread_not_found"})
            ts = f"1700000000.{len(self.messages) + 1:06d}"
            self.messages[ts] = {**body, "updates": 0}
            return web.json_response({"ok": True, "channel": channel, "ts": ts})
        if method == "chat.update":
            message = self.messages.get(body.get("ts", ""))
            if message is None or message["channel"] != channel:
                return web.json_response({"ok": False, "error": "message_not_found"})
            message.update(text=body["text"], blocks=body["blocks"], updates=message["updates"] + 1)
            return web.json_response({"ok": True, "channel": channel, "ts": body["ts"]})
        return web.json_response({"ok": False, "error": "unknown_method"})

    def with_buttons(self) -> list[tuple[str, dict[str, Any]]]:
        """(ts, message) of the messages that carry Approve / Deny buttons now."""
        return [
            (ts, m)
            for ts, m in self.messages.items()
            if any(b["type"] == "actions" for b in m.get("blocks", []))
        ]

    def approval_messages(self) -> list[tuple[str, dict[str, Any]]]:
        return [(ts, m) for ts, m in self.messages.items() if "Approval needed" in m["text"] or m["updates"]]


@dataclass
class Responses:
    """`response_url`s: each `new()` is one URL; what is posted to it is kept in order."""

    base: str = ""
    posted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    at: dict[str, list[float]] = field(default_factory=dict)

    def new(self) -> str:
        key = f"r{len(self.posted) + 1}"
        self.posted[key] = []
        self.at[key] = []
        return f"{self.base}/{key}"

    def of(self, url: str) -> list[dict[str, Any]]:
        return self.posted[url.rsplit("/", 1)[1]]

    async def handle(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self.posted.setdefault(key, []).append(await request.json())
        self.at.setdefault(key, []).append(time.monotonic())
        return web.Response(text="ok")


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
async def slack_side() -> AsyncIterator[tuple[SlackWebApi, Responses]]:
    api, responses = SlackWebApi(), Responses()
    app = web.Application()
    app.router.add_post("/api/{method}", api.handle)
    app.router.add_post("/respond/{key}", responses.handle)
    async with serve(app) as base:
        api.url, responses.base = f"{base}/api", f"{base}/respond"
        yield api, responses


def signed(body: bytes, secret: str = SIGNING_SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": slack_signature(secret, stamp, body),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def command_body(text: str, user: str, channel: str = OPS, response_url: str = "", name: str = "") -> bytes:
    return urlencode(
        {
            "token": "deprecated-verification-token",
            "team_id": "T0TEAM",
            "team_domain": "example",
            "channel_id": channel,
            "channel_name": "ops" if channel == OPS else "incidents",
            "user_id": user,
            "user_name": name or user.lower(),
            "command": "/failover",
            "text": text,
            "response_url": response_url,
            "trigger_id": f"{next(_TRIGGERS)}.2.3",
        }
    ).encode()


def click_body(action: str, run_id: str, user: str, response_url: str, channel: str = INCIDENTS) -> bytes:
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEAM"},
        "team": {"id": "T0TEAM"},
        "channel": {"id": channel, "name": "incidents"},
        "container": {"type": "message", "message_ts": "1700000000.000002", "channel_id": channel},
        "response_url": response_url,
        "trigger_id": f"{next(_TRIGGERS)}.2.3",
        "actions": [{"action_id": action, "block_id": "b", "value": run_id, "type": "button"}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any, float]:
    """POST; (status, JSON answer or text, seconds it took)."""
    start = time.monotonic()
    async with session.post(url, data=body, headers=headers) as resp:
        text = await resp.text()
        took = time.monotonic() - start
        try:
            return resp.status, json.loads(text), took
        except ValueError:
            return resp.status, text, took


def texts(message: dict[str, Any]) -> str:
    """Every text of a Slack message (its fallback and its blocks), for assertions."""
    parts = [str(message.get("text", ""))]
    for block in message.get("blocks", []):
        if "text" in block:
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            text = element.get("text")
            parts.append(text["text"] if isinstance(text, dict) else str(text or ""))
    return "\n".join(parts)
