"""`failover validate` as a new user meets it (issue 17): a template typo is caught with its line, every
problem comes in one pass, a feature nothing serves is refused, and a fleet that would not fail over
well is warned about without changing the exit code."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator.core.config import Config
from orchestrator.core.config_check import UNSERVED, check_config
from orchestrator.runtime.validation import validate

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
api: {listen: 127.0.0.1:8080}
clusters:
  - name: eu-west
    labels: {tier: prod}
    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 1}}]
  - name: us-east
    labels: {tier: prod}
    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 2}}]
  - name: ap-south
    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 3}}]
load_balancers:
  - name: global
    driver: haproxy
    haproxy: {admin: ["tcp://127.0.0.1:9999"], backend: web}
    members: {eu-west: eu1, us-east: us1, ap-south: ap1}
notifiers:
  - {name: oncall, driver: webhook, webhook: {url: "http://127.0.0.1:9/hook"}}
playbooks: {paths: [playbooks/]}
"""

PLAYBOOK = """\
name: failover
on: {event: cluster.failed}
steps:
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
  - id: page
    action: notify
    with:
      notifier: oncall
      summary: "{{ event.cluster }} failed: {{ steps.drain.change }}"
"""


def setup(tmp_path: Path, config: str = CONFIG, **playbooks: str) -> Path:
    (tmp_path / "playbooks").mkdir(exist_ok=True)
    for name, text in (playbooks or {"failover": PLAYBOOK}).items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    path = tmp_path / "failover.yaml"
    path.write_text(config)
    return path


def run_validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_good_config_and_playbook_pass(tmp_path: Path) -> None:
    config = setup(tmp_path)
    result = run_validate("--config", str(config))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.strip() == f"ok: config {config}, 1 playbook(s)"


def test_a_template_typo_is_caught_with_its_file_and_line(tmp_path: Path) -> None:
    config = setup(
        tmp_path, failover=PLAYBOOK.replace("{{ event.cluster }} failed", "{{ event.clustr }} failed")
    )
    result = run_validate("--config", str(config))
    assert result.returncode == 1, result
    file = tmp_path / "playbooks" / "failover.yaml"
    assert result.stderr.splitlines() == [
        f"{file}:11: steps[1].with.summary: undefined in '{{{{ event.clustr }}}} failed: "
        "{{ steps.drain.change }}': 'dict object' has no attribute 'clustr' "
        "(rendered for a sample cluster.failed event on eu-west)"
    ]


@pytest.mark.parametrize(
    ("trigger", "field", "template", "message"),
    [
        # a step refers to a step that has not run yet
        ("cluster.failed", "summary", "{{ steps.page.sent }}", "has no attribute 'page'"),
        # `before` exists only in a compensation, `item` only in a for_each
        ("cluster.failed", "summary", "{{ before }}", "'before' is undefined"),
        ("cluster.failed", "summary", "{{ item }}", "'item' is undefined"),
        # only the catch-up drain's cluster.failed event says catch_up; the detector's does not
        ("cluster.failed", "summary", "{{ event.catch_up }}", "sample cluster.failed event on"),
        # both carry ts (the catch-up drain's did not, until validate showed it)
        ("cluster.failed", "summary", "{{ event.ts }} {{ steps.nope }}", "has no attribute 'nope'"),
        # system events carry the cluster in detail; manual events have no reason
        ("cluster.flapping", "summary", "{{ event.cluster }}", "has no attribute 'cluster'"),
        ("manual", "summary", "{{ event.reason }}", "has no attribute 'reason'"),
        # rendered values are checked like literal ones
        ("cluster.failed", "notifier", "{{ 'pager' }}", "renders to unknown notifier 'pager'"),
    ],
)
def test_each_place_has_only_the_names_a_run_gives_it(
    tmp_path: Path, trigger: str, field: str, template: str, message: str
) -> None:
    text = f"""\
name: p
on: {{event: {trigger}}}
steps:
  - id: drain
    action: lb.drain
    with: {{balancer: global, cluster: eu-west}}
  - id: page
    action: notify
    with: {{notifier: oncall, summary: "fine"}}
"""
    text = text.replace(
        f'{field}: "fine"' if field == "summary" else "notifier: oncall", f'{field}: "{template}"'
    )
    report = validate(setup(tmp_path, p=text), [])
    assert [p.path for p in report.problems] == [f"steps[1].with.{field}"], report.problems
    assert message in report.problems[0].message


