"""Approvals: a run waits at an `approval` step until enough people allowed say yes, or one says no.

Decisions arrive by command (`approve RUN`, `deny RUN` over NATS request/reply, the API or the CLI).
The two-person rule (DESIGN §14): with `distinct_from_initiator` (the default) the run's initiator (who
asked for the drain) cannot approve it; with `min_approvals: N`, N distinct approvers are needed; one
deny by an allowed approver ends the wait. The initiator may still deny (withdraw) their own request.
Who decided, and when, is journalled with the step; every decision and refusal is audited by the command
layer. A run waiting for approval survives a restart: its deadline is absolute in the journal, the
approvals collected so far are journalled, and it waits again for what is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Rule:
    """Who may decide a run's approval, and how many must agree."""

    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    initiator: str | None = None
    """Who may not approve (None: anyone allowed may)."""


@dataclass(frozen=True)
class Decision:
    approved: bool
    actor: str
    at: float
    approvals: tuple[str, ...] = ()
    """Everyone who approved, in order (the last of them is `actor` when approved)."""


@dataclass(frozen=True)
class Verdict:
    """What a decision did: `error` and `status` (403, 409) when refused."""

    error: str | None = None
    status: int = 200
    approvals: tuple[str, ...] = ()
    needed: int = 1
    final: bool = False


@dataclass
class _Pending:
    rule: Rule
    future: asyncio.Future[Decision]
    approvals: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


Progress = Callable[[list[dict[str, object]]], Awaitable[None]]


def allowed(approvers: tuple[str, ...], actor: str, role: str) -> bool:
    """`approvers` lists names and `role:NAME` entries; empty means any operator or admin."""
    if role not in ROLES:
        return False
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
        return {run_id: p.rule.approvers for run_id, p in self._pending.items()}

    async def wait(
        self,
        run_id: str,
        rule: Rule | tuple[str, ...],
        timeout_s: float,
        approved: Iterable[tuple[str, float]] = (),
        progress: Progress | None = None,
    ) -> Decision | None:
        """The decision, or None when `timeout_s` (on the monotonic clock: the caller converted its
        journalled wall deadline once) passes first. `approved` are approvals collected before (a
        resumed wait); `progress` is told of each approval that is not yet enough, to journal it."""
        if not isinstance(rule, Rule):
            rule = Rule(rule)
        loop = asyncio.get_running_loop()
        pending = _Pending(rule, loop.create_future(), dict(approved))
        self._pending[run_id] = pending
        deadline = loop.time() + max(0.0, timeout_s)
        try:
            while True:
                changed: asyncio.Future[Any] = asyncio.ensure_future(pending.changed.wait())
                waiters: list[asyncio.Future[Any]] = [pending.future, changed]
                try:
                    await asyncio.wait(
                        waiters,
                        timeout=max(0.0, deadline - loop.time()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    changed.cancel()
                    await asyncio.gather(changed, return_exceptions=True)
                if pending.future.done():
                    return pending.future.result()
                if not pending.changed.is_set():
                    return None  # timed out
                pending.changed.clear()
                if progress is not None:
                    await progress([{"by": who, "at": at} for who, at in pending.approvals.items()])
        finally:
            if self._pending.get(run_id) is pending:
                del self._pending[run_id]

    def decide(self, run_id: str, approved: bool, actor: str, role: str) -> Verdict:
        """Take a decision, or say why it is refused."""
        pending = self._pending.get(run_id)
        if pending is None or pending.future.done():
            return Verdict(f"run {run_id} is not waiting for an approval", 409)
        rule = pending.rule
        so_far = tuple(pending.approvals)
        if not allowed(rule.approvers, actor, role):
            return Verdict(
                f"{actor} ({role}) is not among the approvers of run {run_id}: "
                f"{', '.join(rule.approvers) or 'any operator'}",
                409,
                so_far,
                rule.min_approvals,
            )
        now = time.time()
        if not approved:
            pending.future.set_result(Decision(False, actor, now, so_far))
            return Verdict(approvals=so_far, needed=rule.min_approvals, final=True)
        if rule.initiator is not None and actor == rule.initiator:
            return Verdict(
                f"{actor} started run {run_id}: the initiator cannot approve their own run "
                "(two-person rule); another approver must",
                403,
                so_far,
                rule.min_approvals,
            )
        if actor in pending.approvals:
            return Verdict(
                f"{actor} already approved run {run_id}; {rule.min_approvals - len(so_far)} more "
                f"distinct approver(s) needed",
                409,
                so_far,
                rule.min_approvals,
            )
        pending.approvals[actor] = now
        approvals = tuple(pending.approvals)
        if len(approvals) >= rule.min_approvals:
            pending.future.set_result(Decision(True, actor, now, approvals))
            return Verdict(approvals=approvals, needed=rule.min_approvals, final=True)
        pending.changed.set()
        return Verdict(approvals=approvals, needed=rule.min_approvals)
