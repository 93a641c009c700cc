"""Hot reload of playbooks on SIGHUP or when a playbook file changes (DESIGN §2.8).

An invalid set is refused whole: the last good set stays active and a `playbooks.rejected` system event
lists every problem with its `file:line`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from orchestrator.core.aio import wait_any
from orchestrator.core.config import Config
from orchestrator.core.errors import ValidationFailed
from orchestrator.playbooks.loader import load_playbooks, playbook_files
from orchestrator.playbooks.runner import Runner

log = structlog.get_logger(__name__)

Emit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class PlaybookWatcher:
    def __init__(self, config: Config, runner: Runner, emit: Emit, poll_s: float = 2.0) -> None:
        self.config = config
        self.runner = runner
        self.emit = emit
        self.poll_s = poll_s
        self.reload_now = asyncio.Event()
        """Set by SIGHUP: re-read the playbooks now."""
        self._seen = fingerprint(config.playbook_paths())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_any(self.reload_now, stop, timeout_s=self.poll_s)
            if stop.is_set():
                return
            forced = self.reload_now.is_set()
            self.reload_now.clear()
            current = fingerprint(self.config.playbook_paths())
            if current == self._seen and not forced:
                continue
            self._seen = current
            await self.reload()

    async def reload(self) -> None:
        try:
            playbooks = load_playbooks(self.config.playbook_paths(), self.config)
        except ValidationFailed as e:
            problems = [str(p) for p in e.problems]
            log.error("playbooks.rejected", problems=problems)
            await self.emit(
                "playbooks.rejected",
                "invalid playbook set refused; the last good set stays active",
                {"problems": problems},
            )
            return
        self.runner.set_playbooks(playbooks)
        log.info("playbooks.reloaded", playbooks=sorted(playbooks))
        await self.emit(
            "playbooks.reloaded",
            f"{len(playbooks)} playbook(s) active",
            {"playbooks": {n: lp.sha256 for n, lp in playbooks.items()}},
        )


def fingerprint(paths: list[Path]) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for file in playbook_files(paths):
        with contextlib.suppress(OSError):
            st = file.stat()
            out[str(file)] = (st.st_mtime, st.st_size)
    return out
