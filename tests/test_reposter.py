"""Open incidents are re-posted to notifiers that forget them (Alertmanager resolves an alert nobody
re-posts within its resolve_timeout): before, a failover longer than 5 min showed as resolved in
Alertmanager while the cluster was still drained. Real NATS (the incident book) and a real Alertmanager."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.notifiers import Notification, build_notifier
from orchestrator.playbooks.incidents import IncidentBook
from orchestrator.runtime.reposter import IncidentReposter
from tests.test_notifiers_pd_am import alertmanager, alertmanager_config


async def test_an_open_incident_is_reposted_once_per_interval_and_a_resolved_one_never(
    bus: Bus, alertmanager_binary: str, tmp_path: Path
) -> None:
    book = IncidentBook(StateStore(bus))
    async with alertmanager(alertmanager_binary, tmp_path / "am") as am, aiohttp.ClientSession() as http:
        notifier = build_notifier(alertmanager_config(am.url, repost_interval="2m"), http)
        incident, _ = await book.open("us-east", "run1")
        incident_id = str(incident["id"])
        note = Notification(
            summary="us-east failed", severity="critical", cluster="us-east", dedup_key=incident_id,
            incident=incident_id, incident_state="drained",
        )  # fmt: skip
        receipt = await notifier.send(note)
        await book.set_state(incident_id, "drained", "us-east failed")
        await book.notified(incident_id, "am", "drained", receipt)
        [first] = await am.alerts(http)

        now = [1000.0]
        external = "https://failover.example.com"
        reposter = IncidentReposter(book, {"am": notifier}, external, clock=lambda: now[0])
        assert await reposter.once() == []  # first seen: the notify just posted it
        now[0] += 60
        assert await reposter.once() == []  # within repost_interval
        now[0] += 61
        assert await reposter.once() == [(incident_id, "am")]
        [again] = await am.alerts(http)
        assert again["fingerprint"] == first["fingerprint"]  # the same alert, kept firing
        assert again["endsAt"] > first["endsAt"] and again["status"]["state"] == "active"
        assert again["annotations"]["incident_url"].endswith(f"/incidents/{incident_id}")

        await book.set_state(incident_id, "resolved", "us-east back")
        now[0] += 500
        assert await reposter.once() == []  # resolved incidents are not re-posted
        assert reposter.last == {}
