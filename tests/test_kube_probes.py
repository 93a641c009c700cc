"""kube_api and kube_workload probes against sandbox Kubernetes API servers, through real kubeconfigs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.config import Config
from orchestrator.core.models import HealthReport
from orchestrator.probes.prober import Prober
from orchestrator.sandbox.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = pytest.mark.timeout(60)


def deployment(replicas: int, available: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
        },
    }


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[dict[str, KubeApiServer], Path]]:
    servers = {name: KubeApiServer(name, ready_delay_s=60) for name in ("eu-west", "us-east")}
    try:
        for server in servers.values():
            await server.start()
        yield servers, write_kubeconfig(tmp_path / "kubeconfig", servers)
    finally:
        for server in servers.values():
            await server.stop()


def config_for(kubeconfig: Path) -> Config:
    return Config.model_validate(
        {
            "probing": {"interval": "1s", "timeout": "500ms", "vantage": "t", "jitter": "0s"},
            "clusters": [
                {
                    "name": name,
                    "kubernetes": {"kubeconfig": str(kubeconfig), "context": name},
                    "probes": [
                        {"name": "api", "kube_api": {}},
                        {
                            "name": "web",
                            "kube_workload": {
                                "namespace": "shop",
                                "deployment": "web",
                                "min_available_ratio": 0.5,
                            },
                        },
                    ],
                }
                for name in ("eu-west", "us-east")
            ],
        }
    )


async def one_round(prober: Prober) -> dict[tuple[str, str], HealthReport]:
    reports: dict[tuple[str, str], HealthReport] = {}

    async def publish(subject: str, data: bytes) -> None:
        report = HealthReport.model_validate_json(data)
        assert subject == f"failover.health.{report.vantage}.{report.cluster}.{report.probe}"
        reports[(report.cluster, report.probe)] = report

    prober.publish = publish
    stop = asyncio.Event()

    async def stop_after_first_round() -> None:
        while prober.rounds < 1 or len(reports) < 4:
            await asyncio.sleep(0.01)
        stop.set()

    await asyncio.gather(prober.run(stop), stop_after_first_round())
    return reports


async def test_kube_probes_report_readiness_and_available_ratio(
    kube: tuple[dict[str, KubeApiServer], Path],
) -> None:
    servers, kubeconfig = kube
    servers["eu-west"].put_object(deployment(6, 6))
    servers["us-east"].put_object(deployment(6, 2))
    config = config_for(kubeconfig)
    assert all(p.effective_impact == "degrade" for c in config.clusters for p in c.probes)

    reports = await one_round(Prober(config, publish=None))  # type: ignore[arg-type]
    assert reports[("eu-west", "api")].ok and reports[("eu-west", "web")].ok
    assert reports[("us-east", "api")].ok
    web = reports[("us-east", "web")]
    assert not web.ok and "2/6 available" in web.detail

    servers["eu-west"].set_not_ready(True)
    await servers["us-east"].set_down(True)
    reports = await one_round(Prober(config, publish=None))  # type: ignore[arg-type]
    assert not reports[("eu-west", "api")].ok
    assert not reports[("us-east", "api")].ok and not reports[("us-east", "web")].ok
    assert "token" not in json.dumps({k[0] + k[1]: r.detail for k, r in reports.items()}).lower()


async def test_our_own_scale_out_does_not_make_a_survivor_look_unhealthy(
    kube: tuple[dict[str, KubeApiServer], Path],
) -> None:
    servers, kubeconfig = kube
    servers["eu-west"].put_object(deployment(18, 5))  # scaled 6 -> 18 by us; pods still starting
    servers["us-east"].put_object(deployment(18, 5))  # no baseline recorded: judged against spec
    recorded = {("eu-west", "shop", "deployment", "web"): 6}

    async def baseline(cluster: str, namespace: str, kind: str, name: str) -> int | None:
        return recorded.get((cluster, namespace, kind, name))

    prober = Prober(config_for(kubeconfig), publish=None, baseline=baseline)  # type: ignore[arg-type]
    reports = await one_round(prober)
    eu, us = reports[("eu-west", "web")], reports[("us-east", "web")]
    assert eu.ok and "5/6 available" in eu.detail and "baseline 6" in eu.detail
    assert not us.ok and "5/18" in us.detail
