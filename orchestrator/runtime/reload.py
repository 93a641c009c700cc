"""Hot reload of playbooks on SIGHUP or when a playbook file changes (DESIGN §2.8).

An invalid set is refused whole: the last good set stays active and a `playbooks.rejected` system event
lists every problem with its `file:line`. Whatever a file holds, a reload never stops the daemon: an
unexpected failure while loading is reported the same way, and logged with its trace. Files are parsed
in a worker thread, so even a large one (the YAML loader bounds size, depth and alias expansion) does
not hold the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
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
            playbooks = await asyncio.to_thread(load_playbooks, self.config.playbook_paths(), self.config)
        except ValidationFailed as e:
            problems = [str(p) for p in e.problems]
            log.error("playbooks.rejected", problems=problems)
            await self.emit(
                "playbooks.rejected",
                "invalid playbook set refused; the last good set stays active",
                {"problems": problems},
            )
            return
        except Exception as e:  # a loader bug must not become a dead watcher, nor a dead daemon
            trace = "".join(traceback.format_exception(e))
            log.error("playbooks.rejected", error=repr(e), trace=trace)
            await self.emit(
                "playbooks.rejected",
                "playbook set could not be loaded; the last good set stays active",
                {"problems": [f"unexpected error while loading: {type(e).__name__}: {str(e)[:200]}"]},
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
