"""Fixtures of the chaos suite: the test suite's (real nats-server, HAProxy) plus `recorder`, which
collects each scenario's recovery times; at the end of the session the results table is printed and
written to `chaos/RESULTS.md` (one row per scenario: pass/fail, trials, recovery p50/max, budget)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bus.embedded import find_nats_server
from orchestrator.core.errors import PermanentError
from tests.conftest import *  # noqa: F403  (nats_binary, nats_server, bus, haproxy_binary, ...)

RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclass
class Recorder:
    """What one scenario measured: `trial(seconds)` per recovery (fault injected -> traffic moved, or
    whatever the scenario names), an optional budget, and free-form notes for the table."""

    scenario: str
    title: str
    trials: list[float] = field(default_factory=list)
    budget_s: float | None = None
    notes: list[str] = field(default_factory=list)
    outcome: str = "not run"

    def trial(self, seconds: float) -> None:
        self.trials.append(round(seconds, 3))
        print(f"[chaos] {self.scenario}: recovery {seconds:.2f}s")

    def budget(self, seconds: float) -> None:
        self.budget_s = seconds

    def note(self, text: str) -> None:
        self.notes.append(text)

    def row(self) -> str:
        p50 = f"{statistics.median(self.trials):.2f}" if self.trials else "-"
        worst = f"{max(self.trials):.2f}" if self.trials else "-"
        budget = f"{self.budget_s:g}" if self.budget_s is not None else "-"
        notes = "; ".join(self.notes).replace("|", "/")
        cells = [self.title, self.outcome, str(len(self.trials)), p50, worst, budget, notes]
        return "| " + " | ".join(cells) + " |"


_RECORDERS: dict[str, Recorder] = {}


@pytest.fixture
def recorder(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    doc = (request.function.__doc__ or "").strip().splitlines()
    title = doc[0].rstrip(".") if doc else request.node.name
    rec = Recorder(request.node.name, title)
    _RECORDERS[request.node.nodeid] = rec
    yield rec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    rec = _RECORDERS.get(item.nodeid)
    if rec is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        rec.outcome = {"passed": "pass", "failed": "FAIL", "skipped": "skipped"}[report.outcome]


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        found = subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=5, check=False
        )
        nats = found.stdout
    except (OSError, subprocess.SubprocessError, PermanentError):
        nats = ""
    return (
        f"{os.cpu_count()} cores ({cpu or platform.machine()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}" + (f", {nats.strip()}" if nats.strip() else "")
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RECORDERS:
        return
    lines = [
        "# Chaos suite results",
        "",
        f"Written by `make chaos` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {_machine()}.",
        "Recovery: seconds from the fault to the measured end of the scenario (traffic moved, or the",
        "invariant re-established), per trial. Budget: the most each trial may take.",
        "",
        "| scenario | result | trials | recovery p50 (s) | max (s) | budget (s) | notes |",
        "|---|---|---|---|---|---|---|",
        *(rec.row() for rec in _RECORDERS.values()),
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "chaos results (chaos/RESULTS.md)")
        for line in lines[7:]:
            reporter.write_line(line)
