"""`failover demo` (what `make demo` runs) shows a failover and a failback and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(150)


def test_the_demo_shows_a_failover_and_a_failback(
    haproxy_binary: str, nats_binary: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--state-dir", str(tmp_path), "--recovery-hold", "2s"],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "event cluster.failed: us-east healthy -> failed" in out
    assert "step drain succeeded global/us-east weight 100 -> 0" in out
    assert "us-east drained" in out and "us-east restored" in out
    assert "on-call received 2 signed notification(s)" in out
