"""`detection.ingest: process` (issue 19): health reports received and validated by a child process
on its own NATS connection, handed to the daemon's detector in batches. Over a real nats-server, with
the detector service of a real config: the same decisions and the same accounting as in the loop
(every message ingested, dropped with a reason or counted malformed), and a child killed with
SIGKILL is replaced while detection goes on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core.models import HealthReport
from orchestrator.detection.ingest import report_from
from tests.helpers import wait_for
from tests.test_forged_reports import LISTED, detector, healthy

pytestmark = pytest.mark.timeout(120)
PROCESS = f"vantages: {LISTED}, ingest: process"


async def test_reports_through_the_ingest_process_fail_a_cluster_and_are_all_accounted_for(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with detector(nats_server, tmp_path, detection=PROCESS) as env:
        assert env.service.ingest is not None and env.service.ingest.ready.is_set()
        child = env.service.ingest.process
        assert child is not None and child.pid != os.getpid()
        await healthy(env, ("v1", "v2", "v3"))
        await env.publish("failover.health.v1.a.ingress", b"{not json")  # malformed: counted
        subject, body = env.report("v2", "b", True)
        await env.publish(subject.replace(".b.", ".c."), body)  # the subject lies about the body
        await env.send("v1", "nope", False)  # a valid report for no configured cluster
        await env.sync()
        assert env.malformed() == 2 and env.dropped("unknown_cluster") == 1
        for _ in range(2):
            await env.round(("v1", "v2", "v3"), failing={"v1": {"a"}, "v2": {"a"}})
        await env.service.settled()
        assert env.view()["a"] == "failed" and env.types("a") == ["cluster.failed"]
        assert env.view()["b"] == "healthy"


async def test_a_killed_ingest_process_is_replaced_and_detection_goes_on(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with detector(nats_server, tmp_path, detection=PROCESS) as env:
        ingest = env.service.ingest
        assert ingest is not None and ingest.process is not None and ingest.process.pid is not None
        await healthy(env, ("v1", "v2", "v3"))
        os.kill(ingest.process.pid, signal.SIGKILL)
        await wait_for(lambda: not env.service.consuming, 10, "the detector says it is not consuming")
        await wait_for(lambda: ingest.starts == 2 and ingest.ready.is_set(), 20, "a new ingest process")
        assert env.service.consuming
        env.published = (
            env.service.metrics.reports.ok
            + env.service.metrics.reports.fail
            + int(env.dropped("stale") + env.malformed())
        )  # what the dead child took with it is not owed
        for _ in range(3):
            await env.round(("v1", "v2", "v3"), failing={"v1": {"d"}, "v3": {"d"}})
        await env.service.settled()
        assert env.view()["d"] == "failed", env.view()


@given(
    seq=st.integers(0, 2**63 - 1),
    ok=st.booleans(),
    latency=st.floats(0, 1e9, allow_nan=False),
    detail=st.text(max_size=50),
    at=st.floats(0, 4e9),
)
def test_a_record_from_the_child_is_the_report_it_validated(
    seq: int, ok: bool, latency: float, detail: str, at: float
) -> None:
    """The daemon builds the report the child validated without validating it again (`report_from`):
    every field equal to the validated report's (the time to the microsecond a float keeps)."""
    ts = datetime.fromtimestamp(at, UTC).isoformat()
    body = {"v": 1, "cluster": "eu-1", "probe": "ingress", "vantage": "v2", "boot_id": "b", "seq": seq,
            "ok": ok, "latency_ms": latency, "detail": detail, "ts": ts}  # fmt: skip
    r = HealthReport.model_validate_json(json.dumps(body))
    built = report_from(
        ("r", 0.0, r.cluster, r.probe, r.vantage, r.boot_id, r.seq, r.ok, r.latency_ms, r.detail,
         r.ts.timestamp())
    )  # fmt: skip
    assert abs((built.ts - r.ts).total_seconds()) < 2e-6
    assert built.model_dump(exclude={"ts"}) == r.model_dump(exclude={"ts"})
    assert built.model_fields_set == r.model_fields_set and built.ts.tzinfo is not None


async def test_the_ingest_process_reconnects_after_nats_is_killed_and_restarted(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """nats-server SIGKILLed and started again on the same port: the child's connection reconnects by
    itself (no restart of the child), and a failure reported afterwards is detected."""
    async with detector(nats_server, tmp_path, detection=PROCESS) as env:
        ingest = env.service.ingest
        assert ingest is not None
        await healthy(env, ("v1", "v2", "v3"))
        await nats_server.kill()
        await asyncio.sleep(1)
        await nats_server.start()
        await wait_for(lambda: env.bus.connected and env.service.bus.connected, 20, "both buses back")

        async def reported() -> bool:  # the child resubscribed: a report gets through again
            await env.send("v1", "b", True)
            await env.bus.flush()
            await asyncio.sleep(0.1)
            return env.service.metrics.reports.ok > before

        before = env.service.metrics.reports.ok
        await wait_for(reported, 20, "reports through the ingest process again")
        env.published = env.handled()  # what was sent before the child resubscribed is not owed
        for _ in range(3):
            await env.round(("v1", "v2", "v3"), failing={"v2": {"c"}, "v3": {"c"}})
        await env.service.settled()
        assert env.view()["c"] == "failed", env.view()
        assert ingest.starts == 1, "the same child, reconnected"
