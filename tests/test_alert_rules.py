"""deploy/monitoring: the PrometheusRule and ServiceMonitor.

`promtool check rules` on the rules, `promtool test rules` on deploy/monitoring/rules.test.yaml (each
alert firing, and the look-alike situations in which it must not), and a mutation check that the unit
tests would notice an alert that always fires or never does. Every metric and label an alert reads is
one the daemon exports (orchestrator/core/metrics.py). Both objects validate against the official
Prometheus Operator CRDs in ../shared/crds (a failure in CI when the folder is missing), and the
project's own checks of the fields they use run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy_render import (
    DEPLOY,
    PROMQL_METRIC,
    Doc,
    crd_schema,
    exported_metric_labels,
    one,
    promtool,
    render,
)
from tests.test_chaos_manifests import _strict

MONITORING = DEPLOY / "monitoring"
RULES_TEST = MONITORING / "rules.test.yaml"
ISSUE_ALERTS = {
    "no leader for 1 min": "FailoverNoLeader",
    "detector frozen": "FailoverDetectorFrozen",
    "a failed cluster still carrying traffic": "FailoverFailedClusterCarriesTraffic",
    "a run needs_attention": "FailoverRunNeedsAttention",
    "a balancer unreadable": "FailoverBalancerUnreadable",
    "readiness failing": "FailoverReadinessFailing",
    "lease flapping": "FailoverLeaseFlapping",
}
ALERTS = [
    rule["alert"]
    for group in yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]
    for rule in group["rules"]
]
SCRAPE_LABELS = {"job", "namespace", "pod", "instance", "service", "endpoint", "container"}
"""What the ServiceMonitor's scrape adds to every series."""


def _rule_object() -> Doc:
    return one(render("monitoring"), "PrometheusRule")


def _rules() -> list[Doc]:
    return [rule for group in _rule_object()["spec"]["groups"] for rule in group["rules"]]


