"""Pages of the events stream (`FAILOVER_EVENTS`) read back by sequence or time: the history behind
`GET /api/v1/events?since=` and the dashboard's timeline.

The live stream (server-sent events) only shows what happens while a browser watches; an operator who
opens the dashboard during an incident needs what happened before. JetStream already keeps it (DESIGN
§5: events, runs and audit, `EVENTS_MAX_AGE_S`), so a page is one short-lived pull consumer: filtered
to the kinds asked for (never the audit subject: who ran which command is not a viewer's business),
starting at a sequence or a time, fetching at most `limit` messages, then deleted. Nothing is
buffered in the daemon, and a page costs the same whatever the stream holds.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from orchestrator.bus.client import Bus
from orchestrator.bus.kv import nats_errors
from orchestrator.core import subjects
from orchestrator.core.errors import TemporaryError

KINDS: dict[str, str] = {
    "cluster": "failover.events.cluster.>",
    "system": subjects.SYSTEM_EVENTS,
    "run": subjects.RUNS_ALL,
}
"""What a page may hold, by kind; the audit subject shares the stream and is never served."""

FETCH_TIMEOUT_S = 1.0
"""How long one page waits for messages the stream info said were there (a busy server)."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    subject: str
    kind: str
    at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Page:
    events: list[StoredEvent]
    next: int
    """The cursor for the following page: the last sequence this page read (or the one asked after)."""
    more: bool
    """Whether the stream held more matching messages after this page when it was read."""
    first_seq: int
    last_seq: int
    """The stream's bounds when read: a cursor below `first_seq` asked for events already expired."""


def kind_of(subject: str) -> str:
    """The SSE event name of a subject: cluster, system or run."""
    if subject.startswith("failover.runs."):
        return "run"
    return "cluster" if subject.startswith("failover.events.cluster.") else "system"


async def bounds(bus: Bus) -> tuple[int, int]:
    """(first, last) sequence the events stream holds now; (0, 0) when it is empty."""
    with nats_errors(f"read stream {subjects.STREAM_EVENTS}"):
        info = await bus.js.stream_info(subjects.STREAM_EVENTS)
    if not info.state.messages:
        return 0, 0
    return int(info.state.first_seq or 0), int(info.state.last_seq or 0)


async def read_page(
    bus: Bus,
    *,
    after_seq: int | None = None,
    since: datetime | None = None,
    limit: int,
    kinds: tuple[str, ...] = tuple(KINDS),
) -> Page:
    """Up to `limit` events oldest first: those stored after sequence `after_seq`, or at or after the
    time `since` (one of the two). Bodies that are not JSON objects (anyone may publish) are skipped
    but still advance the cursor."""
    first, last = await bounds(bus)
    cursor = after_seq if after_seq is not None else max(first - 1, 0)
    if not last or (after_seq is not None and after_seq >= last):
        return Page([], after_seq if after_seq is not None else last, False, first, last)
    config = api.ConsumerConfig(
        name=f"history-{uuid.uuid4().hex[:16]}",
        ack_policy=api.AckPolicy.NONE,
        filter_subjects=[KINDS[k] for k in kinds],
        inactive_threshold=30.0,  # a page that dies half way leaves nothing behind for long
        mem_storage=True,
        num_replicas=1,
        max_waiting=1,
    )
    if after_seq is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = max(after_seq + 1, first)
    elif since is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = since
    else:
        config.deliver_policy = api.DeliverPolicy.ALL
    with nats_errors("open an events page"):
        info = await bus.js.add_consumer(subjects.STREAM_EVENTS, config)
    assert config.name is not None
    events: list[StoredEvent] = []
    pending = int(info.num_pending or 0)
    try:
        if not pending:  # nothing matches: answer now rather than after a fetch timeout
            return Page([], max(cursor, last), False, first, last)
        with nats_errors("read an events page"):
            sub = await bus.js.pull_subscribe_bind(config.name, stream=subjects.STREAM_EVENTS)
        try:
            while len(events) < limit:
                try:
                    batch = await sub.fetch(min(limit - len(events), 256), timeout=FETCH_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    break  # nothing (more) matches
                except nats.errors.Error as e:
                    raise TemporaryError(f"read an events page: {type(e).__name__}") from e
                for msg in batch:
                    meta = msg.metadata
                    cursor = meta.sequence.stream
                    pending = meta.num_pending
                    body = _object(msg.data)
                    if body is not None:
                        events.append(
                            StoredEvent(cursor, msg.subject, kind_of(msg.subject), meta.timestamp, body)
                        )
                    if len(events) >= limit:
                        break
                if not pending:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await bus.js.delete_consumer(subjects.STREAM_EVENTS, config.name)
    # with nothing pending after the last message read, nothing matching lies between it and `last`
    return Page(events, cursor if pending else max(cursor, last), bool(pending), first, last)


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
