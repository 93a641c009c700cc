"""Slack: an incoming webhook, or a bot that keeps one thread per incident.

With a bot token the incident's first message is posted with `chat.postMessage` and its `{channel, ts}`
is the receipt; every later message of the incident first rewrites that message in place
(`chat.update`, so the channel's top line always shows where the incident is, "resolved" at the end),
then replies in its thread. The update goes first because it is idempotent: when the reply fails and the
step retries, the retry rewrites the same message again instead of posting a second reply.

The Web API answers HTTP 200 with `{"ok": false, "error": "<code>"}` for most failures, so the code, not
the status, is classified. Only the code (sanitised) and the notifier's name ever reach an error: never
the token or the webhook URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from orchestrator.core.config_drivers import SlackNotifier as SlackConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.notifiers.base import Notification, Notifier
from orchestrator.notifiers.http import post_json

log = logging.getLogger(__name__)

TEXT_LIMIT = 40_000
"""`text` of chat.postMessage: Slack truncates beyond this."""
BLOCK_TEXT_LIMIT = 3_000
"""A section's or context element's text."""
FIELD_LIMIT = 2_000
HEADER_LIMIT = 150
BUTTON_LIMIT = 75

_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "error": ":x:",
    "critical": ":rotating_light:",
}
TEMPORARY_CODES = {  # Web API error codes that a retry may cure (chatops uses them too)
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
}
_MISSING_MESSAGE = {"message_not_found", "cant_update_message", "edit_window_closed"}
"""chat.update codes that leave the thread usable: the reply still goes out."""


class SlackRefused(PermanentError):
    """The Web API said `ok: false` with a code that retrying will not change."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _escape(text: str) -> str:
    """mrkdwn treats `&`, `<` and `>` as control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = re.sub(r"&[a-z]{0,4}$", "", text[: limit - 1])  # never leave half an escape
    return head + "…"


def _state(note: Notification) -> str:
    return "resolved" if note.resolve else (note.incident_state or "open")


def _title(note: Notification) -> str:
    mark = ":white_check_mark:" if note.resolve else _EMOJI[note.severity]
    return f"{mark} {note.severity.upper()}: {note.summary}"


def text_of(note: Notification) -> str:
    """The plain fallback (notifications, screen readers, clients without blocks)."""
    parts = [f"{_EMOJI[note.severity]} *{note.severity.upper()}* {_escape(note.summary)}"]
    if note.incident:
        parts.append(f"(incident {_escape(note.incident)}: {_state(note)})")
    return _cut(" ".join(parts), TEXT_LIMIT)


def blocks_of(note: Notification, incident_view: bool = False) -> list[dict[str, Any]]:
    """Block Kit for one notification; `incident_view` renders the incident's first message as the
    incident now stands (its state up front), which is what `chat.update` writes."""
    header = _title(note)
    if incident_view and note.incident:
        header = f"{_state(note).upper()}: {note.incident}: {note.summary}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, HEADER_LIMIT), "emoji": True}}
    ]
    if len(header) > HEADER_LIMIT or incident_view:
        blocks.append(_section(_escape(note.summary)))
    facts = [("Severity", note.severity), ("State", _state(note))]
    facts += [(k, v) for k, v in (("Cluster", note.cluster), ("Incident", note.incident)) if v]
    if note.run_id:
        facts.append(("Run", f"{note.run_id} ({note.playbook})" if note.playbook else note.run_id))
    blocks.append(
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{k}*\n{_escape(str(v))}", FIELD_LIMIT)} for k, v in facts
            ][:10],
        }
    )
    if note.details:
        lines = "\n".join(f"*{_escape(str(k))}*: {_escape(str(v))}" for k, v in note.details.items())
        blocks.append(_section(lines))
    if note.links:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": f"open_{name}"[:255],
                        "text": {"type": "plain_text", "text": _cut(f"Open {name}", BUTTON_LIMIT)},
                        "url": url,
                    }
                    for name, url in note.links.items()
                    if len(url) <= BLOCK_TEXT_LIMIT
                ][:25],
            }
        )
    return blocks


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(mrkdwn, BLOCK_TEXT_LIMIT)}}


def error_code(answer: Any) -> str:
    """Slack's error code, reduced to what a code can contain: a misbehaving server cannot make us
    print anything else (a token it echoed, say)."""
    raw = answer.get("error") if isinstance(answer, dict) else None
    return raw if isinstance(raw, str) and re.fullmatch(r"[a-z0-9_]{1,64}", raw) else "unknown_error"


class SlackNotifier(Notifier):
    """`slack: {webhook_url}` posts each notification on its own; `slack: {bot_token, channel}` threads
    an incident's notifications under its first message and keeps that message current."""

    @property
    def _cfg(self) -> SlackConfig:
        assert self.config.slack is not None
        return self.config.slack

    async def send(self, note: Notification) -> dict[str, Any] | None:
        cfg = self._cfg
        if cfg.webhook_url is not None:
            body = {"text": text_of(note), "blocks": blocks_of(note)}
            await self._call(cfg.webhook_url.get_secret_value(), body, {}, "incoming webhook")
            return None
        thread = note.thread
        if not (thread and isinstance(thread.get("ts"), str) and isinstance(thread.get("channel"), str)):
            answer = await self._api(
                "chat.postMessage", {"channel": cfg.channel, "text": text_of(note), "blocks": blocks_of(note)}
            )
            return {"channel": str(answer.get("channel") or cfg.channel), "ts": str(answer["ts"])}
        receipt = {"channel": thread["channel"], "ts": thread["ts"]}
        try:
            current = {"text": text_of(note), "blocks": blocks_of(note, incident_view=True)}
            await self._api("chat.update", receipt | current)
        except SlackRefused as e:
            if e.code not in _MISSING_MESSAGE:
                raise
            log.warning("notifier %s: the incident's first message cannot be updated: %s", self.name, e)
        reply = {"channel": receipt["channel"], "thread_ts": receipt["ts"]}
        reply |= {"text": text_of(note), "blocks": blocks_of(note)}
        if note.resolve:
            reply["reply_broadcast"] = True  # the channel sees the end, not only the thread's followers
        await self._api("chat.postMessage", reply)
        return receipt

    async def check(self) -> str:
        """A bot: `auth.test` proves the token is valid and names the bot and workspace (it does not
        prove the bot is in `channel`: that needs a scope the bot may lack). An incoming webhook: a HEAD,
        since any POST to it would be a message."""
        cfg = self._cfg
        if cfg.webhook_url is not None:
            return await self._reachable(cfg.webhook_url.get_secret_value(), cfg.timeout_s, "Slack webhook")
        answer = await self._api("auth.test", {})
        who = [str(answer[k]) for k in ("user", "team") if isinstance(answer.get(k), str)]
        return "Slack auth.test ok" + (f" ({' in '.join(who)})" if who else "")

    async def _api(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        cfg = self._cfg
        assert cfg.bot_token is not None
        headers = {"Authorization": f"Bearer {cfg.bot_token.get_secret_value()}"}
        answer = await self._call(f"{cfg.api_url.rstrip('/')}/{method}", body, headers, method)
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            code = error_code(answer)
            error = f"notifier {self.name}: Slack {method}: {code}"
            if code in TEMPORARY_CODES:
                raise TemporaryError(error)
            raise SlackRefused(error, code)
        if method == "chat.postMessage" and not isinstance(answer.get("ts"), str):
            raise PermanentError(f"notifier {self.name}: Slack {method}: no ts in the answer")
        return answer

    async def _call(self, url: str, body: dict[str, Any], headers: dict[str, str], what: str) -> Any:
        """POST JSON; transport problems, 5xx and 429 (with Slack's Retry-After) are temporary, other 4xx
        permanent. Returns the JSON answer, or None when the body is not JSON (incoming webhooks answer
        a plain `ok`)."""
        status, delay, raw, answer = await post_json(
            self.session, url, body, headers, self._cfg.timeout_s, f"notifier {self.name}: Slack {what}"
        )
        if status == 429 or status >= 500:
            code = f" ({error_code(answer)})" if isinstance(answer, dict) else ""
            raise TemporaryError(f"notifier {self.name}: Slack {what}: HTTP {status}{code}", delay_s=delay)
        if status >= 300:
            # the Web API answers JSON; incoming webhooks a bare code (`invalid_payload`, `no_service`)
            text = raw.decode(errors="replace").strip()
            plain = {"error": text} if re.fullmatch(r"[a-z_]{1,64}", text) else None
            found = answer if isinstance(answer, dict) else plain
            code = f": {error_code(found)}" if found is not None else ""
            raise PermanentError(f"notifier {self.name}: Slack {what}: HTTP {status}{code}")
        return answer
