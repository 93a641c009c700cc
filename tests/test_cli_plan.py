"""`failover plan` (issue 17): a balancer it cannot read fails the plan, naming it (exit 1), and a
playbook planned for an event its trigger does not take is warned about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.bus.embedded import free_port

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, admin_port: int) -> Path:
    path = tmp_path / "failover.yaml"
    path.write_text(
        f"""\
state_dir: {tmp_path / "state"}
clusters:
  - {{name: eu-west, probes: [{{name: i, tcp: {{host: 127.0.0.1, port: 1}}}}]}}
  - {{name: us-east, probes: [{{name: i, tcp: {{host: 127.0.0.1, port: 2}}}}]}}
load_balancers:
  - name: global
    driver: haproxy
    haproxy: {{admin: ["tcp://127.0.0.1:{admin_port}"], backend: web, timeout: 500ms}}
    members: {{eu-west: eu1, us-east: us1}}
notifiers:
  - {{name: oncall, driver: webhook, webhook: {{url: "http://127.0.0.1:9/hook"}}}}
playbooks: {{paths: ["{REPO / "playbooks"}"]}}
"""
    )
    return path


def plan(path: Path, playbook: str, event: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "plan",
            "--config",
            str(path),
            "--playbook",
            playbook,
            "--event",
            event,
            "--cluster",
            "us-east",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_balancer_that_cannot_be_read_fails_the_plan_naming_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: HAProxy's runtime API is down
    result = plan(config(tmp_path, port), "cluster-failover", "cluster.failed")
    assert result.returncode == 1, result
    assert "-> cannot read current state:" in result.stdout  # every step is still shown
    assert result.stdout.rstrip().endswith("nothing was changed (dry-run)")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the plan is incomplete: cannot read balancer global: "), result.stderr
    assert f"127.0.0.1:{port}" in last


def test_a_trigger_that_does_not_match_the_event_is_a_warning(tmp_path: Path) -> None:
    path = config(tmp_path, free_port())
    result = plan(path, "observer-suspect", "cluster.failed")  # notifies only: reads no balancer
    assert result.returncode == 0, result
    assert result.stderr.strip() == (
        "warning: playbook observer-suspect runs on observer.suspect, not cluster.failed: this plan shows "
        "what it would do if it did; `--event observer.suspect` plans what a real event does"
    )
    result = plan(path, "observer-suspect", "observer.suspect")
    assert (result.returncode, result.stderr) == (0, "")
