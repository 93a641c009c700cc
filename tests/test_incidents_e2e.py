"""Issue 14's acceptance, end to end: one cluster fails and comes back with all six notifiers configured,
against a real daemon, real NATS, a real HAProxy, a real Alertmanager, a real SMTP server (STARTTLS and
AUTH) and local Slack, PagerDuty and Teams receivers that check the documented request shapes.

PagerDuty receives exactly one trigger and one resolve with the same `dedup_key`; Slack one thread whose
first message ends showing "resolved"; Alertmanager shows the alert firing, then resolved; email two
messages in one thread; Teams two cards; the run events link to the incident."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from tests.helpers import collect, fleet, hook_receiver, wait_for, write_config
from tests.test_daemon import all_healthy, running
from tests.test_incidents import EXTERNAL, with_external_url
from tests.test_notifiers_email_nats import PASSWORD, Smtp, parts, smtp_server
from tests.test_notifiers_pd_am import ROUTING_KEY, alertmanager, pagerduty_receiver
from tests.test_notifiers_slack_teams import CHANNEL, TOKEN, slack_api, workflow

pytestmark = pytest.mark.timeout(90)

SHIPPED = Path(__file__).resolve().parents[1] / "playbooks"
NOTIFIERS = ("chat", "pager", "teams", "mail", "am", "bus")
INCIDENT = "inc-us-east-1"


def fan_out(text: str, step: str) -> str:
    """The shipped playbook with its notify step `step` copied once per notifier (`<step>_<notifier>`),
    everything else (its `state:`/`resolve: true`, its template, the on_failure page) as shipped."""
    start = text.index(f"  - id: {step}\n")
    end = text.index("on_failure:", start)
    block = text[start:end]
    assert block.count("notifier: oncall") == 1, block
    copies = [
        block.replace(f"id: {step}\n", f"id: {step}_{name}\n", 1).replace(
            "notifier: oncall", f"notifier: {name}", 1
        )
        for name in NOTIFIERS
    ]
    return text[:start] + "".join(copies) + text[end:]


def playbooks(work: Path) -> Path:
    """cluster-failover and cluster-failback only (the others would page too), notifying all six; the
    failback's ramp interval cut from 3s to 200ms to keep the test short."""
    out = work / "playbooks"
    out.mkdir()
    failover = fan_out((SHIPPED / "cluster-failover.yaml").read_text(), "page")
    failback = fan_out((SHIPPED / "cluster-failback.yaml").read_text(), "tell")
    assert "interval: 3s" in failback
    (out / "cluster-failover.yaml").write_text(failover)
    (out / "cluster-failback.yaml").write_text(failback.replace("interval: 3s", "interval: 200ms"))
    return out


def notifier_lines(pd_url: str, slack_url: str, teams_url: str, smtp: Smtp, am_url: str) -> str:
    mail = (
        f"{{host: 127.0.0.1, port: {smtp.port}, starttls: true, username: failover, "
        f"password: '{PASSWORD}', from: 'Failover <failover@example.com>', to: [oncall@example.com], "
        f"timeout: 2s, ca: '{smtp.ca_file}'}}"
    )
    return "".join(
        f"  - {line}\n"
        for line in (
            f"{{name: chat, driver: slack, slack: {{bot_token: '{TOKEN}', channel: {CHANNEL}, "
            f"api_url: '{slack_url}', timeout: 1s}}}}",
            f"{{name: pager, driver: pagerduty, pagerduty: {{routing_key: '{ROUTING_KEY}', "
            f"url: '{pd_url}', timeout: 1s}}}}",
            f"{{name: teams, driver: teams, teams: {{webhook_url: '{teams_url}', timeout: 1s}}}}",
            f"{{name: mail, driver: email, email: {mail}}}",
            f"{{name: am, driver: alertmanager, alertmanager: {{url: '{am_url}', timeout: 2s}}}}",
            "{name: bus, driver: nats, nats: {subject: ops.failover}}",
        )
    )


