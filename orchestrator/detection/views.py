"""Read-only views of the detector's state for the rest of the daemon, cheap at 10,000 clusters.

The actuators, guards, watchdog and reconciler ask for one cluster's status at a time; the runner
asks for the whole fleet as templates see it at every run and step. Neither may cost a copy of the
fleet per question (issue 19: a dict rebuilt per `states()` call made a readiness pass over 5,000
clusters quadratic, and every drain rebuilt the template fleet twice).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.core.config import Config
from orchestrator.core.config_clusters import ClusterConfig
from orchestrator.detection.machine import DetectorState


class StatusView(Mapping[str, str]):
    """cluster -> detector status, read live: a lookup is O(1) and nothing copies the fleet."""

    __slots__ = ("_state",)

    def __init__(self, state: DetectorState) -> None:
        self._state = state

    def __getitem__(self, cluster: str) -> str:
        return self._state.clusters[cluster].status

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.clusters)

    def __len__(self) -> int:
        return len(self._state.clusters)


def _entry(cluster: ClusterConfig, status: str) -> dict[str, Any]:
    return {"name": cluster.name, "state": status, "labels": dict(cluster.labels), "weight": cluster.weight}


class FleetView:
    """The cluster list templates see (`clusters`: name, state, labels, weight, in config order),
    rebuilt only after a status changed (`DetectorState.generation`), and then only the entries whose
    status changed are new (at 10,000 clusters a full rebuild is ~10 ms, asked by every run). Each
    rebuild is a new list: one handed out before stays as it was. Callers copy, never change it."""

    def __init__(self, config: Config, state: DetectorState) -> None:
        self.config = config
        self.state = state
        self._generation = -1
        self._clusters: list[dict[str, Any]] = []
        self.rebuilds = 0

    def __call__(self) -> list[dict[str, Any]]:
        if self._generation != self.state.generation:
            now = self.state.clusters
            if not self._clusters:
                self._clusters = [_entry(c, now[c.name].status) for c in self.config.clusters]
            else:
                fresh = list(self._clusters)
                for i, entry in enumerate(fresh):
                    status = now[entry["name"]].status
                    if entry["state"] != status:
                        fresh[i] = {**entry, "state": status}
                self._clusters = fresh
            self._generation = self.state.generation
            self.rebuilds += 1
        return self._clusters
