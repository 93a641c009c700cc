"""The in-process prober reuses HTTP connections (issue 19: a new connection per probe was most of its
CPU), without letting a kept-alive connection hide a target that takes no new connections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from orchestrator.bus.embedded import free_port
from orchestrator.core.config import load_config
from orchestrator.probes.prober import FRESH_EVERY, Prober


class KeepAliveServer:
    """A minimal HTTP/1.1 server on loopback that counts the connections it accepted. `refuse_new()`
    closes the listener while the connections already open go on answering: a restarted ingress whose
    old worker still drains, the failure a reused connection alone would never see."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def refuse_new(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                close = b"connection: close" in head.lower()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                    + (b"Connection: close\r\n" if close else b"")
                    + b"\r\nok"
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Probing:
    """The prober running against `server` (interval 100 ms), its reports' ok flags collected."""

    def __init__(self, tmp_path: Path, server: KeepAliveServer) -> None:
        path = tmp_path / "failover.yaml"
        path.write_text(
            "probing: {interval: 100ms, timeout: 80ms, jitter: 0s}\n"
            "clusters:\n"
            f"  - {{name: a, probes: [{{name: web, http: {{url: 'http://127.0.0.1:{server.port}/'}}}}]}}\n"
        )
        self.reports: list[bool] = []
        self.prober = Prober(load_config(path), self._publish, vantage="here")
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.prober.run(self.stop))

    async def _publish(self, _subject: str, payload: bytes) -> None:
        self.reports.append(json.loads(payload)["ok"])

    async def until(self, count: int) -> None:
        for _ in range(200):  # bounded: 20 s at most
            if len(self.reports) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{len(self.reports)} reports, expected {count}")

    async def close(self) -> None:
        self.stop.set()
        await self.task


async def test_a_healthy_target_is_probed_over_few_connections(tmp_path: Path) -> None:
    """Before: `force_close` opened (and the target accepted) a connection for every probe."""
    server = KeepAliveServer()
    await server.start()
    probing = Probing(tmp_path, server)
    try:
        await probing.until(20)
    finally:
        await probing.close()
    assert all(probing.reports)
    # one new connection every FRESH_EVERY probes, plus the pool's
    assert server.accepted <= len(probing.reports) // FRESH_EVERY + 2, (server.accepted, probing.reports)


async def test_a_target_refusing_new_connections_is_seen_failing_every_round(tmp_path: Path) -> None:
    server = KeepAliveServer()
    await server.start()
    probing = Probing(tmp_path, server)
    try:
        await probing.until(2 * FRESH_EVERY)
        await server.refuse_new()  # the kept-alive connection still answers 200
        seen = len(probing.reports)
        await probing.until(seen + FRESH_EVERY + 4)
    finally:
        await probing.close()
    after = probing.reports[seen:]
    assert False in after, after
    first_failure = after.index(False)
    assert first_failure <= FRESH_EVERY, after  # found by the next probe over a new connection
    assert not any(after[first_failure:]), after  # then every round fails: the threshold is reached
