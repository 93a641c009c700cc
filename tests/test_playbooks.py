"""Playbook format: every file in playbooks/ validates; each kind of mistake names its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.config import Config
from orchestrator.core.errors import ValidationFailed
from orchestrator.playbooks import templates
from orchestrator.playbooks.loader import load_playbook, load_playbooks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> Config:
    return Config.model_validate(
        {
            "clusters": [{"name": n, "labels": {"tier": "prod"}} for n in ("eu-west", "us-east", "ap-south")],
            "load_balancers": [
                {
                    "name": "global",
                    "driver": "haproxy",
                    "haproxy": {"admin": ["tcp://127.0.0.1:1"], "backend": "web"},
                    "members": {"eu-west": "eu1", "us-east": "us1", "ap-south": "ap1"},
                }
            ],
            "notifiers": [
                {"name": "oncall", "driver": "webhook", "webhook": {"url": "http://127.0.0.1:1/hook"}}
            ],
        }
    )


def test_every_example_playbook_validates(config: Config) -> None:
    loaded = load_playbooks([REPO / "playbooks"], config)
    assert {"cluster-failover", "cluster-failback", "degraded-notify", "manual-drain"} <= set(loaded)
    for item in loaded.values():
        assert len(item.sha256) == 64
    with_edge = config.model_copy(
        update={
            "load_balancers": [
                *config.load_balancers,
                config.load_balancers[0].model_copy(update={"name": "edge"}),
            ]
        }
    )
    kubernetes = load_playbooks([REPO / "playbooks" / "kubernetes"], with_edge)
    assert set(kubernetes) == {"k8s-cluster-failover", "k8s-cluster-failback"}


BASE = """\
name: test-book
on:
  event: cluster.failed
steps:
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    timeout: 10s
  - id: page
    action: notify
    with: {notifier: oncall, summary: "{{ event.cluster }} failed"}
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        ("action: lb.drain", "action: lb.dran", 6, "steps[0].action: unknown action 'lb.dran'"),
        ("with: {balancer: global,", "with: {balancr: global,", 7, "steps[0].with.balancr: unknown field"),
        ("timeout: 10s", "timeout: 10 seconds", 8, "steps[0].timeout: expected a duration"),
        (
            '"{{ event.cluster }} failed"',
            '"{{ event.cluster }"',
            11,
            "steps[1].with.summary: template syntax error",
        ),
        ("balancer: global", "balancer: edge", 7, "steps[0].with.balancer: unknown balancer 'edge'"),
        ("notifier: oncall", "notifier: pager", 11, "steps[1].with.notifier: unknown notifier 'pager'"),
        ("  - id: page", "  - id: drain", 9, "steps[1].id: duplicate step id 'drain'"),
        ("event: cluster.failed", "event: cluster.exploded", 3, "on.event: Input should be"),
        ("    timeout: 10s", "    timeout: 10s\n    retries: 3", 9, "steps[0].retries: unknown field"),
        ('cluster: "{{ event.cluster }}"}', "}", 7, "steps[0].with.cluster: required field is missing"),
    ],
)
def test_each_mistake_names_file_and_line(
    tmp_path: Path, config: Config, old: str, new: str, line: int, expected: str
) -> None:
    assert old in BASE
    path = tmp_path / "book.yaml"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(ValidationFailed) as info:
        load_playbook(path, config)
    lines = [str(p) for p in info.value.problems]
    assert f"{path}:{line}: {expected}" in "\n".join(lines), lines


def test_a_set_with_one_bad_file_is_refused_whole(tmp_path: Path, config: Config) -> None:
    (tmp_path / "good.yaml").write_text(BASE)
    (tmp_path / "bad.yaml").write_text(
        BASE.replace("name: test-book", "name: other").replace("lb.drain", "lb.x")
    )
    (tmp_path / "dup.yaml").write_text(BASE)
    with pytest.raises(ValidationFailed) as info:
        load_playbooks([tmp_path], config)
    text = str(info.value)
    assert "bad.yaml:6: steps[0].action: unknown action 'lb.x'" in text
    assert "playbook name 'test-book' is already used" in text


