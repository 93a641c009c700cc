"""`failover demo` (what `make demo` runs) shows the product and exits 0: three vantages and quorum, a
drain with the survivors scaled, an incident, an approved failback, and the recovery times."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(200)


def test_the_demo_shows_quorum_scaling_approval_incident_and_recovery_times(
    haproxy_binary: str, nats_binary: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--state-dir", str(tmp_path), "--recovery-hold", "2s"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-3000:]
    assert "seen from 3 vantages (mgmt, eu-prober, us-prober), quorum 2" in out
    # one vantage alone is below quorum: nothing moves
    assert "1 of 3 vantages sees ap-south failing, below quorum 2: nothing moved (weight 100)" in out
    assert "cluster.failed: ap-south" not in out
    assert "event cluster.failed: us-east healthy -> failed" in out
    assert "step drain succeeded edge/us-east weight 100 -> 0" in out
    assert "survivors scaled 6 -> 9 and ready" in out
    assert re.search(r"incident inc-us-east-1 is open \(scaled\)", out)
    assert "step ask waits for a person: failover ctl approve" in out
    assert "bob (operator) approves run" in out
    assert "edge/us-east weight 0 -> 25; edge/us-east weight 25 -> 50; edge/us-east weight 50 -> 100" in out
    assert "replicas {'eu-west': 6, 'us-east': 6, 'ap-south': 6}" in out.split(">>> act 3")[1]
    assert "incident inc-us-east-1 resolved at" in out
    assert re.search(r"    detect +\d+\.\d{3}s", out) and re.search(r"    total +\d+\.\d{3}s", out)
    # the cluster that was only degraded kept its weight through its recovery, and nobody was paged
    assert "edge/ap-south weight" not in out and "ap-south is back" not in out
    assert "on-call received 2 signed notification(s)" in out
    assert "demo finished" in out
