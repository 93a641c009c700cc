"""The run journal: KV `failover-runs`, key `run.<id>`, written with compare-and-set at every step
transition, and run events on `failover.runs.<id>` (DESIGN §5, §6b).

A lost compare-and-set means another process wrote this run since we last did (a new leader resumed
it): this process must stop acting on it, so the conflict surfaces as `Fenced`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from orchestrator.bus.client import Bus
from orchestrator.bus.kv import ConflictError
from orchestrator.core import subjects
from orchestrator.core.errors import PermanentError
from orchestrator.core.models import RunEvent

UNFINISHED = ("running", "delayed")


class Fenced(PermanentError):
    """Someone else owns this run now; stop without touching anything."""


class Journal(Protocol):
    async def save(self, record: dict[str, Any]) -> None: ...

    async def emit(self, event: RunEvent) -> None: ...

    async def unfinished(self) -> list[dict[str, Any]]: ...

    async def load(self, run_id: str) -> dict[str, Any] | None: ...


class BusJournal:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._revisions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def save(self, record: dict[str, Any]) -> None:
        """Write the whole record with compare-and-set. Writes of one run are serialized here: the
        items of a `for_each` step save concurrently, and each must build on the previous revision."""
        run_id = str(record["id"])
        async with self._locks.setdefault(run_id, asyncio.Lock()):
            try:
                self._revisions[run_id] = await Bus.kv_cas(
                    self.bus.kv.runs, f"run.{run_id}", record, self._revisions.get(run_id)
                )
            except ConflictError as e:
                raise Fenced(f"run {run_id}: {e}") from e
        if len(self._revisions) > 10_000:  # bounded: forget the oldest finished runs' revisions
            for stale in list(self._revisions)[:1000]:
                self._revisions.pop(stale, None)
                self._locks.pop(stale, None)

    async def emit(self, event: RunEvent) -> None:
        await self.bus.publish_durable(subjects.runs(event.run_id), event.to_json())

    async def load(self, run_id: str) -> dict[str, Any] | None:
        found = await Bus.kv_get(self.bus.kv.runs, f"run.{run_id}")
        if found is None:
            return None
        record, revision = found
        self._revisions[run_id] = revision
        return dict(record)

    async def unfinished(self) -> list[dict[str, Any]]:
        """Runs a previous process left unfinished; adopting them (with their revision) for resume."""
        out = []
        for key, (record, revision) in (await Bus.kv_entries(self.bus.kv.runs, "run.")).items():
            if record.get("status") in UNFINISHED:  # one read per run: the value and the revision we adopt
                self._revisions[key.removeprefix("run.")] = revision
                out.append(dict(record))
        return sorted(out, key=lambda r: str(r.get("created_at", "")))

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        records = list((await Bus.kv_items(self.bus.kv.runs, "run.")).values())
        return sorted(records, key=lambda r: str(r.get("created_at", "")), reverse=True)[:limit]
