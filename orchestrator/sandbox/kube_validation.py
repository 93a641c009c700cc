"""Defaulting and validation the sandbox applies before it stores an object, as a real cluster would.

Only the rules that matter for what the orchestrator writes, with kube-apiserver's field paths and
wording: built-in types (Deployment, StatefulSet, HPA, Lease, NetworkPolicy) as apimachinery
validation reports them, custom resources as the CRD's OpenAPI schema reports them (`... in body should
be less than or equal to 1000000`), and Istio's validating webhook (`validation.istio.io`) for
VirtualServices.

Istio choice: the CRD in ../shared/crds only says `weight` is an int32, and current istiod only rejects
negative weights and a zero total over several destinations. Older istiod (and istio's own docs until
weights became relative) required each weight in 0..100 and the weights of a multi-destination route to
sum to 100. The sandbox enforces the strict rule by default (`istio_weights="sum100"`): whatever it
accepts, every istiod accepts, and our driver writes sums of 100 anyway. `istio_weights="relative"`
emulates current istiod instead. Either way a refusal is a 400 with no reason, as webhook denials are.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from orchestrator.sandbox.kube_crds_edge import validate_dnsendpoint, validate_mapping
from orchestrator.sandbox.kube_patch import selector_matches
from orchestrator.sandbox.kube_resources import ResourceType
from orchestrator.sandbox.kube_status import (
    ApiError,
    Cause,
    bad_request,
    go_value,
    invalid,
    invalid_value,
    required,
    too_many,
    unsupported,
    webhook_denied,
)

IstioWeights = Literal["sum100", "relative"]
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
INT32_MAX = 2**31 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class _Schema:
    """CRD OpenAPI schema checks, worded like the apiextensions validator."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def integer(self, path: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> None:
        if value is None:
            return
        if not _is_int(value):
            kind = "string" if isinstance(value, str) else type(value).__name__
            self.causes.append(
                invalid_value(path, kind, f"{path} in body must be of type integer: {go_value(kind)}")
            )
            return
        if minimum is not None and value < minimum:
            self.causes.append(
                invalid_value(path, value, f"{path} in body should be greater than or equal to {minimum}")
            )
        if maximum is not None and value > maximum:
            self.causes.append(
                invalid_value(path, value, f"{path} in body should be less than or equal to {maximum}")
            )

    def string(self, path: str, obj: dict[str, Any], key: str, *, needed: bool = True) -> None:
        value = obj.get(key)
        if value is None:
            if needed:
                self.causes.append(required(f"{path}.{key}"))
        elif not isinstance(value, str):
            self.causes.append(
                invalid_value(f"{path}.{key}", "object", f"{path}.{key} in body must be of type string")
            )
        elif needed and value == "":
            self.causes.append(
                invalid_value(f"{path}.{key}", value, f"{path}.{key} in body should be at least 1 chars long")
            )

    def max_items(self, path: str, items: list[Any], limit: int) -> None:
        if len(items) > limit:
            self.causes.append(too_many(path, len(items), limit))


def validate_name(rt: ResourceType, name: str) -> list[Cause]:
    pattern, limit, what = (
        (_LABEL, 63, "RFC 1123 label")
        if rt.kind == "Namespace"
        else (
            _SUBDOMAIN,
            253,
            "RFC 1123 subdomain",
        )
    )
    if not name:
        return [required("metadata.name", "name or generateName is required")]
    if len(name) > limit or not pattern.match(name):
        return [
            invalid_value(
                "metadata.name",
                name,
                f"a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character",
            )
        ]
    return []


def _default_pod_template(template: dict[str, Any]) -> None:
    spec = template.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in _list(spec.get("containers")):
        if isinstance(container, dict):
            image = str(container.get("image", ""))
            latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})


