"""The live event stream (`GET /api/v1/events`): bus messages relayed to browsers as server-sent events.

Each client gets a bounded queue fed by its own subscriptions to `failover.events.>` and
`failover.runs.>`; a slow client loses its oldest events (and is told how many), it never makes the
daemon buffer more. Open streams end at once when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from orchestrator.api.bodies import dumps, json_error
from orchestrator.api.context import ApiContext
from orchestrator.core import subjects
from orchestrator.core.metrics import Metrics

SSE_HEARTBEAT_S = 15.0
"""Comment lines this often keep proxies and load balancers from closing an idle stream."""
SSE_QUEUE_MAX = 256
"""Per client: a slow client loses its oldest events (counted), it never makes the daemon buffer more."""
SSE_POLL_S = 1.0
"""How often an idle stream checks whether its client went away (aiohttp does not cancel the handler)."""


def subject_kind(subject: str) -> str:
    """`failover.events.cluster.x` -> cluster, `failover.events.system` -> system,
    `failover.runs.x` -> run."""
    parts = subject.split(".")
    if len(parts) >= 2 and parts[1] == "runs":
        return "run"
    return parts[2] if len(parts) >= 3 else "event"


def sse_frame(subject: str, data: bytes) -> bytes | None:
    """One server-sent event, or None for a body that is not a JSON object (anyone may publish)."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return f"event: {subject_kind(subject)}\ndata: {dumps(body)}\n\n".encode()


@dataclass(eq=False)
class ClientQueue:
    """A bounded per-client queue that drops the oldest message when full, counting what it dropped."""

    maxlen: int = SSE_QUEUE_MAX
    items: deque[tuple[str, bytes]] = field(init=False)
    dropped: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.items = deque(maxlen=self.maxlen)

    def put(self, subject: str, data: bytes) -> bool:
        """Queue a message; False when the oldest one had to be dropped for it."""
        full = len(self.items) == self.maxlen
        if full:
            self.dropped += 1
        self.items.append((subject, data))
        self.wake.set()
        return not full


@dataclass
class _SseMetrics:
    clients: Gauge
    dropped: Counter


def _sse_metrics(metrics: Metrics) -> _SseMetrics:
    try:
        return _SseMetrics(
            Gauge(
                "failover_api_sse_clients", "Clients connected to /api/v1/events", registry=metrics.registry
            ),
            Counter(
                "failover_api_sse_dropped",
                "Events dropped because an /api/v1/events client read too slowly",
                registry=metrics.registry,
            ),
        )
    except ValueError:  # a second app on the same registry: count, but unregistered
        return _SseMetrics(
            Gauge("failover_api_sse_clients", "", registry=None),
            Counter("failover_api_sse_dropped", "", registry=None),
        )


class EventStream:
    """Serves `/api/v1/events` to any number of clients; `on_shutdown` ends every open stream."""

    def __init__(self, ctx: ApiContext, heartbeat_s: float, queue_max: int, poll_s: float) -> None:
        self.ctx = ctx
        self.heartbeat_s = heartbeat_s
        self.queue_max = queue_max
        self.poll_s = poll_s
        self.sse = _sse_metrics(ctx.metrics)
        self.closing = asyncio.Event()
        self.clients: set[ClientQueue] = set()

    async def serve(self, request: web.Request) -> web.StreamResponse:
        bus = self.ctx.bus
        if bus is None:
            return json_error(503, "the event stream is not available")
        queue = ClientQueue(self.queue_max)

        async def on_message(msg: Any) -> None:
            if not queue.put(msg.subject, bytes(msg.data)):
                self.sse.dropped.inc()

        subscriptions = []
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-store",
                "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
            }
        )
        self.clients.add(queue)
        self.sse.clients.inc()
        try:
            for subject in (subjects.EVENTS_ALL, subjects.RUNS_ALL):
                subscriptions.append(await bus.subscribe(subject, on_message))
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            await self._pump(request, response, queue)
        except ConnectionResetError:
            pass  # the client went away mid-write
        finally:
            self.clients.discard(queue)
            self.sse.clients.dec()
            for sub in subscriptions:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sub.unsubscribe())
        return response

    async def _pump(self, request: web.Request, response: web.StreamResponse, queue: ClientQueue) -> None:
        last_write = time.monotonic()
        reported = 0
        while not self.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if not queue.items:
                queue.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.wake.wait(), self.poll_s)
                if not queue.items and time.monotonic() - last_write >= self.heartbeat_s:
                    await response.write(b": heartbeat\n\n")
                    last_write = time.monotonic()
                continue
            if queue.dropped > reported:
                reported = queue.dropped
                await response.write(f"event: dropped\ndata: {dumps({'dropped': reported})}\n\n".encode())
            subject, data = queue.items.popleft()
            frame = sse_frame(subject, data)
            if frame is not None:
                await response.write(frame)
                last_write = time.monotonic()

    async def on_shutdown(self, _app: web.Application) -> None:
        """Open streams end at once, so the server's shutdown does not wait for them."""
        self.closing.set()
        for queue in list(self.clients):
            queue.wake.set()
