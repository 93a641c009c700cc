"""`failover` itself (issue 17): `--version`, and a clear one-line error with a non-zero exit, not a
traceback, when `failover run` cannot bind its API port or reach its NATS."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator import __version__
from orchestrator.bus.embedded import free_port

pytestmark = pytest.mark.timeout(90)


def failover(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_version_needs_no_git_and_no_config() -> None:
    result = failover("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"failover {__version__} (python 3."), result.stdout
    assert result.stderr == ""


@contextmanager
def listening() -> Iterator[int]:
    """A port some other program already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def config(tmp_path: Path, listen: str, nats: str = "") -> Path:
    path = tmp_path / "failover.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"api: {{listen: '{listen}'}}\n"
        + (f"nats: {{url: '{nats}', connect_timeout: 1s}}\n" if nats else "")
        + "clusters:\n  - {name: eu-west, probes: [{name: i, tcp: {host: 127.0.0.1, port: 1}}]}\n"
        "playbooks: {paths: []}\n"
    )
    return path


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with listening() as port:
        result = failover(
            "--log-level",
            "error",
            "run",
            "--no-probes",
            "--config",
            str(config(tmp_path, f"127.0.0.1:{port}")),
        )
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        f"error: api.listen 127.0.0.1:{port}: address already in use"
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unreachable_nats_is_one_clear_line(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = failover(
        "--log-level", "error", "run", "--no-probes", "--config", str(config(tmp_path, "127.0.0.1:0", url))
    )
    assert result.returncode == 1, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot connect to NATS at {url}"), line
