"""Which valid health reports reach the detector, and the bookkeeping of those that do not (DESIGN §12).

Anyone able to publish on `failover.health.>` can send a report that parses, so what counts is decided
here, in constant time per report whatever is sent:
- the vantage must be listed in `detection.vantages` (the daemon's own vantage when omitted); the
  daemon's replicas all count as that one vantage;
- the cluster and probe must be configured;
- the report must have been made within `stale_after` of its receipt, either way: older is old news
  (buffered through an outage), newer is a clock running ahead or a report prepared in advance, and the
  detector, which goes by receipt time, would take either for fresh evidence.
Each refusal is counted in `failover_reports_dropped_total{reason}`. Unlisted names are remembered in a
bounded LRU for /api/v1/status, and the warnings they cause are rate-limited: inventing a hundred
thousand names costs neither memory nor a log line each.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.core.metrics import Metrics
from orchestrator.core.models import HealthReport

if TYPE_CHECKING:
    from orchestrator.detection.machine import DetectorState

log = structlog.get_logger(__name__)

MAX_UNLISTED = 1000
"""Unlisted vantage names remembered for /api/v1/status: enough for every forgotten prober, and a bound
on what invented names can cost."""


class LogBudget:
    """At most `count` log lines per `window_s`; says how many were held back since the last one."""

    def __init__(self, count: int = 10, window_s: float = 60.0) -> None:
        self.count = count
        self.window_s = window_s
        self._window_start = float("-inf")
        self._used = 0
        self._held = 0

    def take(self, now: float) -> int | None:
        """None: stay quiet. Otherwise the number of lines held back before this one."""
        if now - self._window_start >= self.window_s:
            self._window_start, self._used = now, 0
        if self._used >= self.count:
            self._held += 1
            return None
        self._used += 1
        held, self._held = self._held, 0
        return held


class Admission:
    def __init__(
        self,
        state: DetectorState,
        metrics: Metrics,
        own_vantage: str | None = None,
        daemon_vantages: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.state = state
        self.metrics = metrics
        listed = state.settings.vantages
        self.vantages: frozenset[str] | None = frozenset(listed) if listed is not None else None
        """`detection.vantages`; None only for a detector built without a config (tests)."""
        self.own_vantage = own_vantage
        self.daemon_vantages = daemon_vantages
        """The names the daemon's replicas report under (learnt from the lease, which only the daemon's
        credential can write): the management cluster's probing is one vantage whatever the replicas
        are called, so their reports are counted as `own_vantage`."""
        self.unlisted: OrderedDict[str, float] = OrderedDict()
        """Unlisted vantage -> when it last reported (monotonic), least recently seen first."""
        self._dropped: dict[str, Any] = {}
        self._unlisted_log = LogBudget()
        self._target_log = LogBudget()
        self._skew_logged: set[str] = set()
        """Listed vantages whose clock was reported off: once each (the list bounds this set)."""

    def admit(
        self, report: HealthReport, received_at: float, count: bool = True, made_at: float | None = None
    ) -> HealthReport | None:
        """The report as the detector should see it, or None (counted when `count`) when it does not count.

        `received_at` is the wall time the report reached the bus (its receipt, or its stream time in a
        replay), compared with the time the prober says it made the report."""
        vantage = report.vantage
        if self.own_vantage is not None and vantage != self.own_vantage and vantage in self.daemon_vantages():
            # another replica's in-process prober: the management cluster is one vantage
            report = report.model_copy(update={"vantage": self.own_vantage})
            vantage = self.own_vantage
        if self.vantages is not None and vantage not in self.vantages:
            if count:
                self._drop("unknown_vantage")
                self._seen_unlisted(vantage)
            return None
        probes = self.state.probes.get(report.cluster)
        if probes is None or report.probe not in probes:
            if count:
                self._drop_target(report, "unknown_cluster" if probes is None else "unknown_probe")
            return None
        age_s = received_at - (report.ts.timestamp() if made_at is None else made_at)
        limit = self.state.settings.stale_after_s
        if abs(age_s) > limit:
            if count:
                self._drop_untimely(vantage, age_s)
            return None
        return report

    def unlisted_vantages(self, within_s: float = 3600.0) -> list[str]:
        """Vantages not in detection.vantages that reported recently: a forgotten prober is never silent."""
        now = time.monotonic()
        recent = []
        for name in reversed(self.unlisted):  # most recently seen first: stop at the first too old
            if now - self.unlisted[name] > within_s:
                break
            recent.append(name)
        return sorted(recent)

    def _drop(self, reason: str) -> None:
        child = self._dropped.get(reason)
        if child is None:  # label lookups cost more than the count itself
            child = self._dropped[reason] = self.metrics.reports_dropped.labels(reason=reason)
        child.inc()

    def _seen_unlisted(self, vantage: str) -> None:
        now = time.monotonic()
        new = self.unlisted.pop(vantage, None) is None
        self.unlisted[vantage] = now  # to the end: most recently seen
        if not new:
            return
        if len(self.unlisted) > MAX_UNLISTED:
            self.unlisted.popitem(last=False)  # forget the name seen least recently
        held = self._unlisted_log.take(now)
        if held is not None:
            log.warning(
                "health.unlisted_vantage",
                vantage=vantage,
                hint="its reports do not count: add it to detection.vantages",
                listed=sorted(self.vantages or ()),
                other_new_names_not_logged=held,
            )

    def _drop_target(self, report: HealthReport, reason: str) -> None:
        self._drop(reason)
        held = self._target_log.take(time.monotonic())
        if held is not None:
            log.warning(
                "health.unknown_target",
                vantage=report.vantage,
                cluster=report.cluster,
                probe=report.probe,
                reason=reason,
                hint="the prober's config names a cluster or probe the daemon's does not",
                others_not_logged=held,
            )

    def _drop_untimely(self, vantage: str, age_s: float) -> None:
        self._drop("stale" if age_s > 0 else "future")
        if vantage not in self._skew_logged:
            self._skew_logged.add(vantage)  # once per vantage: a skewed clock shows here
            log.warning(
                "health.stale_dropped" if age_s > 0 else "health.future_dropped",
                vantage=vantage,
                age_s=round(age_s, 1),
                hint=f"reports made more than stale_after ({self.state.settings.stale_after_s:g}s) "
                "before or after their receipt are dropped; check this prober's clock (NTP)",
            )