def test_the_names_a_run_gives_are_accepted(tmp_path: Path) -> None:
    text = """\
name: p
on: {event: manual}
vars:
  survivors: "{{ clusters | rejectattr('name', 'eq', event.cluster) | map(attribute='name') | list }}"
steps:
  - id: drain
    action: lb.drain
    when: "not event.get('force', false)"
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    compensate: {action: lb.restore, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - id: wait
    action: wait_for
    with: {expression: "clusters | selectattr('state', 'eq', 'healthy') | list | length > 1", timeout: 1s}
  - id: each
    action: notify
    for_each: "{{ steps.wait.clusters }}"
    with: {notifier: oncall, summary: "{{ item.name }}"}
  - id: page
    action: notify
    for_each: "{{ survivors }}"
    with:
      notifier: oncall
      summary: "{{ event.actor }}: {{ item }} {{ steps.drain.change }} {{ vars.survivors }}"
on_failure:
  steps:
    - {action: notify, with: {notifier: oncall, summary: "{{ failed_step }}: {{ error }}"}}
"""
    report = validate(setup(tmp_path, p=text), [])
    assert report.problems == [] and report.playbooks == 1, report.problems


def test_every_shipped_playbook_passes_strict_validation(tmp_path: Path) -> None:
    config = CONFIG.replace("playbooks: {paths: [playbooks/]}", "").replace(
        "notifiers:",
        "  - name: edge\n    driver: webhook\n    webhook: {url: 'http://127.0.0.1:9/lb'}\n"
        "    members: {eu-west: eu-west, us-east: us-east, ap-south: ap-south}\nnotifiers:",
    )
    path = tmp_path / "failover.yaml"
    path.write_text(config)
    for folder in (REPO / "playbooks", REPO / "playbooks" / "kubernetes"):
        report = validate(path, [folder])
        assert report.problems == [] and report.playbooks > 0, (folder, report.problems)


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    """Three independent mistakes: a field (config), a cross-check (config), a reference (playbook).
    Before: only the first stage's showed; each fix revealed the next."""
    config = CONFIG.replace("port: 2}", "port: two}").replace(
        "ap-south: ap1}", "ap-south: ap1, atlantis: at1}"
    )
    playbook = PLAYBOOK.replace("notifier: oncall", "notifier: pager")
    path = setup(tmp_path, config, failover=playbook)
    result = run_validate("--config", str(path))
    assert result.returncode == 1
    file = tmp_path / "playbooks" / "failover.yaml"
    assert result.stderr.splitlines() == [
        f"{path}:8: clusters[1].probes[0].tcp.port: Input should be a valid integer, unable to parse string "
        "as an integer",
        f"{path}:15: load_balancers[0].members.atlantis: unknown cluster 'atlantis'",
        f"{file}:10: steps[1].with.notifier: unknown notifier 'pager' (configured: oncall)",
    ]


def test_a_playbook_with_a_broken_step_still_has_its_other_steps_checked(tmp_path: Path) -> None:
    playbook = PLAYBOOK.replace(
        "    action: lb.drain\n", "    action: lb.drain\n    timeout: soon\n"
    ).replace("notifier: oncall", "notifier: pager")
    report = validate(setup(tmp_path, failover=playbook), [])
    assert [(p.line, p.path) for p in report.problems] == [
        (6, "steps[0].timeout"),
        (11, "steps[1].with.notifier"),
    ]


