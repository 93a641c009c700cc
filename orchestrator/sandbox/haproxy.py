"""A real HAProxy for the demo and the tests, on loopback ports, in a directory of its own.

Tests drive the same binary and runtime API as production instead of a fake, so HAProxy's own
behaviour (reply texts, weight limits, weights lost on reload) is what the driver is checked against.
It runs master-worker (`-W`) like a packaged service, so `reload()` is the real SIGUSR2 path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from orchestrator.actuators.haproxy import HAProxyAdmin
from orchestrator.bus.embedded import free_port
from orchestrator.core.errors import OrchestratorError

LOOPBACK = "127.0.0.1"


def find_haproxy() -> str | None:
    """The haproxy binary, also where Debian puts it (/usr/sbin is often not on a user's PATH)."""
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None


def _worker_pid(info: str) -> str | None:
    """`Pid:` from `show info`: the worker's, never the master's."""
    return next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Pid:")), None)


class HAProxyError(RuntimeError):
    """The sandboxed HAProxy could not be started or controlled; the message carries its log tail."""


class HAProxyProcess:
    """One HAProxy master-worker process with one frontend and one backend."""

    def __init__(
        self,
        work_dir: Path,
        servers: dict[str, tuple[str, int]],
        backend: str = "web",
        frontend_port: int | None = None,
        admin_port: int | None = None,
        balance: str = "roundrobin",
        health_checks: bool = False,
        binary: str | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.servers = dict(servers)
        self.backend = backend
        self.frontend_port = frontend_port or free_port()
        self.admin_port = admin_port or free_port()
        self.balance = balance
        self.health_checks = health_checks
        self.binary = binary or find_haproxy()
        self.config_path = self.work_dir / "haproxy.cfg"
        self.socket_path = self.work_dir / "admin.sock"
        self.master_socket_path = self.work_dir / "master.sock"
        self.state_path = self.work_dir / "server-state"
        self.log_path = self.work_dir / "haproxy.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def admin_url(self) -> str:
        return f"tcp://{LOOPBACK}:{self.admin_port}"

    @property
    def admin_unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def frontend_url(self) -> str:
        return f"http://{LOOPBACK}:{self.frontend_port}"

    @property
    def pid(self) -> int | None:
        """The master's pid (the one that takes SIGUSR2 for a reload)."""
        return self._process.pid if self._process is not None else None

    def admin(self, timeout_s: float = 2.0) -> HAProxyAdmin:
        return HAProxyAdmin(self.admin_url, timeout_s)

    def render_config(self) -> str:
        check = " check inter 500ms fall 2 rise 1" if self.health_checks else ""
        server_lines = [
            f"    server {name} {host}:{port} weight 100{check}"
            for name, (host, port) in self.servers.items()
        ]
        return "\n".join(
            [
                "global",
                f"    stats socket ipv4@{LOOPBACK}:{self.admin_port} level admin",
                f"    stats socket {self.socket_path} mode 600 level admin",
                # Without a saved state file a reload puts every weight back to the config's value.
                f"    server-state-file {self.state_path}",
                "",
                "defaults",
                "    mode http",
                "    load-server-state-from-file global",
                "    timeout connect 1s",
                "    timeout client 5s",
                "    timeout server 5s",
                "",
                "frontend main",
                f"    bind {LOOPBACK}:{self.frontend_port}",
                f"    default_backend {self.backend}",
                "",
                f"backend {self.backend}",
                f"    balance {self.balance}",
                *server_lines,
                "",
            ]
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def start(self, timeout_s: float = 10.0) -> None:
        """Write the config, launch HAProxy and return once its runtime API answers."""
        if self.binary is None:
            raise HAProxyError("haproxy binary not found (PATH, /usr/sbin/haproxy)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())
        with self.log_path.open("ab") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                "-W",
                "-db",
                "-S",
                str(self.master_socket_path),
                "-f",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        try:
            await self._wait_ready(timeout_s, previous_pid=None)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, timeout_s: float, previous_pid: str | None) -> str:
        """Poll `show info` until a worker (a new one after a reload) answers; return its pid."""
        admin = self.admin(timeout_s=1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._process is None or self._process.returncode is not None:
                code = None if self._process is None else self._process.returncode
                raise HAProxyError(f"haproxy exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OrchestratorError, OSError):
                pid = _worker_pid(await admin.command("show info"))
                # The master loses a SIGUSR2 that arrives before its own loop runs, even after the
                # worker answers: its CLI answering is the sign that it is ready for the next reload.
                if (
                    pid is not None
                    and pid != previous_pid
                    and "worker" in await self.master_command("show proc")
                ):
                    return pid
            if loop.time() > deadline:
                raise HAProxyError(f"haproxy not ready within {timeout_s}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def master_command(self, cmd: str, timeout_s: float = 2.0) -> str:
        """A command on the master CLI, which (unlike the workers' API) replies only after a half-close."""
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(self.master_socket_path)
            try:
                writer.write(cmd.encode() + b"\n")
                writer.write_eof()
                return (await reader.read()).decode(errors="replace")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def worker_pid(self) -> str:
        """The pid of the worker answering the runtime API (it changes on every reload)."""
        return _worker_pid(await self.admin().command("show info")) or ""

    async def save_state(self) -> None:
        """Write the current server state where HAProxy reads it on the next (re)load."""
        state = await self.admin().command("show servers state")
        if not state.startswith("1\n"):
            raise HAProxyError(f"unexpected `show servers state` reply: {state[:200]!r}")
        # Write then rename, so a reload racing with the save never reads half a file.
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(state)
        partial.replace(self.state_path)

    async def reload(self, timeout_s: float = 10.0) -> None:
        """Reload like `systemctl reload haproxy` and wait for the new worker.

        Runtime weights survive only if `save_state()` wrote them first; a stale state file from an
        earlier save is loaded as it is.
        """
        if self._process is None or self._process.returncode is not None:
            raise HAProxyError("haproxy is not running")
        previous = await self.worker_pid()
        self._process.send_signal(signal.SIGUSR2)
        await self._wait_ready(timeout_s, previous_pid=previous)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the master (it stops its workers), SIGKILL the whole session if it lingers."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                # start_new_session made the master a group leader: this reaches its workers too.
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def __aenter__(self) -> HAProxyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
