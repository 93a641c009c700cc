"""A simulated cluster's application: an HTTP server that answers with its cluster name.

The demo and the tests fail it on purpose: `stop()` closes the listener (connection refused, like a dead
ingress), `fail()` answers 503, `slow(s)` delays every answer. `start()` brings it back on the same port.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


class AppServer:
    def __init__(self, name: str, port: int, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = port
        self.status = 200
        self.delay_s = 0.0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def _app(self) -> web.Application:
        app = web.Application()

        async def answer(_request: web.Request) -> web.Response:
            self.requests += 1
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.Response(text=f"{self.name}\n", status=self.status)

        app.router.add_get("/", answer)
        app.router.add_get("/healthz", answer)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def fail(self, status: int = 503) -> None:
        self.status = status

    def heal(self) -> None:
        self.status = 200
        self.delay_s = 0.0

    def slow(self, delay_s: float) -> None:
        self.delay_s = delay_s
