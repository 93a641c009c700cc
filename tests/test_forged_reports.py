"""Forged and hostile health reports against the detector service over a real nats-server (issue 12,
finding 4; DESIGN §12 "Vantages").

Anyone able to publish on `failover.health.>` must not be able to fail a cluster, block a real failure,
grow the daemon's memory, flood its log or make each report cost more as they invent names. Each test
publishes from its own connection, as a prober or an attacker would, and waits on a sync message (a
malformed one, counted in order after everything published before it) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.core.errors import ValidationFailed
from orchestrator.core.metrics import Metrics
from orchestrator.detection.machine import DetectorState
from orchestrator.detection.service import DetectionService
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
CLUSTERS = ("a", "b", "c", "d")
LISTED = "[v1, v2, v3]"


@dataclass
class Env:
    service: DetectionService
    bus: Bus
    """The publisher's own connection (a prober's, or an attacker's)."""
    metrics: Metrics
    events: list[dict[str, Any]]
    seq: dict[str, int] = field(default_factory=dict)
    published: int = 0
    boot: str = "boot1"

    def report(
        self,
        vantage: str,
        cluster: str,
        ok: bool,
        *,
        probe: str = "ingress",
        ts: datetime | str | None = None,
        **changes: Any,
    ) -> tuple[str, bytes]:
        key = f"{vantage}/{self.boot}"
        self.seq[key] = self.seq.get(key, 0) + 1
        stamp = ts if isinstance(ts, str) else (ts or datetime.now(UTC)).isoformat()
        body = {
            "v": 1,
            "cluster": cluster,
            "probe": probe,
            "vantage": vantage,
            "boot_id": self.boot,
            "seq": self.seq[key],
            "ok": ok,
            "latency_ms": 1.0,
            "detail": "ok" if ok else "HTTP 503",
            "ts": stamp,
        } | changes
        return subjects.health(vantage, cluster, probe), json.dumps(body).encode()

    async def publish(self, subject: str, body: bytes) -> None:
        await self.bus.publish(subject, body)
        self.published += 1

    async def send(self, vantage: str, cluster: str, ok: bool, **kw: Any) -> None:
        await self.publish(*self.report(vantage, cluster, ok, **kw))

    async def round(self, vantages: tuple[str, ...], failing: dict[str, set[str]] | None = None) -> None:
        """One probing round: every vantage reports every cluster (failing where listed), then sync."""
        for v in vantages:
            for c in CLUSTERS:
                await self.send(v, c, c not in (failing or {}).get(v, set()))
        await self.sync()

    def handled(self) -> int:
        """Messages the service accounted for: ingested, dropped with a reason, or malformed."""
        counters = ("failover_probe_reports", "failover_reports_dropped", "failover_malformed_messages")
        return int(
            sum(
                sample.value
                for metric in self.metrics.registry.collect()
                if metric.name in counters
                for sample in metric.samples
                if sample.name.endswith("_total")
            )
        )

    async def sync(self, timeout_s: float = 5.0) -> None:
        """Wait until every message published so far is accounted for, exactly once each."""
        await self.bus.flush()

        async def counted() -> bool:
            return self.handled() >= self.published

        try:
            await wait_for(counted, timeout_s, f"{self.published} messages accounted for")
        finally:
            missing, self.published = self.published - self.handled(), self.handled()
        assert missing == 0, f"{missing} message(s) neither ingested nor counted as dropped"
        await self.service.settled()

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def dropped(self, reason: str) -> float:
        return self.value("failover_reports_dropped_total", reason=reason)

    def malformed(self) -> float:
        return self.value("failover_malformed_messages_total", subject_kind="health")

    def view(self) -> dict[str, str]:
        return self.service.cluster_view()

    def types(self, cluster: str) -> list[str]:
        return [e["type"] for e in self.events if e.get("cluster") == cluster]


def config_text(tmp_path: Path, detection: str) -> Path:
    lines = [
        f"state_dir: {tmp_path / 'state'}",
        "probing: {interval: 100ms, timeout: 80ms, vantage: mgmt}",
        f"detection: {{failure_threshold: 2, success_threshold: 1, recovery_hold: 0s, {detection}}}",
        "clusters:",
    ]
    for name in CLUSTERS:
        lines += [f"  - name: {name}", "    probes: [{name: ingress, http: {url: 'http://127.0.0.1:9/'}}]"]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def detector(
    nats: EmbeddedNats, tmp_path: Path, detection: str = f"vantages: {LISTED}"
) -> AsyncIterator[Env]:
    """The detector service of a daemon built from a real config, over a real nats-server."""
    config = load_config(config_text(tmp_path, detection))
    own = await Bus.connect(NatsConfig(url=nats.url), tmp_path, name="detector")
    await own.ensure_topology()
    publisher = await Bus.connect(NatsConfig(url=nats.url), tmp_path, name="publisher")
    metrics = Metrics()
    events: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        events.append(event)

    service = DetectionService(
        DetectorState.from_config(config),
        own,
        metrics,
        on_event,
        tick_interval_s=0.05,
        own_vantage=config.daemon_vantage,
        ingest_process=config.detection.ingest == "process",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.started.wait(), 20)
        yield Env(service, publisher, metrics, events)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await publisher.close()
        await own.close()


