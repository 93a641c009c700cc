"""The sandbox's schema checks for two edge CRDs: Emissary's `Mapping` and external-dns's `DNSEndpoint`.

What a real API server with the official CRDs (../shared/crds: Emissary v4.1.0's mappings.getambassador.io,
external-dns v0.22.0's dnsendpoints.externaldns.k8s.io) refuses, worded as the apiextensions validator
words it (`spec.weight in body must be of type integer: "string"`, `spec.prefix: Required value`):

- Mapping (v1, v2 and v3alpha1 served, stored as v2): `spec.prefix` and `spec.service` required, every
  top-level spec field's type, the item and value types of its arrays and maps,
  `redirect_response_code`'s enum, the minItems of the non-empty lists, and `load_balancer` (policy
  required, one of four). The sandbox keeps no record of the version a write came in (objects are
  stored in one version), so one table serves all three, and it is v3alpha1's, the version Emissary 3.x
  documents and our driver writes: fields only v1/v2 have (`v3StatsName`, `v3health_checks`) are checked
  as they type them; the few that v1/v2 type more loosely (`ambassador_id`, `remove_*_headers` and `tls`
  untyped, the header and query maps open) are held to v3alpha1's types, so a deprecated v2 writer
  sending `tls: true` is refused here where its real server would take it. Inside the other nested
  objects (`cors`, `retry_policy`, ...) only their being objects is checked.
- DNSEndpoint (v1alpha1): the whole schema, which is small and requires nothing: `endpoints[]` objects
  with string `dnsName`/`recordType`/`setIdentifier`, integer `recordTTL`, string `targets`, string
  `labels`, `providerSpecific[]` of string name/value; integer `status.observedGeneration`.

Unknown fields are accepted and kept, as everywhere in the sandbox (a real server prunes them).
"""

from __future__ import annotations

from typing import Any

from orchestrator.sandbox.kube_status import Cause, go_value, invalid_value, required, unsupported

# A field's type: "string" | "integer" | "boolean" | "object" | "array" for scalars and plain containers,
# "array:<item>" for arrays, "map:<value>" for objects of one value type, "" for untyped (anything goes).
_BOOL = "boolean"
_INT = "integer"
_STR = "string"
_OBJ = "object"
_STRS = "array:string"
_OBJS = "array:object"
_STRMAP = "map:string"

MAPPING_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "add_linkerd_headers",
            "auto_host_rewrite",
            "bypass_auth",
            "bypass_error_response_overrides",
            "case_sensitive",
            "enable_ipv4",
            "enable_ipv6",
            "grpc",
            "host_redirect",
            "host_regex",
            "method_regex",
            "prefix_exact",
            "prefix_regex",
            "respect_dns_ttl",
            "shadow",
            "use_websocket",
        ),
        _BOOL,
    ),
    **dict.fromkeys(
        (
            "cluster_idle_timeout_ms",
            "cluster_max_connection_lifetime_ms",
            "connect_timeout_ms",
            "idle_timeout_ms",
            "precedence",
            "redirect_response_code",
            "timeout_ms",
            "weight",
        ),
        _INT,
    ),
    **dict.fromkeys(
        (
            "cluster_tag",
            "dns_type",
            "host",
            "host_rewrite",
            "method",
            "outlier_detection",
            "path_redirect",
            "prefix",
            "prefix_redirect",
            "priority",
            "resolver",
            "rewrite",
            "service",
        ),
        _STR,
    ),
    "allow_upgrade": _STRS,
    "auth_context_extensions": _STRMAP,
    "circuit_breakers": _OBJS,
    "cors": _OBJ,
    "docs": _OBJ,
    "envoy_override": _OBJ,
    "error_response_overrides": _OBJS,
    "keepalive": _OBJ,
    "labels": "map:array",
    "load_balancer": _OBJ,
    "modules": _OBJS,
    "regex_headers": _STRMAP,
    "regex_query_parameters": _STRMAP,
    "regex_redirect": _OBJ,
    "regex_rewrite": _OBJ,
    "retry_policy": _OBJ,
}
MAPPING_FIELDS.update(
    {  # v3alpha1 only
        "add_request_headers": "map:object",
        "add_response_headers": "map:object",
        "ambassador_id": _STRS,
        "headers": _STRMAP,
        "health_checks": _OBJS,
        "hostname": _STR,
        "query_parameters": _STRMAP,
        "remove_request_headers": _STRS,
        "remove_response_headers": _STRS,
        "stats_name": _STR,
        "tls": _STR,
        "v2BoolHeaders": _STRS,
        "v2BoolQueryParameters": _STRS,
        "v2ExplicitTLS": _OBJ,
        # v1 and v2 only
        "v3StatsName": _STR,
        "v3health_checks": _OBJS,
    }
)
NON_EMPTY = ("error_response_overrides", "health_checks", "v3health_checks")
REDIRECT_CODES = [301, 302, 303, 307, 308]
LB_POLICIES = ["round_robin", "ring_hash", "maglev", "least_request"]


