"""Re-posting open incidents to notifiers that forget them (DESIGN §13).

Alertmanager resolves an alert posted without `endsAt` once its `resolve_timeout` (5 min by default)
passes with no new post, so a failover that lasts longer than that would show as resolved while the
cluster is still drained. A notifier that needs it declares `repost_s` (Alertmanager:
`repost_interval`, 2 min by default); while this replica leads, every open incident is sent again to
each such notifier that was told about it, with the state, summary and receipt (thread) on record, at
most once per `repost_s`. A failed re-post is logged and tried at the next pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from orchestrator.core.aio import wait_any
from orchestrator.core.errors import OrchestratorError
from orchestrator.notifiers import Notification, Notifier
from orchestrator.playbooks.incidents import IncidentBook

log = structlog.get_logger(__name__)


class IncidentReposter:
    def __init__(
        self,
        book: IncidentBook,
        notifiers: Mapping[str, Notifier],
        external_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book
        self.notifiers = notifiers
        self.external_url = external_url
        self.clock = clock
        self.last: dict[tuple[str, str], float] = {}
        """(incident, notifier) -> when it was last (re)posted by this process; bounded by the open
        incidents (closed ones are dropped every pass)."""

    async def run(self, stop: asyncio.Event, active: Callable[[], bool], interval_s: float = 15.0) -> None:
        while not stop.is_set():
            await wait_any(stop, timeout_s=interval_s)
            if stop.is_set() or not active():
                continue
            try:
                await self.once()
            except OrchestratorError as e:
                log.warning("incidents.repost_failed", error=str(e))

    async def once(self) -> list[tuple[str, str]]:
        """One pass; returns the (incident, notifier) pairs re-posted."""
        now = self.clock()
        sent: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for incident in await self.book.all(open_only=True):
            incident_id = str(incident.get("id"))
            for name, state in (incident.get("notified") or {}).items():
                notifier = self.notifiers.get(name)
                repost_s = getattr(notifier, "repost_s", None)
                if notifier is None or not repost_s:
                    continue
                key = (incident_id, name)
                seen.add(key)
                if now - self.last.setdefault(key, now) < float(repost_s):
                    continue  # first seen here: the notify that told it was just now, or recently
                try:
                    await notifier.send(self._note(incident, name, str(state)))
                except OrchestratorError as e:
                    log.warning("incidents.repost_failed", incident=incident_id, notifier=name, error=str(e))
                    continue
                self.last[key] = now
                sent.append(key)
        self.last = {key: at for key, at in self.last.items() if key in seen}
        return sent

    def _note(self, incident: Mapping[str, Any], notifier: str, state: str) -> Notification:
        incident_id = str(incident.get("id"))
        receipt = (incident.get("receipts") or {}).get(notifier)
        severity = receipt.get("severity") if isinstance(receipt, dict) else None
        links = {"incident": f"{self.external_url}/incidents/{incident_id}"} if self.external_url else {}
        return Notification(
            summary=str(incident.get("summary") or f"incident {incident_id} is {state}"),
            severity=severity if severity in ("info", "warning", "error", "critical") else "critical",
            cluster=str(incident.get("cluster")),
            dedup_key=incident_id,
            incident=incident_id,
            incident_state=state,
            links=links,
            thread=receipt if isinstance(receipt, dict) else None,
        )
