"""Small asyncio helpers shared by the long-lived loops."""

from __future__ import annotations

import asyncio


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
