"""The PagerDuty and Alertmanager notifiers: PagerDuty against a local receiver that checks the Events API
v2 request as documented and answers its documented errors; Alertmanager against a real Alertmanager,
whose own API shows the alert firing and then resolved."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core.config import load_config
from orchestrator.core.config_drivers import NotifierConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.notifiers import Notification, build_notifier
from tests.helpers import wait_for
from tests.test_config import GOOD
from tests.test_runs import engine

pytestmark = pytest.mark.timeout(60)

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, as PagerDuty's integration keys
LINKS = {"run": "https://failover.example.com/runs/r1", "incident": "https://failover.example.com/inc/1"}
SEVERITIES = {"critical", "error", "warning", "info"}


# PagerDuty -------------------------------------------------------------------------------------------


@dataclass
class PagerDutyReceiver:
    """Events API v2 as documented: POST /v2/enqueue, JSON, a 32-character routing key, an event_action
    among trigger/acknowledge/resolve, a trigger's payload with summary (at most 1,024 characters),
    source and severity; 202 on success, 400 `{status, message, errors}` on an invalid event, 429 when
    rate limited. `script` answers the next requests with the given statuses first (429 with
    `Retry-After`)."""

    url: str = ""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    script: list[int] = field(default_factory=list)
    retry_after: str = "7"

    def problems(self, request: web.Request, body: Any) -> list[str]:
        if request.content_type != "application/json":
            return [f"Content-Type must be application/json, not {request.content_type!r}"]
        if not isinstance(body, dict):
            return ["Event object is not an object"]
        errors = []
        key = body.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
        dedup = body.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action in ("acknowledge", "resolve") and not dedup:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if action == "trigger":
            payload = body.get("payload")
            if not isinstance(payload, dict):
                return [*errors, "'payload' is missing or not an object"]
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary:
                errors.append("'payload.summary' is missing or blank")
            elif len(summary) > 1024:
                errors.append("'payload.summary' is too long (maximum is 1024 characters)")
            if not isinstance(payload.get("source"), str) or not payload["source"]:
                errors.append("'payload.source' is missing or blank")
            if payload.get("severity") not in SEVERITIES:
                errors.append(
                    "'payload.severity' is invalid (must be one of: critical, error, warning, info)"
                )
            if "timestamp" in payload:
                datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
            for name in ("component", "group", "class"):
                if name in payload and not isinstance(payload[name], str):
                    errors.append(f"'payload.{name}' must be a string")
            if not isinstance(payload.get("custom_details", {}), dict):
                errors.append("'payload.custom_details' must be an object")
            for link in body.get("links", []):
                if not isinstance(link, dict) or not isinstance(link.get("href"), str):
                    errors.append("'links' entries need an 'href'")
        return errors

    async def enqueue(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.script:
            status = self.script.pop(0)
            if status == 429:
                return web.Response(status=429, headers={"Retry-After": self.retry_after})
            return web.Response(status=status, text="upstream trouble")
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        errors = self.problems(request, body)
        if errors:
            invalid = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            return web.json_response(invalid, status=400)
        self.accepted.append(body)
        processed = {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")}
        return web.json_response(processed, status=202)


@asynccontextmanager
async def pagerduty_receiver() -> AsyncIterator[PagerDutyReceiver]:
    receiver = PagerDutyReceiver()
    app = web.Application()
    app.router.add_post("/v2/enqueue", receiver.enqueue)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/v2/enqueue"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def pagerduty(url: str, routing_key: str = ROUTING_KEY, name: str = "pager") -> NotifierConfig:
    section = {"routing_key": routing_key, "url": url, "timeout": "1s"}
    return NotifierConfig.model_validate({"name": name, "driver": "pagerduty", "pagerduty": section})


def incident_note(state: str, severity: str = "critical", resolve: bool = False, **kw: Any) -> Notification:
    return Notification(
        kw.pop("summary", f"eu-west failed; incident {state}"),
        severity,  # type: ignore[arg-type]
        {"reason": "probes down"},
        run_id="r1",
        playbook="cluster-failover",
        cluster="eu-west",
        dedup_key="r1.page",
        incident="inc-eu-west-1",
        incident_state=state,
        resolve=resolve,
        links=LINKS,
        **kw,
    )


async def test_pagerduty_triggers_updates_and_resolves_one_incident() -> None:
    async with pagerduty_receiver() as pd, aiohttp.ClientSession() as session:
        notifier = build_notifier(pagerduty(pd.url), session)
        assert await notifier.send(incident_note("opened")) is None
        await notifier.send(incident_note("drained", "warning"))
        await notifier.send(incident_note("resolved", "info", resolve=True))
    assert pd.attempts == 3 and len(pd.accepted) == 3
    assert [e["event_action"] for e in pd.accepted] == ["trigger", "trigger", "resolve"]
    assert {e["dedup_key"] for e in pd.accepted} == {"inc-eu-west-1"}
    first = pd.accepted[0]
    assert first["routing_key"] == ROUTING_KEY
    assert first["payload"]["severity"] == "critical" and first["payload"]["component"] == "eu-west"
    assert first["payload"]["source"] == "eu-west"
    assert first["payload"]["custom_details"] == {
        "reason": "probes down",
        "incident": "inc-eu-west-1",
        "incident_state": "opened",
        "run_id": "r1",
        "playbook": "cluster-failover",
    }
    assert [link["href"] for link in first["links"]] == [LINKS["run"], LINKS["incident"]]
    assert pd.accepted[1]["payload"]["severity"] == "warning"
    assert pd.accepted[1]["payload"]["custom_details"]["incident_state"] == "drained"


async def test_pagerduty_without_an_incident_keys_on_the_step_and_cuts_a_long_summary() -> None:
    async with pagerduty_receiver() as pd, aiohttp.ClientSession() as session:
        note = Notification("x" * 5000, "error", dedup_key="r1.page", cluster="eu-west")
        await build_notifier(pagerduty(pd.url), session).send(note)
    [event] = pd.accepted  # a 1,025-character summary would have been a 400
    assert event["dedup_key"] == "r1.page" and "links" not in event
    assert len(event["payload"]["summary"]) == 1024 and event["payload"]["summary"].endswith("…")


async def test_pagerduty_400_is_permanent_with_its_reason_and_no_routing_key() -> None:
    short_key = ROUTING_KEY[:31]
    async with pagerduty_receiver() as pd, aiohttp.ClientSession() as session:
        with pytest.raises(PermanentError) as info:
            await build_notifier(pagerduty(pd.url, short_key), session).send(incident_note("opened"))
    message = str(info.value)
    assert message.startswith("notifier pager: HTTP 400: Event object is invalid; Length of 'routing_key'")
    assert short_key not in message and pd.url not in message


async def test_pagerduty_rate_limit_server_errors_and_unreachable_are_temporary() -> None:
    async with pagerduty_receiver() as pd, aiohttp.ClientSession() as session:
        notifier = build_notifier(pagerduty(pd.url), session)
        pd.script = [429, 503]
        with pytest.raises(TemporaryError, match="HTTP 429") as limited:
            await notifier.send(incident_note("opened"))
        assert limited.value.delay_s == 7.0
        with pytest.raises(TemporaryError, match="HTTP 503") as failed:
            await notifier.send(incident_note("opened"))
        assert failed.value.delay_s is None
        url = pd.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TemporaryError) as unreachable:
            await build_notifier(pagerduty(url), session).send(incident_note("opened"))
    assert ROUTING_KEY not in str(unreachable.value) and url not in str(unreachable.value)


PAGE = """name: page
on: {event: manual}
steps:
  - id: page
    action: notify
    with: {notifier: oncall, severity: critical, summary: "{{ event.cluster }} failed"}
    retry: {attempts: 5, initial: 10ms, max: 50ms}
