"""Real NATS faults for tests: a clustered nats-server per node, and a JetStream-blocking proxy.

`NatsCluster` runs N nats-servers on 127.0.0.1 with JetStream, clustered by routes, each with its own
store dir, client, cluster and monitoring port; a node can be SIGKILLed and started again on the same
ports and store, and the monitoring endpoint tells which node is the JetStream meta leader or a stream's
leader. `JetStreamBlocker` is a NATS-protocol-aware TCP proxy: it forwards everything, but while blocking
it drops the client's JetStream API calls, so they time out as they do during a JetStream leader
election, while core publish/subscribe keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.bus.embedded import free_port
from tests.helpers import wait_for


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    monitor_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """N clustered nats-servers with JetStream on loopback; `url` lists them all, comma-separated."""

    def __init__(self, binary: str, work: Path, size: int = 3, cluster_name: str = "test") -> None:
        self.binary = binary
        self.cluster_name = cluster_name
        self.nodes = {
            f"n{i}": NatsNode(f"n{i}", free_port(), free_port(), free_port(), work / f"n{i}")
            for i in range(1, size + 1)
        }

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes.values())

    def live(self) -> list[NatsNode]:
        return [n for n in self.nodes.values() if n.running]

    def _config(self, node: NatsNode) -> Path:
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{other.cluster_port}"'
            for other in self.nodes.values()
            if other is not node
        )
        text = f"""
server_name: {node.name}
listen: "127.0.0.1:{node.port}"
http: "127.0.0.1:{node.monitor_port}"
jetstream {{
  store_dir: "{node.dir / "store"}"
  max_memory_store: 64MB
  max_file_store: 256MB
}}
cluster {{
  name: {self.cluster_name}
  listen: "127.0.0.1:{node.cluster_port}"
  routes: [{routes}]
}}
"""
        path = node.dir / "nats.conf"
        path.write_text(text)
        return path

    async def start(self, timeout_s: float = 30) -> None:
        """Start every node and wait until JetStream has a meta leader that every node knows."""
        for node in self.nodes.values():
            self.start_node(node.name)
        for node in self.nodes.values():
            await wait_for(partial(_port_open, node.port), 10, f"nats {node.name} listening")
        await self.wait_healthy(timeout_s)

    def start_node(self, name: str) -> NatsNode:
        node = self.nodes[name]
        assert not node.running, f"{name} already runs"
        node.dir.mkdir(parents=True, exist_ok=True)
        config = self._config(node)
        node.proc = subprocess.Popen(
            [self.binary, "-c", str(config), "--log", str(node.dir / "nats-server.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return node

    async def kill(self, name: str) -> None:
        """SIGKILL one node, as a crashed machine would."""
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(node.proc.wait)

    async def restart(self, name: str, timeout_s: float = 30) -> float:
        """Start a killed node again (same ports, same store); returns seconds until all nodes are healthy."""
        node = self.start_node(name)
        started = time.monotonic()
        await wait_for(partial(_port_open, node.port), 10, f"nats {name} listening")
        await self.wait_healthy(timeout_s)
        return time.monotonic() - started

    async def stop(self) -> None:
        for node in self.nodes.values():
            proc, node.proc = node.proc, None
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 5)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)

    # monitoring ---------------------------------------------------------------------------------------

    async def monitor(self, name: str, path: str, **params: str) -> dict[str, Any] | None:
        """A node's monitoring endpoint as JSON, or None when it does not answer (or answers non-200)."""
        node = self.nodes[name]
        if not node.running:
            return None
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
                s.get(f"http://127.0.0.1:{node.monitor_port}{path}", params=params) as r,
            ):
                if r.status != 200:
                    return None
                body: dict[str, Any] = await r.json(content_type=None)
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def healthy(self) -> bool:
        """Every node runs and reports JetStream current (`/healthz` 200: meta leader known, streams
        and consumers caught up)."""
        if len(self.live()) != len(self.nodes):
            return False
        for node in self.nodes.values():
            if await self.monitor(node.name, "/healthz") is None:
                return False
        return await self.meta_leader() is not None

    async def wait_healthy(self, timeout_s: float = 30) -> float:
        return await wait_for(self.healthy, timeout_s, "NATS cluster healthy", poll_s=0.1)

    async def meta_leader(self) -> str | None:
        """The JetStream meta leader, when the live nodes agree on one that is itself live."""
        seen = set()
        for node in self.live():
            jsz = await self.monitor(node.name, "/jsz")
            seen.add(((jsz or {}).get("meta_cluster") or {}).get("leader") or None)
        if len(seen) != 1:
            return None
        leader = seen.pop()
        return leader if leader in self.nodes and self.nodes[leader].running else None

    async def stream_leader(self, stream: str) -> str | None:
        """The node that leads `stream`, as its live replicas report it (None while they disagree)."""
        seen = set()
        for node in self.live():
            jsz = await self.monitor(node.name, "/jsz", accounts="true", streams="true")
            for account in (jsz or {}).get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        seen.add((detail.get("cluster") or {}).get("leader") or None)
        if len(seen) != 1:
            return None
        leader = seen.pop()
        return leader if leader in self.nodes and self.nodes[leader].running else None

    async def stream_replicas(self, stream: str) -> int:
        """The configured replicas of `stream` as the meta leader reports it (0: unknown)."""
        leader = await self.meta_leader()
        if leader is None:
            return 0
        jsz = await self.monitor(leader, "/jsz", accounts="true", streams="true", config="true")
        for account in (jsz or {}).get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return int((detail.get("config") or {}).get("num_replicas") or 0)
        return 0


