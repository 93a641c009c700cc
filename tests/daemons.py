"""Daemon processes for tests: `failover run` (and `failover probe`) started as real subprocesses.

One place for what several tests need: start with JSON logs into a file, poll `/readyz`, ask whether a
replica leads, freeze and thaw it (SIGSTOP / SIGCONT, a GC pause or a stuck VM), kill it, and stop it
with SIGTERM, killing it when it does not stop in time, so no test leaves a daemon behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import wait_for


@dataclass
class DaemonProcess:
    """One `failover <command> --config FILE` process; `api` is its HTTP port (0: none to poll)."""

    config: Path
    log: Path
    api: int = 0
    name: str = "daemon"
    command: tuple[str, ...] = ("run",)
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None

    async def start(self, *extra: str) -> DaemonProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            "--log-format",
            "json",
            *self.command,
            "--config",
            str(self.config),
            *extra,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log.open("a"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    async def readyz(self) -> dict[str, Any]:
        """The `/readyz` body, or {} while the API does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
                s.get(f"http://127.0.0.1:{self.api}/readyz") as r,
            ):
                body: dict[str, Any] = await r.json()
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}

    async def ready(self) -> bool:
        return bool((await self.readyz()).get("ready"))

    async def leads(self) -> bool:
        return bool((await self.readyz()).get("checks", {}).get("leader"))

    async def wait_ready(self, timeout_s: float = 20) -> float:
        return await wait_for(self.ready, timeout_s, f"{self.name} ready")

    async def wait_leads(self, timeout_s: float = 20) -> float:
        return await wait_for(self.leads, timeout_s, f"{self.name} leads")

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    async def kill(self) -> int:
        """SIGKILL, as a node failure or the OOM killer would; returns the exit code."""
        assert self.proc is not None
        self.signal(signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM (after SIGCONT, a frozen process cannot handle it), SIGKILL when it does not stop."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.thaw()
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@asynccontextmanager
async def running(*daemons: DaemonProcess) -> AsyncIterator[tuple[DaemonProcess, ...]]:
    """Make sure every daemon listed (and started meanwhile) is stopped when the block ends."""
    try:
        yield daemons
    finally:
        await stop_all(daemons)


async def stop_all(daemons: Iterable[DaemonProcess]) -> None:
    await asyncio.gather(*(d.stop() for d in daemons))