"""


async def test_pagerduty_500_three_times_then_202_delivers_once_and_400_pages_nobody_twice(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with pagerduty_receiver() as pd, engine(tmp_path, nats_server, haproxy_binary, {"page": PAGE}) as e:
        assert e.services.http is not None
        e.services.notifiers["oncall"] = build_notifier(pagerduty(pd.url, name="oncall"), e.services.http)
        pd.script = [500, 500, 500]
        run_id = await e.runner.submit(e.runner.playbooks["page"], {"type": "manual", "cluster": "eu-west"})
        record = await e.finished(str(run_id))
        assert record["status"] == "succeeded"
        assert pd.attempts == 4 and len(pd.accepted) == 1
        assert pd.accepted[0]["payload"]["summary"] == "eu-west failed"

        e.services.notifiers["oncall"] = build_notifier(
            pagerduty(pd.url, ROUTING_KEY[:31], name="oncall"), e.services.http
        )
        run_id = await e.runner.submit(e.runner.playbooks["page"], {"type": "manual", "cluster": "us-east"})
        record = await e.finished(str(run_id))
        assert record["status"] == "failed"
        assert pd.attempts == 5 and len(pd.accepted) == 1  # a 400 is not retried
        [failed] = [ev for ev in e.events if ev["run_id"] == run_id and ev["type"] == "step.failed"]
        assert "Length of 'routing_key' is incorrect" in failed["detail"]["error"]
        assert ROUTING_KEY[:31] not in json.dumps(record)


def test_validate_accepts_both_drivers_with_the_routing_key_from_the_environment(tmp_path: Path) -> None:
    text = GOOD.replace(
        "notifiers:\n",
        "notifiers:\n"
        '  - {name: pager, driver: pagerduty, pagerduty: {routing_key: "${PD_ROUTING_KEY}"}}\n'
        "  - {name: am, driver: alertmanager, alertmanager: {url: http://alertmanager:9093, "
        "labels: {team: sre}, repost_interval: 1m}}\n",
    )
    (tmp_path / "failover.yaml").write_text(text)
    config = load_config(tmp_path / "failover.yaml", env={"HOOK_SECRET": "x", "PD_ROUTING_KEY": ROUTING_KEY})
    pager, am = config.notifier("pager"), config.notifier("am")
    assert pager.pagerduty is not None and pager.pagerduty.routing_key.get_secret_value() == ROUTING_KEY
    assert pager.pagerduty.url == "https://events.pagerduty.com/v2/enqueue"
    assert ROUTING_KEY not in repr(config)
    assert am.alertmanager is not None and am.alertmanager.repost_interval_s == 60.0


# Alertmanager ----------------------------------------------------------------------------------------


@dataclass
class Alertmanager:
    url: str
    process: asyncio.subprocess.Process

    async def alerts(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """What Alertmanager's own API lists for our alertname (it leaves resolved alerts out)."""
        params = {"filter": 'alertname="FailoverIncident"'}
        async with session.get(f"{self.url}/api/v2/alerts", params=params) as resp:
            assert resp.status == 200, await resp.text()
            found: list[dict[str, Any]] = await resp.json()
            return found


