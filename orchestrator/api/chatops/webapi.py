"""Talking back to chat: Slack's Web API (`chat.postMessage`, `chat.update`) and `response_url` follow-ups.

The Web API answers HTTP 200 with `{"ok": false, "error": code}` for most failures and 429 with
`Retry-After` when rate limited: a 429 or a 5xx is retried here a few times, honouring `Retry-After`
within a bound, then reported as a TemporaryError so the caller retries later (an approval never waits
for Slack: it is decided by command, whatever happens to the buttons). Errors carry the method and
Slack's code only, never the token.

`response_url` is Slack's (and Mattermost's) way to answer after the 3-second acknowledgement: Slack
allows 5 posts within 30 minutes per URL, so `FollowUps` counts them and refuses a sixth or a late one
rather than have Slack drop it silently. It follows only URLs under the configured prefixes
(`https://hooks.slack.com/` for Slack): the URL arrives in the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from orchestrator.core.config_chatops import MattermostChatops, SlackChatops
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.notifiers.http import post_json as post_once
from orchestrator.notifiers.slack import TEMPORARY_CODES, error_code

log = structlog.get_logger(__name__)

ATTEMPTS = 3
RETRY_AFTER_MAX_S = 10.0
"""A longer `Retry-After` is not waited out here: the caller tries again later."""
FOLLOW_UPS_MAX = 5
FOLLOW_UP_WINDOW_S = 30 * 60.0


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    what: str,
) -> Any:
    """POST JSON once, then retry 429 and 5xx (at most `ATTEMPTS`, `Retry-After` honoured up to
    `RETRY_AFTER_MAX_S`). The JSON answer, or None for a body that is not JSON."""
    for attempt in range(1, ATTEMPTS + 1):
        status, delay, _, answer = await post_once(session, url, body, headers, timeout_s, what)
        if status == 429 or status >= 500:
            wait = delay if delay is not None else 0.5 * attempt
            if attempt == ATTEMPTS or wait > RETRY_AFTER_MAX_S:
                raise TemporaryError(f"{what}: HTTP {status}", delay_s=delay)
            log.info("chatops.retrying", what=what, status=status, retry_in_s=wait)
            await asyncio.sleep(wait)
            continue
        if status >= 300:
            raise PermanentError(f"{what}: HTTP {status}")
        return answer
    raise TemporaryError(f"{what}: gave up")  # not reached: the loop returns or raises


@dataclass
class SlackWebApi:
    session: aiohttp.ClientSession
    token: str
    api_url: str
    timeout_s: float = 5.0

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.api_url.rstrip('/')}/{method}"
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = await post_json(self.session, url, body, headers, self.timeout_s, f"Slack {method}")
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            code = error_code(answer)
            if code in TEMPORARY_CODES:
                raise TemporaryError(f"Slack {method}: {code}")
            raise PermanentError(f"Slack {method}: {code}")
        return answer


def follow_up_allowed(url: str, prefixes: list[str]) -> bool:
    """`url` starts with one of `prefixes` and names the same host: a `response_url` the daemon may
    POST to (the request that carried it may come from anyone holding a leaked token)."""
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:  # `http://[::1/`: not a URL
        return False
    return any(url.startswith(p) and host == urlsplit(p).hostname for p in prefixes)


def follow_up_prefixes(section: SlackChatops | MattermostChatops) -> tuple[str, ...]:
    """Where `response_url`s may point for a platform: its `response_url_prefixes`; for Mattermost by
    default its `site_url` (Mattermost's response URLs are `<site>/hooks/commands/...`); else none."""
    if section.response_url_prefixes is not None:
        return tuple(section.response_url_prefixes)
    site = getattr(section, "site_url", None)
    return (site.rstrip("/") + "/",) if site else ()


@dataclass
class FollowUps:
    """At most `FOLLOW_UPS_MAX` posts per `response_url`, within `FOLLOW_UP_WINDOW_S` of the command."""

    session: aiohttp.ClientSession
    prefixes: tuple[str, ...] = ()
    """Where a `response_url` may point (`chatops.<platform>.response_url_prefixes`): the URL comes in
    the request, and a leaked Mattermost token must not make the daemon POST to internal addresses."""
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _used: dict[str, tuple[float, int]] = field(default_factory=dict)

    def allowed(self, url: str) -> bool:
        return follow_up_allowed(url, list(self.prefixes))

    def _take(self, url: str) -> None:
        now = self.clock()
        self._used = {u: v for u, v in self._used.items() if now - v[0] < FOLLOW_UP_WINDOW_S}
        first, count = self._used.get(url, (now, 0))
        if count >= FOLLOW_UPS_MAX:
            raise PermanentError(f"response_url: already used {FOLLOW_UPS_MAX} times (Slack's limit)")
        self._used[url] = (first, count + 1)

    def remaining(self, url: str) -> int:
        return FOLLOW_UPS_MAX - self._used.get(url, (0.0, 0))[1]

    async def post(self, url: str, message: dict[str, Any]) -> None:
        if not self.allowed(url):
            raise PermanentError(
                "response_url is not under chatops.<platform>.response_url_prefixes: not followed"
            )
        self._take(url)
        await post_json(self.session, url, message, {}, self.timeout_s, "response_url")
