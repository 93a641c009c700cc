"""deploy/monitoring/grafana-dashboard.json: every query reads metrics (and labels) the daemon exports
and is valid PromQL (promtool parses each one as a recording rule), the panels cover what the issue
asks for, and the ConfigMap Grafana's sidecar loads carries this very file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy_render import DEPLOY, PROMQL_METRIC, config_map_data, promtool, render
from tests.test_alert_rules import check_expr_metrics

DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "6h",
    "$__interval": "30s",
    "$namespace": "failover",
}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def _substituted(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown dashboard variable in {expr}"
    return expr


def test_every_query_reads_metrics_and_labels_the_daemon_exports() -> None:
    exprs = _exprs()
    assert exprs
    for title, expr in exprs:
        assert check_expr_metrics(expr) == [], title
        # every series is the failover job's, in the namespace the dashboard shows
        for selector in re.findall(r"\bfailover_[a-z0-9_]+(\{[^}]*\})?", expr):
            assert 'job="failover"' in selector and 'namespace="$namespace"' in selector, (title, expr)


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (with Grafana's variables filled in) as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _substituted(expr)} for i, (_, expr) in enumerate(_exprs())
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = subprocess.run(
        [promtool(), "check", "rules", "queries.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_panels_cover_states_weights_recovery_runs_and_probes() -> None:
    used = {name for _, expr in _exprs() for name in PROMQL_METRIC.findall(expr)}
    for metric in (
        "failover_cluster_state",  # cluster states
        "failover_balancer_weight",  # weights per balancer
        "failover_recovery_seconds_bucket",  # recovery times by stage
        "failover_runs_total",  # runs
        "failover_probe_result",  # probes
        "failover_probe_reports_total",
        "failover_leader",
        "failover_readiness",
    ):
        assert metric in used, metric
    recovery = [expr for _, expr in _exprs() if "failover_recovery_seconds_bucket" in expr]
    assert any("by (stage, le)" in expr for expr in recovery), "recovery times per stage"


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    # no two panels overlap
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_grafanas_sidecar_gets_this_file() -> None:
    documents = render("monitoring")
    config_map = next(d for d in documents if d["metadata"]["name"] == "failover-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (
        config_map_data(documents, "failover-grafana-dashboard")["grafana-dashboard.json"]
        == DASHBOARD.read_text()
    )