def _write_rules(directory: Path, groups: list[Doc]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(RULES_TEST, directory / "rules.test.yaml")
    return directory


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules_and_their_unit_tests_pass(tmp_path: Path) -> None:
    work = _write_rules(tmp_path, _rule_object()["spec"]["groups"])
    checked = _promtool("check", "rules", "rules.yaml", cwd=work)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout
    tested = _promtool("test", "rules", "rules.test.yaml", cwd=work)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _cases() -> dict[str, dict[str, int]]:
    """For each alert, how many evaluations of rules.test.yaml expect it firing, and not firing."""
    counts: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "fires" if case["exp_alerts"] else "silent"
            counts.setdefault(case["alertname"], {"fires": 0, "silent": 0})[kind] += 1
    return counts


def test_every_alert_of_the_issue_exists_and_is_tested_firing_and_not_firing() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    assert set(ISSUE_ALERTS.values()) <= alerts
    cases = _cases()
    assert set(cases) == alerts, "each alert has unit tests, and each test names an existing alert"
    for alert, count in cases.items():
        assert count["fires"] >= 1 and count["silent"] >= 1, (alert, count)


@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.parametrize("replacement", ["vector(1)", "vector(1) > 2"])
def test_the_unit_tests_notice_an_alert_that_always_or_never_fires(
    alert: str, replacement: str, tmp_path: Path
) -> None:
    """A test series that cannot tell a broken rule from a good one proves nothing."""
    groups = _rule_object()["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = replacement
                rule.pop("for", None)
    work = _write_rules(tmp_path, groups)
    tested = _promtool("test", "rules", "rules.test.yaml", cwd=work)
    assert tested.returncode != 0, f"{alert} as `{replacement}` still passes rules.test.yaml"
    assert f"alertname: {alert}" in tested.stdout + tested.stderr


def _metric_labels() -> dict[str, set[str]]:
    """Series name -> its label names, as the daemon exports it."""
    return exported_metric_labels()


def check_expr_metrics(expr: str) -> list[str]:
    """Metrics an expression reads that the daemon does not export, and label matchers on labels the
    metric does not have (each is a query that silently matches nothing)."""
    problems = []
    exported = _metric_labels()
    names = PROMQL_METRIC.findall(expr)
    if not names:
        problems.append("reads no failover_ metric")
    for name in names:
        if name not in exported:
            problems.append(f"{name} is not exported")
    for name, matchers in re.findall(r"\b(failover_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if name in exported and label not in exported[name] | SCRAPE_LABELS:
                problems.append(f"{name} has no label {label!r}")
    return problems


def test_every_alert_reads_metrics_and_labels_the_daemon_exports() -> None:
    for rule in _rules():
        assert check_expr_metrics(rule["expr"]) == [], rule["alert"]
    # and the check itself catches a renamed metric or a misspelt label
    assert check_expr_metrics("failover_leaders == 0") == ["failover_leaders is not exported"]
    assert check_expr_metrics('failover_runs_total{outcom="x"}') == [
        "failover_runs_total has no label 'outcom'"
    ]


# the fields the project uses, checked everywhere; the official CRDs where ../shared/crds exists ------


def check_rule_object(doc: Doc) -> list[str]:
    problems: list[str] = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}")
    seen: set[str] = set()
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            alert = rule.get("alert", "")
            if not re.fullmatch(r"Failover[A-Z][A-Za-z]+", alert):
                problems.append(f"{alert!r}: alerts are named Failover<What>")
            if alert in seen:
                problems.append(f"{alert}: defined twice")
            seen.add(alert)
            if "for" in rule and not re.fullmatch(r"\d+[smh]", str(rule["for"])):
                problems.append(f"{alert}: for {rule['for']!r} is not a duration")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
                problems.append(f"{alert}: severity must be critical or warning")
            annotations = rule.get("annotations", {})
            if set(annotations) != {"summary", "description", "runbook_url"}:
                problems.append(f"{alert}: annotations summary, description and runbook_url")
            elif not annotations["runbook_url"].endswith("#" + alert.lower()):
                problems.append(f"{alert}: runbook_url must lead to the README's #{alert.lower()}")
    return problems


def check_service_monitor(monitor: Doc, service: Doc) -> list[str]:
    problems = []
    spec = monitor["spec"]
    labels = service["metadata"]["labels"]
    if not spec["selector"]["matchLabels"].items() <= labels.items():
        problems.append("selector does not select the daemon's Service")
    if service["metadata"]["namespace"] not in spec.get("namespaceSelector", {}).get("matchNames", []):
        problems.append("namespaceSelector does not name the Service's namespace")
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        if endpoint.get("port") not in ports:
            problems.append(f"endpoint port {endpoint.get('port')!r} is not a Service port name")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append("endpoint path must be /metrics")
    if labels.get(spec.get("jobLabel", "")) != "failover":
        problems.append('jobLabel must make job="failover", which the alerts and dashboard select')
    return problems


def test_the_projects_checks_pass_and_catch_mistakes() -> None:
    rule_object = _rule_object()
    assert check_rule_object(rule_object) == []
    monitoring = render("monitoring")
    monitor, service = one(monitoring, "ServiceMonitor"), one(render("overlays/ha"), "Service")
    assert check_service_monitor(monitor, service) == []

    broken: Any = yaml.safe_load(yaml.safe_dump(rule_object))
    rule = broken["spec"]["groups"][0]["rules"][0]
    rule["labels"]["severity"] = "page"
    rule["for"] = "1 minute"
    del rule["annotations"]["runbook_url"]
    assert len(check_rule_object(broken)) == 3
    broken = yaml.safe_load(yaml.safe_dump(monitor))
    broken["spec"]["endpoints"][0]["port"] = "metrics"
    broken["spec"]["jobLabel"] = "app"
    assert len(check_service_monitor(broken, service)) == 2


@pytest.mark.parametrize("kind", ["PrometheusRule", "ServiceMonitor"])
def test_the_objects_validate_against_the_official_crds(kind: str) -> None:
    schema = _strict(crd_schema(kind))
    validator = jsonschema.Draft4Validator(schema)
    doc = one(render("monitoring"), kind)
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, f"{errors[0].message} at {list(errors[0].absolute_path)}"
    # the schema refuses what the Operator's API server would: an unknown field, a wrong type
    doc["spec"]["unknownField"] = 1
    assert list(validator.iter_errors(doc))