def test_templates_native_values_and_strict_undefined() -> None:
    ctx = {
        "event": {"cluster": "eu"},
        "clusters": [{"name": "eu", "state": "failed"}, {"name": "us", "state": "healthy"}],
    }
    survivors = "{{ clusters | selectattr('state', 'eq', 'healthy') | map(attribute='name') | list }}"
    assert templates.render(survivors, ctx) == ["us"]
    assert templates.render("{{ event.cluster }} failed", ctx) == "eu failed"
    assert templates.render({"a": ["{{ event.cluster }}", 3]}, ctx) == {"a": ["eu", 3]}
    assert templates.evaluate("event.cluster == 'eu'", ctx) is True
    with pytest.raises(templates.TemplateError, match="undefined"):
        templates.render("{{ event.clustr }}", ctx)


def test_templates_are_sandboxed() -> None:
    with pytest.raises(templates.TemplateError):
        templates.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_every_example_playbook_is_planned_without_touching_haproxy(
    haproxy_binary: str, tmp_path: Path
) -> None:
    """Golden examples: `failover plan` runs for every playbook in playbooks/ against a real HAProxy."""
    import asyncio
    import subprocess
    import sys

    from tests.helpers import fleet, write_config

    events = {
        "cluster.failed": "cluster.failed",
        "cluster.recovered": "cluster.recovered",
        "cluster.degraded": "cluster.degraded",
        "manual": "manual",
        "observer.suspect": "observer.suspect",
        "cluster.flapping": "cluster.flapping",
    }

    async def scenario() -> dict[str, str]:
        outputs = {}
        async with fleet(tmp_path, haproxy_binary) as f:
            config = write_config(tmp_path, f, "http://127.0.0.1:9/hook")
            for item in load_playbooks([REPO / "playbooks"], None).values():
                result = await asyncio.to_thread(
                    subprocess.run,
                    [
                        sys.executable,
                        "-m",
                        "orchestrator",
                        "plan",
                        "--config",
                        str(config),
                        "--playbook",
                        item.playbook.name,
                        "--event",
                        events[item.playbook.on.event],
                        "--cluster",
                        "us-east",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert result.returncode == 0, result.stderr
                outputs[item.playbook.name] = result.stdout
            assert await f.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
        return outputs

    outputs = asyncio.run(scenario())
    assert "-> global/us-east (web/us1) weight 100 -> 0" in outputs["cluster-failover"]
    assert (
        "-> notify oncall (critical): us-east failed; traffic moved to eu-west, ap-south"
        in outputs["cluster-failover"]
    )
    assert "-> global/us-east (web/us1) weight 100 -> 25" in outputs["cluster-failback"]
    assert "-> wait for approval by role:operator" in outputs["manual-drain"]
    assert all(o.rstrip().endswith("nothing was changed (dry-run)") for o in outputs.values())


def test_plan_refuses_what_the_guard_would_refuse(haproxy_binary: str, tmp_path: Path) -> None:
    import asyncio

    from orchestrator.core.config import load_config
    from orchestrator.runtime.dryrun import plan
    from tests.helpers import fleet, write_config

    async def scenario() -> list[str]:
        lines: list[str] = []
        async with fleet(tmp_path, haproxy_binary) as f:
            for cluster in ("eu-west", "ap-south"):
                await f.haproxy.admin().set_weight("web", {"eu-west": "eu1", "ap-south": "ap1"}[cluster], 0)
            config = load_config(write_config(tmp_path, f, "http://127.0.0.1:9/hook"))
            await plan(config, "cluster-failover", "cluster.failed", "us-east", out=lines.append)
            assert (await f.weights())["us-east"] == 100
        return lines

    lines = asyncio.run(scenario())
    assert any(
        "global/us-east (web/us1) weight 100 -> 0  REFUSED: balancer global" in line for line in lines
    ), lines


def test_the_shipped_json_schema_is_current_and_accepts_every_example() -> None:
    import json

    import jsonschema
    import yaml

    from orchestrator.playbooks import schema

    assert schema.SHIPPED.read_text() == schema.render(), (
        "stale: python -m orchestrator.playbooks.schema > orchestrator/playbooks/playbook.schema.json"
    )
    shipped = json.loads(schema.SHIPPED.read_text())
    validator = jsonschema.Draft202012Validator(shipped)
    for file in sorted((REPO / "playbooks").rglob("*.yaml")):
        data = yaml.safe_load(file.read_text())
        data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
        errors = list(validator.iter_errors(data))
        assert not errors, f"{file.name}: {[e.message for e in errors]}"
    bad = {
        "name": "x",
        "on": {"event": "cluster.failed"},
        "steps": [{"action": "lb.drain", "with": {"balancr": "g"}}],
    }
    assert list(validator.iter_errors(bad))
