"""`GET /api/v1/events?since=`: the events stream's history, one bounded page at a time.

The same path without `since` is the live stream (server-sent events); with it, the answer is a JSON
page of what JetStream kept (cluster state changes, system events, run events; never the audit
records), oldest first, so a client catches up and then follows: it passes each page's `next` as the
following `since`, and when `more` is false it is up to date (and may open the live stream, or poll).

`since` is a stream sequence (events after it) or an RFC 3339 time with its zone (events stored at or
after it). `limit` bounds the page (a page is one short-lived consumer, `bus.history`), and `kind`
narrows it. A cursor older than what the stream still holds says so (`expired`), so a client knows it
missed events rather than assuming it saw everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from orchestrator.api.bodies import dumps, json_error
from orchestrator.api.context import ApiContext
from orchestrator.api.routes import EVENTS_LIMIT_MAX
from orchestrator.bus import history
from orchestrator.core import redact
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.models import rfc3339

EVENTS_LIMIT_DEFAULT = 100
"""A page is read into memory and answered at once: `EVENTS_LIMIT_MAX` (500) events are a few hundred
KB at most."""


def parse_since(raw: str) -> int | datetime:
    """A stream sequence (`0` is the beginning) or an RFC 3339 time with its zone; ValueError says why."""
    text = raw.strip()
    if text.isdigit():
        if len(text) > 19:
            raise ValueError("since: a sequence has at most 19 digits")
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("since: a stream sequence or an RFC 3339 time (2026-01-01T12:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError("since: the time needs its zone (Z or +hh:mm)")
    return when


def parse_kinds(raw: str | None) -> tuple[str, ...]:
    if raw is None or raw == "":
        return tuple(history.KINDS)
    kinds = tuple(dict.fromkeys(k.strip() for k in raw.split(",")))
    unknown = [k for k in kinds if k not in history.KINDS]
    if unknown or len(raw) > 100:
        raise ValueError(f"kind: a comma-separated list of {', '.join(history.KINDS)}")
    return kinds


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return EVENTS_LIMIT_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= EVENTS_LIMIT_MAX:
        raise ValueError(f"limit must be an integer from 1 to {EVENTS_LIMIT_MAX}")
    return int(raw)


def event_view(event: history.StoredEvent) -> dict[str, Any]:
    """One stored event as the API answers it: where it sits in the stream, and the body as published
    (secret-looking values redacted, as in every other view)."""
    return {
        "seq": event.seq,
        "kind": event.kind,
        "subject": event.subject,
        "stored_at": rfc3339(event.at.timestamp()),
        "event": redact.redact(event.data),
    }


async def read(ctx: ApiContext, since: int | datetime, limit: int, kinds: tuple[str, ...]) -> dict[str, Any]:
    """One page, as the API answers it (the dashboard's timeline reads the same)."""
    if ctx.bus is None:
        raise OrchestratorError("the events stream is not available")
    if isinstance(since, int):
        page = await history.read_page(ctx.bus, after_seq=since, limit=limit, kinds=kinds)
        expired = bool(page.first_seq) and since + 1 < page.first_seq
    else:
        page = await history.read_page(ctx.bus, since=since, limit=limit, kinds=kinds)
        expired = False
    return {
        "events": [event_view(e) for e in page.events],
        "next": page.next,
        "more": page.more,
        "expired": expired,
        "first_seq": page.first_seq,
        "last_seq": page.last_seq,
    }


async def serve(ctx: ApiContext, query: Mapping[str, str]) -> web.Response:
    """The JSON page for `GET /api/v1/events?since=...` (400 for a bad query, 503 without NATS)."""
    try:
        since = parse_since(query.get("since", ""))
        limit = parse_limit(query.get("limit"))
        kinds = parse_kinds(query.get("kind"))
    except ValueError as e:
        return json_error(400, str(e))
    try:
        body = await read(ctx, since, limit, kinds)
    except OrchestratorError as e:
        return json_error(503, f"the events stream cannot be read now: {e}")
    return web.json_response(body, dumps=dumps)
