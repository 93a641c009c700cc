"""A step waits as long as the server asks (`Retry-After` on a 429), not its own short backoff, and
never past its deadline: before, a notify retried a rate-limited PagerDuty after 10 ms and burnt its
attempts inside the rate-limit window. Real NATS and HAProxy; a receiver that rate-limits once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from aiohttp import web

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core.errors import retry_after_s
from orchestrator.notifiers import build_notifier
from tests.test_notifiers_pd_am import PAGE, pagerduty
from tests.test_runs import engine


async def test_a_429_with_retry_after_is_waited_out_then_delivered_once(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    seen: list[float] = []

    async def enqueue(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        await request.read()
        if len(seen) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.json_response({"status": "success", "message": "Event processed"}, status=202)

    app = web.Application()
    app.router.add_post("/v2/enqueue", enqueue)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with engine(tmp_path, nats_server, haproxy_binary, {"page": PAGE}) as e:
            assert e.services.http is not None
            url = f"http://127.0.0.1:{port}/v2/enqueue"
            e.services.notifiers["oncall"] = build_notifier(pagerduty(url, name="oncall"), e.services.http)
            run_id = await e.runner.submit(
                e.runner.playbooks["page"], {"type": "manual", "cluster": "eu-west"}
            )
            record = await e.finished(str(run_id))
            assert record["status"] == "succeeded"
            assert len(seen) == 2
            assert seen[1] - seen[0] >= 0.9, f"retried after {seen[1] - seen[0]:.3f}s, not the asked 1s"
    finally:
        await runner.cleanup()


def test_retry_after_is_read_as_seconds_or_an_http_date_and_nothing_else() -> None:
    assert retry_after_s("7") == 7.0 and retry_after_s("0.5") == 0.5 and retry_after_s("-3") == 0.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_s(later) or 0) <= 31
    for nothing in (None, "", "soon", "Wed, 99 Foo 2026", "Tue, 01 Jan 2030 00:00:00"):  # the last: no zone
        assert retry_after_s(nothing) is None, nothing
