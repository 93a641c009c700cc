"""One JSON POST, shared by the Slack notifier and the chatops Web API client (which adds retries).

Both speak to the same Slack endpoints and read the answer the same way: the status, `Retry-After`,
the raw body (an incoming webhook answers a bare code, not JSON) and the JSON answer when there is one.
What a status means is left to the caller, which alone knows whether to retry and how to word it.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from orchestrator.core.errors import TemporaryError, retry_after_s


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    what: str,
) -> tuple[int, float | None, bytes, Any]:
    """POST `body` as JSON once, without following redirects: (status, Retry-After in seconds or None,
    raw body, the JSON answer or None when the body is not JSON).

    No connection or a timeout is a TemporaryError whose message starts with `what` and names only the
    exception type, never the URL (a webhook URL is a secret)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    try:
        async with session.post(
            url,
            data=data,
            headers={"Content-Type": "application/json; charset=utf-8", **headers},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            status, delay = resp.status, retry_after_s(resp.headers.get("Retry-After"))
            raw = await resp.read()
    except TimeoutError as e:
        raise TemporaryError(f"{what}: timed out after {timeout_s:g}s") from e
    except aiohttp.ClientError as e:
        raise TemporaryError(f"{what}: {type(e).__name__}") from e
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    return status, delay, raw, answer
