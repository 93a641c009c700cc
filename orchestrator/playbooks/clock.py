"""Wall and monotonic time for runs: absolute deadlines in the journal, monotonic waits in a process.

A run's deadlines (a step's timeout, a `sleep`'s end, a `wait_for` or `approval` timeout, the next
ramp step of `lb.restore`) are journalled as absolute wall-clock timestamps, because they must survive
a restart into another process, perhaps on another machine (DESIGN §6b). Inside one process, every such
deadline is converted to a monotonic one exactly once, when the step starts or is resumed:

    mono_deadline = clock.mono() + max(0, wall_deadline - clock.wall())

and from then on every wait and every comparison uses the monotonic clock. So:

- a wall-clock jump (NTP step, an operator's `date -s`, a VM resumed) *inside* a process changes
  nothing: a 30 s sleep sleeps 30 s, a ramp interval lasts its interval, a `wait_for` polls until its
  timeout, a step gets its whole timeout;
- a jump *while no process runs the step* (between a crash and the resume, or between the old and the
  new leader's clocks) shifts what is left: the resumed step recomputes its remaining time once, from
  the journalled wall deadline and the new process's wall clock, clamped at 0 (a deadline that has
  passed ends the wait at once; it never becomes a negative sleep). That single reading is the only
  place where the wall clock decides a duration.

Timestamps meant for people and for other processes (`started_at`, `met_at`, approval decisions,
`since_event_s`) stay wall-clock. Tests inject a `Clock` (through `Services.clock`) to jump the wall
clock in the middle of a step.
"""

from __future__ import annotations

import time


class Clock:
    """The two clocks a run uses; the default reads the system's. Subclass it to control time in tests."""

    def wall(self) -> float:
        """Seconds since the epoch: what the journal stores, comparable across processes and machines."""
        return time.time()

    def mono(self) -> float:
        """Seconds on a clock that never jumps, meaningful inside this process only."""
        return time.monotonic()

    def to_mono(self, wall_deadline: float) -> float:
        """The monotonic deadline for an absolute wall-clock deadline, read once now (never in the past)."""
        mono_now, wall_now = self.mono(), self.wall()
        return mono_now + max(0.0, wall_deadline - wall_now)

    def left(self, mono_deadline: float) -> float:
        """Seconds until a monotonic deadline, at least 0."""
        return max(0.0, mono_deadline - self.mono())


SYSTEM = Clock()
