"""Costs that must not grow with the fleet per question asked (issue 19). Counted, never timed: each
test counts how many cluster states a piece of work looks at, and fails when that count is the fleet
size per cluster (what made a readiness pass over 5,000 clusters take minutes of event-loop time and
stall detection, measured with `bench/fleet.py`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.actuators.lb import BalancerActuator, _serving_at_least
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config import load_config
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.core.metrics import Metrics
from orchestrator.core.metrics_fast import LabelledGauge
from orchestrator.detection.machine import DetectorState, Tick, transition
from orchestrator.detection.snapshots import restore
from orchestrator.detection.views import FleetView, StatusView
from orchestrator.kube.client import KubeClients
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.runtime.readiness import ReadinessChecker
from orchestrator.sandbox.haproxy import HAProxyProcess
from tests.helpers import AdminCounter

pytestmark = pytest.mark.timeout(120)
PROBE = "{name: p, tcp: {host: 127.0.0.1, port: 9}}"

DRAIN = """name: drain
on: {event: cluster.failed}
guards: {min_healthy_clusters: 2}
vars:
  survivors: "{{ clusters | selectattr('state', 'ne', 'failed') | map(attribute='name') | list }}"
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
"""


class Counting(Mapping[str, str]):
    """A cluster -> status mapping that counts every status looked at."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.visits = 0

    def __getitem__(self, cluster: str) -> str:
        self.visits += 1
        return self.states[cluster]

    def __iter__(self) -> Iterator[str]:
        for cluster in self.states:
            self.visits += 1
            yield cluster

    def __len__(self) -> int:
        return len(self.states)


def names(n: int) -> list[str]:
    return [f"c{i:04d}" for i in range(n)]


def write_config(work: Path, clusters: list[str], admin_url: str) -> Path:
    (work / "books").mkdir()
    (work / "books" / "drain.yaml").write_text(DRAIN)
    lines = [
        f"state_dir: {work / 'state'}",
        "probing: {interval: 1s}",
        "detection: {quorum: 1}",
        f"playbooks: {{paths: ['{work / 'books'}']}}",
        "load_balancers:",
        f"  - {{name: global, driver: haproxy, haproxy: {{admin: ['{admin_url}'], backend: web}}, "
        "members: {" + ", ".join(f"{c}: {c}" for c in clusters) + "}}",
        "clusters:",
        *(f"  - {{name: {c}, probes: [{{name: p, tcp: {{host: 127.0.0.1, port: 9}}}}]}}" for c in clusters),
    ]
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_a_readiness_pass_looks_at_the_fleet_once_not_once_per_cluster(
    tmp_path: Path, haproxy_binary: str
) -> None:
    clusters = names(300)
    haproxy = HAProxyProcess(
        tmp_path / "haproxy", {c: ("127.0.0.1", 9) for c in clusters}, binary=haproxy_binary
    )
    await haproxy.start()
    try:
        config = load_config(write_config(tmp_path, clusters, haproxy.admin_url), env={})
        playbooks = load_playbooks(config.playbook_paths(), config)
        states = Counting(dict.fromkeys(clusters, "healthy"))
        drivers = {lb.name: build_balancer(lb) for lb in config.load_balancers}
        kube = KubeClients()
        checker = ReadinessChecker(
            config, lambda: playbooks, drivers, kube, MemoryStateStore(), {}, lambda: states
        )
        try:
            report = await checker.run_once()
        finally:
            await kube.close()
            for driver in drivers.values():
                await driver.close()
    finally:
        await haproxy.stop()
    assert len(report.results) == len(clusters)
    guards = [c for p in report.results for c in p.checks if c.kind == "guard"]
    assert len(guards) == len(clusters) and all(c.status == "ok" for c in guards), guards[:3]
    # before: every pair copied the fleet's states (2 x 300 x 300 = 180,000 looks)
    assert states.visits <= 4 * len(clusters), states.visits


def test_the_drain_guard_looks_at_a_few_clusters_in_a_large_fleet() -> None:
    clusters = names(2000)
    states = Counting(dict.fromkeys(clusters, "healthy"))
    current = dict.fromkeys(clusters, 100)
    actuator = BalancerActuator(
        build_balancer(_haproxy_config(clusters)), current, lambda: states, MemoryStateStore()
    )
    assert actuator.refusal(current, {"c0000": 0}, min_healthy=3) is None
    assert states.visits <= 4, states.visits  # before: all 2,000, and sorted


