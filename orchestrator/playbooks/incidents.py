"""Incidents (DESIGN §13): one cluster's failure, from `cluster.failed` or a manual drain to its failback.

An incident's id (`inc-<cluster>-<n>`, n counting per cluster) is the dedup key of every notification
about it, so a pager opens one alert, a chat one thread, a mailbox one conversation. Records live in KV
`failover-state`, so a new leader or a restarted daemon carries on with the same incident:
- `incident.<id>`: the record (state, times, runs, last summary, each notifier's first receipt and the
  state each notifier was last told);
- `incident.open.<cluster>`: `{n, open}`, the last number given out for the cluster and its open
  incident (None when none is). Numbers are allocated with a compare-and-set on this key, so two
  writers (an old and a new leader) can never give out the same id, nor open two incidents at once.

Opening is the `notify` action's job (the first message of a protective or manual-drain run opens it);
runs that only talk about a cluster (a failback, a flapping page) join its open incident.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from orchestrator.bus.client import Bus
from orchestrator.bus.kv import ConflictError
from orchestrator.bus.state import StateStore
from orchestrator.core.errors import TemporaryError
from orchestrator.core.models import rfc3339

State = Literal["opened", "drained", "scaled", "waiting_approval", "step_failed", "resolved"]
STATES: tuple[str, ...] = ("opened", "drained", "scaled", "waiting_approval", "step_failed", "resolved")
PREFIX = "incident."
OPEN_PREFIX = "incident.open."
ID_PREFIX = "inc-"
CAS_ATTEMPTS = 8
"""A compare-and-set that keeps losing means another leader is writing: give up (the step retries)."""
RUNS_KEPT = 50
"""An incident names at most this many runs (a flapping cluster can start many): the newest are kept."""


def incident_key(incident_id: str) -> str:
    return f"{PREFIX}{incident_id}"


def opens_incident(event: dict[str, Any]) -> bool:
    """Whether a run on `event` opens its cluster's incident: a protective run or a manual drain."""
    kind = event.get("type")
    return kind == "cluster.failed" or (kind == "manual" and event.get("command") == "drain")


