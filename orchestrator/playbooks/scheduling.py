"""Per-key scheduling of runs (DESIGN §6b): one run per concurrency key, deduplication, latest-wins
queueing and preemption.

Split from `runner` so the queueing rules read on their own: `RunScheduler` owns the slots (`active`,
`pending`, `runs`) and decides whether a submitted run starts, queues, supersedes a queued one or
preempts the active one; `runner.Runner` drives the runs it starts and emits their events.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator.core.models import RunEventType, new_id
from orchestrator.playbooks import templates
from orchestrator.playbooks.loader import LoadedPlaybook
from orchestrator.playbooks.model import Playbook

log = structlog.get_logger(__name__)

PROTECTIVE = "cluster.failed"
"""The one event that never waits (DESIGN §12): it preempts any active run for its key that is not
itself protective (a failback, a delayed notification, a manual drain waiting for approval) at the
run's next journalled point, and cancels every queued one."""


@dataclass
class Run:
    id: str
    playbook: str
    event: dict[str, Any]
    key: str
    loaded: LoadedPlaybook | None = None
    record: dict[str, Any] | None = None
    force: bool = False
    actor: str | None = None
    preempt: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    hold: str | None = None
    """Why a resumed run is blocked at once (automation paused since it was journalled)."""


@dataclass(frozen=True)
class Note:
    """A scheduling decision to publish as a run event once every slot change is made."""

    run: Run
    kind: RunEventType
    detail: dict[str, Any]


class RunScheduler(abc.ABC):
    """The concurrency-key slots and the rules that fill them; subclasses drive runs and emit events."""

    def __init__(self) -> None:
        self.active: dict[str, Run] = {}
        """concurrency key -> the run holding it."""
        self.pending: dict[str, list[Run]] = {}
        self.runs: dict[str, Run] = {}
        self._accepting = True

    @abc.abstractmethod
    async def _drive(self, run: Run) -> None:
        """Carry `run` to its end; must call `_next(run.key)` when done."""

    @abc.abstractmethod
    async def _emit(
        self,
        run_id: str,
        playbook: str,
        kind: RunEventType,
        step: str | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record and publish one run event."""

    async def submit(
        self, loaded: LoadedPlaybook, event: dict[str, Any], force: bool = False, actor: str | None = None
    ) -> str | None:
        """Schedule one run; returns its id, or None when it was deduplicated.

        Every decision on the slots and queues is made before the first await (the events that say so
        are emitted afterwards): a run that ends while an event is being published frees its slot and
        starts the next queued run, and nothing decided on the state read before may act on it after.
        """
        key = self._concurrency_key(loaded.playbook, event)
        run = Run(new_id(), loaded.playbook.name, event, key, loaded, force=force, actor=actor)
        active = self.active.get(key)
        if active is None:
            self._start(run)
            return run.id
        notes: list[Note] = []
        if event.get("type") == PROTECTIVE:
            notes += self._take_queued(key, event)
        if active.playbook == run.playbook and active.event.get("type") == event.get("type"):
            notes.append(
                Note(
                    active,
                    "deduplicated",
                    {
                        "rule": "concurrency",
                        "key": key,
                        "event": event.get("type"),
                        "event_id": event.get("id"),
                        "reason": f"a {event.get('type')} run of {run.playbook} is already active for {key}",
                    },
                )
            )
            await self._publish(notes)
            return None
        queue = self.pending.setdefault(key, [])
        for queued in [q for q in queue if q.playbook == run.playbook]:
            queue.remove(queued)  # latest wins
            self.runs.pop(queued.id, None)
            notes.append(
                Note(
                    queued,
                    "deduplicated",
                    {
                        "rule": "latest_wins",
                        "key": key,
                        "reason": f"superseded by a newer {event.get('type')} event",
                    },
                )
            )
        if event.get("type") == PROTECTIVE and active.event.get("type") != PROTECTIVE:
            queue.insert(0, run)
            active.preempt.set()
            notes.append(
                Note(
                    active,
                    "preempted",
                    {
                        "rule": "preemption",
                        "key": key,
                        "by_event": PROTECTIVE,
                        "reason": f"{event.get('cluster')} failed again: "
                        "stopping at the next journalled point",
                    },
                )
            )
        else:
            queue.append(run)
        self.runs[run.id] = run
        await self._publish(notes)
        return run.id

    def _take_queued(self, key: str, event: Mapping[str, Any]) -> list[Note]:
        """The cluster failed: a queued failback, notification or manual run must not start after the
        drain and act on a cluster that failed again. Synchronous: see `submit`."""
        queue = self.pending.get(key, [])
        notes = []
        for queued in [q for q in queue if q.event.get("type") != PROTECTIVE]:
            queue.remove(queued)
            self.runs.pop(queued.id, None)
            notes.append(
                Note(
                    queued,
                    "deduplicated",
                    {
                        "rule": "protective_first",
                        "key": key,
                        "reason": f"{event.get('cluster')} failed: this queued "
                        f"{queued.event.get('type')} run is cancelled",
                    },
                )
            )
        return notes

    async def _publish(self, notes: list[Note]) -> None:
        for note in notes:
            await self._emit(note.run.id, note.run.playbook, note.kind, detail=note.detail)

    def _concurrency_key(self, playbook: Playbook, event: Mapping[str, Any]) -> str:
        if playbook.concurrency:
            try:
                return str(templates.render_string(playbook.concurrency, {"event": event}))
            except templates.TemplateError as e:
                log.warning("run.concurrency_key_failed", playbook=playbook.name, error=str(e))
        return str(event.get("cluster") or playbook.name)

    def _start(self, run: Run) -> None:
        self.active[run.key] = run
        self.runs[run.id] = run
        run.task = asyncio.get_running_loop().create_task(self._drive(run), name=f"run-{run.id}")

    def _next(self, key: str) -> None:
        self.active.pop(key, None)
        queue = self.pending.get(key)
        if queue and self._accepting:
            self._start(queue.pop(0))
        if not queue:
            self.pending.pop(key, None)