async def test_one_cluster_fails_and_comes_back_with_all_six_notifiers(
    nats_server: EmbeddedNats, haproxy_binary: str, alertmanager_binary: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with smtp_server((ca, ca_file)) as smtp:
        async with (
            pagerduty_receiver() as pd,
            slack_api() as slack,
            workflow() as flow,
            alertmanager(alertmanager_binary, tmp_path / "am") as am,
            hook_receiver() as hook,
            fleet(tmp_path, haproxy_binary) as f,
            aiohttp.ClientSession() as session,
        ):
            path = write_config(
                tmp_path, f, hook.url, nats_url=nats_server.url, playbooks=playbooks(tmp_path)
            )
            text = path.read_text().replace(
                "notifiers:\n", "notifiers:\n" + notifier_lines(pd.url, slack.url, flow.url, smtp, am.url)
            )
            path.write_text(text)
            with_external_url(path)

            async with running(path) as daemon:
                assert daemon.bus is not None and daemon.runner is not None
                runner = daemon.runner
                runs = await collect(daemon.bus, subjects.RUNS_ALL)
                published = await collect(daemon.bus, "ops.failover")
                await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

                await f.apps["us-east"].stop()

                async def failed_over() -> bool:
                    return (await f.weights())["us-east"] == 0 and len(pd.accepted) == 1

                await wait_for(failed_over, 15, "us-east drained and paged")
                await wait_for(lambda: not runner.active, 10, "the failover run finished")
                [alert] = await am.alerts(session)
                assert alert["status"]["state"] == "active", alert
                assert alert["labels"]["incident"] == INCIDENT and alert["labels"]["cluster"] == "us-east"

                await f.apps["us-east"].start()

                async def failed_back() -> bool:
                    return (await f.weights())["us-east"] == 100 and len(pd.accepted) == 2

                await wait_for(failed_back, 20, "us-east restored and the incident resolved")
                await wait_for(lambda: not runner.active, 10, "the failback run finished")
                await wait_for(lambda: len(published) == 2, 5, "both messages on ops.failover")

                # Alertmanager: firing, then resolved (its API leaves resolved alerts out)
                assert await am.alerts(session) == []

    # PagerDuty: exactly one trigger and one resolve, with the same dedup_key
    assert pd.attempts == 2, pd.accepted
    trigger, resolve = pd.accepted
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == INCIDENT
    assert trigger["payload"]["severity"] == "critical" and "us-east failed" in trigger["payload"]["summary"]

    # Slack: one thread whose first message ends showing "resolved"
    [first] = slack.top_level()
    ts = next(t for t, m in slack.messages.items() if m is first)
    [reply] = slack.replies(ts)
    assert "recovered" in reply["text"]
    assert first["updates"] == 1 and "resolved" in first["text"]
    assert first["blocks"][0]["text"]["text"].startswith(f"RESOLVED: {INCIDENT}")

    # email: two messages in one thread, over STARTTLS with AUTH
    opened_mail, resolved_mail = smtp.box.messages
    # each message logged in; the leader's readiness check logs in too (and sends nothing)
    assert set(smtp.box.logins) == {"failover"} and len(smtp.box.logins) >= 2
    assert resolved_mail["In-Reply-To"] == opened_mail["Message-ID"] == resolved_mail["References"]
    assert resolved_mail["Subject"] == f"Re: {opened_mail['Subject']}"
    assert f"Incident: {INCIDENT} (resolved)" in parts(resolved_mail)[0]

    # Teams: two cards, the incident's state on each
    drained_card, resolved_card = flow.cards
    states = [
        {f["title"]: f["value"] for f in card["body"][1]["facts"]} for card in (drained_card, resolved_card)
    ]
    assert [(s["Incident"], s["State"]) for s in states] == [(INCIDENT, "drained"), (INCIDENT, "resolved")]

    # the nats notifier: the same two, on the operator's subject
    assert [(m["incident"], m["incident_state"], m["resolve"]) for m in published] == [
        (INCIDENT, "drained", False),
        (INCIDENT, "resolved", True),
    ]

    # the run events link to the incident: every notify step's result names it and links to it
    notified = [
        r
        for r in runs
        if r["type"] == "step.succeeded" and re.fullmatch(r"(page|tell)_\w+", str(r.get("step")))
    ]
    assert sorted((r["playbook"], r["step"]) for r in notified) == sorted(
        [("cluster-failover", f"page_{n}") for n in NOTIFIERS]
        + [("cluster-failback", f"tell_{n}") for n in NOTIFIERS]
    )
    for event in notified:
        result: dict[str, Any] = event["detail"]["result"]
        assert result["incident"] == INCIDENT, event
        assert result["incident_url"] == f"{EXTERNAL}/incidents/{INCIDENT}", event
        expected = "drained" if event["playbook"] == "cluster-failover" else "resolved"
        assert result["incident_state"] == expected, event
    assert hook.received == [] and hook.rejected == 0, "the on_failure page never went out"
