"""A TCP proxy that stands for one vantage point's network path to one cluster.

Tests cut a prober off from a cluster without touching the cluster: `refuse()` closes the listener
(connection refused, like a route withdrawn and rejected), `blackhole()` accepts and never answers (like a
silently dropped route: the prober's timeout decides), `slow(s)` forwards each new connection only
after `s` seconds (a balancer API that answers, late), `restore()` forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["pass", "refuse", "blackhole", "slow"]


class TcpProxy:
    def __init__(self, listen_port: int, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = listen_port
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def refuse(self) -> None:
        self.mode = "refuse"
        await self.stop()

    async def blackhole(self) -> None:
        self.mode = "blackhole"
        await self.start()

    async def slow(self, delay_s: float) -> None:
        self.mode = "slow"
        self.delay_s = delay_s
        await self.start()

    async def restore(self) -> None:
        self.mode = "pass"
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if self.mode == "blackhole":
                await reader.read()  # hold the connection open until the client gives up
                return
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            self._conns.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.write_eof()
