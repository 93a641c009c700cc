"""Liveness (DESIGN §12): a task that dies is restarted; one that keeps dying stops the daemon, which then
exits non-zero. Round 1 stopped the daemon with exit code 0 when a forever-task died."""

from __future__ import annotations

import asyncio

from orchestrator.core.aio import Supervisor
from orchestrator.core.errors import TemporaryError


async def test_a_task_that_dies_is_restarted_and_the_daemon_goes_on() -> None:
    stop = asyncio.Event()
    restarted: list[str] = []
    supervisor = Supervisor(stop, backoff_s=0.01, on_restart=restarted.append)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise TemporaryError("JetStream: no responders")
        await stop.wait()

    task = supervisor.spawn("flaky", flaky)
    while runs < 3:
        await asyncio.sleep(0.01)
    assert not stop.is_set() and supervisor.failed is None
    assert restarted == ["flaky", "flaky"]
    stop.set()
    await task


async def test_a_task_that_keeps_dying_stops_the_daemon_as_failed() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop, max_restarts=2, window_s=60, backoff_s=0.01)

    async def broken() -> None:
        raise RuntimeError("boom")

    await asyncio.wait_for(supervisor.spawn("broken", broken), 5)
    assert stop.is_set()
    assert supervisor.failed == "task broken died: RuntimeError: boom"
    assert supervisor.restarts == {"broken": 2}


async def test_a_task_that_must_not_restart_fails_at_once() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)

    async def once() -> None:
        raise TemporaryError("gone")

    await asyncio.wait_for(supervisor.spawn("once", once, restart=False), 5)
    assert stop.is_set() and supervisor.failed is not None and "once" in supervisor.failed


async def test_a_task_that_returns_is_not_restarted_and_cancel_propagates() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    calls = 0

    async def done() -> None:
        nonlocal calls
        calls += 1

    await supervisor.spawn("done", done)
    assert calls == 1 and supervisor.failed is None and not stop.is_set()
    forever = supervisor.spawn("forever", stop.wait)
    forever.cancel()
    await asyncio.gather(forever, return_exceptions=True)
    assert forever.cancelled()
