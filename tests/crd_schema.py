"""The official CRDs in ../shared/crds as JSON-schema validators, to compare the sandbox's acceptance with.

A real API server validates a custom object against the version's `openAPIV3Schema` after pruning: a
field the schema does not know is dropped, not refused (kubernetes-asyncio sends no `fieldValidation`),
so the validator here allows unknown fields; `nullable` and `x-kubernetes-int-or-string` are spelled out
as JSON schema. Where ../shared/crds is missing the comparison skips, and in CI (`CI=true`) fails.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import IN_CI
from tests.test_chaos_manifests import CRDS


def _as_json_schema(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _as_json_schema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _as_json_schema(out[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            out[key] = [_as_json_schema(s) for s in out[key]]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def crd_validator(file_name: str, version: str) -> jsonschema.protocols.Validator:
    """The validator of one served version of one CRD; a skip (a failure in CI) without ../shared/crds."""
    if not (CRDS / file_name).is_file():
        if IN_CI:
            pytest.fail(f"{CRDS / file_name} is missing and CI=true: CI reads the official CRDs from there")
        pytest.skip(f"{CRDS / file_name} is missing: the comparison with the official CRD did not run")
    return _validator(file_name, version)


@functools.cache
def _validator(file_name: str, version: str) -> jsonschema.protocols.Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / file_name).read_text(), Loader=loader)
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    assert served["served"], f"{version} is not served by {file_name}"
    schema = _as_json_schema(served["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    cls.check_schema(schema)
    return cls(schema)
