"""The dashboard's headline in the four states an on-call engineer meets, read from the DOM of headless
Chromium after the page's script ran, with a screenshot of each (saved under the test's tmp dir, the
path printed; `DASHBOARD_SCREENSHOTS=dir` copies them out for a human to look at).

Before, the page showed a large green "Automation active: nothing frozen or paused." while every
cluster was at weight 0 and the frontend answered 503: the headline now states the service.
Real daemon, NATS, HAProxy and Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.actuators.haproxy import HAProxyAdmin
from orchestrator.bus.embedded import EmbeddedNats
from tests.helpers import MEMBERS, fleet, hook_receiver, wait_for, write_config
from tests.test_api import TOKENS, VIEWER
from tests.test_daemon import all_healthy, running
from tests.test_dashboard import DevTools, browser
from tests.test_dashboard import chromium_binary as chromium_fixture

chromium_binary = chromium_fixture  # the fixture, shared with tests/test_dashboard.py

pytestmark = pytest.mark.timeout(120)

FAILOVER = """name: cluster-failover
on: {event: cluster.failed}
guards: {min_healthy_clusters: 1}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - id: confirm
    action: approval
    with: {timeout: 10m, on_timeout: proceed, summary: "scale the survivors for {{ event.cluster }}?"}
  - {id: page, action: notify, with: {notifier: oncall, severity: critical, state: drained,
     summary: "{{ event.cluster }} failed"}}
"""

HEADLINE_JS = """(() => {
  const e = document.getElementById("headline") || document.querySelector(".banner");
  return e ? {cls: e.className, text: e.innerText} : {cls: "", text: ""};
})()"""


async def headline(page: DevTools) -> dict[str, Any]:
    result = await page.call("Runtime.evaluate", expression=HEADLINE_JS, returnByValue=True)
    return dict(result["result"].get("value") or {})


async def shot(page: DevTools, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"dashboard-{name}.png"
    await page.screenshot(path)
    print(f"screenshot ({name}): {path}")
    if os.environ.get("DASHBOARD_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["DASHBOARD_SCREENSHOTS"]) / path.name)
    assert path.stat().st_size > 10_000
    return path


async def test_the_headline_states_the_service_in_four_states(
    nats_server: EmbeddedNats, haproxy_binary: str, chromium_binary: str, tmp_path: Path
) -> None:
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "failover.yaml").write_text(FAILOVER)
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS, playbooks=books)
        async with running(path) as daemon, browser(chromium_binary, tmp_path) as page:
            assert daemon.api is not None
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            await page.call("Page.navigate", url=f"http://127.0.0.1:{daemon.api.port}/?access_token={VIEWER}")

            async def headline_is(level: str, *needles: str) -> bool:
                seen = await headline(page)
                return level in seen["cls"].split() and all(n in seen["text"] for n in needles)

            async def expect(level: str, *needles: str) -> None:
                try:
                    await wait_for(
                        lambda: headline_is(level, *needles), 15, f"a {level} headline", poll_s=0.2
                    )
                except AssertionError:
                    raise AssertionError(
                        f"want a {level} headline with {needles}; saw {await headline(page)}"
                    ) from None

            # 1. normal: every cluster serves
            await expect("ok", "3 of 3 clusters serving")
            await shot(page, tmp_path, "normal")

            # 2. failover in progress: us-east drained, the run waits for an approval
            await f.apps["us-east"].stop()
            await expect("warn", "2 of 3 clusters serving", "Failover in progress", "us-east")

            async def approval_shown() -> bool:
                text = await page.text()
                return "deadline" in text and "scale the survivors for us-east?" in text

            await wait_for(approval_shown, 15, "the approval with its deadline", poll_s=0.2)
            await expect("warn", "Failover in progress", "waiting for approval")
            await shot(page, tmp_path, "failover")

            # runs link to their pages (the token kept), and page on with ?before=<run id>
            base = f"http://127.0.0.1:{daemon.api.port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/?access_token={VIEWER}") as resp:
                    html = await resp.text()
                run_id = html.split('data-run="', 1)[1].split('"', 1)[0]
                assert f'href="/runs/{run_id}?access_token={VIEWER}"' in html
                async with http.get(f"{base}/?before={run_id}&access_token={VIEWER}") as resp:
                    older = await resp.text()
                assert resp.status == 200 and f'href="/?access_token={VIEWER}">newest runs' in older
                async with http.get(f"{base}/?before=x.y&access_token={VIEWER}") as resp:
                    assert resp.status == 400

            # 3. all drained: someone set every weight to 0 (the case: the frontend answers 503)
            admin = HAProxyAdmin(f.haproxy.admin_url, 2.0)
            for server in MEMBERS.values():
                await admin.set_weight("web", server, 0)
            await expect("bad", "0 of 3 clusters serving")
            await shot(page, tmp_path, "drained")

            # 4. the balancer cannot be read
            await f.haproxy.stop()
            await expect("bad", "global", "cannot be read")
            await shot(page, tmp_path, "unreadable")

            problems = [
                e["params"]["entry"]
                for e in page.events
                if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"
            ]
            assert not problems, problems  # e.g. a Content-Security-Policy violation