def json_kind(value: Any) -> str:
    """The JSON type name the validator reports a value as."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_error(path: str, value: Any, expected: str) -> Cause:
    kind = json_kind(value)
    return invalid_value(path, kind, f"{path} in body must be of type {expected}: {go_value(kind)}")


def check_type(path: str, value: Any, field_type: str) -> list[Cause]:
    """Causes for `value` at `path` against one of the type spellings above."""
    if not field_type:
        return []
    base, _, inner = field_type.partition(":")
    expected = "object" if base == "map" else base
    if json_kind(value) != expected:
        return [_type_error(path, value, expected)]
    if base == "array" and inner:
        return [c for i, item in enumerate(value) for c in check_type(f"{path}[{i}]", item, inner)]
    if base == "map" and inner:
        return [c for key, item in value.items() for c in check_type(f"{path}.{key}", item, inner)]
    return []


def _check_fields(path: str, obj: dict[str, Any], fields: dict[str, str]) -> list[Cause]:
    causes: list[Cause] = []
    for name, field_type in fields.items():
        if name in obj:
            causes += check_type(f"{path}.{name}", obj[name], field_type)
    return causes


def _mapping_spec(spec: dict[str, Any]) -> list[Cause]:
    fields = MAPPING_FIELDS
    causes = [required(f"spec.{key}") for key in ("prefix", "service") if key not in spec]
    causes += _check_fields("spec", spec, fields)
    failed = {c.field for c in causes}
    code = spec.get("redirect_response_code")
    if "spec.redirect_response_code" not in failed and code is not None and code not in REDIRECT_CODES:
        causes.append(unsupported("spec.redirect_response_code", code, [str(c) for c in REDIRECT_CODES]))
    for name in NON_EMPTY:
        if name in fields and f"spec.{name}" not in failed and spec.get(name) == []:
            causes.append(
                invalid_value(f"spec.{name}", 0, f"spec.{name} in body should have at least 1 items")
            )
    balancer = spec.get("load_balancer")
    if isinstance(balancer, dict):
        policy = balancer.get("policy")
        if "policy" not in balancer:
            causes.append(required("spec.load_balancer.policy"))
        elif not isinstance(policy, str):
            causes.append(_type_error("spec.load_balancer.policy", policy, "string"))
        elif policy not in LB_POLICIES:
            causes.append(unsupported("spec.load_balancer.policy", policy, LB_POLICIES))
    return causes


def validate_mapping(obj: dict[str, Any]) -> list[Cause]:
    """Mapping.getambassador.io (any served version)."""
    if "spec" not in obj:
        return []  # the CRD requires no spec (Emissary ignores such a Mapping)
    spec = obj["spec"]
    if not isinstance(spec, dict):
        return [_type_error("spec", spec, "object")]
    return _mapping_spec(spec)


ENDPOINT_FIELDS = {
    "dnsName": _STR,
    "labels": _STRMAP,
    "providerSpecific": _OBJS,
    "recordTTL": _INT,
    "recordType": _STR,
    "setIdentifier": _STR,
    "targets": _STRS,
}


def validate_dnsendpoint(obj: dict[str, Any]) -> list[Cause]:
    """DNSEndpoint.externaldns.k8s.io v1alpha1."""
    causes: list[Cause] = []
    status = obj.get("status")
    if "status" in obj:
        causes += check_type("status", status, _OBJ)
        if isinstance(status, dict) and "observedGeneration" in status:
            causes += check_type("status.observedGeneration", status["observedGeneration"], _INT)
    if "spec" not in obj:
        return causes
    spec = obj["spec"]
    if not isinstance(spec, dict):
        return [*causes, _type_error("spec", spec, "object")]
    if "endpoints" not in spec:
        return causes
    endpoints = spec["endpoints"]
    type_causes = check_type("spec.endpoints", endpoints, _OBJS)
    if type_causes:
        return causes + type_causes
    for i, endpoint in enumerate(endpoints):
        path = f"spec.endpoints[{i}]"
        causes += _check_fields(path, endpoint, ENDPOINT_FIELDS)
        specific = endpoint.get("providerSpecific")
        if isinstance(specific, list):
            for n, prop in enumerate(specific):
                if isinstance(prop, dict):
                    fields = {"name": _STR, "value": _STR}
                    causes += _check_fields(f"{path}.providerSpecific[{n}]", prop, fields)
    return causes


__all__ = ["check_type", "json_kind", "validate_dnsendpoint", "validate_mapping"]
