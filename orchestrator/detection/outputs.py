"""What the detector emits: cluster `Transition`s and system `Signal`s.

Kept apart from the state types in `machine` because every helper module builds these, and `machine`
imports those helpers: here they can be shared without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.core.models import ClusterStatus


@dataclass(frozen=True)
class Transition:
    cluster: str
    from_: ClusterStatus
    to: ClusterStatus
    type: str | None
    """The event to emit (`cluster.failed`, ...), or None for a silent change (unknown -> healthy)."""
    reason: str
    evidence: dict[str, Any]
    at: float


@dataclass(frozen=True)
class Signal:
    """A system event: `observer.suspect`, `observer.clear`, `vantage.suspect`, `vantage.clear`,
    `cluster.flapping`, `automation.resumed`."""

    type: str
    reason: str
    detail: dict[str, Any]
    at: float


Output = Transition | Signal
