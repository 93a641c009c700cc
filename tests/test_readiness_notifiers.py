"""`Notifier.check()` (issue 14's last item, DESIGN §17): is each notifier reachable, without sending a
message? Against a real Alertmanager, a real SMTP server (aiosmtpd, STARTTLS with a trustme
certificate, AUTH), a real nats-server, and local receivers for Slack's Web API and the HTTP webhooks
(PagerDuty, Teams, signed webhook) that count what they receive: a check must deliver nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import free_port
from orchestrator.core.config_drivers import NotifierConfig
from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError
from orchestrator.notifiers import build_notifier
from orchestrator.notifiers.nats import NatsNotifier
from tests.test_notifiers_email_nats import PASSWORD, mail_config, smtp_server, tls_ca  # noqa: F401
from tests.test_notifiers_pd_am import alertmanager, alertmanager_config

pytestmark = pytest.mark.timeout(60)
BOT_TOKEN = "xoxb-readiness-Secret-0123"
WEBHOOK_SECRET_PATH = "/workflows/abc/triggers/manual?sig=Sekrit-Signature"


@asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[dict[str, Any]]:
    """Slack's `auth.test` (ok with the right bearer token, `invalid_auth` otherwise), and any other path
    answering `status`; records every request (method, path)."""
    seen: dict[str, Any] = {"requests": [], "status": status}

    async def auth_test(request: web.Request) -> web.Response:
        seen["requests"].append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response({"ok": True, "user": "failover", "team": "Example SRE", "user_id": "U1"})

    async def anything(request: web.Request) -> web.Response:
        seen["requests"].append((request.method, request.path))
        return web.Response(status=seen["status"])

    app = web.Application()
    app.router.add_post("/api/auth.test", auth_test)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    seen["url"] = f"http://127.0.0.1:{port}"
    try:
        yield seen
    finally:
        await runner.cleanup()


def notifier_config(driver: str, section: dict[str, Any]) -> NotifierConfig:
    return NotifierConfig.model_validate({"name": "n", "driver": driver, driver: section})


async def check(config: NotifierConfig, **kw: Any) -> str:
    async with aiohttp.ClientSession() as session:
        notifier = build_notifier(config, session, **kw)
        return await notifier.check()


async def test_slack_bot_check_is_auth_test_and_posts_nothing() -> None:
    async with receiver() as r:
        api = f"{r['url']}/api"
        ok = await check(
            notifier_config("slack", {"bot_token": BOT_TOKEN, "channel": "C0123", "api_url": api})
        )
        assert ok == "Slack auth.test ok (failover in Example SRE)"
        with pytest.raises(PermanentError) as refused:
            await check(
                notifier_config("slack", {"bot_token": "xoxb-wrong", "channel": "C0123", "api_url": api})
            )
        assert str(refused.value) == "notifier n: Slack auth.test: invalid_auth"
        assert r["requests"] == [("POST", "/api/auth.test")] * 2  # no chat.postMessage


@pytest.mark.parametrize(
    ("driver", "section"),
    [
        ("slack", lambda url: {"webhook_url": f"{url}/services/T0/B0/Sekrit"}),
        ("teams", lambda url: {"webhook_url": url + WEBHOOK_SECRET_PATH}),
        ("pagerduty", lambda url: {"routing_key": "R" * 32, "url": f"{url}/v2/enqueue"}),
        ("webhook", lambda url: {"url": f"{url}/hook", "secret": "s3cret"}),
    ],
)
async def test_http_receivers_are_checked_with_a_head_only(driver: str, section: Any) -> None:
    async with receiver(status=405) as r:  # receivers take POSTs: a 405 to a HEAD is an answer
        assert "answers (HTTP 405 to HEAD; nothing sent)" in await check(
            notifier_config(driver, section(r["url"]))
        )
        assert [method for method, _path in r["requests"]] == ["HEAD"]
        r["status"] = 503
        with pytest.raises(TemporaryError) as failed:
            await check(notifier_config(driver, section(r["url"])))
        assert "HTTP 503" in str(failed.value)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TemporaryError) as unreachable:
        await check(notifier_config(driver, section(dead)))
    message = str(unreachable.value)
    assert message.startswith("notifier n: ") and "ClientConnectorError" in message
    assert "Sekrit" not in message and "s3cret" not in message and "RRRR" not in message


async def test_alertmanager_check_reads_its_status(alertmanager_binary: str, tmp_path: Path) -> None:
    async with alertmanager(alertmanager_binary, tmp_path / "am") as am, aiohttp.ClientSession() as session:
        answer = await check(alertmanager_config(am.url))
        assert answer.startswith("Alertmanager API v2 answers (version "), answer
        assert await am.alerts(session) == []  # nothing was posted
    with pytest.raises(TemporaryError):
        await check(alertmanager_config(am.url))  # stopped


async def test_email_check_connects_upgrades_authenticates_and_sends_nothing(
    tls_ca: tuple[trustme.CA, Path],  # noqa: F811
) -> None:
    with smtp_server(tls_ca) as smtp:
        answer = await check(mail_config(smtp))
        assert answer == f"SMTP relay 127.0.0.1:{smtp.port}: connected, STARTTLS, AUTH (nothing sent)"
        assert smtp.box.logins == ["failover"] and smtp.box.messages == [] and smtp.box.envelopes == []
        with pytest.raises(PermanentError) as refused:
            await check(mail_config(smtp, password="wrong-password"))
        assert "535" in str(refused.value) and "wrong-password" not in str(refused.value)
    with smtp_server(tls_ca, starttls=False) as plain, pytest.raises(PermanentError) as no_tls:
        await check(mail_config(plain))
    assert "does not offer STARTTLS" in str(no_tls.value)
    with pytest.raises(TemporaryError):
        await check(mail_config(smtp))  # the relay is gone


async def test_nats_check_flushes_the_connection(bus: Bus) -> None:
    config = notifier_config("nats", {"subject": "oncall.failover"})
    async with aiohttp.ClientSession() as session:
        notifier = build_notifier(config, session, bus.publish)
        assert isinstance(notifier, NatsNotifier)
        with pytest.raises(PermanentError, match="no NATS connection"):
            await notifier.check()
        notifier.flush = bus.flush
        assert await notifier.check() == "NATS connection answers (flush)"
        await bus.close()
        with pytest.raises(OrchestratorError):
            await notifier.check()
