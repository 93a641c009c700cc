"""Issue 12, findings 6, 8 and 10, against real NATS and a real HAProxy (the engine of `test_runs`):
the two-person rule of `approval` steps, secrets that reach no journal record, run event, API answer,
command answer or log line, and templates rendered once (event data is never evaluated)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from orchestrator.api.context import ApiContext
from orchestrator.api.server import ApiServer, build_app
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import logs, redact
from orchestrator.core.metrics import Metrics
from orchestrator.playbooks.execute import RunExecutor
from orchestrator.playbooks.loader import load_playbooks
from tests.helpers import HOOK_SECRET, wait_for
from tests.test_runs import TOKENS, engine

pytestmark = pytest.mark.timeout(60)

OPERATORS = TOKENS.replace("]", ", {token: dave-token, role: operator, name: dave}]")

TWO_PERSON = """name: manual-drain-careful
on: {event: manual}
steps:
  - id: ask
    action: approval
    with: {approvers: ["role:operator"], min_approvals: 2, timeout: 20s,
           summary: "{{ event.actor }} asks to drain {{ event.cluster }}"}
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
"""


async def test_two_person_rule_initiator_cannot_approve_and_n_distinct_approvers_are_needed(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    books = {"careful": TWO_PERSON}
    async with engine(tmp_path, nats_server, haproxy_binary, books, tokens=OPERATORS) as e:
        loaded = e.runner.playbooks["manual-drain-careful"]
        event = {"type": "manual", "cluster": "us-east", "actor": "alice"}
        run_id = str(await e.runner.submit(loaded, event, actor="alice"))
        await wait_for(lambda: run_id in e.services.approvals.pending(), 5, "waiting for approval")

        mine = await e.command("approve", "alice-token", run=run_id)
        assert mine["status"] == 403 and "initiator" in mine["error"], mine
        assert (await e.command("approve", "carol-token", run=run_id))["status"] == 403  # a viewer
        first = await e.command("approve", "bob-token", run=run_id)
        assert first["ok"] and first["result"]["approvals"] == ["bob"] and first["result"]["needed"] == 2
        again = await e.command("approve", "bob-token", run=run_id)
        assert again["status"] == 409 and "already approved" in again["error"], again
        assert (await e.fleet.weights())["us-east"] == 100  # one approval of two: nothing happened
        assert (await e.command("approve", "dave-token", run=run_id))["ok"]
        record = await e.finished(run_id)
        assert record["status"] == "succeeded", record
        assert record["steps"]["ask"]["result"]["approvals"] == ["bob", "dave"]
        assert (await e.fleet.weights())["us-east"] == 0

        second = str(await e.runner.submit(loaded, {**event, "cluster": "eu-west"}, actor="alice"))
        await wait_for(lambda: second in e.services.approvals.pending(), 5, "second approval")
        assert (await e.command("approve", "bob-token", run=second))["ok"]
        assert (await e.command("deny", "dave-token", run=second))["ok"]  # one deny ends it
        record = await e.finished(second)
        assert record["status"] == "failed" and "denied by dave" in record["error"]
        assert (await e.fleet.weights())["eu-west"] == 100

        await wait_for(lambda: len(e.audit) >= 7, 5, "audit records")
        trail = [(a["actor"], a["command"], a["result"][:5]) for a in e.audit]
        assert trail == [
            ("alice", "approve", "error"),
            ("carol", "approve", "error"),
            ("bob", "approve", "ok"),
            ("bob", "approve", "error"),
            ("dave", "approve", "ok"),
            ("bob", "approve", "ok"),
            ("dave", "deny", "ok"),
        ]


@asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    """A service that answers with what it was sent (headers and query): a body full of secrets."""

    async def echo(request: web.Request) -> web.Response:
        text = json.dumps({"headers": dict(request.headers), "query": dict(request.query)})
        return web.Response(status=400 if request.path == "/fail" else 200, text=text)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


SECRETS = ("qs-secret-123", "hdr-secret-456", HOOK_SECRET, "alice-token", "bob-token", "carol-token")
CALLER = """name: caller
on: {event: manual}
steps:
  - id: call
    action: http
    with:
      url: "ECHO/ok?api_key=qs-secret-123&cluster={{ event.cluster }}"
      headers: {X-Api-Key: hdr-secret-456, X-Trace: "HOOK_SECRET", Authorization: "Bearer hdr-secret-456"}
      body: {cluster: "{{ event.cluster }}"}
  - id: fail
    action: http
    continue_on_error: true
    with: {url: "ECHO/fail?token=qs-secret-123", method: GET}
  - id: tell
    action: notify
    with: {notifier: oncall, summary: "called {{ steps.call.status }}"}
