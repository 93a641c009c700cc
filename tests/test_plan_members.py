"""`failover plan` names the balancer's own member next to the cluster (issue 10):
`global/us-east (web/us1) weight 100 -> 0`. Run results, events and notifications keep the short form
(`global/us-east weight 100 -> 0`), which other tests (ctl, crash resume, demo, dashboard) assert."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.actuators.lb import BalancerActuator, WeightChange
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.state import MemoryStateStore
from orchestrator.core.config import Config
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.runtime.dryrun import plan
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig
from tests.test_drivers import KINDS, SEEDED, lb_config, webhook_config

pytestmark = pytest.mark.timeout(60)

HAPROXY = LoadBalancerConfig.model_validate(
    {
        "name": "global",
        "driver": "haproxy",
        "haproxy": {"admin": ["tcp://127.0.0.1:1"], "backend": "web"},
        "members": {"eu-west": "eu1", "us-east": "us1", "ap-south": "ap1"},
    }
)


def actuator(config: LoadBalancerConfig) -> BalancerActuator:
    return BalancerActuator(build_balancer(config), {}, dict, MemoryStateStore())


@pytest.mark.parametrize(
    ("driver", "member"),
    [
        ("haproxy", "web/us1"),  # backend/server
        ("gateway_api", "web-us-east"),  # the HTTPRoute backendRef's name
        ("istio", "web.us-east.global"),  # the VirtualService destination's host
        ("smi", "web-us-east"),  # the TrafficSplit backend's service
        ("webhook", "us-east"),  # the member value as configured
    ],
)
def test_a_planned_change_names_the_drivers_own_member(driver: str, member: str, tmp_path: Path) -> None:
    if driver == "haproxy":
        config = HAPROXY
    elif driver == "webhook":
        config = webhook_config("http://127.0.0.1:1/lb")
    else:
        config = lb_config(KINDS[driver], tmp_path / "kubeconfig")
    lb = actuator(config)
    assert lb.describe_change("us-east", 100, 0) == f"{config.name}/us-east ({member}) weight 100 -> 0"
    # the run journal's form is unchanged
    change = WeightChange(config.name, "us-east", 100, 0, member=lb.member("us-east"))
    assert change.describe() == f"{config.name}/us-east weight 100 -> 0"
    assert change.describe(with_member=True) == lb.describe_change("us-east", 100, 0)


DRAIN = """name: drain-edge
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: edge, cluster: "{{ event.cluster }}"}}
  - {id: back, action: lb.restore, with: {balancer: edge, cluster: "{{ event.cluster }}", ramp: [50, 100]}}
"""


async def test_failover_plan_prints_the_backend_ref_and_writes_nothing(tmp_path: Path) -> None:
    kind = KINDS["gateway_api"]
    async with KubeApiServer("mgmt") as server:
        server.put_object(kind.seed())
        kubeconfig = write_kubeconfig(tmp_path / "kube" / "config", {"mgmt": server})
        (tmp_path / "playbooks").mkdir()
        (tmp_path / "playbooks" / "drain-edge.yaml").write_text(DRAIN)
        config = Config.model_validate(
            {
                "state_dir": str(tmp_path / "state"),
                "clusters": [{"name": c} for c in kind.members],
                "load_balancers": [lb_config(kind, kubeconfig).model_dump(mode="json", by_alias=True)],
                "playbooks": {"paths": [str(tmp_path / "playbooks")]},
            }
        )
        lines: list[str] = []
        await plan(config, "drain-edge", "cluster.failed", "us-east", out=lines.append)
        assert server.requests("PUT") == [] and server.requests("PATCH") == []
    assert "       -> edge/us-east (web-us-east) weight 300000 -> 0" in lines, lines
    # the restore, from the same read: nominal weight 100 (no recorded original without NATS)
    assert "       -> edge/us-east (web-us-east) weight 300000 -> 50" in lines, lines
    assert "       -> edge/us-east (web-us-east) weight 50 -> 100" in lines, lines
    assert lines[-1] == "nothing was changed (dry-run)"
    assert SEEDED["gateway_api"]["us-east"] == 300000
