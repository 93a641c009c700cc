"""Mattermost (DESIGN §14): `POST /chatops/mattermost/commands` (its slash-command form, verified by the
command's token) and `POST /chatops/mattermost/actions` (interactive-message button callbacks).

Mattermost does not sign button callbacks: it posts back the `context` the button was created with. We
sign that context (HMAC with `action_secret`, with a one-hour expiry and the channel it was posted in),
so a callback is honoured only for a button we made, in the channel we made it for; the clicker's user
ID is then authorized like any chat user's. That ID is only Mattermost's word, and the signed context
does not bind the clicker (any operator may approve), so requests are taken only from
`allowed_sources` (the Mattermost server; `X-Forwarded-For` believed from `trusted_proxies` only); the
two-person rule and one approval per actor per run hold whatever is replayed.

A `failover` that waits for approval answers with Approve / Deny buttons; a click that decides the run
replaces the buttons with who decided and when (Mattermost's `update`), any other answer is ephemeral.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from orchestrator.api.chatops import render
from orchestrator.api.chatops.grammar import RUN_ID, Parsed
from orchestrator.api.chatops.render import Reply
from orchestrator.api.chatops.service import ChatOps, Who
from orchestrator.api.chatops.slack import error, form_fields
from orchestrator.api.chatops.sources import source_refusal
from orchestrator.api.chatops.verify import (
    CONTEXT_TTL_S,
    Unverified,
    sign_context,
    verify_context,
    verify_token,
)
from orchestrator.core import jsonlimits
from orchestrator.core.config_chatops import MattermostChatops

log = structlog.get_logger(__name__)

ACTIONS_PATH = "/chatops/mattermost/actions"


class MattermostRoutes:
    def __init__(self, chatops: ChatOps) -> None:
        self.chatops = chatops

    @property
    def cfg(self) -> MattermostChatops | None:
        return self.chatops.config.chatops.mattermost

    def _callback_url(self, cfg: MattermostChatops) -> str | None:
        if cfg.callback_url:
            return cfg.callback_url
        base = self.chatops.config.api.external_url
        return f"{base}{ACTIONS_PATH}" if base else None

    def message(self, reply: Reply, cfg: MattermostChatops, channel: str) -> dict[str, Any]:
        """A command answer: markdown text, and the reply's buttons as an attachment's actions."""
        out: dict[str, Any] = {
            "response_type": "ephemeral" if reply.ephemeral else "in_channel",
            "text": render.mattermost_text(reply),
        }
        url = self._callback_url(cfg)
        if reply.buttons and url:
            secret = cfg.action_secret.get_secret_value()
            actions = [
                {
                    "id": b["action"].replace("_", ""),
                    "name": b["label"],
                    "style": "primary" if b.get("style") == "primary" else b.get("style") or "default",
                    "integration": {
                        "url": url,
                        "context": sign_context(
                            secret,
                            {"action": b["action"], "run": b["value"], "channel": channel},
                            self.chatops.clock(),
                            CONTEXT_TTL_S,
                        ),
                    },
                }
                for b in reply.buttons
            ]
            out["attachments"] = [{"text": "Approve or deny (not your own request):", "actions": actions}]
        return out

    async def _source_refused(self, request: web.Request, cfg: MattermostChatops) -> web.Response | None:
        """403 and an audit record for a request not from `allowed_sources` (the Mattermost server)."""
        refusal = source_refusal(request, cfg.allowed_sources, cfg.trusted_proxies)
        if refusal is None:
            return None
        log.warning("chatops.refused_source", platform="mattermost", path=request.path, reason=refusal)
        await self.chatops.audit_unverified("mattermost", refusal, request.remote, "(refused source)")
        return error(403, f"refused: {refusal}")

    async def commands(self, request: web.Request) -> web.StreamResponse:
        cfg = self.cfg
        if cfg is None:
            return error(404, "chatops.mattermost is not configured")
        refused = await self._source_refused(request, cfg)
        if refused is not None:
            return refused
        body = await request.read()
        try:
            form = form_fields(body)
        except ValueError as e:
            form = {}
            problem: str | None = f"bad slash command: {e}"
        else:
            problem = None
        headers = request.headers.getall("Authorization", [])
        header = headers[0] if len(headers) == 1 else ""  # two Authorization headers: neither is taken
        token = header.removeprefix("Token ").strip() if header.startswith("Token ") else form.get("token")
        try:
            verify_token(cfg.token.get_secret_value(), token)
        except Unverified as e:
            log.warning("chatops.unverified", platform="mattermost", path=request.path, reason=str(e))
            await self.chatops.audit_unverified("mattermost", str(e), request.remote)
            return error(401, f"unverified Mattermost request: {e}")
        if problem:
            return error(400, problem)
        user_id, channel_id = form.get("user_id", ""), form.get("channel_id", "")
        if not user_id or not channel_id:
            return error(400, "bad slash command: user_id and channel_id are required")
        who = Who("mattermost", user_id, form.get("user_name", ""), channel_id, form.get("channel_name", ""))
        response_url = self.chatops.response_url("mattermost", form.get("response_url", ""))

        async def deliver(reply: Reply) -> None:
            await self.chatops.follow_ups["mattermost"].post(
                response_url, self.message(reply, cfg, channel_id)
            )

        reply = await self.chatops.run_text(who, form.get("text", ""), deliver if response_url else None)
        return web.json_response(self.message(with_buttons(reply), cfg, channel_id))

    async def actions(self, request: web.Request) -> web.StreamResponse:
        cfg = self.cfg
        if cfg is None:
            return error(404, "chatops.mattermost is not configured")
        refused = await self._source_refused(request, cfg)
        if refused is not None:
            return refused
        try:
            payload = jsonlimits.loads(await request.read())
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            return error(400, f"bad action payload: {e}")
        try:
            context = verify_context(
                cfg.action_secret.get_secret_value(), payload.get("context"), self.chatops.clock()
            )
        except Unverified as e:
            log.warning("chatops.unverified", platform="mattermost", path=request.path, reason=str(e))
            await self.chatops.audit_unverified("mattermost", str(e), request.remote)
            return error(401, f"unverified button: {e}")
        user_id, channel_id = payload.get("user_id"), payload.get("channel_id")
        if not isinstance(user_id, str) or not user_id or not isinstance(channel_id, str):
            return error(400, "bad action payload: user_id and channel_id are required")
        if context.get("channel") != channel_id:
            return web.json_response({"ephemeral_text": "This button belongs to another channel."})
        run_id, action = context.get("run"), context.get("action")
        if (
            not isinstance(run_id, str)
            or not RUN_ID.match(run_id)
            or action not in ("failover_approve", "failover_deny")
        ):
            return error(400, "bad action payload: unknown action")
        who = Who("mattermost", user_id[:40], str(payload.get("user_name") or "")[:80], channel_id[:40])
        parsed = Parsed("approve" if action == "failover_approve" else "deny", {"run": run_id})
        reply = await self.chatops.run(who, parsed, None)
        text = render.mattermost_text(reply)
        if not reply.decided:  # refused, or one approval of several: the buttons stay
            return web.json_response({"ephemeral_text": text})
        stamp = render.when(self.chatops.clock())  # the post now says who decided, and when
        update = render.mattermost_text(Reply(f"{reply.title} at {stamp}", context=reply.context))
        return web.json_response(
            {"update": {"message": update, "props": {"attachments": []}}, "ephemeral_text": text}
        )


def with_buttons(reply: Reply) -> Reply:
    """Approve / Deny for each run the command started that waits for approval."""
    for run_id in reply.awaiting:
        reply.buttons += [
            {
                "action": "failover_approve",
                "label": f"Approve {run_id}"[:75],
                "value": run_id,
                "style": "primary",
            },
            {"action": "failover_deny", "label": f"Deny {run_id}"[:75], "value": run_id, "style": "danger"},
        ]
    return reply
