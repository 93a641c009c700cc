"""`gather_bounded`: many small round trips (a KV get per cluster at start, a put per cluster at
election) at most N at a time, results in order, the first failure raised."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from orchestrator.core.aio import gather_bounded


async def test_at_most_limit_in_flight_and_results_in_order() -> None:
    in_flight = peak = 0

    def call(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001 * (i % 3))
            in_flight -= 1
            return i * i

        return run

    assert await gather_bounded([call(i) for i in range(200)], 8) == [i * i for i in range(200)]
    assert peak == 8
    assert await gather_bounded([], 8) == []


async def test_the_first_failure_is_raised_and_no_more_calls_start() -> None:
    started: list[int] = []

    def call(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started.append(i)
            await asyncio.sleep(0)
            if i == 3:
                raise ValueError("three")
            return i

        return run

    with pytest.raises(ValueError, match="three"):
        await gather_bounded([call(i) for i in range(100)], 4)
    assert len(started) < 10, started
