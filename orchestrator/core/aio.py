"""Small asyncio helpers shared by the long-lived loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
T = TypeVar("T")


async def gather_bounded(calls: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Await every call, at most `limit` at a time; the results in the calls' order. An exception is
    raised once the calls started have ended (as `asyncio.gather` does), the rest are not started.

    For many small round trips (a KV get or put per cluster at 10,000 clusters): one after the other
    they cost a round trip each in wall time; all at once they would queue thousands of requests."""
    pending = list(calls)
    results: list[Any] = [None] * len(pending)
    failure: list[BaseException] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(pending) and not failure:
            index = next_index
            next_index += 1
            try:
                results[index] = await pending[index]()
            except Exception as e:  # the first failure stops the others from starting more
                failure.append(e)

    await asyncio.gather(*(worker() for _ in range(max(1, min(limit, len(pending))))))
    if failure:
        raise failure[0]
    return results


async def wait_any(*events: asyncio.Event, timeout_s: float) -> None:
    """Return when any of `events` is set or `timeout_s` passes (a loop's sleep that a stop ends at once)."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class Supervisor:
    """Named, guarded forever-tasks (STYLE §6; DESIGN §12, liveness).

    A task that raises is logged and restarted after a backoff. One that keeps dying (more than
    `max_restarts` within `window_s`), or one spawned with `restart=False`, stops the daemon and marks
    it `failed`, so the process exits non-zero and the orchestrator (Kubernetes) restarts it; a daemon
    never goes on half-alive, and never stops with exit code 0 because a task died.
    """

    def __init__(
        self,
        stop: asyncio.Event,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        on_restart: Callable[[str], None] = lambda _name: None,
    ) -> None:
        self.stop = stop
        self.on_restart = on_restart
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.failed: str | None = None
        """Why the daemon gave up (a task that kept dying), or None."""
        self.restarts: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(
        self, name: str, factory: TaskFactory, restart: bool = True, tracked: bool = True
    ) -> asyncio.Task[None]:
        """Run `factory()` as a named task; a fresh coroutine is made for each restart. `tracked=False`
        keeps it out of `tasks`, for a task the owner stops in a later shutdown stage."""
        task = asyncio.get_running_loop().create_task(self._guard(name, factory, restart), name=name)
        if tracked:
            self.tasks.append(task)
        return task

    async def _guard(
        self, name: str, factory: Callable[[], Coroutine[Any, Any, None]], restart: bool
    ) -> None:
        deaths: list[float] = []
        while not self.stop.is_set():
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < self.window_s] + [now]
                if not restart or len(deaths) > self.max_restarts:
                    log.error("task.gave_up", task=name, deaths=len(deaths), exc_info=True)
                    self.failed = f"task {name} died: {type(e).__name__}: {e}"
                    self.stop.set()
                    return
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (len(deaths) - 1))
                log.warning("task.died", task=name, restart_in_s=delay, deaths=len(deaths), exc_info=True)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.on_restart(name)
                await wait_any(self.stop, timeout_s=delay)