def test_a_reference_to_a_broken_item_is_not_also_unknown(tmp_path: Path) -> None:
    """us-east fails validation: the balancer and the playbook naming it get no second, false error."""
    config = CONFIG.replace("port: 2}", "port: two}")
    playbook = PLAYBOOK.replace('cluster: "{{ event.cluster }}"', "cluster: us-east")
    report = validate(setup(tmp_path, config, failover=playbook), [])
    assert [p.path for p in report.problems] == ["clusters[1].probes[0].tcp.port"]


def test_warnings_name_the_line_and_keep_the_exit_code(tmp_path: Path) -> None:
    config = CONFIG.replace(
        "  - name: ap-south\n    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 3}}]\n",
        "  - name: ap-south\n"
        "  - name: sa-east\n    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 4}}]\n",
    )
    path = setup(tmp_path, config)
    result = run_validate("--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}:9: clusters[2].name: warning: ap-south has no probes: nothing measures its health, so it "
        "is never failed over (nor failed back)",
        f"{path}:10: clusters[3].name: warning: sa-east is a member of no load balancer (global): a "
        "failover cannot move its traffic",
    ]
    assert result.stdout.strip() == f"ok: config {path}, 1 playbook(s) (2 warning(s))"


def test_a_selector_that_matches_no_cluster_is_a_warning(tmp_path: Path) -> None:
    playbook = PLAYBOOK.replace(
        "on: {event: cluster.failed}", "on: {event: cluster.failed, clusters: {labels: {tier: dev}}}"
    )
    report = validate(setup(tmp_path, failover=playbook), [])
    assert report.problems == []
    assert [(p.line, p.path) for p in report.warnings] == [(2, "on.clusters")]
    assert "selects none of the configured clusters" in report.warnings[0].message


def test_a_configured_feature_nothing_serves_is_refused(tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG + "chatops:\n  slack: {signing_secret: s3cr3t, channels: [C0123ABC]}\n")
    check = check_config(path, unserved={("chatops",): "no endpoint receives slash commands"})
    line = len(CONFIG.splitlines()) + 1
    assert [str(p) for p in check.problems] == [
        f"{path}:{line}: chatops: configured, but nothing in this version serves it: no endpoint receives "
        "slash commands"
    ]
    assert "s3cr3t" not in str(check.problems)
    assert check_config(path, unserved={}).problems == []


def _fields(model: type[BaseModel], prefix: str = "") -> typing.Iterator[tuple[str, str]]:
    for name, info in model.model_fields.items():
        yield prefix + (info.alias or name), name
        for arg in [info.annotation, *typing.get_args(info.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _fields(inner, prefix + (info.alias or name) + ".")


READ_ELSEWHERE = {
    "state_dir": "through Config.state_path",
    "base_dir": "through Config.resolve",
    "clusters.probes.kube_api": "through ProbeConfig.kind",
}


def test_every_config_field_is_read_by_some_code_or_refused() -> None:
    """The audit behind UNSERVED: each field of the config model is read outside core/config*, or
    `validate` refuses it; a field added without code that serves it fails here."""
    sources = {
        p: p.read_text()
        for p in (REPO / "orchestrator").rglob("*.py")
        if not p.name.startswith("config") and p.name != "partial.py"
    }
    unread = []
    for path, attribute in _fields(Config):
        if path in READ_ELSEWHERE or tuple(path.split(".")) in UNSERVED:
            continue
        pattern = re.compile(rf"\.{attribute}\b|[\"']{attribute}[\"']")
        if not any(pattern.search(text) for text in sources.values()):
            unread.append(path)
    assert unread == []


def test_readiness_checks_of_a_playbook_that_is_not_loaded_are_refused(tmp_path: Path) -> None:
    """`readiness.playbooks` with a typo: the leader would report it at every pass; validate says so."""
    path = setup(tmp_path, CONFIG + "readiness: {playbooks: [failover, failovr]}\n")
    report = validate(path, [])
    assert [(p.line, p.path, p.message) for p in report.problems] == [
        (19, "readiness.playbooks[1]", "no playbook 'failovr' is loaded (loaded: failover)")
    ]
