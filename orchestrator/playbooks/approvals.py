"""Approvals: a run waits at an `approval` step until someone allowed says yes or no.

Decisions arrive by command (`approve RUN`, `deny RUN` over NATS request/reply, the API or the CLI).
Who decided, and when, is journalled with the step and audited. A run waiting for approval survives a
restart: its deadline is absolute in the journal and it simply waits again, for what is left of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Decision:
    approved: bool
    actor: str
    at: float


@dataclass
class _Pending:
    approvers: tuple[str, ...]
    future: asyncio.Future[Decision]


def allowed(approvers: tuple[str, ...], actor: str, role: str) -> bool:
    """`approvers` lists names and `role:NAME` entries; empty means any operator or admin."""
    if not approvers:
        return ROLES.index(role) >= ROLES.index("operator")
    for entry in approvers:
        if entry.startswith("role:"):
            wanted = entry.removeprefix("role:")
            if wanted in ROLES and ROLES.index(role) >= ROLES.index(wanted):
                return True
        elif entry == actor:
            return True
    return False


class ApprovalBook:
    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}

    def pending(self) -> dict[str, tuple[str, ...]]:
        return {run_id: p.approvers for run_id, p in self._pending.items()}

    async def wait(self, run_id: str, approvers: tuple[str, ...], timeout_s: float) -> Decision | None:
        """The decision, or None when `timeout_s` (on the monotonic clock: the caller converted its
        journalled wall deadline once) passes first."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending[run_id] = _Pending(approvers, future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, timeout_s))
        except TimeoutError:
            return None
        finally:
            self._pending.pop(run_id, None)

    def decide(self, run_id: str, approved: bool, actor: str, role: str) -> str | None:
        """Record a decision; returns an error message when it cannot be taken."""
        pending = self._pending.get(run_id)
        if pending is None:
            return f"run {run_id} is not waiting for an approval"
        if not allowed(pending.approvers, actor, role):
            return (
                f"{actor} ({role}) is not among the approvers of run {run_id}: {', '.join(pending.approvers)}"
            )
        if not pending.future.done():
            pending.future.set_result(Decision(approved, actor, time.time()))
        return None
