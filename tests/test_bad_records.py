"""Bad values in KV are quarantined, never fatal (issue 12, finding 5; DESIGN §12 bus trust), against a
real nats-server and HAProxy: before, `failover-state/cluster.x` = `not json {` stopped the daemon on
every start, and `failover-runs/run.junk` = `[1,2]` made `/api/v1/runs` answer 500."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.bus.records import check
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from tests.helpers import collect, fleet, hook_receiver, wait_for, write_config
from tests.test_daemon import all_healthy, metrics_text, running

BAD: dict[tuple[str, str], bytes] = {
    ("state", "cluster.us-east"): b"not json {",
    ("state", "cluster.eu-west"): b'{"status": "exploded", "since": 1}',
    ("state", "freeze"): b"[1, 2]",
    ("state", "orig.lb.global.us-east"): b'{"weight": -5}',
    ("state", "pause.cluster.ap-south"): b'{"until": "soon"}',
    ("runs", "run.junk"): b"[1, 2]",
    ("runs", "run.half"): b'{"id": "half", "status": "running"}',
}


async def test_bad_kv_values_are_quarantined_and_the_daemon_works(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    seeder = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="seeder")
    await seeder.ensure_topology()
    for (bucket, key), raw in BAD.items():
        await getattr(seeder.kv, bucket).put(key, raw)
    try:
        async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
            path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
            async with running(path) as daemon:
                assert daemon.bus is not None and daemon.api is not None
                events = await collect(daemon.bus, subjects.EVENTS_ALL)
                await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
                url = f"http://127.0.0.1:{daemon.api.port}/api/v1/runs"
                async with aiohttp.ClientSession() as s, s.get(url) as r:
                    assert r.status == 200, await r.text()
                await f.apps["us-east"].stop()  # and it still fails over

                async def drained() -> bool:
                    return (await f.weights())["us-east"] == 0

                await wait_for(drained, 10, "us-east drained")
                status_url = f"http://127.0.0.1:{daemon.api.port}/api/v1/status"
                async with aiohttp.ClientSession() as s, s.get(status_url) as r:
                    assert r.status == 200, await r.text()  # reads the pauses: the bad one is set aside
                await f.apps["us-east"].start()  # the bad original weight: the nominal one is restored

                async def restored() -> bool:
                    return (await f.weights())["us-east"] == 100

                await wait_for(restored, 30, "us-east restored")

                async def reported() -> bool:  # those read after start-up were also system events
                    seen = {e["detail"].get("key") for e in events if e["type"] == "record.quarantined"}
                    return seen >= {"pause.cluster.ap-south", "orig.lb.global.us-east"}

                await wait_for(reported, 10, "the bad records reported")
                text = await metrics_text(daemon)
            for (bucket, key), raw in BAD.items():
                aside = await Bus.kv_items(seeder.kv.state, f"quarantine.failover-{bucket}.{key}.")
                [(_, record)] = aside.items()
                assert record["raw"] == raw.decode() and record["reason"], record
                now = await Bus.kv_get(getattr(seeder.kv, bucket), key)  # gone, or rewritten valid
                assert now is None or check(f"failover-{bucket}", key, now[0]) is None, (key, now)
            assert 'failover_bad_records_total{bucket="failover-state"} 5.0' in text
            assert 'failover_bad_records_total{bucket="failover-runs"} 2.0' in text
    finally:
        await seeder.close()


def test_record_schemas_accept_what_the_daemon_writes_and_refuse_the_rest() -> None:
    good: dict[tuple[str, str], Any] = {
        ("failover-state", "cluster.a"): {"status": "failed", "since": 1.5, "history": [1.0], "extra": 1},
        ("failover-state", "freeze"): {"frozen": True, "accepted_before": None, "suppressed": ["a"]},
        ("failover-state", "pause"): {"until": None, "by": "alice"},
        ("failover-state", "pause.cluster.a"): {"until": 1e9},
        ("failover-state", "desired.lb.g.a"): {"weight": 0},
        ("failover-state", "orig.scale.a.ns.deployment.web"): {
            "replicas": 6,
            "set": 9,
            "hpa": {"name": "web", "min": 2, "max": 10},
        },
        ("failover-state", "guard.pb.a"): {"runs": [1.0, 2.0]},
        ("failover-state", "quarantine.x"): "anything",
        ("failover-leader", "leader"): {"holder": "r1", "term": 3, "renewed_at": 1.0},
        ("failover-runs", "run.x"): {"id": "x", "playbook": "p", "status": "running", "steps": {}},
        ("failover-runs", "active.x"): {},
    }
    for (bucket, key), value in good.items():
        assert check(bucket, key, value) is None, (key, check(bucket, key, value))
    bad = {
        ("failover-state", "pause"): {"until": float("inf")},
        ("failover-state", "guard.pb.a"): {"runs": ["soon"]},
        ("failover-leader", "leader"): "me",
        ("failover-runs", "run.x"): {"id": "x", "playbook": "p", "status": "running", "steps": []},
    }
    for (bucket, key), value in bad.items():
        assert check(bucket, key, value), (key, json.dumps(value, default=str))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["cluster.a", "freeze", "pause", "pause.cluster.a", "orig.lb.g.a", "desired.lb.g.a",
     "orig.scale.a.ns.deployment.web", "guard.pb.a"]
)  # fmt: skip
RAW = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda fields: json.dumps(fields).encode(), st.fixed_dictionaries({"status": JSON})),
    st.binary(max_size=64),
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS, raw=RAW)
def test_fuzz_any_value_read_back_is_valid_or_absent(
    nats_server: EmbeddedNats, tmp_path: Path, key: str, raw: bytes
) -> None:
    """Whatever bytes sit under a state key, reading it gives a record its schema accepts or nothing:
    never an exception, never a value the readers would choke on."""

    async def scenario() -> None:
        bus = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="fuzz")
        try:
            await bus.ensure_topology()
            await bus.kv.state.put(key, raw)
            found = await Bus.kv_get(bus.kv.state, key)
            if found is not None:
                assert check("failover-state", key, found[0]) is None
                assert json.loads(raw) == found[0]
            elif raw:  # moved aside, bytes intact (an empty value reads as absent)
                aside = await Bus.kv_items(bus.kv.state, f"quarantine.failover-state.{key}.")
                latest = max(aside.values(), key=lambda a: int(a["revision"]))
                assert latest["raw"] == raw.decode("utf-8", errors="replace")[:4096]
        finally:
            await bus.close()

    asyncio.run(scenario())
