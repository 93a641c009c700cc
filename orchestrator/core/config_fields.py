"""The building blocks every config model shares: the strict base `Model` and the field types.

Split from `config` so the section modules (`config_clusters`, `config_drivers`, `config_daemon`) and the
playbook models can use the same `Seconds`, `Name` and `HttpUrlStr` without importing the whole file.
Durations are parsed into seconds (`parse_duration`) and documented in the JSON schema as either a
duration string or a number of seconds.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from orchestrator.core.durations import parse_duration

DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$", "examples": ["800ms", "5s", "10m"]},
        {"type": "number", "minimum": 0, "description": "seconds"},
    ]
}
Seconds = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _dns_label(value: str) -> str:
    if not NAME_RE.match(value) or len(value) > 63:
        raise ValueError(f"{value!r} must match [a-z0-9-]+ (lower case, digits, dashes; at most 63)")
    return value


Name = Annotated[str, BeforeValidator(lambda v: _dns_label(v) if isinstance(v, str) else v)]


def http_url(value: str) -> str:
    """Validator shared by every URL field that must be http(s)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


HttpUrlStr = Annotated[str, AfterValidator(http_url)]
