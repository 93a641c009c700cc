"""Watch events and watchers of the sandbox API server.

A watcher sees the store's changes through its own selectors, the way kube-apiserver filters a watch:
an object that stops matching a label selector is DELETED for that watcher, one that starts matching
is ADDED, although both are MODIFIED in storage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from orchestrator.sandbox.kube_patch import Requirement, field_matches
from orchestrator.sandbox.kube_resources import ResourceType


def _labels(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    rt: ResourceType
    namespace: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(eq=False)
class Watcher:
    """One watch request: its filter and a queue the store feeds; `None` in the queue ends the stream."""

    rt: ResourceType
    namespace: str | None
    labels: list[Requirement]
    fields: list[tuple[str, bool, str]]
    queue: asyncio.Queue[tuple[str, WatchEvent] | None] = field(default_factory=asyncio.Queue)

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        labels = _labels(obj)
        return all(r.matches(labels) for r in self.labels) and field_matches(self.fields, obj)

    def translate(self, event: WatchEvent) -> str | None:
        """The event type this watcher sees: an object leaving the selector is DELETED for it."""
        if event.rt is not self.rt or (self.namespace is not None and event.namespace != self.namespace):
            return None
        now, before = self.matches(event.obj), self.matches(event.old)
        if event.type != "MODIFIED":
            return event.type if now else None
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        return "DELETED" if before else None
