"""Alertmanager: a failover incident is one alert, `FailoverIncident`, firing until the failback.

The alert's identity is its labels (`alertname`, `cluster`, `incident`, `severity` and the configured
extra labels), so every message of an incident must carry the same ones: the `severity` label is the
incident's first severity, returned as the receipt (`{"severity": ...}`) and read back from
`note.thread` on later messages. Alertmanager's grouping, routing, silences and inhibitions apply to the
alert like to any Prometheus alert. What changes from message to message (the summary, the current
severity, the incident's state, the links) goes in annotations. A resolve posts the same labels with
`endsAt` = now.

Staying firing: Alertmanager treats an alert posted without `endsAt` as firing for `resolve_timeout`
(default 5m) and then resolves it by itself, the way it expects Prometheus to re-send what still fires.
So every notification of an open incident re-posts the alert (Alertmanager keeps the earliest
`startsAt`), and the alert must also be re-posted between notifications: the driver says how often in
`repost_s` (`repost_interval`, default 2m), for the incident book to send the incident's current state
again at that pace while it is open. An alert that did expire (the orchestrator was down longer than
`resolve_timeout`) fires again at the next post; it is never lost for good.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from orchestrator.core.config_drivers import AlertmanagerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.core.models import rfc3339, utc_now
from orchestrator.notifiers.base import Notification, Notifier
from orchestrator.notifiers.pagerduty import post_json

ALERTNAME = "FailoverIncident"


class AlertmanagerNotifier(Notifier):
    """`POST <url>/api/v2/alerts` with one alert per incident (see the module for the re-posting)."""

    @property
    def settings(self) -> AlertmanagerConfig:
        assert self.config.alertmanager is not None  # NotifierConfig requires the section for this driver
        return self.config.alertmanager

    @property
    def repost_s(self) -> float:
        """Post an open incident's alert again at least this often, or Alertmanager expires it."""
        return self.settings.repost_interval_s

    @staticmethod
    def severity_label(note: Notification) -> str:
        """The incident's first severity, kept in the receipt: labels are the alert's identity, so a
        later message at another severity must not start a second alert (nor a resolve miss the first).
        The current severity is in the annotations."""
        kept = (note.thread or {}).get("severity")
        return kept if isinstance(kept, str) else note.severity

    def alert(self, note: Notification) -> dict[str, Any]:
        labels = dict(self.settings.labels)
        labels["alertname"] = ALERTNAME
        labels["incident"] = note.incident or note.dedup_key or note.run_id or "failover"
        labels["severity"] = self.severity_label(note)
        if note.cluster:
            labels["cluster"] = note.cluster
        annotations = {"summary": note.summary, "severity": note.severity}
        lines = [f"{k}: {v}" for k, v in note.details.items()]
        if note.run_id:
            lines.append(f"run: {note.run_id} ({note.playbook})")
        if lines:
            annotations["description"] = "\n".join(lines)
        if note.incident_state:
            annotations["state"] = note.incident_state
        for kind, url in note.links.items():
            if url:
                annotations[f"{kind}_url"] = url  # `run_url`, `incident_url`, for templates to link
        now = rfc3339(utc_now())
        alert: dict[str, Any] = {"labels": labels, "annotations": annotations}
        if note.resolve:
            alert["endsAt"] = now  # no startsAt: Alertmanager keeps the firing alert's
        else:
            alert["startsAt"] = now  # on a re-post Alertmanager keeps the earliest startsAt
        if note.links.get("run"):
            alert["generatorURL"] = note.links["run"]
        return alert

    async def send(self, note: Notification) -> dict[str, Any] | None:
        url = self.settings.url.rstrip("/") + "/api/v2/alerts"
        await post_json(self, url, [self.alert(note)], self.settings.timeout_s)
        return {"severity": self.severity_label(note)}  # the same every time: the alert's identity

    async def check(self) -> str:
        """`GET /api/v2/status`: Alertmanager is up, speaks API v2, and says whether its cluster (when
        it runs as several peers) has settled; no alert is posted."""
        settings = self.settings
        url = settings.url.rstrip("/") + "/api/v2/status"
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=settings.timeout_s), allow_redirects=False
            ) as resp:
                status = resp.status
                answer = await resp.json(content_type=None) if status == 200 else None
        except TimeoutError as e:
            raise TemporaryError(f"notifier {self.name}: Alertmanager: timed out") from e
        except (aiohttp.ClientError, ValueError) as e:
            raise TemporaryError(f"notifier {self.name}: Alertmanager: {type(e).__name__}") from e
        if status != 200 or not isinstance(answer, dict):
            error = TemporaryError if status >= 500 or status == 200 else PermanentError
            raise error(f"notifier {self.name}: Alertmanager GET /api/v2/status: HTTP {status}")
        version = (answer.get("versionInfo") or {}).get("version")
        peers = (answer.get("cluster") or {}).get("status")
        parts = [
            f"version {version}" if isinstance(version, str) else "",
            f"cluster {peers}" if isinstance(peers, str) else "",
        ]
        detail = ", ".join(p for p in parts if p)
        return "Alertmanager API v2 answers" + (f" ({detail})" if detail else "")
