"""A JSON Schema for playbook files, generated from the same models `failover validate` uses.

Shipped as `orchestrator/playbooks/playbook.schema.json` for editors (YAML language servers: add
`# yaml-language-server: $schema=<path>` to a playbook). Regenerate after changing a model or an action:

    python -m orchestrator.playbooks.schema > orchestrator/playbooks/playbook.schema.json

A test fails when the shipped file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.playbooks.actions import REGISTRY
from orchestrator.playbooks.model import Playbook

SHIPPED = Path(__file__).with_name("playbook.schema.json")
TEMPLATE = {
    "type": "string",
    "pattern": r"\{\{|\{%",
    "description": "a Jinja2 template, rendered at run time",
}


def _templatable(schema: dict[str, Any]) -> dict[str, Any]:
    """Every parameter may also be a template that renders to the right type."""
    props = schema.get("properties", {})
    for name, prop in list(props.items()):
        props[name] = {"anyOf": [prop, TEMPLATE]}
    return schema


def generate() -> dict[str, Any]:
    schema = Playbook.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "failover playbook"
    defs = schema.setdefault("$defs", {})
    step = defs["Step"]
    step["properties"]["action"] = {"enum": sorted(REGISTRY), "description": "what the step does"}
    branches = []
    for name in sorted(REGISTRY):
        params = REGISTRY[name].params.model_json_schema(by_alias=True)
        for key, value in params.pop("$defs", {}).items():
            defs[key] = value
        params.pop("title", None)
        branches.append(
            {
                "if": {"properties": {"action": {"const": name}}, "required": ["action"]},
                "then": {"properties": {"with": _templatable(params)}},
            }
        )
    step["allOf"] = branches
    return schema


def render() -> str:
    return json.dumps(generate(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