"""


async def test_secret_values_reach_no_record_event_answer_or_log(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("json", "debug")  # writes to the sys.stderr capsys installed
    try:
        async with (
            echo_server() as echo,
            engine(tmp_path, nats_server, haproxy_binary, {}, tokens=TOKENS) as e,
        ):
            book = CALLER.replace("ECHO", echo).replace("HOOK_SECRET", HOOK_SECRET)
            (tmp_path / "playbooks" / "caller.yaml").write_text(book)
            e.runner.set_playbooks(load_playbooks(e.config.playbook_paths(), e.config))
            run_id = str(
                await e.runner.submit(e.runner.playbooks["caller"], {"type": "manual", "cluster": "us-east"})
            )
            record = await e.finished(run_id)
            assert record["status"] == "succeeded", record
            assert record["steps"]["call"]["result"] == {"status": 200}  # no body unless asked
            assert record["steps"]["fail"]["status"] == "failed"
            assert "api_key=***" in json.dumps(record) and "token=***" in json.dumps(record)
            assert [n["summary"] for n in e.hook.received] == ["called 200"]

            raw = (await e.bus.kv.runs.get(f"run.{run_id}")).value.decode()
            events = json.dumps([ev for ev in e.events if ev["run_id"] == run_id])
            viewer = json.dumps(await e.command("run", "carol-token", id=run_id))
            assert '"ok": true' in viewer
            server = ApiServer(
                build_app(
                    ApiContext(
                        e.config,
                        Metrics(),
                        readiness=lambda: {},
                        status=lambda: {},
                        commands=e.commands,
                        journal=e.journal,
                        bus=e.bus,
                    )
                ),
                "127.0.0.1",
                0,
            )
            await server.start()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        f"http://127.0.0.1:{server.port}/api/v1/runs/{run_id}",
                        headers={"Authorization": "Bearer carol-token"},
                    ) as resp,
                ):
                    assert resp.status == 200
                    api = await resp.text()
            finally:
                await server.stop()
        logged = capsys.readouterr().err
        assert "run.finished" in logged
        for where, text in {"kv": raw, "events": events, "run": viewer, "api": api, "logs": logged}.items():
            leaked = [s for s in SECRETS if s in text]
            assert not leaked, f"{where} carries {leaked}"
    finally:
        structlog.reset_defaults()


def test_redaction_by_value_by_name_and_in_urls() -> None:
    redact.register(["s3cr3t-value"])
    found = redact.redact(
        {
            "headers": {"Cookie": "a=b", "X-Plain": "x s3cr3t-value y", "api_key": 12345},
            "url": "https://u:pw@h.example/p?a=1&apikey=zz&Token=t#f",
            "key": "us-east",
        }
    )
    assert found == {
        "headers": {"Cookie": "***", "X-Plain": "x *** y", "api_key": "***"},
        "url": "https://u:***@h.example/p?a=1&apikey=***&Token=***#f",
        "key": "us-east",
    }


async def test_a_resumed_step_never_sends_a_redacted_value(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """A run resumed from the journal holds `***` where a secret was: the step refuses to send it."""
    async with engine(tmp_path, nats_server, haproxy_binary, {}) as e:
        record: dict[str, Any] = {
            "id": "resumed-1",
            "playbook": "caller",
            "event": {"type": "manual", "cluster": "us-east"},
            "key": "us-east",
            "status": "running",
            "created_at": "2025-01-01T00:00:00Z",
            "steps": {},
            "plan": {
                "vars": {},
                "steps": [
                    {
                        "id": "call",
                        "action": "http",
                        "with": {"url": e.hook.url + "?api_key=***", "headers": {"X-Api-Key": "***"}},
                        "late": [],
                    }
                ],
                "on_failure": [],
                "guards": {},
                "fleet_states": {},
            },
        }
        emitted: list[tuple[str, dict[str, Any]]] = []

        async def emit(kind: str, step: str | None, attempt: int | None, detail: dict[str, Any]) -> None:
            emitted.append((kind, detail))

        executor = RunExecutor(record, e.services, e.journal, emit, lambda: [], asyncio.Event())
        status = await executor.execute()
        assert status == "needs_attention"
        assert "redacted" in str(record["error"])
        assert e.hook.rejected == 0 and not e.hook.received  # nothing was sent


async def test_event_data_is_never_rendered_again(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: say
on: {event: manual}
steps:
  - {id: first, action: notify, with: {notifier: oncall, summary: "{{ event.reason }}",
     details: {why: "reason: {{ event.reason }}"}}}
  - {id: late, action: notify,
     with: {notifier: oncall, summary: "{{ event.reason }} ({{ steps.first.notifier }})"}}
"""
    reason = "vantage {{ 7 * 7 }} on {{ event.cluster }}"
    async with engine(tmp_path, nats_server, haproxy_binary, {"say": book}) as e:
        run_id = str(
            await e.runner.submit(
                e.runner.playbooks["say"], {"type": "manual", "cluster": "us-east", "reason": reason}
            )
        )
        record = await e.finished(run_id)
        assert record["status"] == "succeeded", record
        assert [n["summary"] for n in e.hook.received] == [reason, f"{reason} (oncall)"]
        assert e.hook.received[0]["details"] == {"why": f"reason: {reason}"}