@asynccontextmanager
async def alertmanager(binary: str, work: Path) -> AsyncIterator[Alertmanager]:
    """A real Alertmanager on loopback: no gossip, its storage in `work`, one receiver that drops."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "alertmanager.yml"
    config.write_text("global: {resolve_timeout: 5m}\nroute: {receiver: drop}\nreceivers: [{name: drop}]\n")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(work / "alertmanager.log").open("wb"),
    )
    am = Alertmanager(f"http://127.0.0.1:{port}", process)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

            async def ready() -> bool:
                assert process.returncode is None, (work / "alertmanager.log").read_text()
                try:
                    async with session.get(f"{am.url}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, 15, "alertmanager ready", poll_s=0.1)
        yield am
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


def alertmanager_config(url: str, **extra: Any) -> NotifierConfig:
    section = {"url": url, "timeout": "2s", **extra}
    return NotifierConfig.model_validate({"name": "am", "driver": "alertmanager", "alertmanager": section})


async def test_alertmanager_shows_the_incident_firing_then_resolved(
    alertmanager_binary: str, tmp_path: Path
) -> None:
    async with (
        alertmanager(alertmanager_binary, tmp_path / "am") as am,
        aiohttp.ClientSession() as session,
    ):
        notifier = build_notifier(alertmanager_config(am.url, labels={"team": "sre"}), session)
        receipt = await notifier.send(incident_note("opened"))
        assert receipt == {"severity": "critical"}
        [alert] = await am.alerts(session)
        assert alert["status"]["state"] == "active"
        assert alert["labels"] == {
            "alertname": "FailoverIncident",
            "cluster": "eu-west",
            "incident": "inc-eu-west-1",
            "severity": "critical",
            "team": "sre",
        }
        assert alert["annotations"]["summary"] == "eu-west failed; incident opened"
        assert alert["annotations"]["incident_url"] == LINKS["incident"]
        assert alert["generatorURL"] == LINKS["run"]
        assert alert["endsAt"] > alert["startsAt"]  # Alertmanager's resolve_timeout, until re-posted

        # a re-post at a lower severity: still the same alert (the receipt keeps its labels), state updated
        await notifier.send(incident_note("drained", "warning", thread=receipt))
        [again] = await am.alerts(session)
        assert again["fingerprint"] == alert["fingerprint"] and again["startsAt"] == alert["startsAt"]
        assert again["annotations"]["state"] == "drained" and again["status"]["state"] == "active"
        assert again["labels"]["severity"] == "critical" and again["annotations"]["severity"] == "warning"

        await notifier.send(incident_note("resolved", "info", resolve=True, thread=receipt))
        assert await am.alerts(session) == []  # resolved: endsAt has passed, no longer listed


async def test_alertmanager_unreachable_is_temporary_and_bad_label_names_are_refused(
    alertmanager_binary: str, tmp_path: Path
) -> None:
    async with alertmanager(alertmanager_binary, tmp_path / "am") as am:
        url = am.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TemporaryError, match="notifier am: ClientConnectorError"):
            await build_notifier(alertmanager_config(url), session).send(incident_note("opened"))
    with pytest.raises(ValueError, match="label name 'team-name'"):
        alertmanager_config(url, labels={"team-name": "sre"})
