"""Slack's two request kinds (DESIGN §14): `POST /chatops/slack/commands` (the `/failover` slash command,
form-encoded) and `POST /chatops/slack/interactions` (`payload=` JSON, `type: block_actions`: our
Approve / Deny buttons).

The v0 signature over the raw body is checked before anything is parsed, and a signed request is
accepted once (a replay inside the 5-minute window is refused); an unverified request is a 401 and an
audit record, nothing else. Slash commands are answered in the HTTP response (within 3 s) or
acknowledged and answered on `response_url`. Button clicks are answered on the payload's `response_url`
only (Slack ignores the HTTP body of a `block_actions` request): the clicker gets an ephemeral line, and
the approval message itself is updated by the leader once the run's approval step has an outcome.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import structlog
from aiohttp import web

from orchestrator.api.chatops import render
from orchestrator.api.chatops.grammar import RUN_ID, Parsed
from orchestrator.api.chatops.render import Reply
from orchestrator.api.chatops.service import ChatOps, Who
from orchestrator.api.chatops.verify import Unverified, verify_slack
from orchestrator.core import jsonlimits
from orchestrator.core.config_chatops import SlackChatops
from orchestrator.core.errors import OrchestratorError

log = structlog.get_logger(__name__)

APPROVE, DENY = "failover_approve", "failover_deny"
_FIELD_MAX = 3000


def error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


def form_fields(body: bytes) -> dict[str, str]:
    """A form body as single values; ValueError when it is not one (bad UTF-8, repeated fields)."""
    try:
        fields = parse_qs(
            body.decode("utf-8", errors="strict"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=60,
        )
    except UnicodeDecodeError as e:
        raise ValueError("the body is not UTF-8") from e
    if any(len(v) != 1 for v in fields.values()):
        raise ValueError("a field is repeated")
    return {k: v[0][:_FIELD_MAX] for k, v in fields.items()}


class SlackRoutes:
    def __init__(self, chatops: ChatOps) -> None:
        self.chatops = chatops

    @property
    def cfg(self) -> SlackChatops | None:
        return self.chatops.config.chatops.slack

    async def _verified(self, request: web.Request, cfg: SlackChatops) -> bytes | web.Response:
        body = await request.read()
        try:
            verify_slack(
                cfg.signing_secret.get_secret_value(),
                request.headers,
                body,
                self.chatops.clock(),
                self.chatops.replays,
            )
        except Unverified as e:
            log.warning("chatops.unverified", platform="slack", path=request.path, reason=str(e))
            await self.chatops.audit_unverified("slack", str(e), request.remote)
            return error(401, f"unverified Slack request: {e}")
        return body

    async def commands(self, request: web.Request) -> web.StreamResponse:
        cfg = self.cfg
        if cfg is None:
            return error(404, "chatops.slack is not configured")
        body = await self._verified(request, cfg)
        if isinstance(body, web.Response):
            return body
        try:
            form = form_fields(body)
            who = Who(
                "slack",
                form["user_id"],
                form.get("user_name", ""),
                form["channel_id"],
                form.get("channel_name", ""),
            )
        except (ValueError, KeyError) as e:
            return error(400, f"bad slash command: {e if isinstance(e, ValueError) else f'no {e}'}")
        if not who.user_id or not who.channel_id:
            return error(400, "bad slash command: empty user_id or channel_id")
        response_url = self.chatops.response_url("slack", form.get("response_url", ""))

        async def deliver(reply: Reply) -> None:
            await self.chatops.follow_ups["slack"].post(response_url, render.slack_message(reply))

        reply = await self.chatops.run_text(who, form.get("text", ""), deliver if response_url else None)
        return web.json_response(render.slack_message(reply))

    async def interactions(self, request: web.Request) -> web.StreamResponse:
        cfg = self.cfg
        if cfg is None:
            return error(404, "chatops.slack is not configured")
        body = await self._verified(request, cfg)
        if isinstance(body, web.Response):
            return body
        try:
            payload = jsonlimits.loads(form_fields(body)["payload"])
            if not isinstance(payload, dict):
                raise ValueError("payload is not an object")
            kind = payload.get("type")
            if kind != "block_actions":
                return web.Response(status=200)  # other interactions (shortcuts, view closes): not ours
            user, channel = payload.get("user") or {}, payload.get("channel") or {}
            actions = payload.get("actions")
            if not isinstance(user, dict) or not isinstance(channel, dict) or not isinstance(actions, list):
                raise ValueError("user, channel and actions are required")
            if not actions or not isinstance(actions[0], dict):
                raise ValueError("no action")
            action = actions[0]
            user_id, channel_id = user.get("id"), channel.get("id")
            if (
                not isinstance(user_id, str)
                or not isinstance(channel_id, str)
                or not user_id
                or not channel_id
            ):
                raise ValueError("user.id and channel.id are required")
            name = user.get("username") or user.get("name") or ""
            who = Who(
                "slack", user_id[:40], str(name)[:80], channel_id[:40], str(channel.get("name") or "")[:80]
            )
            response_url = payload.get("response_url")
            if response_url is not None and not isinstance(response_url, str):
                raise ValueError("response_url must be a string")
            response_url = self.chatops.response_url("slack", response_url or "")
        except (ValueError, KeyError) as e:
            return error(400, f"bad interaction payload: {e if isinstance(e, ValueError) else f'no {e}'}")
        action_id, value = action.get("action_id"), action.get("value")
        if action_id not in (APPROVE, DENY):
            return web.Response(status=200)  # a link button (Open run): nothing to do
        if not isinstance(value, str) or not RUN_ID.match(value):
            return error(400, "bad interaction payload: the button's value is not a run id")
        parsed = Parsed("approve" if action_id == APPROVE else "deny", {"run": value})
        self.chatops.keep(asyncio.ensure_future(self._click(who, parsed, response_url)))
        return web.Response(status=200)  # Slack wants 200 within 3 s; the answer goes to response_url

    async def _click(self, who: Who, parsed: Parsed, response_url: str | None) -> None:
        reply = await self.chatops.run(who, parsed, None)
        if not response_url:
            return
        message = render.slack_message(reply)
        message |= {"response_type": "ephemeral", "replace_original": False}
        try:
            await self.chatops.follow_ups["slack"].post(response_url, message)
        except OrchestratorError as e:
            log.warning("chatops.click_answer_failed", error=str(e))
