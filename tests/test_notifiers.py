"""Notifiers against a real local receiver: signature, error classification, no secret in errors."""

from __future__ import annotations

import aiohttp
import pytest

from orchestrator.core import signing
from orchestrator.core.config_drivers import NotifierConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.notifiers import Notification, build_notifier
from tests.helpers import HOOK_SECRET, hook_receiver


def webhook(url: str, secret: str | None = HOOK_SECRET) -> NotifierConfig:
    section: dict[str, object] = {"url": url, "timeout": "1s"}
    if secret:
        section["secret"] = secret
    return NotifierConfig.model_validate({"name": "hook", "driver": "webhook", "webhook": section})


async def test_webhook_is_signed_and_carries_the_notification() -> None:
    async with hook_receiver() as hook, aiohttp.ClientSession() as session:
        await build_notifier(webhook(hook.url), session).send(
            Notification("eu failed", "critical", {"why": "x"}, run_id="r1", playbook="p", cluster="eu")
        )
        assert hook.rejected == 0
        [body] = hook.received
        assert body["v"] == 1 and body["severity"] == "critical" and body["summary"] == "eu failed"
        assert body["cluster"] == "eu" and body["run_id"] == "r1"


async def test_wrong_secret_is_rejected_by_the_receiver_and_permanent() -> None:
    async with hook_receiver() as hook, aiohttp.ClientSession() as session:
        with pytest.raises(PermanentError, match="HTTP 401") as info:
            await build_notifier(webhook(hook.url, "wrong-secret"), session).send(Notification("x"))
        assert hook.rejected == 1
        assert "wrong-secret" not in str(info.value)


async def test_server_errors_and_unreachable_are_temporary() -> None:
    async with hook_receiver() as hook, aiohttp.ClientSession() as session:
        hook.status = 503
        with pytest.raises(TemporaryError, match="HTTP 503"):
            await build_notifier(webhook(hook.url), session).send(Notification("x"))
        url = hook.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TemporaryError):
            await build_notifier(webhook(url), session).send(Notification("x"))


def test_signature_verification() -> None:
    body = b'{"a":1}'
    header = signing.sign("k", body, timestamp=1000)
    assert signing.verify("k", body, header, now=1000)
    assert not signing.verify("k", body + b" ", header, now=1000)
    assert not signing.verify("other", body, header, now=1000)
    assert not signing.verify("k", body, header, now=1000 + 301)  # replay outside the window
    assert not signing.verify("k", body, "garbage", now=1000)