@asynccontextmanager
async def nats_cluster(binary: str, work: Path, size: int = 3) -> AsyncIterator[NatsCluster]:
    cluster = NatsCluster(binary, work, size)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


async def _port_open(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# the JetStream-blocking proxy ---------------------------------------------------------------------------

JETSTREAM_API = ("$JS.API.", "$KV.")
"""Subjects of JetStream API calls and KV operations (a KV put publishes to `$KV.<bucket>.<key>`)."""


def jetstream_calls(
    prefixes: Iterable[str] = JETSTREAM_API, captured: Iterable[str] = ()
) -> Callable[[str, str | None], bool]:
    """A drop rule: JetStream API and KV subjects, and publishes expecting a JetStream ack (a reply
    subject) to subjects a stream captures (`captured`), which get no answer during an election either."""
    api = tuple(prefixes)
    stored = tuple(captured)

    def rule(subject: str, reply: str | None) -> bool:
        return subject.startswith(api) or (reply is not None and bool(stored) and subject.startswith(stored))

    return rule


@dataclass
class JetStreamBlocker:
    """A TCP proxy in front of one nats-server that understands the client side of the NATS protocol.

    Server-to-client bytes are copied unchanged. Client-to-server, it forwards whole protocol
    operations; a `PUB` or `HPUB` whose subject `drop(subject, reply)` selects is swallowed while
    `blocking` is set (counted in `dropped` by subject), so the call's reply never comes. Pings,
    subscriptions and every other publish go through: core NATS keeps answering.
    """

    target_port: int
    drop: Callable[[str, str | None], bool] = field(default_factory=jetstream_calls)
    port: int = field(default_factory=free_port)
    blocking: bool = False
    dropped: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        self._spawn(self._copy(server_r, client_w, server_w))
        self._spawn(self._filter(client_r, server_w, client_w))

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._close(writer, other)

    async def _filter(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                op = line[:5].upper()
                if op.startswith((b"PUB ", b"HPUB ")):
                    args = line[:-2].decode().split()
                    # PUB subject [reply] size / HPUB subject [reply] header_size total_size
                    sizes = 2 if op.startswith(b"HPUB") else 1
                    subject = args[1]
                    reply = args[2] if len(args) == 2 + sizes else None
                    payload = await reader.readexactly(int(args[-1]) + 2)
                    if not payload.endswith(b"\r\n"):
                        raise ValueError(f"bad NATS frame after {line!r}")
                    if self.blocking and self.drop(subject, reply):
                        self.dropped[_kind(subject)] += 1
                        continue
                    self.forwarded += 1
                    writer.write(line + payload)
                else:
                    writer.write(line)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._close(writer, other)

    def _close(self, *writers: asyncio.StreamWriter) -> None:
        for writer in writers:
            self._writers.discard(writer)
            writer.close()


def _kind(subject: str) -> str:
    """`$JS.API.STREAM.INFO.X` -> `$JS.API.STREAM`, `$KV.bucket.key` -> `$KV.bucket`, `a.b.c` -> `a.b`."""
    tokens = subject.split(".")
    return ".".join(tokens[:3] if subject.startswith("$JS.") else tokens[:2])


@asynccontextmanager
async def jetstream_blocker(
    target_port: int, drop: Callable[[str, str | None], bool] | None = None
) -> AsyncIterator[JetStreamBlocker]:
    proxy = JetStreamBlocker(target_port, drop) if drop is not None else JetStreamBlocker(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
