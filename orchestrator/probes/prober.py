"""The prober: runs every configured probe once per `probing.interval` and publishes the reports.

Rounds are scheduled on absolute times so they do not drift; the probes of one round run concurrently
under a semaphore, each started after a small random jitter so a large fleet does not burst. Every
report carries this prober's `boot_id` and a `seq` that only grows within that boot, which is how the
detector orders reports per (vantage, boot_id) and drops replays.

HTTP probes reuse kept-alive connections (issue 19): opening a new connection for every probe was most
of the prober's CPU (the `connect` alone, ~300 µs on a loaded loopback), 36 % of a core at 1,000
clusters. A kept-alive connection must not hide a target that takes no *new* connections (a listener
gone while an old worker still serves, a full accept queue), so every `FRESH_EVERY`-th probe of a target
opens a new connection, and after a failure every probe does until one passes: a refused or broken
connection fails the probe at once as before, and the one failure a reused connection can hide is found
within `FRESH_EVERY` rounds and then counted round after round.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from orchestrator.core import subjects
from orchestrator.core.config import Config
from orchestrator.core.config_clusters import ClusterConfig, ProbeConfig
from orchestrator.core.durations import format_duration
from orchestrator.core.errors import PermanentError
from orchestrator.core.models import HealthReport, utc_now
from orchestrator.kube.client import KubeClients
from orchestrator.probes.base import ProbeResult
from orchestrator.probes.checks import check_http, check_tcp
from orchestrator.probes.kubeprobes import Baseline, check_kube_api, check_kube_workload

log = structlog.get_logger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]

FRESH_EVERY = 5
"""Every this many probes of an HTTP target, one goes over a new connection (and every one after a
failure, until one passes)."""


class Prober:
    def __init__(
        self,
        config: Config,
        publish: Publish,
        vantage: str | None = None,
        should_publish: Callable[[], bool] = lambda: True,
        baseline: Baseline | None = None,
    ) -> None:
        self.config = config
        self.publish = publish
        self.vantage = vantage or config.probing.vantage
        self.boot_id = uuid.uuid4().hex[:12]
        self.should_publish = should_publish
        """The daemon's in-process prober publishes only while its daemon leads."""
        self.baseline = baseline
        self.seq = 0
        self.rounds = 0
        self._sem = asyncio.Semaphore(config.probing.concurrency)
        for cluster in config.clusters:
            for probe in cluster.probes:
                if probe.kind.startswith("kube") and cluster.kubernetes is None:
                    # refuse up front: a probe we cannot run must never report a failure
                    raise PermanentError(
                        f"{cluster.name}/{probe.name}: {probe.kind} needs the cluster's 'kubernetes:' section"
                    )
        self._session: aiohttp.ClientSession | None = None
        """Kept-alive connections, shared by the probes of a target (host, port, TLS)."""
        self._fresh_session: aiohttp.ClientSession | None = None
        """A new connection per request: every `FRESH_EVERY`-th probe, and after a failure."""
        self._reused: dict[tuple[str, str], int] = {}
        """(cluster, probe) -> probes over a kept-alive connection since the last over a new one."""
        self._kube: KubeClients | None = None

    def new_boot(self) -> None:
        """Start a new boot: the daemon's in-process prober does on every election, so when leadership
        goes R1 -> R2 -> R1 under one vantage name, R1's new reports are never taken for the boot that
        R2's superseded (DESIGN §12)."""
        self.boot_id = uuid.uuid4().hex[:12]
        self.seq = 0
        log.info("prober.new_boot", vantage=self.vantage, boot_id=self.boot_id)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.config.probing.interval_s
        limit = self.config.probing.concurrency
        # idle connections live a little over one interval: reused round after round, not kept forever
        pooled = aiohttp.TCPConnector(
            limit=limit, keepalive_timeout=2 * interval + 1, enable_cleanup_closed=True
        )
        fresh = aiohttp.TCPConnector(limit=limit, force_close=True, enable_cleanup_closed=True)
        log.info("prober.started", vantage=self.vantage, boot_id=self.boot_id, interval_s=interval)
        self._kube = KubeClients(timeout_s=self.config.probing.timeout_s)
        async with (
            aiohttp.ClientSession(connector=pooled) as session,
            aiohttp.ClientSession(connector=fresh) as fresh_session,
            self._kube,
        ):
            self._session, self._fresh_session = session, fresh_session
            next_round = time.monotonic()
            while not stop.is_set():
                if self.should_publish():
                    await self.round()
                next_round += interval
                now = time.monotonic()
                if next_round < now:  # a round overran: skip ahead rather than fire a burst
                    next_round = now + interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=next_round - now)
        self._session = self._fresh_session = None
        self._kube = None

    async def round(self) -> None:
        self.rounds += 1
        jobs = [
            self._probe_and_publish(cluster, probe)
            for cluster in self.config.clusters
            for probe in cluster.probes
        ]
        await asyncio.gather(*jobs)

    async def _probe_and_publish(self, cluster: ClusterConfig, probe: ProbeConfig) -> None:
        jitter = self.config.probing.jitter_s
        if jitter:
            await asyncio.sleep(random.uniform(0, jitter))
        async with self._sem:
            result = await self.check(cluster, probe)
        self.seq += 1
        report = HealthReport(
            cluster=cluster.name,
            probe=probe.name,
            vantage=self.vantage,
            boot_id=self.boot_id,
            seq=self.seq,
            ok=result.ok,
            latency_ms=result.latency_ms,
            detail=result.detail,
            ts=utc_now(),
        )
        try:
            await self.publish(subjects.health(self.vantage, cluster.name, probe.name), report.to_json())
        except Exception as e:  # the bus is down: the next round tries again
            log.warning("prober.publish_failed", cluster=cluster.name, probe=probe.name, error=str(e))

    async def check(self, cluster: ClusterConfig, probe: ProbeConfig) -> ProbeResult:
        """One probe, bounded by its timeout (the kube client's own timeouts sit inside it)."""
        timeout_s = probe.timeout_s or self.config.probing.timeout_s
        if probe.http is not None:
            assert self._session is not None and self._fresh_session is not None
            key = (cluster.name, probe.name)
            reused = self._reused.get(key, FRESH_EVERY)
            fresh = reused >= FRESH_EVERY
            result = await check_http(self._fresh_session if fresh else self._session, probe.http, timeout_s)
            # after a failure, new connections until one passes: a failure is then counted every round
            self._reused[key] = FRESH_EVERY if not result.ok else 0 if fresh else reused + 1
            return result
        if probe.tcp is not None:
            return await check_tcp(probe.tcp, timeout_s)
        assert self._kube is not None
        try:
            async with asyncio.timeout(timeout_s):
                if probe.kube_workload is not None:
                    return await check_kube_workload(
                        self._kube, cluster, probe.kube_workload, timeout_s, self.baseline
                    )
                return await check_kube_api(self._kube, cluster, timeout_s)
        except TimeoutError:
            return ProbeResult(False, timeout_s * 1000, f"timeout after {format_duration(timeout_s)}")
