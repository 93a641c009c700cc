"""Pod Security "restricted", field by field, on every pod deploy/ renders (the daemon's overlays and the
stand-alone prober), plus what the project adds: a read-only root filesystem whose writable paths are
emptyDirs. The namespaces enforce the standard too, so the API server itself refuses a drifting pod; and
the check is shown to catch each rule it enforces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy_render import Doc, one, render

DAEMON_OVERLAYS = ("overlays/single", "overlays/ha")
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


# Pod Security "restricted", field by field -------------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(pod: Doc) -> list[str]:
    """Every rule of the "restricted" Pod Security Standard (baseline included) a pod spec breaks, plus
    ours: a read-only root filesystem whose writable paths are emptyDirs."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field}: must be unset or false")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} is not allowed")
    if pod_sc.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser: 0 (root)")
    for sysctl in pod_sc.get("sysctls") or []:
        problems.append(f"spec.securityContext.sysctls: {sysctl['name']} (none is needed)")
    if (pod_sc.get("seLinuxOptions") or {}).get("type") not in (None, "container_t"):
        problems.append("spec.securityContext.seLinuxOptions.type: custom")
    if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append("spec.securityContext.appArmorProfile: Unconfined")
    containers = [*(pod.get("initContainers") or []), *pod["containers"]]
    for c in containers:
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities.add {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
            problems.append(f"{where}: runAsUser must be a non-zero uid (a numeric USER is verifiable)")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{where}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        empty_dirs = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
        for mount in c.get("volumeMounts") or []:
            if not mount.get("readOnly") and mount["name"] not in empty_dirs:
                problems.append(f"{where}: {mount['mountPath']} is writable but not an emptyDir")
    return problems


def _pod_specs(documents: list[Doc]) -> list[tuple[str, Doc]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in documents if d["kind"] in POD_OWNERS
    ]


@pytest.mark.parametrize("name", [*DAEMON_OVERLAYS, "prober"])
def test_the_rendered_pods_meet_pod_security_restricted(name: str) -> None:
    documents = render(name)
    pods = _pod_specs(documents)
    assert pods
    for owner, pod in pods:
        assert restricted_problems(pod) == [], owner
    # and the namespace enforces it: the API server itself refuses a pod that drifts from it
    namespace = one(documents, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(
        d["metadata"].get("namespace") == namespace["metadata"]["name"] for d in documents if d != namespace
    )


def _pod_path(path: str, value: object) -> Callable[[Doc], None]:
    def mutate(pod: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = pod
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            _pod_path("containers.0.securityContext.allowPrivilegeEscalation", True),
            "allowPrivilegeEscalation",
        ),
        (_pod_path("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}), "drop must include"),
        (_pod_path("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]), "capabilities.add"),
        (_pod_path("containers.0.securityContext.privileged", True), "privileged"),
        (_pod_path("containers.0.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
        (_pod_path("containers.0.securityContext.runAsNonRoot", False), "runAsNonRoot"),
        (_pod_path("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}), "seccompProfile"),
        (_pod_path("securityContext.runAsUser", 0), "runAsUser"),
        (_pod_path("hostNetwork", True), "hostNetwork"),
        (_pod_path("volumes.0", {"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
        (_pod_path("containers.0.volumeMounts.0.readOnly", False), "writable but not an emptyDir"),
    ],
)
def test_the_restricted_check_catches_each_rule(mutate: Callable[[Doc], None], expected: str) -> None:
    pod = copy.deepcopy(_pod_specs(render("overlays/ha"))[0][1])
    mutate(pod)
    assert any(expected in p for p in restricted_problems(pod)), restricted_problems(pod)
