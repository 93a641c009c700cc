"""A wall clock that does not jump inside a process.

The detector works in wall-clock seconds, because what it decides is persisted and replayed from the
stream across processes (DESIGN §6). Inside one process, though, its durations (vantage freshness,
recovery holds, flap windows) must not shrink or stretch when NTP or an operator steps the clock.
`steady_wall()` is the wall time at import plus the monotonic time elapsed since: it reads like
`time.time()` and advances like `time.monotonic()`. A jump of the real clock while the process runs is
not seen; the next process starts from the corrected wall time.
"""

from __future__ import annotations

import time

_WALL_AT_START = time.time()
_MONO_AT_START = time.monotonic()


def steady_wall() -> float:
    return _WALL_AT_START + (time.monotonic() - _MONO_AT_START)
