"""The detector's clock reads like the wall clock and advances like the monotonic one (DESIGN §12)."""

from __future__ import annotations

import time

from orchestrator.core.clock import steady_wall
from orchestrator.detection.service import DetectionService


def test_steady_wall_tracks_wall_time_and_never_goes_back() -> None:
    readings = [steady_wall() for _ in range(1000)]
    assert readings == sorted(readings)
    # NTP slews the real clock a little after the import: the two stay close, not equal by definition
    assert abs(steady_wall() - time.time()) < 5
    before, mono = steady_wall(), time.monotonic()
    time.sleep(0.05)
    assert abs((steady_wall() - before) - (time.monotonic() - mono)) < 0.01


def test_the_detection_service_runs_on_it_by_default() -> None:
    import inspect

    default = inspect.signature(DetectionService).parameters["clock"].default
    assert default is steady_wall