def test_the_drain_guard_still_names_every_serving_cluster_when_it_refuses() -> None:
    states = {"a": "healthy", "b": "failed", "c": "healthy"}
    actuator = BalancerActuator(
        build_balancer(_haproxy_config(list(states))), {}, lambda: states, MemoryStateStore()
    )
    message = actuator.refusal({"a": 100, "b": 100, "c": 0}, {"a": 0}, min_healthy=1)
    assert message is not None and "would leave 0 serving healthy cluster(s) (none)" in message
    message = actuator.refusal({"a": 100, "b": 100, "c": 50}, {"a": 0}, min_healthy=2)
    assert message is not None and "would leave 1 serving healthy cluster(s) (c)" in message


weights = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3), max_size=8)


@given(
    current=weights,
    after=weights,
    failed=st.sets(st.sampled_from("abcdefgh")),
    enough=st.integers(-1, 9),
)
def test_counting_serving_clusters_stops_early_but_agrees_with_counting_all(
    current: dict[str, int], after: dict[str, int], failed: set[str], enough: int
) -> None:
    states = {c: "failed" if c in failed else "healthy" for c in "abcdefgh"}
    result = {**current, **after}
    every = len([c for c, w in result.items() if w > 0 and states.get(c) != "failed"])
    assert _serving_at_least(current, after, states, enough) == (every >= enough)


def test_the_status_view_is_live_and_the_fleet_view_rebuilds_only_after_a_change(tmp_path: Path) -> None:
    (tmp_path / "failover.yaml").write_text(
        "clusters:\n"
        + "".join(
            f"  - {{name: {c}, probes: [{{name: p, tcp: {{host: 127.0.0.1, port: 9}}}}]}}\n" for c in "ab"
        )
    )
    config = load_config(tmp_path / "failover.yaml", env={})
    state = DetectorState.from_config(config)
    statuses = StatusView(state)
    fleet = FleetView(config, state)
    assert dict(statuses) == {"a": "unknown", "b": "unknown"}
    first = fleet()
    assert [c["state"] for c in first] == ["unknown", "unknown"]
    assert fleet() is first and fleet.rebuilds == 1  # nothing changed: the same list, not a new one
    transition(state, Tick(), 0.0)  # nothing reported: no status changes
    assert fleet() is first
    restore(state, {"a": {"status": "failed"}}, None)
    assert statuses["a"] == "failed" and statuses.get("zz") is None
    assert [c["state"] for c in fleet()] == ["failed", "unknown"] and fleet.rebuilds == 2


def test_balancer_weight_gauges_follow_every_change_without_touching_the_unchanged() -> None:
    metrics = Metrics()
    metrics.observe_weights("global", {"a": 100, "b": 100})
    metrics.observe_weights("global", {"a": 0, "b": 100})
    metrics.observe_weights("edge", {"a": 5})
    metrics.observe_weights("global", {"a": 100, "b": 100})
    text = metrics.render().decode()
    assert 'failover_balancer_weight{balancer="global",cluster="a"} 100.0' in text
    assert 'failover_balancer_weight{balancer="global",cluster="b"} 100.0' in text
    assert 'failover_balancer_weight{balancer="edge",cluster="a"} 5.0' in text


def _haproxy_config(clusters: list[str], admin: list[str] | None = None) -> LoadBalancerConfig:
    return LoadBalancerConfig.model_validate(
        {
            "name": "global",
            "driver": "haproxy",
            "haproxy": {"admin": admin or ["tcp://127.0.0.1:9"], "backend": "web"},
            "members": {c: c for c in clusters},
        }
    )


