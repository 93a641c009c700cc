"""deploy/ as a cluster would receive it: every kustomization rendered by kubectl's built-in kustomize
(offline), validated by kubernetes-validate against one pinned Kubernetes version's schemas, and the
official Prometheus Operator CRDs read from `../shared/crds/` (never copied into the project).

Shared by tests/test_deploy*.py, tests/test_alert_rules.py and tests/test_grafana_dashboard.py.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require
from tests.test_chaos_manifests import CRDS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.32.0"
"""The schemas manifests are validated against: the oldest Kubernetes the manifests claim (README)."""

KUSTOMIZATIONS = ("overlays/single", "overlays/ha", "target-cluster", "prober", "monitoring")
"""Every kustomization a user applies (the base only through an overlay)."""
TARGET_COMPONENTS = ("gateway-api", "istio", "smi", "emissary", "external-dns", "drills")
PROMETHEUS_CRDS = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}

Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    require("kubectl (its built-in kustomize renders deploy/)", found)
    assert found is not None
    return found


def kustomize(directory: Path) -> list[Doc]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _render_cached(name: str) -> tuple[Doc, ...]:
    return tuple(kustomize(DEPLOY / name))


def render(name: str) -> list[Doc]:
    """`kubectl kustomize deploy/<name>`, once per test session (callers get their own copy)."""
    return yaml.safe_load(yaml.safe_dump(list(_render_cached(name))))  # a deep copy


def render_target_cluster_with_components(work: Path) -> list[Doc]:
    """deploy/target-cluster with every component enabled, as a user's kustomization would enable them
    (kustomize takes relative paths only)."""
    base = os.path.relpath(DEPLOY / "target-cluster", work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "components": [f"{base}/components/{c}" for c in TARGET_COMPONENTS],
            }
        )
    )
    return kustomize(work)


def by_kind(documents: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def one(documents: list[Doc], kind: str, prefix: str = "") -> Doc:
    """The one object of `kind` whose name starts with `prefix` (generated names carry a hash)."""
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, f"{kind} {prefix}*: {[d['metadata']['name'] for d in found]}"
    return found[0]


def config_map_data(documents: list[Doc], prefix: str) -> dict[str, str]:
    data: dict[str, str] = one(documents, "ConfigMap", prefix)["data"]
    return data


@functools.cache
def crd_schema(kind: str) -> Doc:
    """The openAPIV3Schema of the served version of an official CRD in ../shared/crds."""
    require(f"the official CRDs in {CRDS} (../shared/crds beside the clone)", CRDS.is_dir())
    crd = yaml.safe_load((CRDS / PROMETHEUS_CRDS[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    served = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    assert len(served) == 1
    schema: Doc = served[0]["schema"]["openAPIV3Schema"]
    return schema


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`failover ARGS` in a fresh interpreter, with `env` added to this process' environment."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_metric_labels() -> dict[str, set[str]]:
    """Series name -> its label names, as the daemon exports it (a histogram's buckets add `le`)."""
    from orchestrator.core.metrics import Metrics

    out: dict[str, set[str]] = {}
    for name, (kind, labels) in Metrics().families().items():
        for suffix in SUFFIXES.get(kind, ("",)):
            out[name + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())
    return out


PROMQL_METRIC = re.compile(r"\bfailover_[a-z0-9_]+\b")
"""A failover metric in a PromQL expression (label names never start with `failover_`)."""


def promtool() -> str:
    found = shutil.which("promtool")
    require("promtool (Debian package prometheus)", found)
    assert found is not None
    return found