class IncidentBook:
    """Incidents over the state bucket; every write is a compare-and-set (a lost one is re-read and
    re-applied), so concurrent runs of two clusters, or two leaders, never lose each other's changes."""

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @property
    def _kv(self) -> Any:
        return self.store.bus.kv.state

    async def get(self, incident_id: str) -> dict[str, Any] | None:
        found = await Bus.kv_get(self._kv, incident_key(incident_id))
        return dict(found[0]) if found else None

    async def open_for(self, cluster: str) -> dict[str, Any] | None:
        """The cluster's open incident, or None."""
        found = await Bus.kv_get(self._kv, f"{OPEN_PREFIX}{cluster}")
        open_id = found[0].get("open") if found else None
        if not isinstance(open_id, str):
            return None
        record = await self.get(open_id)
        if record is None:  # the pointer was written, the record not (a crash in between): rebuild it
            record = await self._create(open_id, cluster)
        return record if record.get("state") != "resolved" else None

    async def of_run(self, cluster: str, run_id: str) -> dict[str, Any] | None:
        """The cluster's latest incident when `run_id` already spoke about it, even resolved. A failback
        that tells several notifiers resolves the incident with its first `notify`; its later steps must
        still resolve that incident for their notifiers, not page about nothing in particular."""
        found = await Bus.kv_get(self._kv, f"{OPEN_PREFIX}{cluster}")
        n = found[0].get("n") if found else None
        if not isinstance(n, int) or n < 1:
            return None
        record = await self.get(f"{ID_PREFIX}{cluster}-{n}")
        return record if record is not None and run_id in record.get("runs", []) else None

    async def open(self, cluster: str, run_id: str) -> tuple[dict[str, Any], bool]:
        """The cluster's open incident, opened now when there is none; True when this call opened it.
        The run is added to the incident's runs either way."""
        for _ in range(CAS_ATTEMPTS):
            key = f"{OPEN_PREFIX}{cluster}"
            found = await Bus.kv_get(self._kv, key)
            pointer, revision = (dict(found[0]), found[1]) if found else ({"n": 0, "open": None}, None)
            if isinstance(pointer.get("open"), str):
                record = await self.open_for(cluster)
                if record is not None:
                    return await self.join(record["id"], run_id), False
            n = int(pointer.get("n") or 0) + 1
            incident_id = f"{ID_PREFIX}{cluster}-{n}"
            try:
                await Bus.kv_cas(self._kv, key, {"n": n, "open": incident_id}, revision)
            except ConflictError:
                continue  # another writer opened or resolved one meanwhile: read again
            await self._create(incident_id, cluster)
            return await self.join(incident_id, run_id), True
        raise TemporaryError(f"incident of {cluster}: the open pointer kept changing")

    async def _create(self, incident_id: str, cluster: str) -> dict[str, Any]:
        now = self.clock()
        record: dict[str, Any] = {
            "id": incident_id,
            "cluster": cluster,
            "state": "opened",
            "opened_at": now,
            "updated_at": now,
            "resolved_at": None,
            "runs": [],
            "summary": None,
            "receipts": {},
            "notified": {},
        }
        if not await Bus.kv_create(self._kv, incident_key(incident_id), record):
            existing = await self.get(incident_id)
            return existing if existing is not None else record
        return record

    async def join(self, incident_id: str, run_id: str) -> dict[str, Any]:
        """Name `run_id` among the incident's runs (in the order they first spoke about it)."""
        record = await self.get(incident_id)
        if record is not None and run_id in record.get("runs", []):
            return record

        def add(record: dict[str, Any]) -> None:
            if run_id not in record.get("runs", []):
                record["runs"] = [*record.get("runs", []), run_id][-RUNS_KEPT:]

        return await self.update(incident_id, add)

    async def update(self, incident_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `change` to the record with compare-and-set (re-read and re-applied when another writer
        came first); `updated_at` is set. Returns the record as written."""
        key = incident_key(incident_id)
        for _ in range(CAS_ATTEMPTS):
            found = await Bus.kv_get(self._kv, key)
            if found is None:
                raise TemporaryError(f"incident {incident_id} is not in KV")
            record, revision = dict(found[0]), found[1]
            change(record)
            record["updated_at"] = self.clock()
            try:
                await Bus.kv_cas(self._kv, key, record, revision)
            except ConflictError:
                continue
            return record
        raise TemporaryError(f"incident {incident_id}: the record kept changing")

    async def set_state(self, incident_id: str, state: str, summary: str | None) -> dict[str, Any]:
        """Move the incident to `state`; `resolved` also clears the cluster's open pointer (the next
        failure opens `inc-<cluster>-<n+1>`)."""

        def change(record: dict[str, Any]) -> None:
            record["state"] = state
            if summary is not None:
                record["summary"] = summary
            if state == "resolved" and not record.get("resolved_at"):
                record["resolved_at"] = self.clock()

        record = await self.update(incident_id, change)
        if state == "resolved":
            await self._close_pointer(record["cluster"], incident_id)
        return record

    async def _close_pointer(self, cluster: str, incident_id: str) -> None:
        key = f"{OPEN_PREFIX}{cluster}"
        for _ in range(CAS_ATTEMPTS):
            found = await Bus.kv_get(self._kv, key)
            if found is None or found[0].get("open") != incident_id:
                return  # already closed (a retry), or another incident is open now
            try:
                await Bus.kv_cas(self._kv, key, {**found[0], "open": None}, found[1])
            except ConflictError:
                continue
            return
        raise TemporaryError(f"incident of {cluster}: the open pointer kept changing")

    async def notified(self, incident_id: str, notifier: str, state: str, receipt: Any) -> dict[str, Any]:
        """`notifier` was told `state`; its first receipt is kept (later messages join that thread)."""

        def change(record: dict[str, Any]) -> None:
            record.setdefault("notified", {})[notifier] = state
            receipts = record.setdefault("receipts", {})
            if notifier not in receipts:
                receipts[notifier] = receipt

        return await self.update(incident_id, change)

    async def all(self, open_only: bool = False) -> list[dict[str, Any]]:
        """Every incident, newest first (open ones only with `open_only`)."""
        records = [
            value
            for key, value in (await Bus.kv_items(self._kv, PREFIX)).items()
            if not key.startswith(OPEN_PREFIX)
        ]
        if open_only:
            records = [r for r in records if r.get("state") != "resolved"]
        return sorted(records, key=lambda r: float(r.get("opened_at") or 0), reverse=True)


def incident_view(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the API, the CLI and the dashboard show it: timestamps as RFC 3339, receipts left
    out (a thread id is for the notifier, not for readers)."""

    def ts(value: Any) -> str | None:
        return rfc3339(float(value)) if isinstance(value, int | float) and value > 0 else None

    return {
        "id": record.get("id"),
        "cluster": record.get("cluster"),
        "state": record.get("state"),
        "opened_at": ts(record.get("opened_at")),
        "updated_at": ts(record.get("updated_at")),
        "resolved_at": ts(record.get("resolved_at")),
        "runs": list(record.get("runs") or []),
        "summary": record.get("summary"),
        "notifiers": sorted((record.get("receipts") or {}).keys()),
    }
