"""The dashboard as a person sees it: headless Chromium (Debian's `chromium`) loads `/` from a running
daemon, driven over the Chrome DevTools protocol, and a failure shows up live on the page."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.bus.embedded import EmbeddedNats, free_port
from tests.conftest import require
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_api import TOKENS, VIEWER
from tests.test_daemon import all_healthy, running

pytestmark = pytest.mark.timeout(90)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1000",
)


@pytest.fixture
def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require("chromium (Debian package chromium)", found)
    assert found is not None
    return found


class DevTools:
    """The few Chrome DevTools protocol calls a test needs, over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        call_id = self.last_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(15):
            while True:
                message = await self.ws.receive_json()
                if message.get("id") == call_id:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    return dict(message.get("result", {}))
                self.events.append(message)

    async def text(self) -> str:
        result = await self.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
        return str(result["result"].get("value", ""))

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(result["data"]))


@asynccontextmanager
async def browser(binary: str, work: Path) -> AsyncIterator[DevTools]:
    port = free_port()
    with (work / "chromium.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={work / 'chromium-profile'}",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # its zygote and renderers go down with it
        )
    try:
        async with aiohttp.ClientSession() as session:
            page_ws = ""
            deadline = time.monotonic() + 20
            while not page_ws and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                        pages = [t for t in await resp.json() if t.get("type") == "page"]
                        page_ws = pages[0]["webSocketDebuggerUrl"] if pages else ""
                if not page_ws:
                    await asyncio.sleep(0.1)
            assert page_ws, (
                "chromium did not open its DevTools endpoint: " + (work / "chromium.log").read_text()[-2000:]
            )
            async with session.ws_connect(page_ws, max_msg_size=64 * 1024 * 1024) as ws:
                tools = DevTools(ws)
                await tools.call("Page.enable")
                await tools.call("Runtime.enable")
                await tools.call("Log.enable")
                yield tools
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_dashboard_shows_clusters_weights_and_a_failover_live(
    nats_server: EmbeddedNats, haproxy_binary: str, chromium_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon, browser(chromium_binary, tmp_path) as page:
            assert daemon.api is not None
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            base = f"http://127.0.0.1:{daemon.api.port}"
            await page.call("Page.navigate", url=f"{base}/?access_token={VIEWER}")

            async def shows(*needles: str) -> bool:
                text = await page.text()
                return all(n in text for n in needles)

            await wait_for(lambda: shows("live", "Automation active"), 10, "the page connected to its stream")
            text = await page.text()
            for name in ("eu-west", "us-east", "ap-south"):
                row = next(line for line in text.splitlines() if line.startswith(name + "\t"))
                assert "healthy" in row and "global: 100" in row, row
            assert "recent runs" in text.lower()

            await f.apps["us-east"].stop()  # a failure: the run and its steps must appear without a reload

            async def failover_shown() -> bool:
                text = await page.text()
                row = next((line for line in text.splitlines() if line.startswith("us-east\t")), "")
                return (
                    "failed" in row
                    and "global: 0" in row
                    and "cluster-failover · us-east" in text
                    and "drain lb.drain succeeded global/us-east weight 100 -> 0" in text
                    and "page notify succeeded" in text
                    and "last event: run" in text
                )

            try:
                await wait_for(failover_shown, 20, "the failover on the page", poll_s=0.2)
            except AssertionError as e:
                raise AssertionError(f"{e}; the page read:\n{await page.text()}") from None
            shot = tmp_path / "dashboard.png"
            await page.screenshot(shot)
            assert shot.stat().st_size > 10_000
            if os.environ.get("DASHBOARD_SCREENSHOT"):  # for a human to look at
                shutil.copy(shot, os.environ["DASHBOARD_SCREENSHOT"])
            problems = [
                e["params"]["entry"]
                for e in page.events
                if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"
            ]
            assert not problems, problems  # e.g. a Content-Security-Policy violation

            # without a token the page says how to get in, and shows nothing else
            await page.call("Page.navigate", url=f"{base}/")
            await wait_for(lambda: shows("access_token"), 10, "the refusal page")
            assert "us-east" not in await page.text()
