"""`/metrics` rendered off the event loop, once for every scraper that asks at the same time (issue 19).

Rendering the registry is CPU work in proportion to the series: 39 ms at 1,000 clusters and 471 ms at
10,000, measured on the loop, where one Prometheus scrape stalled detection, the API and lease renewals
for as long. Here the text is rendered in a worker thread, so the loop keeps its turns (the interpreter
switches threads every few milliseconds), and concurrent scrapes (two Prometheus replicas, a person
with curl) share one render. A body younger than `max_age_s` is served again, which bounds the work to
one render a `max_age_s` however often the endpoint is hit; a scrape interval is seconds, never less.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_AGE_S = 1.0
"""How long a rendered body is served again: well under any sensible scrape interval."""


class MetricsRenderer:
    def __init__(self, render: Callable[[], bytes], max_age_s: float = MAX_AGE_S) -> None:
        self.render = render
        """`Metrics.render`: the registry and the per-cluster families (`core.metrics_fast`)."""
        self.max_age_s = max_age_s
        self._body: bytes | None = None
        self._rendered_at = float("-inf")
        self._rendering: asyncio.Future[bytes] | None = None
        self.renders = 0
        """How many times the registry was rendered (tests and the fleet benchmark read it)."""

    async def body(self) -> bytes:
        if self._body is not None and time.monotonic() - self._rendered_at < self.max_age_s:
            return self._body
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(self._render())
        # shielded: a scraper that hangs up must not cancel the render others are waiting for
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        try:
            body = await asyncio.to_thread(self.render)
            self.renders += 1
            self._body, self._rendered_at = body, time.monotonic()
            return body
        finally:
            self._rendering = None
