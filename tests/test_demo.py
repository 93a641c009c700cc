"""`failover demo` (what `make demo` runs) shows the product and exits 0: three vantages and quorum, a
drain with the survivors scaled, an incident, an approved failback, and the recovery times; with
`--keep` it stays up with a dashboard URL that works, until Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(200)


def test_the_demo_shows_quorum_scaling_approval_incident_and_recovery_times(
    haproxy_binary: str, nats_binary: str, tmp_path: Path
) -> None:
    args = ["demo", "--state-dir", str(tmp_path / "state"), "--recovery-hold", "2s", "--keep"]
    errors = (tmp_path / "stderr").open("w")  # a file: a full stderr pipe would block the demo
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 170
        while time.monotonic() < deadline:  # bounded: the demo takes about 20 s
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "dashboard: " in line:
                break
        out = "".join(lines)
        url = re.search(r"dashboard: (\S+)", out)
        assert url, out[-4000:]
        with urllib.request.urlopen(url.group(1), timeout=10) as page:  # the printed URL works
            assert page.status == 200 and "clusters serving" in page.read().decode()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        errors.close()
    out += rest
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, out[-4000:] + err[-3000:]
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
