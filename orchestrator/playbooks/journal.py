"""The run journal: KV `failover-runs`, key `run.<id>`, written with compare-and-set at every step
transition, and run events on `failover.runs.<id>` (DESIGN §5, §6b).

A lost compare-and-set means another process wrote this run since we last did (a new leader resumed
it): this process must stop acting on it, so the conflict surfaces as `Fenced`.

Reading the journal never means reading every record: a record is up to ~100 KB and a busy fleet has
thousands, which once made an election outlast the lease. Two small index keys sit in the same bucket:

- `active.<id>`: the run is unfinished. Written before the record is first saved unfinished, deleted
  after it is saved finished, so `unfinished()` (every election) reads only the runs it returns. A marker
  whose record is finished (or missing for a while) is a leftover of a crash and is cleaned up.
- `at.<ms>.<id>`: the run's start (`created_at`, in milliseconds, 13 digits), written before the record
  is created. Key names sort by time, so `page()` lists the names (one JetStream answer, no values) and
  reads only the records of one page.

Records written by an older version have neither: a one-time migration (guarded by `index.version`)
reads each once and writes its keys; retention repeats that for records written since by an older
replica. Deletion purges the key's messages from the stream: no delete marker is left behind.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog

from orchestrator.bus.client import Bus
from orchestrator.bus.kv import ConflictError, nats_errors
from orchestrator.core import redact, subjects
from orchestrator.core.errors import PermanentError
from orchestrator.core.models import RunEvent

log = structlog.get_logger(__name__)

UNFINISHED = ("running", "delayed")
PAGE_DEFAULT = 50
PAGE_MAX = 500
"""Runs in one page of `page()`, `GET /api/v1/runs` and `failover ctl runs`: a page reads its records."""
INDEX_VERSION = 2
"""`index.version` holds it once the records of older versions (no `active.`/`at.` keys) are indexed."""
VERSION_KEY = "index.version"
MARKER_GRACE_S = 60.0
"""A marker is written just before its record: one without a record is a leftover only past this age."""
SUBJECTS_PAGE = 100_000
"""nats-server lists at most this many subjects in one stream info answer; beyond, keys are watched."""
CONCURRENCY = 32
STREAM = f"KV_{subjects.KV_RUNS}"
SUBJECT = f"$KV.{subjects.KV_RUNS}."
T = TypeVar("T")


class Fenced(PermanentError):
    """Someone else owns this run now; stop without touching anything."""


class UnknownRun(PermanentError):
    """A page cursor (`before`) that names no run in the journal."""


class _Unreadable(enum.Enum):
    """A record that is not a JSON object: reported, skipped, kept for a person to look at."""

    RECORD = 1


@dataclass(frozen=True)
class RunsPage:
    runs: list[dict[str, Any]]
    """Newest first."""
    next: str | None
    """The id to pass as `before` for the next (older) page; None on the last page."""


@dataclass(frozen=True)
class Pruned:
    deleted: int
    kept: int
    indexed: int
    """Records found without index keys (an older replica's) and indexed by this pass."""
    markers: int
    """Delete markers and leftover `active.` markers removed."""


class Journal(Protocol):
    async def save(self, record: dict[str, Any]) -> None: ...

    async def emit(self, event: RunEvent) -> None: ...

    async def unfinished(self) -> list[dict[str, Any]]: ...

    async def load(self, run_id: str) -> dict[str, Any] | None: ...

    async def read(self, run_id: str) -> dict[str, Any] | None: ...

    async def page(self, limit: int = PAGE_DEFAULT, before: str | None = None) -> RunsPage: ...

    async def recent(self, limit: int = PAGE_DEFAULT, before: str | None = None) -> list[dict[str, Any]]: ...


def index_key(record: dict[str, Any], run_id: str) -> str:
    """`at.<ms>.<id>` from the record's `created_at` (the moment its run started), so that the key of
    a run is the same whoever computes it: the first save, a retry of it, the migration."""
    try:
        started = datetime.fromisoformat(str(record["created_at"])).timestamp()
    except (KeyError, ValueError):
        started = time.time()
    return f"at.{max(0, int(started * 1000)):013d}.{run_id}"


async def _bounded(calls: Iterable[Awaitable[T]], limit: int = CONCURRENCY) -> list[T]:
    """Await `calls` with at most `limit` in flight, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


class BusJournal:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._revisions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._marked: set[str] = set()
        """Runs whose `active.` marker this process wrote or found: written once per process."""
        self._migrated = False

    async def save(self, record: dict[str, Any]) -> None:
        """Write the whole record with compare-and-set. Writes of one run are serialized here: the
        items of a `for_each` step save concurrently, and each must build on the previous revision.

        The index keys are written around it, so that whatever crash comes between, an unfinished record
        has its marker and every record its time key (a marker or key without a record is harmless)."""
        run_id = str(record["id"])
        unfinished = record.get("status") in UNFINISHED
        kv = self.bus.kv.runs
        async with self._lock(run_id):
            last = self._revisions.get(run_id)
            if unfinished and run_id not in self._marked:
                await Bus.kv_put(kv, f"active.{run_id}", {"at": time.time()})
                self._marked.add(run_id)
            if last is None:
                await Bus.kv_put(kv, index_key(record, run_id), {})
            try:
                # the backstop: whoever saved it, no secret value reaches the bucket (DESIGN §12)
                stored = redact.redact(record)
                self._revisions[run_id] = await Bus.kv_cas(kv, f"run.{run_id}", stored, last)
            except ConflictError as e:
                raise Fenced(f"run {run_id}: {e}") from e
            if not unfinished and run_id in self._marked:
                await self._purge(f"active.{run_id}")
                self._marked.discard(run_id)
        if len(self._revisions) > 10_000:  # bounded: forget the oldest finished runs' revisions
            for stale in list(self._revisions)[:1000]:
                self._forget(stale)

    async def emit(self, event: RunEvent) -> None:
        await self.bus.publish_durable(subjects.runs(event.run_id), event.to_json())

    async def load(self, run_id: str) -> dict[str, Any] | None:
        """The record, adopting its revision: the next `save` of this run builds on it."""
        async with self._lock(run_id):
            found = await self._read(run_id)
            if not isinstance(found, tuple):
                return None
            self._revisions[run_id] = found[1]
        return dict(found[0])

    async def read(self, run_id: str) -> dict[str, Any] | None:
        """The record, for showing it: nothing adopted (a viewer's read must not move a running run's
        compare-and-set base)."""
        found = await self._read(run_id)
        return dict(found[0]) if isinstance(found, tuple) else None

    async def unfinished(self) -> list[dict[str, Any]]:
        """Runs left unfinished, adopted with their revision for resume, oldest first. Reads only their
        records (and, the first time after an upgrade, migrates the older version's records)."""
        await self.migrate()
        out = []
        active, _standing, _swept = await self._active(adopt=True)
        for run_id, found in active.items():
            self._marked.add(run_id)
            out.append(dict(found))
        return sorted(out, key=lambda r: str(r.get("created_at", "")))

    async def page(self, limit: int = PAGE_DEFAULT, before: str | None = None) -> RunsPage:
        """The `limit` newest runs started before the run `before` (None: the newest), newest first;
        reads only their records. Raises UnknownRun when `before` is not in the journal."""
        keys = sorted(await self._keys("at."), reverse=True)
        if before is not None:
            by_id = {k.rsplit(".", 1)[1]: k for k in keys}
            cursor = by_id.get(before)
            if cursor is None:  # no time key (an older replica's run not indexed yet): its record says
                found = await self._read(before)
                if not isinstance(found, tuple):
                    raise UnknownRun(f"before: no run {before}")
                cursor = index_key(found[0], before)
            keys = [k for k in keys if k < cursor]
        chunk = [k.rsplit(".", 1)[1] for k in keys[:limit]]
        runs: dict[str, dict[str, Any]] = {}
        for run_id, found in zip(chunk, await _bounded(self._read(i) for i in chunk), strict=True):
            if isinstance(found, tuple):  # a record deleted since it was listed is skipped
                runs.setdefault(run_id, dict(found[0]))
        return RunsPage(list(runs.values()), chunk[-1] if len(keys) > limit else None)

    async def recent(self, limit: int = PAGE_DEFAULT, before: str | None = None) -> list[dict[str, Any]]:
        return (await self.page(limit, before)).runs

    async def migrate(self) -> None:
        """Index the records an older version wrote (once: `index.version` says it was done). Each is
        read once; the keys written stay, so a migration cut short by a timeout resumes where it was."""
        if self._migrated:
            return
        kv = self.bus.kv.runs
        if await Bus.kv_get(kv, VERSION_KEY) is None:
            started = time.monotonic()
            indexed = await self.reindex()
            await Bus.kv_put(kv, VERSION_KEY, {"v": INDEX_VERSION})
            log.info("journal.migrated", indexed=indexed, took_s=round(time.monotonic() - started, 3))
        self._migrated = True

    async def reindex(self) -> int:
        """Write the index keys of every record that has none (the marker first, as `save` does);
        returns how many. Reads only those records."""
        indexed = {k.rsplit(".", 1)[1] for k in await self._keys("at.")}
        orphans = [k.removeprefix("run.") for k in await self._keys("run.")]
        orphans = [run_id for run_id in orphans if run_id not in indexed]

        async def index(run_id: str) -> int:
            found = await self._read(run_id)
            if not isinstance(found, tuple):
                return 0
            if found[0].get("status") in UNFINISHED:
                await Bus.kv_put(self.bus.kv.runs, f"active.{run_id}", {"at": time.time()})
            await Bus.kv_put(self.bus.kv.runs, index_key(found[0], run_id), {})
            return 1

        return sum(await _bounded(index(run_id) for run_id in orphans))

    async def prune(self, max_age_s: float, max_runs: int, now: float | None = None) -> Pruned:
        """Delete the finished runs started more than `max_age_s` ago or beyond the newest `max_runs`
        (unfinished runs count, and are never deleted), then any delete marker in the bucket."""
        await self.migrate()
        indexed = await self.reindex()  # an older replica's records first: none is invisible below
        keys = sorted(await self._keys("at."), reverse=True)  # listed before the markers: a run
        # that starts meanwhile has its marker written before its time key
        _active, marked, swept = await self._active(adopt=False)
        cutoff = f"{max(0, int(((now or time.time()) - max_age_s) * 1000)):013d}"
        victims = [
            (key, run_id)
            for rank, key in enumerate(keys)
            for run_id in [key.rsplit(".", 1)[1]]
            if run_id not in marked and (rank >= max_runs or key.split(".")[1] < cutoff)
        ]

        async def delete(key: str, run_id: str) -> None:
            await self._purge(f"run.{run_id}")
            await self._purge(key)  # last: a crash in between leaves a key that the next pass deletes
            self._forget(run_id)

        await _bounded(delete(key, run_id) for key, run_id in victims)
        markers = await self._sweep_markers()
        return Pruned(len(victims), len(keys) - len(victims), indexed, markers + swept)

    # reading and deleting without reading every record ------------------------------------------------

    async def _active(self, adopt: bool) -> tuple[dict[str, dict[str, Any]], set[str], int]:
        """From the markers: the unfinished runs' records by id, the ids whose marker stands (those, and
        records unreadable or being written: never deleted), and how many leftover markers (record
        finished, or missing past the grace) were removed. With `adopt`, their revisions become ours."""
        marked = [k.removeprefix("active.") for k in await self._keys("active.")]

        async def check(run_id: str) -> dict[str, Any] | bool:
            """The record if unfinished, else whether the marker was a leftover (and is removed)."""
            async with self._lock(run_id):  # a save of this run in this process is not in between
                found = await self._read(run_id)
                if isinstance(found, tuple) and found[0].get("status") in UNFINISHED:
                    if adopt:
                        self._revisions[run_id] = found[1]
                    return found[0]
                if found is _Unreadable.RECORD:
                    return False  # kept, and reported by `_read`
                if found is None:
                    marker = await Bus.kv_get(self.bus.kv.runs, f"active.{run_id}")
                    at = marker[0].get("at") if marker and isinstance(marker[0], dict) else None
                    if isinstance(at, int | float) and time.time() - at < MARKER_GRACE_S:
                        return False  # its record is being written
                await self._purge(f"active.{run_id}")
                self._marked.discard(run_id)
                return True

        checked = dict(zip(marked, await _bounded(check(run_id) for run_id in marked), strict=True))
        active = {run_id: r for run_id, r in checked.items() if isinstance(r, dict)}
        standing = {run_id for run_id, r in checked.items() if r is not True}
        return active, standing, len(checked) - len(standing)

    async def _read(self, run_id: str) -> tuple[dict[str, Any], int] | _Unreadable | None:
        try:
            found = await Bus.kv_get(self.bus.kv.runs, f"run.{run_id}")
        except ValueError as e:  # not JSON
            log.error("journal.unreadable_record", run_id=run_id, error=str(e)[:200])
            return _Unreadable.RECORD
        if found is None:
            return None
        if not isinstance(found[0], dict):
            log.error("journal.unreadable_record", run_id=run_id, error=f"a {type(found[0]).__name__}")
            return _Unreadable.RECORD
        return found[0], found[1]

    async def _keys(self, prefix: str) -> list[str]:
        """Keys under `prefix` (with a trailing dot), without their values: the stream's subjects, in one
        JetStream answer. Past what one answer lists, a meta-only watch (slower: one message per key)."""
        with nats_errors(f"list {subjects.KV_RUNS} {prefix}"):
            info = await self.bus.js.stream_info(STREAM, subjects_filter=f"{SUBJECT}{prefix}>")
        names = [s.removeprefix(SUBJECT) for s in info.state.subjects or {}]
        if len(names) >= SUBJECTS_PAGE:
            names = [key for key, operation in await self._scan(f"{prefix}>") if operation is None]
        return names

    async def _scan(self, pattern: str) -> list[tuple[str, str | None]]:
        """(key, operation) of the latest message of every key matching `pattern`, headers only: the
        operation is None for a value, `DEL` or `PURGE` for a delete marker."""
        out: list[tuple[str, str | None]] = []
        with nats_errors(f"watch {subjects.KV_RUNS} {pattern}"):
            watcher = await self.bus.kv.runs.watch(pattern, meta_only=True)
            try:
                for _ in range(SUBJECTS_PAGE * 100):
                    entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                    if entry is None:
                        break
                    out.append((str(entry.key), entry.operation))
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        return out

    async def _sweep_markers(self) -> int:
        """Remove every delete marker in the bucket (this journal leaves none; someone's `nats kv del`
        does): a marker is one more message, and its key would be listed as if it were there."""
        markers = [key for key, operation in await self._scan(">") if operation is not None]
        await _bounded(self._purge(key) for key in markers)
        return len(markers)

    async def _purge(self, key: str) -> None:
        """Remove every message of `key` from the stream: gone, with no delete marker left behind."""
        with nats_errors(f"purge {subjects.KV_RUNS} {key}"):
            await self.bus.js.purge_stream(STREAM, subject=f"{SUBJECT}{key}")

    def _lock(self, run_id: str) -> asyncio.Lock:
        return self._locks.setdefault(run_id, asyncio.Lock())

    def _forget(self, run_id: str) -> None:
        self._revisions.pop(run_id, None)
        self._locks.pop(run_id, None)
        self._marked.discard(run_id)
