"""Microsoft Teams through a Workflows webhook ("When a Teams webhook request is received"), the
replacement for the retired Office 365 connectors.

The flow posts the Adaptive Card it is given, so one notification is one card; its buttons are
`Action.OpenUrl` links to the run and the incident, because a webhook card cannot post back to us. The
workflow URL carries its own signature (`sig=`), so it is a secret: errors name the notifier only.
Teams refuses messages over about 28 KB, so long details are cut, and dropped when still too large.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from orchestrator.core.errors import PermanentError, TemporaryError, retry_after_s
from orchestrator.notifiers.base import Notification, Notifier

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
MESSAGE_LIMIT = 28 * 1024
_BUDGET = MESSAGE_LIMIT - 2048
"""Room kept under Teams' limit for what the workflow adds around our card."""
SUMMARY_LIMIT = 2_000
VALUE_LIMIT = 500
MAX_DETAILS = 30

_COLOR = {"info": "Default", "warning": "Warning", "error": "Attention", "critical": "Attention"}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def card_of(note: Notification, with_details: bool = True) -> dict[str, Any]:
    """The Adaptive Card: the headline in the severity's colour, the incident's facts, the details,
    and a button per link."""
    state = "resolved" if note.resolve else (note.incident_state or "open")
    facts = [("Severity", note.severity), ("State", state)]
    facts += [(k, v) for k, v in (("Cluster", note.cluster), ("Incident", note.incident)) if v]
    if note.run_id:
        facts.append(("Run", f"{note.run_id} ({note.playbook})" if note.playbook else note.run_id))
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": _cut(f"{note.severity.upper()}: {note.summary}", SUMMARY_LIMIT),
            "size": "Medium",
            "weight": "Bolder",
            "color": "Good" if note.resolve else _COLOR[note.severity],
            "wrap": True,
        },
        {"type": "FactSet", "facts": [{"title": k, "value": _cut(str(v), VALUE_LIMIT)} for k, v in facts]},
    ]
    if note.details and with_details:
        details = list(note.details.items())[:MAX_DETAILS]
        body.append(
            {
                "type": "FactSet",
                "separator": True,
                "facts": [
                    {"title": _cut(str(k), 100), "value": _cut(str(v), VALUE_LIMIT)} for k, v in details
                ],
            }
        )
    elif note.details:
        body.append({"type": "TextBlock", "text": "(details too large for Teams)", "isSubtle": True})
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": CARD_SCHEMA,
        "version": CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    actions = [
        {"type": "Action.OpenUrl", "title": f"Open {name}", "url": url}
        for name, url in note.links.items()
        if url.startswith(("https://", "http://"))
    ]
    if actions:
        card["actions"] = actions
    return card


def message_of(note: Notification) -> bytes:
    """The webhook body, under Teams' size limit."""
    for with_details in (True, False):
        content = card_of(note, with_details)
        message = {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": content,
                }
            ],
        }
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) <= _BUDGET:
            break
    return data


class TeamsNotifier(Notifier):
    """One Adaptive Card per notification; Teams webhooks have no threads, so no receipt."""

    async def send(self, note: Notification) -> dict[str, Any] | None:
        cfg = self.config.teams
        assert cfg is not None
        try:
            async with self.session.post(
                cfg.webhook_url.get_secret_value(),
                data=message_of(note),
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                allow_redirects=False,
            ) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After", "")
        except TimeoutError as e:
            raise TemporaryError(f"notifier {self.name}: timed out after {cfg.timeout_s:g}s") from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"notifier {self.name}: {type(e).__name__}") from e
        if status < 300:
            return None
        if status == 429 or status >= 500:
            delay = retry_after_s(retry_after)
            raise TemporaryError(f"notifier {self.name}: Teams workflow: HTTP {status}", delay_s=delay)
        raise PermanentError(f"notifier {self.name}: Teams workflow: HTTP {status}")

    async def check(self) -> str:
        """A HEAD to the workflow URL: the endpoint answers. Whether the flow posts to a channel is only
        known from a card, which would be a message."""
        cfg = self.config.teams
        assert cfg is not None
        return await self._reachable(cfg.webhook_url.get_secret_value(), cfg.timeout_s, "Teams workflow")
