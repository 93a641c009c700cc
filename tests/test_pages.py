"""The pages notification links lead to (DESIGN §13: `api.external_url` + `/runs/<id>`, `/incidents/<id>`):
served, escaped, behind the viewer token like the dashboard. Before, the links pointed nowhere. Real
daemon, NATS and HAProxy."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from orchestrator.bus.embedded import EmbeddedNats
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_api import TOKENS, VIEWER
from tests.test_daemon import all_healthy, running


async def test_run_and_incident_pages_behind_the_viewer_token(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon, aiohttp.ClientSession() as http:
            assert daemon.api is not None
            base = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            await f.apps["us-east"].stop()

            def paged() -> bool:
                return any(n.get("incident") for n in hook.received)

            await wait_for(paged, 10, "the page with its incident")
            note = next(n for n in hook.received if n.get("incident"))
            incident, run_id = note["incident"], note["run_id"]

            async def get(url: str) -> tuple[int, str]:
                async with http.get(base + url) as r:
                    return r.status, await r.text()

            assert (await get(f"/runs/{run_id}"))[0] == 401  # a viewer token, as for the dashboard
            status, page = await get(f"/runs/{run_id}?access_token={VIEWER}")
            assert status == 200 and run_id in page and "cluster-failover" in page
            assert "Recovery timeline" in page and "traffic moved" in page.lower()
            status, page = await get(f"/incidents/{incident}?access_token={VIEWER}")
            assert status == 200 and incident in page and "us-east" in page
            assert f'href="/runs/{run_id}?access_token={VIEWER}"' in page  # the runs link on, token kept
            assert (await get(f"/runs/0123456789abcdef?access_token={VIEWER}"))[0] == 404
            assert (await get(f"/incidents/inc-us-east-99?access_token={VIEWER}"))[0] == 404
            assert (await get(f"/incidents/x.y*?access_token={VIEWER}"))[0] == 400