async def healthy(env: Env, vantages: tuple[str, ...]) -> None:
    for _ in range(3):
        await env.round(vantages)
    await env.service.settled()
    assert set(env.view().values()) == {"healthy"}, env.view()


# the finding as reported -------------------------------------------------------------------------------


async def test_two_fake_vantages_cannot_fail_a_cluster(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        for _ in range(5):
            for fake in ("fake1", "fake2"):
                await env.send(fake, "a", False)
        await env.round(("v1", "v2", "v3"))
        await env.service.settled()
        assert env.view()["a"] == "healthy" and "cluster.failed" not in env.types("a")
        assert env.dropped("unknown_vantage") == 10
        assert env.service.unlisted_vantages() == ["fake1", "fake2"]


async def test_without_a_list_only_the_daemons_own_vantage_counts(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """DESIGN §12: when `detection.vantages` is omitted, the list is the daemon's own vantage."""
    async with detector(nats_server, tmp_path, detection="quorum: majority") as env:
        await healthy(env, ("mgmt",))
        for _ in range(5):
            for fake in ("v1", "v2", "fake"):
                await env.send(fake, "a", False)
        await env.round(("mgmt",))
        await env.service.settled()
        assert env.view()["a"] == "healthy" and env.dropped("unknown_vantage") == 15
        for _ in range(3):
            await env.round(("mgmt",), {"mgmt": {"a"}})
        await env.service.settled()
        assert env.view()["a"] == "failed"  # quorum is one: the daemon's own vantage


async def test_thirty_fake_passing_vantages_cannot_block_a_real_failover(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        for i in range(30):
            await env.send(f"fake{i}", "a", True)
        for _ in range(3):
            await env.round(("v1", "v2", "v3"), {"v1": {"a"}, "v2": {"a"}})
        await env.service.settled()
        assert env.view()["a"] == "failed"
        failed = next(e for e in env.events if e["type"] == "cluster.failed")
        assert failed["evidence"]["quorum"] == 2 and set(failed["evidence"]["failing"]) == {"v1", "v2"}


async def test_majority_is_of_the_list_whoever_is_silent(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """Five listed, three silent: two failing vantages are below the majority (3) and fail nothing;
    the silent ones never lower the quorum, and a report from a fake never raises it."""
    async with detector(nats_server, tmp_path, detection="vantages: [v1, v2, v3, v4, v5]") as env:
        for _ in range(3):
            await env.round(("v1", "v2"))
        for _ in range(4):
            await env.round(("v1", "v2"), {"v1": {"a"}, "v2": {"a"}})
        await env.service.settled()
        assert env.view()["a"] == "degraded" and "cluster.failed" not in env.types("a")
        for _ in range(3):
            await env.round(("v1", "v2", "v3"), {"v1": {"a"}, "v2": {"a"}, "v3": {"a"}})
        await env.service.settled()
        assert env.view()["a"] == "failed"


# reports whose subject, timestamp or target is wrong ---------------------------------------------------


async def test_a_listed_vantage_is_only_believed_on_its_own_subject(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The body's vantage, cluster and probe must match the subject (§12): a prober bound to
    `failover.health.fake.>` cannot speak for v1, and v1's body cannot be moved to another cluster."""
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        for _ in range(4):
            for v in ("v1", "v2"):
                _subject, body = env.report(v, "a", False)
                await env.publish("failover.health.fake.a.ingress", body)
                await env.publish(f"failover.health.{v}.b.ingress", body)
                await env.publish(f"failover.health.{v}.a.other", body)
        await env.round(("v1", "v2", "v3"))
        assert env.malformed() == 24
        assert set(env.view().values()) == {"healthy"}


async def test_reports_dated_in_the_future_or_long_ago_never_count(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Only the receipt time drives the detector, so a report stamped an hour ahead (a skewed prober, or
    one prepared to be replayed) would count as fresh failure evidence: it is dropped like old news."""
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        ahead = datetime.now(UTC) + timedelta(hours=1)
        behind = datetime.now(UTC) - timedelta(hours=1)
        for _ in range(4):
            for v in ("v1", "v2"):
                await env.send(v, "a", False, ts=ahead)
                await env.send(v, "b", False, ts=behind)
                await env.send(v, "c", False, ts="9999-12-31T23:59:59Z")
        await env.sync()
        assert set(env.view().values()) == {"healthy"}, env.view()
        assert env.dropped("future") == 16 and env.dropped("stale") == 8


async def test_a_timestamp_without_a_zone_is_refused_not_raised(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """`0001-01-01T00:00:00` parsed as a local time raised ValueError inside the subscription callback:
    the report was neither counted nor dropped. RFC 3339 needs the zone (DESIGN §5)."""
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        with structlog.testing.capture_logs() as logs:
            for stamp in ("0001-01-01T00:00:00", "2026-01-01T00:00:00", "2026-01-01"):
                await env.send("v1", "a", False, ts=stamp)
            await env.sync()
        assert env.malformed() == 3
        assert not [e for e in logs if e.get("log_level") == "error"], logs


async def test_reports_for_an_unknown_cluster_or_probe_are_counted_as_dropped(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        ingested = env.value("failover_probe_reports_total", result="fail")
        for _ in range(3):
            await env.send("v1", "nope", False)
            await env.send("v1", "a", False, probe="nope")
        await env.sync()
        assert env.dropped("unknown_cluster") == 3 and env.dropped("unknown_probe") == 3
        assert env.value("failover_probe_reports_total", result="fail") == ingested


async def test_infinite_latency_and_huge_details_are_refused_or_cut(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        subject, body = env.report("v1", "a", True)
        await env.publish(subject, body.replace(b'"latency_ms": 1.0', b'"latency_ms": 1e400'))
        await env.send("v1", "a", True, seq=2**64)
        for v in ("v1", "v2"):
            for _ in range(3):
                await env.send(v, "b", False, detail="x" * 500_000)
        await env.sync()
        assert env.malformed() == 2
        failed = next(e for e in env.events if e["type"] == "cluster.failed")
        assert len(json.dumps(failed)) < 10_000
        track = env.service.state.clusters["b"].tracks[("ingress", "v1")]
        assert len(track.detail) <= 1024


# names invented by the thousand ------------------------------------------------------------------------


async def test_invented_vantage_names_cost_bounded_memory_and_log(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Every unlisted name used to log a warning and sit in a table searched end to end for the oldest
    once full. Now: a bounded LRU, a few warnings and then a summary, and a prober that keeps reporting
    stays listed in /api/v1/status however many names are invented around it."""
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        names = 5000
        with structlog.testing.capture_logs() as logs:
            for i in range(names):
                await env.send(f"fake{i}", "a", False)
                if i % 500 == 0:
                    await env.send("forgotten", "a", True)
            await env.send("forgotten", "a", True)
            await env.sync()
        warnings = [e for e in logs if e["event"] == "health.unlisted_vantage"]
        assert 1 <= len(warnings) <= 20, len(warnings)
        assert env.dropped("unknown_vantage") == names + 11
        assert len(env.service.admission.unlisted) <= 1000
        assert "forgotten" in env.service.unlisted_vantages()
        await env.round(("v1", "v2", "v3"))
        assert set(env.view().values()) == {"healthy"}


# fuzz: anything on failover.health.> -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
names = st.sampled_from(["v1", "v2", "v3", "mgmt", "fake", "a", "b", "d", "nope", "ingress", "x.y", "*", ">"])
fields = {
    "v": st.sampled_from([1, 2, "1", None]),
    "cluster": st.sampled_from(["a", "b", "nope", "", "a" * 70]) | st.text(max_size=10),
    "probe": st.sampled_from(["ingress", "other"]) | st.text(max_size=10),
    "vantage": names | st.text(max_size=10),
    "boot_id": st.sampled_from(["boot1", "boot2", ""]) | st.text(max_size=70),
    "seq": st.integers(-5, 2**70),
    "ok": st.booleans() | json_values,
    "latency_ms": st.floats() | st.integers(-1, 10**20),
    "detail": st.text(max_size=50) | st.integers(0, 3000).map(lambda n: "d" * n),
    "ts": st.builds(lambda: datetime.now(UTC).isoformat())
    | st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00", "", "-1"])
    | st.integers(-(10**12), 10**12)
    | st.floats(),
}
stamps = (
    st.builds(lambda: datetime.now(UTC).isoformat())
    | st.builds(lambda: datetime.now(UTC).replace(tzinfo=None).isoformat())
    | st.integers(-7200, 7200).map(lambda s: (datetime.now(UTC) + timedelta(seconds=s)).isoformat())
    | fields["ts"]
)
valid = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "cluster": st.sampled_from(["a", "b", "c", "nope"]),
        "probe": st.sampled_from(["ingress", "other"]),
        "vantage": st.sampled_from(["v1", "v2", "v3", "mgmt", "fake"]),
        "boot_id": st.sampled_from(["boot1", "boot2", "boot3"]),
        "seq": st.integers(0, 2**64),
        "ok": st.booleans(),
        "latency_ms": st.floats(min_value=0) | st.just(1.0),
        "detail": st.text(max_size=20) | st.integers(1000, 3000).map(lambda n: "d" * n),
        "ts": stamps,
    }
)
bodies = (
    st.fixed_dictionaries({}, optional=fields)
    | valid
    | st.tuples(valid, st.fixed_dictionaries({}, optional=fields)).map(lambda b: b[0] | b[1])
)
subject_tokens = st.sampled_from(["v1", "v2", "fake", "a", "b", "ingress", "x", "9", "-"]) | st.from_regex(
    r"[A-Za-z0-9_-]{1,12}", fullmatch=True
)


def matching(body: dict[str, Any]) -> tuple[str, bytes]:
    """A body published on the subject its own vantage, cluster and probe name (when it has them)."""
    parts = [body.get(k) for k in ("vantage", "cluster", "probe")]
    ok = all(isinstance(p, str) and p and " " not in p and "*" not in p and ">" not in p for p in parts)
    tokens = [str(p) for p in parts] if ok else ["v1", "a", "ingress"]
    subject = subjects.HEALTH_PREFIX + "." + ".".join(tokens)
    if ".." in subject or subject.endswith(".") or any(ord(c) < 33 or ord(c) > 126 for c in subject):
        subject = subjects.health("v1", "a", "ingress")
    return subject, json.dumps(body).encode()


messages = st.one_of(
    bodies.map(matching),
    st.tuples(
        st.lists(subject_tokens, min_size=1, max_size=5).map(
            lambda t: ".".join([subjects.HEALTH_PREFIX, *t])
        ),
        st.one_of(
            bodies.map(lambda b: json.dumps(b).encode()),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=200),
        ),
    ),
)


def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(30)


async def test_any_health_message_is_accounted_for_and_detection_goes_on(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Random bodies on random `failover.health.>` subjects, some on the subject their body names: none
    raises, each is ingested, dropped with a reason or counted as malformed (exactly once), and the
    detector still fails and recovers a real cluster afterwards."""
    loop = asyncio.get_running_loop()
    async with detector(nats_server, tmp_path) as env:
        await healthy(env, ("v1", "v2", "v3"))
        ran = [0]

        async def publish(batch: list[tuple[str, bytes]]) -> None:
            for subject, body in batch:
                await env.publish(subject, body)
            try:
                await env.sync(timeout_s=2)
            except AssertionError as e:
                raise AssertionError(f"{e}: {batch!r}") from None

        @settings(
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # a batch of eight reads well unshrunk
        )
        @given(batch=st.lists(messages, min_size=1, max_size=8))
        def fuzz(batch: list[tuple[str, bytes]]) -> None:
            ran[0] += 1
            on_loop(loop, publish(batch))

        with structlog.testing.capture_logs() as logs:
            await asyncio.to_thread(fuzz)
        assert ran[0] >= 10
        errors = [
            e for e in logs if e.get("log_level") in ("error", "critical") or e["event"] == "nats.error"
        ]
        assert not errors, errors[:5]

        env.boot = "after-fuzz"  # the real probers restart: whatever seq the fuzz sent for boot1 is history
        for _ in range(10):
            await env.round(("v1", "v2", "v3"))
            if set(env.view().values()) == {"healthy"} and not env.service.state.frozen:
                break
        assert set(env.view().values()) == {"healthy"}, env.view()
        for _ in range(3):
            await env.round(("v1", "v2", "v3"), {"v1": {"d"}, "v2": {"d"}})
        assert env.view()["d"] == "failed", env.view()
        for _ in range(3):
            await env.round(("v1", "v2", "v3"))
        assert env.view()["d"] == "healthy", env.view()


def test_a_list_of_more_vantages_than_quorum_needs_is_refused(tmp_path: Path) -> None:
    """While a cluster starts failing each report is weighed against every listed vantage's view: the
    list is bounded so that cost is too (bench/vantages.py prints it)."""
    names = ", ".join(f"v{i}" for i in range(101))
    with pytest.raises(ValidationFailed, match="at most 100"):
        load_config(config_text(tmp_path, f"vantages: [{names}]"))
    assert (
        len(load_config(config_text(tmp_path, f"vantages: [{names.rsplit(',', 1)[0]}]")).counted_vantages)
        == 100
    )
