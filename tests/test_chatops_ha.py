"""Chatops with two replicas (`failover run` processes on one NATS), as deployed: a slash command that
reaches a follower is forwarded to the leader; the leader posts the approval buttons and, when it goes
away, the new leader neither posts them twice nor leaves them live; a command held up 8-10 s by a frozen
leader is acknowledged within 3 s and answered on `response_url`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from tests.chatops_stand_ins import (
    Responses,
    SlackWebApi,
    click_body,
    command_body,
    post,
    signed,
    slack_side,
    texts,
)
from tests.daemons import DaemonProcess, stop_all
from tests.helpers import Fleet, collect, fleet, hook_receiver, wait_for
from tests.test_chatops_slack import ALICE, BOB, config

pytestmark = pytest.mark.timeout(120)

LEASE = "leadership: {lease_ttl: 30s, renew_interval: 1s, margin: 3s}"
"""Long: a leader frozen for 9 s keeps its lease (the slow-command test); SIGTERM hands it over at once."""


@asynccontextmanager
async def replicas(
    tmp_path: Path, nats: EmbeddedNats, haproxy_binary: str
) -> AsyncIterator[tuple[list[DaemonProcess], Fleet, SlackWebApi, Responses, Bus]]:
    async with (
        slack_side() as (slack, responses),
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
    ):
        started: list[DaemonProcess] = []
        bus = await Bus.connect(NatsConfig(url=nats.url), tmp_path, name="observer")
        try:
            for name in ("a", "b"):
                work = tmp_path / name
                work.mkdir()
                path = config(work, f, hook.url, nats.url, slack)
                port = free_port()
                text = re.sub(r"listen: 127\.0\.0\.1:\d+", f"listen: 127.0.0.1:{port}", path.read_text())
                path.write_text(text + LEASE + "\n")
                replica = DaemonProcess(path, tmp_path / f"{name}.log", port, name)
                started.append(replica)
                await replica.start()
                await replica.wait_ready(30)
                if name == "a":
                    await replica.wait_leads(20)
            yield started, f, slack, responses, bus
        finally:
            await stop_all(started)
            await bus.close()


def url(replica: DaemonProcess, path: str) -> str:
    return f"http://127.0.0.1:{replica.api}{path}"


async def test_a_follower_forwards_and_a_new_leader_keeps_the_one_approval_message(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with (
        replicas(tmp_path, nats_server, haproxy_binary) as (
            (a, b),
            f,
            slack,
            responses,
            bus,
        ),
        aiohttp.ClientSession() as session,
    ):
        audit = await collect(bus, subjects.AUDIT)
        assert await a.leads() and not await b.leads()
        body = command_body("failover us-east", ALICE, response_url=responses.new())
        status, answer, took = await post(session, url(b, "/chatops/slack/commands"), body, signed(body))
        assert status == 200 and took < 3, answer
        assert "another operator must approve" in texts(answer), answer
        [run_id] = re.findall(r"run `?([A-Za-z0-9_-]{8,})", texts(answer))[:1]
        await wait_for(lambda: len(slack.with_buttons()) == 1, 15, "buttons posted by the leader")
        [(ts, _message)] = slack.with_buttons()

        await a.stop()  # SIGTERM: the lease is handed over; b resumes the run, still waiting
        await b.wait_leads(20)
        await asyncio.sleep(3)  # b's poster has had rounds to (wrongly) post again
        assert [t for t, _ in slack.with_buttons()] == [ts], "one approval message, whoever leads"

        theirs = responses.new()
        click = click_body("failover_approve", run_id, BOB, theirs)

        async def approved() -> bool:  # until b has resumed the run, the click is refused (409)
            status, _, _ = await post(session, url(b, "/chatops/slack/interactions"), click, signed(click))
            assert status == 200
            await wait_for(lambda: bool(responses.of(theirs)), 5, "the click's answer")
            last = texts(responses.of(theirs)[-1])
            return "approved" in last

        await wait_for(approved, 20, "Bob's approval taken by the new leader", poll_s=0.5)

        async def drained() -> bool:
            return (await f.weights())["us-east"] == 0

        await wait_for(drained, 15, "us-east drained")
        await wait_for(
            lambda: slack.messages[ts]["updates"] >= 1, 10, "the message updated by the new leader"
        )
        assert f"<@{BOB}>" in texts(slack.messages[ts]) and not slack.with_buttons()
        await wait_for(
            lambda: any(x["command"] == "approve" and x["result"] == "ok" for x in audit), 5, "audit"
        )
        [asked] = [x for x in audit if x["command"] == "failover"]
        assert asked["actor"] == "alice" and asked["via"] == "slack via follower"
        assert asked["args"]["chat"]["user"] == ALICE


async def test_a_slow_command_is_acknowledged_within_3s_and_answered_on_response_url(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with (
        replicas(tmp_path, nats_server, haproxy_binary) as (
            (a, b),
            _f,
            _slack,
            responses,
            _bus,
        ),
        aiohttp.ClientSession() as session,
    ):
        later = responses.new()
        body = command_body("pause us-east --for 30m", ALICE, response_url=later)
        a.freeze()  # the leader hangs: the follower's forwarded command waits for it
        try:
            started = time.monotonic()
            status, answer, took = await post(session, url(b, "/chatops/slack/commands"), body, signed(body))
            assert status == 200 and took < 3, (took, answer)
            assert answer["response_type"] == "ephemeral" and "Working on" in texts(answer)
            await asyncio.sleep(max(0.0, 8.5 - (time.monotonic() - started)))
            assert responses.of(later) == []
        finally:
            a.thaw()
        await wait_for(lambda: bool(responses.of(later)), 10, "the answer on response_url")
        [final] = responses.of(later)
        waited = responses.at[later.rsplit("/", 1)[1]][0] - started
        assert waited >= 8.5, waited
        assert final["response_type"] == "in_channel" and "Paused us-east" in texts(final), final