@given(
    series=st.dictionaries(
        st.tuples(st.text(max_size=6), st.sampled_from(["p", "q"])),
        st.floats(allow_nan=False)
        | st.sampled_from([float("inf"), float("-inf"), 0.0, 1.0, 1234567.0, 1764481234.567]),
        max_size=6,
    )
)
def test_per_cluster_families_render_what_prometheus_client_would(
    series: dict[tuple[str, str], float],
) -> None:
    """The text of a `LabelledGauge` parses back, through prometheus_client's own parser, to the same
    series and values as a prometheus_client Gauge holding them (label values escaped alike)."""
    ours = LabelledGauge("failover_test", 'help with \\ and "quotes"\nand a line', ["cluster", "probe"])
    registry = CollectorRegistry()
    theirs = Gauge(
        "failover_test", 'help with \\ and "quotes"\nand a line', ["cluster", "probe"], registry=registry
    )
    for (cluster, probe), value in series.items():
        ours.labels(cluster=cluster, probe=probe).set(value)
        theirs.labels(cluster=cluster, probe=probe).set(value)

    def parsed(text: str) -> tuple[str, dict[tuple[str, str], float]]:
        [family] = text_string_to_metric_families(text)
        return family.documentation, {
            (s.labels["cluster"], s.labels["probe"]): s.value for s in family.samples
        }

    assert parsed(ours.render()) == parsed(generate_latest(registry).decode())
    if series:  # line for line, label order included: users' regexes and recording rules see no change
        assert sorted(ours.render().splitlines()) == sorted(generate_latest(registry).decode().splitlines())


def test_per_cluster_series_are_removed_and_cleared_and_render_while_being_set() -> None:
    gauge = LabelledGauge("failover_test", "t", ["cluster"])
    for i in range(1000):
        gauge.labels(f"c{i}").set(i)
    gauge.remove("c1")
    assert gauge.get("c1") is None and gauge.get("c2") == 2.0
    stop = threading.Event()

    def churn() -> None:  # the loop goes on setting and clearing series while a scrape renders
        i = 0
        while not stop.is_set() and i < 200_000:
            gauge.labels(cluster=f"n{i % 5000}").set(i)
            if i % 997 == 0:
                gauge.clear()
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(50):
            list(text_string_to_metric_families(gauge.render()))  # never raises, always parses
    finally:
        stop.set()
        worker.join()
    gauge.clear()
    assert gauge.render() == "# HELP failover_test t\n# TYPE failover_test gauge\n"


async def test_a_drain_notes_its_before_weight_from_one_server_not_the_whole_backend(
    tmp_path: Path, haproxy_binary: str
) -> None:
    """Each drain journals the weight it replaces (`before`) and then reads the backend under its lock
    for the guard: the `before` read was a second `show servers state` of every server."""
    clusters = names(50)
    haproxy = HAProxyProcess(tmp_path / "h", {c: ("127.0.0.1", 9) for c in clusters}, binary=haproxy_binary)
    await haproxy.start()
    counters = [AdminCounter(haproxy.admin_port), AdminCounter(haproxy.admin_port)]
    for counter in counters:
        await counter.start()
    try:
        config = _haproxy_config(clusters, [c.url for c in counters])
        store = MemoryStateStore()
        states = dict.fromkeys(clusters, "healthy")
        actuator = BalancerActuator(build_balancer(config), {}, lambda: states, store)
        assert await actuator.weight_of("c0007") == 100
        assert [c.commands for c in counters] == [["get weight web/c0007"]] * 2
        await haproxy.admin().set_weight("web", "c0007", 40)  # both addresses are one HAProxy here
        assert await actuator.weight_of("c0007") == 40
        with pytest.raises(PermanentError, match="no member for nope"):
            await actuator.weight_of("nope")
        await counters[1].stop()  # one instance unreachable: the other still answers
        assert await actuator.weight_of("c0007") == 40
        await counters[0].stop()
        with pytest.raises(TemporaryError):
            await actuator.weight_of("c0007")
        await actuator.balancer.close()
    finally:
        for counter in counters:
            await counter.stop()
        await haproxy.stop()


def test_a_fleet_view_handed_out_stays_as_it_was_and_unchanged_entries_are_shared(tmp_path: Path) -> None:
    (tmp_path / "failover.yaml").write_text(
        "clusters:\n" + "".join(f"  - {{name: {c}, probes: [{PROBE}]}}\n" for c in "abc")
    )
    config = load_config(tmp_path / "failover.yaml", env={})
    state = DetectorState.from_config(config)
    fleet = FleetView(config, state)
    before = fleet()
    restore(state, {"b": {"status": "failed"}}, None)
    after = fleet()
    assert [c["state"] for c in before] == ["unknown", "unknown", "unknown"]  # a run's snapshot holds
    assert [c["state"] for c in after] == ["unknown", "failed", "unknown"]
    assert after[0] is before[0] and after[2] is before[2] and after[1] is not before[1]
