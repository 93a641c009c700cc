"""The guards that hold a run back before it acts (DESIGN §6b): pause, cooldown and budget.

Split from `runner` so the rules that block or delay a run sit together: `pause_reason` says whether
automation is paused for the run's cluster, `apply_rate_guards` records the run in its KV guard history
and delays it when over cooldown or budget (never a protective run), and `wait_delay` holds a delayed
run until its time, or until it is preempted.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Protocol

from orchestrator.bus.state import PAUSE_ALL, StateStore
from orchestrator.core.models import RunEventType, rfc3339
from orchestrator.playbooks.clock import SYSTEM, Clock
from orchestrator.playbooks.journal import Journal
from orchestrator.playbooks.scheduling import PROTECTIVE, Run


class EmitRunEvent(Protocol):
    """`Runner._emit`: record and publish one run event."""

    async def __call__(
        self, run_id: str, playbook: str, kind: RunEventType, *, detail: dict[str, Any] | None = None
    ) -> None: ...


def kv_token(text: str) -> str:
    """A KV key token from any text (keys allow letters, digits, '-', '_', '=')."""
    return re.sub(r"[^A-Za-z0-9_=-]", "_", text) or "_"


async def pause_reason(store: StateStore | None, run: Run) -> str | None:
    """Why automation is paused for this run's cluster, or None (a forced run ignores pause)."""
    if store is None or run.force:
        return None
    cluster = run.event.get("cluster")
    found = await store.pause_for(cluster if isinstance(cluster, str) else None)
    if found is None:
        return None
    key, value = found
    scope = "automation" if key == PAUSE_ALL else f"automation for {cluster}"
    until = f" until {rfc3339(float(value['until']))}" if value.get("until") else ""
    return f"{scope} paused by {value.get('by', 'someone')}{until}"


async def apply_rate_guards(store: StateStore | None, journal: Journal, run: Run, emit: EmitRunEvent) -> None:
    """cooldown / budget: record this run, and delay it when over (never a protective one)."""
    assert run.record is not None and run.loaded is not None
    guards = run.loaded.playbook.guards
    if store is None or (guards.cooldown_s is None and guards.budget is None):
        return
    key = f"guard.{kv_token(run.playbook)}.{kv_token(run.key)}"
    now = time.time()
    history = [float(t) for t in ((await store.get(key)) or {}).get("runs", [])]
    horizon = max(guards.cooldown_s or 0, guards.budget.per_s if guards.budget else 0)
    history = [t for t in history if now - t <= horizon]
    wait_until, rule = now, ""
    if guards.cooldown_s and history and max(history) + guards.cooldown_s > wait_until:
        wait_until, rule = max(history) + guards.cooldown_s, "cooldown"
    if guards.budget and len(history) >= guards.budget.runs:
        oldest = sorted(history)[-guards.budget.runs]
        if oldest + guards.budget.per_s > wait_until:
            wait_until, rule = oldest + guards.budget.per_s, "budget"
    if wait_until > now and run.event.get("type") == PROTECTIVE:
        await emit(
            run.id,
            run.playbook,
            "started",
            detail={
                "guard_bypassed": rule,
                "reason": f"{rule} would delay this run, but it protects a failed cluster",
            },
        )
        wait_until = now
    history.append(max(now, wait_until))
    await store.put(key, {"runs": history})
    if wait_until > now:
        run.record.update(status="delayed", delayed_until=wait_until)
        await journal.save(run.record)
        await emit(
            run.id,
            run.playbook,
            "blocked",
            detail={
                "rule": rule,
                "until": rfc3339(wait_until),
                "reason": f"{rule} of {run.playbook} for {run.key}: delayed until {rfc3339(wait_until)}",
            },
        )


async def wait_delay(journal: Journal, run: Run, emit: EmitRunEvent, clock: Clock = SYSTEM) -> None:
    """Hold a delayed run until `delayed_until`; a preemption meanwhile finishes it as preempted.

    `delayed_until` is a wall-clock time (journalled, it survives a restart); it is converted to a
    monotonic wait once, here, so a wall-clock jump during the delay does not change it."""
    assert run.record is not None
    until = float(run.record.get("delayed_until", 0))
    remaining = clock.left(clock.to_mono(until))
    if remaining > 0:
        try:
            await asyncio.wait_for(run.preempt.wait(), timeout=remaining)
        except TimeoutError:
            pass
        else:
            run.record.update(status="preempted", finished_at=rfc3339(clock.wall()))
            await journal.save(run.record)
            await emit(run.id, run.playbook, "finished", detail={"status": "preempted"})
            return
    run.record["status"] = "running"
    await journal.save(run.record)