def _workload(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise bad_request(
            f'{rt.kind} in version "v1" cannot be handled as a {rt.kind}: spec must be an object'
        )
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    if rt.kind == "Deployment":
        spec.setdefault(
            "strategy",
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
        )
        spec.setdefault("progressDeadlineSeconds", 600)
    else:
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    template = spec.setdefault("template", {})
    if isinstance(template, dict):
        _default_pod_template(template)
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise bad_request(
            f'{rt.kind} in version "v1" cannot be handled as a {rt.kind}: json: cannot unmarshal '
            f"{type(replicas).__name__} into Go struct field {rt.kind}Spec.spec.replicas of type int32"
        )
    causes: list[Cause] = []
    if replicas < 0:
        causes.append(invalid_value("spec.replicas", replicas, "must be greater than or equal to 0"))
    selector = spec.get("selector")
    labels = _dict(_dict(template.get("metadata") if isinstance(template, dict) else None).get("labels"))
    if not isinstance(selector, dict):
        causes.append(required("spec.selector"))
    elif not selector.get("matchLabels") and not selector.get("matchExpressions"):
        causes.append(
            invalid_value("spec.selector", selector, f"empty selector is invalid for {rt.singular}")
        )
    empty = (
        isinstance(selector, dict)
        and not selector.get("matchLabels")
        and not selector.get("matchExpressions")
    )
    if not isinstance(selector, dict) or (not empty and not selector_matches(selector, labels)):
        causes.append(
            invalid_value(
                "spec.template.metadata.labels", labels, "`selector` does not match template `labels`"
            )
        )
    if old is not None and isinstance(selector, dict) and selector != _dict(old.get("spec")).get("selector"):
        causes.append(invalid_value("spec.selector", selector, "field is immutable"))
    pod_spec = _dict(template.get("spec") if isinstance(template, dict) else None)
    containers = _list(pod_spec.get("containers"))
    if not containers:
        causes.append(required("spec.template.spec.containers"))
    for n, container in enumerate(containers):
        path = f"spec.template.spec.containers[{n}]"
        if not _dict(container).get("name"):
            causes.append(required(f"{path}.name"))
        if not _dict(container).get("image"):
            causes.append(required(f"{path}.image"))
    return causes


def _hpa(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    spec.setdefault("minReplicas", 1)
    causes: list[Cause] = []
    target = spec.get("scaleTargetRef")
    if not isinstance(target, dict):
        causes.append(required("spec.scaleTargetRef"))
    else:
        for key in ("kind", "name"):
            if not target.get(key):
                causes.append(required(f"spec.scaleTargetRef.{key}"))
    low, high = spec.get("minReplicas"), spec.get("maxReplicas")
    if not _is_int(low) or low < 1:
        causes.append(invalid_value("spec.minReplicas", low, "must be greater than 0"))
    if not _is_int(high) or high < 1:
        causes.append(invalid_value("spec.maxReplicas", high, "must be greater than 0"))
    elif _is_int(low) and high < low:
        causes.append(
            invalid_value("spec.maxReplicas", high, "must be greater than or equal to `minReplicas`")
        )
    for n, metric in enumerate(_list(spec.get("metrics"))):
        if not _dict(metric).get("type"):
            causes.append(required(f"spec.metrics[{n}].type", "must specify a metric source type"))
    return causes


def _lease(obj: dict[str, Any]) -> list[Cause]:
    spec = _dict(obj.get("spec"))
    causes: list[Cause] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not _is_int(duration) or duration <= 0):
        causes.append(invalid_value("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not _is_int(transitions) or transitions < 0):
        causes.append(
            invalid_value("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
        )
    return causes


def _httproute(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    check = _Schema()
    for n, parent in enumerate(_list(spec.get("parentRefs"))):
        if isinstance(parent, dict):
            parent.setdefault("group", "gateway.networking.k8s.io")
            parent.setdefault("kind", "Gateway")
            check.string(f"spec.parentRefs[{n}]", parent, "name")
    check.max_items("spec.parentRefs", _list(spec.get("parentRefs")), 32)
    check.max_items("spec.hostnames", _list(spec.get("hostnames")), 16)
    rules = spec.setdefault("rules", [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}])
    check.max_items("spec.rules", _list(rules), 16)
    for r, rule in enumerate(_list(rules)):
        if not isinstance(rule, dict):
            continue
        rule.setdefault("matches", [{"path": {"type": "PathPrefix", "value": "/"}}])
        check.max_items(f"spec.rules[{r}].matches", _list(rule.get("matches")), 64)
        refs = _list(rule.get("backendRefs"))
        check.max_items(f"spec.rules[{r}].backendRefs", refs, 16)
        for b, ref in enumerate(refs):
            path = f"spec.rules[{r}].backendRefs[{b}]"
            if not isinstance(ref, dict):
                continue
            ref.setdefault("group", "")
            ref.setdefault("kind", "Service")
            ref.setdefault("weight", 1)
            check.string(path, ref, "name")
            check.integer(f"{path}.weight", ref.get("weight"), 0, 1_000_000)
            check.integer(f"{path}.port", ref.get("port"), 1, 65535)
            if ref.get("group") == "" and ref.get("kind") == "Service" and "port" not in ref:
                check.causes.append(invalid_value(path, "object", "Must have port for Service reference"))
    return check.causes


def _virtualservice_schema(obj: dict[str, Any]) -> list[Cause]:
    spec = _dict(obj.get("spec"))
    check = _Schema()
    for section in ("http", "tcp", "tls"):
        for r, route in enumerate(_list(spec.get(section))):
            for d, dest in enumerate(_list(_dict(route).get("route"))):
                path = f"spec.{section}[{r}].route[{d}]"
                if not isinstance(_dict(dest).get("destination"), dict):
                    check.causes.append(required(f"{path}.destination"))
                else:
                    check.string(f"{path}.destination", dest["destination"], "host")
                check.integer(f"{path}.weight", _dict(dest).get("weight"), -(2**31), INT32_MAX)
    return check.causes


def _istio_webhook(obj: dict[str, Any], mode: IstioWeights) -> None:
    """What istiod's `validation.istio.io` webhook refuses; runs after the schema accepted the object."""
    spec = _dict(obj.get("spec"))
    errors: list[str] = []
    if not _list(spec.get("hosts")):
        errors.append("virtual service must have at least one host")
    for section in ("http", "tcp", "tls"):
        for item in _list(spec.get(section)):
            route = _dict(item)
            destinations = _list(route.get("route"))
            if (
                section == "http"
                and not destinations
                and not any(route.get(k) for k in ("redirect", "directResponse", "delegate"))
            ):
                errors.append("HTTP route, redirect, direct response or delegate is required")
            total = 0
            for dest in destinations:
                weight = _dict(dest).get("weight") or 0
                total += weight
                if mode == "sum100" and not 0 <= weight <= 100:
                    errors.append(f"percentage {weight} is not in range 0..100")
                elif mode == "relative" and weight < 0:
                    errors.append(f"weight {weight} < 0")
            if len(destinations) > 1 and mode == "sum100" and total != 100:
                errors.append(f"total destination weight {total} != 100")
            if len(destinations) > 1 and mode == "relative" and total == 0:
                errors.append("total destination weight = 0")
    if not errors:
        return
    if len(errors) == 1:
        raise webhook_denied("validation.istio.io", f"configuration is invalid: {errors[0]}")
    listed = "".join(f"\t* {e}\n" for e in errors)
    raise webhook_denied(
        "validation.istio.io", f"configuration is invalid: {len(errors)} errors occurred:\n{listed}\n"
    )


def _trafficsplit(obj: dict[str, Any]) -> list[Cause]:
    spec = _dict(obj.get("spec"))
    check = _Schema()
    if "spec" not in obj:
        return [required("spec")]
    check.string("spec", spec, "service")
    if not isinstance(spec.get("backends"), list):
        check.causes.append(required("spec.backends"))
    for n, backend in enumerate(_list(spec.get("backends"))):
        check.string(f"spec.backends[{n}]", _dict(backend), "service")
        check.integer(f"spec.backends[{n}].weight", _dict(backend).get("weight"), 0)
    return check.causes


def _networkpolicy(obj: dict[str, Any]) -> list[Cause]:
    """Defaults as `SetDefaults_NetworkPolicySpec`: no policyTypes means Ingress, plus Egress when
    egress rules are given; a missing podSelector is the empty one (every pod of the namespace)."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise bad_request(
            'NetworkPolicy in version "v1" cannot be handled as a NetworkPolicy: spec must be an object'
        )
    spec.setdefault("podSelector", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", *(["Egress"] if spec.get("egress") else [])]
    causes = [
        unsupported(f"spec.policyTypes[{n}]", kind, ["Ingress", "Egress"])
        for n, kind in enumerate(_list(spec.get("policyTypes")))
        if kind not in ("Ingress", "Egress")
    ]
    if not isinstance(spec.get("podSelector"), dict):
        causes.append(invalid_value("spec.podSelector", spec.get("podSelector"), "must be a label selector"))
    return causes


def default_and_validate(
    rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, istio_weights: IstioWeights = "sum100"
) -> None:
    """Fill server-side defaults into `obj` in place; raise ApiError (422, or 400 for webhooks) if invalid."""
    name = str(_dict(obj.get("metadata")).get("name", ""))
    causes = validate_name(rt, name) if old is None else []
    if rt.plural in ("deployments", "statefulsets"):
        causes += _workload(rt, obj, old)
    elif rt.plural == "horizontalpodautoscalers":
        causes += _hpa(obj)
    elif rt.plural == "leases":
        causes += _lease(obj)
    elif rt.plural == "httproutes":
        causes += _httproute(obj)
    elif rt.plural == "virtualservices":
        causes += _virtualservice_schema(obj)
    elif rt.plural == "trafficsplits":
        causes += _trafficsplit(obj)
    elif rt.plural == "mappings":
        causes += validate_mapping(obj)
    elif rt.plural == "dnsendpoints":
        causes += validate_dnsendpoint(obj)
    elif rt.plural == "networkpolicies":
        causes += _networkpolicy(obj)
    if causes:
        raise invalid(rt.qualified_kind, rt.group, rt.kind, name, causes)
    if rt.plural == "virtualservices":
        _istio_webhook(obj, istio_weights)


def validate_scale(name: str, replicas: Any) -> None:
    if not _is_int(replicas):
        raise bad_request(
            'Scale in version "v1" cannot be handled as a Scale: json: cannot unmarshal '
            f"{type(replicas).__name__} into Go struct field ScaleSpec.spec.replicas of type int32"
        )
    if replicas < 0:
        cause = invalid_value("spec.replicas", replicas, "must be greater than or equal to 0")
        raise invalid("Scale.autoscaling", "autoscaling", "Scale", name, [cause])


__all__ = ["ApiError", "IstioWeights", "default_and_validate", "validate_name", "validate_scale"]
