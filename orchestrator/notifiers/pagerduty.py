"""PagerDuty Events API v2: one PagerDuty incident per failover incident.

Every message of an incident is an event with the same `dedup_key` (the incident id, DESIGN §13):
the first `trigger` opens the PagerDuty incident, later `trigger`s with a new state are deduplicated
into it (they appear on its timeline and may raise its severity), and `resolve` closes it. PagerDuty
answers 202 when it queued the event; 429 (rate limit) and 5xx are worth retrying, 400 means the event
is malformed and is permanent, with PagerDuty's own explanation. The routing key is the secret: it is
never part of an error or a log line, even if PagerDuty were to echo it back.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from orchestrator.core.config_drivers import PagerDutyConfig
from orchestrator.core.errors import PermanentError, TemporaryError, retry_after_s
from orchestrator.core.models import rfc3339, utc_now
from orchestrator.notifiers.base import Notification, Notifier

SUMMARY_MAX = 1024
"""PagerDuty refuses a longer `payload.summary` (400), so it is cut here."""
DEDUP_KEY_MAX = 255
_LINK_TEXT = {"run": "Failover run", "incident": "Failover incident"}


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PagerDutyNotifier(Notifier):
    """Events API v2 `trigger` per state of an incident, `resolve` when it is over (see the module)."""

    @property
    def settings(self) -> PagerDutyConfig:
        assert self.config.pagerduty is not None  # NotifierConfig requires the section for this driver
        return self.config.pagerduty

    def event(self, note: Notification) -> dict[str, Any]:
        """The Events API v2 body for `note` (the routing key included: never log this)."""
        key = cut(note.incident or note.dedup_key or note.run_id or "failover", DEDUP_KEY_MAX)
        body: dict[str, Any] = {
            "routing_key": self.settings.routing_key.get_secret_value(),
            "event_action": "resolve" if note.resolve else "trigger",
            "dedup_key": key,
        }
        if note.resolve:
            return body  # PagerDuty ignores a payload on resolve: the key names what is resolved
        details: dict[str, Any] = dict(note.details)
        for name in ("incident", "incident_state", "run_id", "playbook"):
            value = getattr(note, name)
            if value is not None:
                details.setdefault(name, value)
        payload: dict[str, Any] = {
            "summary": cut(note.summary, SUMMARY_MAX),
            "source": self.settings.source or note.cluster or "failover-orchestrator",
            "severity": note.severity,  # our four levels are PagerDuty's four, one for one
            "timestamp": rfc3339(utc_now()),
            "custom_details": details,
        }
        if note.cluster:
            payload["component"] = note.cluster
        body["payload"] = payload
        body["client"] = "failover orchestrator"
        links = [{"href": url, "text": _LINK_TEXT.get(k, k)} for k, url in note.links.items() if url]
        if links:
            body["links"] = links
            body["client_url"] = note.links.get("incident") or note.links.get("run") or links[0]["href"]
        return body

    async def send(self, note: Notification) -> dict[str, Any] | None:
        settings = self.settings
        secret = settings.routing_key.get_secret_value()
        await post_json(self, settings.url, self.event(note), settings.timeout_s, secrets=(secret,))
        return None

    async def check(self) -> str:
        """A HEAD to the Events API: reachable over HTTPS. The routing key cannot be checked without
        sending an event (which would page), so it is not."""
        settings = self.settings
        return await self._reachable(settings.url, settings.timeout_s, "PagerDuty Events API")


async def post_json(
    notifier: Notifier, url: str, body: Any, timeout_s: float, secrets: tuple[str, ...] = ()
) -> None:
    """POST `body` as JSON and classify the answer: 2xx delivered; 429 and 5xx TemporaryError (with
    `Retry-After` as `delay_s`); other 4xx PermanentError with the receiver's reason (its `message`,
    `errors`, or a bare JSON string, as PagerDuty and Alertmanager answer), `secrets` scrubbed from it.
    The URL never appears: it may carry credentials."""
    data = json.dumps(body, separators=(",", ":")).encode()
    try:
        async with notifier.session.post(
            url,
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status < 300:
                return
            status = resp.status
            text = await resp.text(errors="replace")
            delay = retry_after_s(resp.headers.get("Retry-After"))
    except TimeoutError as e:
        raise TemporaryError(f"notifier {notifier.name}: timed out after {timeout_s:g}s") from e
    except aiohttp.ClientError as e:
        raise TemporaryError(f"notifier {notifier.name}: {type(e).__name__}") from e
    reason = _reason(text)
    for secret in secrets:
        reason = reason.replace(secret, "<secret>")
    if status == 429:
        raise TemporaryError(f"notifier {notifier.name}: HTTP 429 (rate limited){reason}", delay_s=delay)
    if status >= 500:
        raise TemporaryError(f"notifier {notifier.name}: HTTP {status}{reason}", delay_s=delay)
    raise PermanentError(f"notifier {notifier.name}: HTTP {status}{reason}")


def _reason(text: str) -> str:
    """The receiver's explanation as one line (`: message; error; ...`), or nothing."""
    try:
        answer = json.loads(text)
    except ValueError:
        return ""
    parts: list[str] = []
    if isinstance(answer, str):
        parts.append(answer)
    elif isinstance(answer, dict):
        if answer.get("message"):
            parts.append(str(answer["message"]))
        errors = answer.get("errors")
        if isinstance(errors, list):
            parts += [str(e) for e in errors]
    return ": " + cut("; ".join(parts), 300) if parts else ""
