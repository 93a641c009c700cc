"""Config loading: defaults, env expansion, and `file:line: path: message` for every kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.config import load_config
from orchestrator.core.durations import format_duration, parse_duration
from orchestrator.core.errors import ValidationFailed

GOOD = """\
nats: {url: "nats://127.0.0.1:4222"}
api:
  listen: 127.0.0.1:8080
  tokens: [{token: "${ADMIN_TOKEN:-dev-token}", role: admin}]
probing: {interval: 1s, timeout: 800ms, vantage: mgmt}
clusters:
  - name: eu-west
    labels: {region: eu}
    probes:
      - {name: ingress, http: {url: "https://eu.example.com/healthz", latency_limit: 500ms}}
      - {name: db, tcp: {host: 10.0.0.5, port: 5432}, impact: degrade}
  - name: us-east
    weight: 50
    probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 443}}]
load_balancers:
  - name: global
    driver: haproxy
    haproxy: {admin: ["tcp://127.0.0.1:9999", "unix:///run/haproxy.sock"], backend: web}
    members: {eu-west: eu1, us-east: us1}
notifiers:
  - {name: hook, driver: webhook, webhook: {url: "http://127.0.0.1:9000/hook", secret: "${HOOK_SECRET}"}}
"""


def write(tmp_path: Path, text: str, name: str = "failover.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_config(path, env=env or {})
    return [str(p) for p in info.value.problems]


def test_good_config_loads_with_units_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"HOOK_SECRET": "s3cret"})
    assert config.probing.interval_s == 1.0 and config.probing.timeout_s == 0.8
    assert config.detection.failure_threshold == 3 and config.detection.recovery_hold_s == 30.0
    assert config.cluster("eu-west").probes[0].http is not None
    assert config.cluster("eu-west").probes[0].http.latency_limit_s == 0.5
    assert config.cluster("eu-west").probes[1].effective_impact == "degrade"
    assert config.cluster("us-east").probes[0].effective_impact == "fail"
    assert config.api.tokens[0].token.get_secret_value() == "dev-token"
    hook = config.notifier("hook").webhook
    assert hook is not None and hook.secret is not None
    assert hook.secret.get_secret_value() == "s3cret"
    # secrets never show in a repr or a dump
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()
    assert config.state_path == tmp_path / ".failover"


def test_missing_environment_variable_names_line_and_variable(tmp_path: Path) -> None:
    found = problems(write(tmp_path, GOOD))
    assert found == [
        f"{tmp_path}/failover.yaml:21: notifiers[0].webhook.secret: environment variable "
        "HOOK_SECRET is not set (use ${HOOK_SECRET:-default} for a default)"
    ]


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            ("probing: {interval: 1s, timeout: 800ms, vantage: mgmt}", "probing: {interval: 1sec}"),
            "5: probing.interval: expected a duration like '800ms', '5s' or '10m', got '1sec'",
        ),
        (("    weight: 50", "    weight: 50\n    color: red"), "14: clusters[1].color: unknown field"),
        (("  - name: us-east", "  - name: US_East"), "12: clusters[1].name: 'US_East' must match"),
        (
            ("members: {eu-west: eu1, us-east: us1}", "members: {eu-west: eu1, ap-south: us1}"),
            "19: load_balancers[0].members.ap-south: unknown cluster 'ap-south'",
        ),
        (("driver: haproxy", "driver: nginx"), "17: load_balancers[0].driver: Input should be"),
        (("port: 5432}", "port: 70000}"), "11: clusters[0].probes[1].tcp.port: Input should be less than"),
        (("    weight: 50\n", "    weight: 50\n    weight: 60\n"), "14: clusters[1].weight: duplicate key"),
        (
            ("probing: {interval: 1s, timeout: 800ms", "probing: {interval: 1s, timeout: 2s"),
            "5: probing: probing.timeout must not exceed probing.interval",
        ),
        (
            (
                "{name: db, tcp: {host: 10.0.0.5, port: 5432}",
                "{name: ingress, tcp: {host: 10.0.0.5, port: 5432}",
            ),
            "11: clusters[0].probes[1].name: duplicate probe name 'ingress'",
        ),
        (("api:\n", "api: [\n"), "YAML syntax error"),
        (("vantage: mgmt}", "vantage: mgmt.eu}"), "5: probing.vantage: 'mgmt.eu' is not a vantage name"),
        (
            ("probing: {", "detection: {vantages: [mgmt, eu, mgmt]}\nprobing: {"),
            "5: detection.vantages: 'mgmt' is listed twice",
        ),
        (
            ("probing: {", "detection: {vantages: [mgmt, eu], quorum: 3}\nprobing: {"),
            "5: detection.quorum: 3 vantages can never agree: detection.vantages counts 2 (mgmt, eu)",
        ),
    ],
)
def test_each_mistake_is_reported_with_its_line(
    tmp_path: Path, mutation: tuple[str, str], expected: str
) -> None:
    old, new = mutation
    assert old in GOOD
    found = problems(write(tmp_path, GOOD.replace(old, new, 1)), env={"HOOK_SECRET": "x"})
    assert any(expected in line for line in found), found
    assert all(line.startswith(f"{tmp_path}/failover.yaml:") for line in found)


def test_the_probe_timeout_follows_a_short_interval_unless_set(tmp_path: Path) -> None:
    """`interval: 500ms` alone is valid: the timeout defaults to min(800ms, 0.8 x interval)."""
    short = GOOD.replace(
        "probing: {interval: 1s, timeout: 800ms, vantage: mgmt}", "probing: {interval: 500ms}"
    )
    assert load_config(write(tmp_path, short), env={"HOOK_SECRET": "x"}).probing.timeout_s == 0.4
    long = GOOD.replace("probing: {interval: 1s, timeout: 800ms, vantage: mgmt}", "probing: {interval: 5s}")
    assert load_config(write(tmp_path, long), env={"HOOK_SECRET": "x"}).probing.timeout_s == 0.8


def test_counted_vantages_default_to_the_daemon_vantage(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"HOOK_SECRET": "x"})
    assert config.counted_vantages == ["mgmt"] and config.daemon_vantage == "mgmt"
    listed = GOOD.replace("probing: {", "detection: {vantages: [m, eu], daemon_vantage: m}\nprobing: {")
    config = load_config(write(tmp_path, listed), env={"HOOK_SECRET": "x"})
    assert config.counted_vantages == ["m", "eu"] and config.daemon_vantage == "m"


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = GOOD.replace("weight: 50", "weight: -5").replace("port: 5432}", "port: 0}")
    found = problems(write(tmp_path, text), env={"HOOK_SECRET": "x"})
    assert len(found) == 2, found


def test_an_unknown_driver_or_a_missing_section_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("driver: webhook, webhook:", "driver: sms, webhook:")
    found = problems(write(tmp_path, text), env={"HOOK_SECRET": "x"})
    assert any("notifiers[0].driver" in line and "'teams'" in line for line in found), found
    text = GOOD.replace("driver: webhook, webhook:", "driver: teams, webhook:")
    found = problems(write(tmp_path, text), env={"HOOK_SECRET": "x"})
    assert any("driver 'teams' needs a 'teams:' section" in line for line in found), found


@pytest.mark.parametrize(
    ("text", "seconds"), [("800ms", 0.8), ("5s", 5), ("10m", 600), ("1h30m", 5400), ("1.5s", 1.5), (3, 3.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 s", "s", "-1s", "1x", True, None, "1s2"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD.replace("${HOOK_SECRET}", "${HOOK_SECRET:-x}"))
    result = run_cli("validate", "--config", str(good), str(Path(__file__).parents[1] / "playbooks"))
    assert result.returncode == 1  # example playbooks name notifier 'oncall', which this config lacks
    assert "unknown notifier 'oncall'" in result.stderr

    bad = write(tmp_path, GOOD.replace("weight: 50", "weight: fifty"), "bad.yaml")  # and HOOK_SECRET unset
    result = run_cli("validate", "--config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:13: clusters[1].weight:" in result.stderr
    assert f"{bad}:21: notifiers[0].webhook.secret: environment variable HOOK_SECRET" in result.stderr

    result = run_cli("validate", "--bogus-flag")
    assert result.returncode == 2
