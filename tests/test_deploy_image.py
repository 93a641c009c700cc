"""The Dockerfile agrees with the manifests that run its image (user, read-only root filesystem, port,
entrypoint, version), and carries OCI labels and no HEALTHCHECK (Kubernetes probes instead).

No registry is reachable where the tests run, so the suite does not build the image (a test that can
only skip here would pass nothing): `make image` builds it and checks the built image the same way
(user, labels, no HEALTHCHECK, `--version` on a read-only root filesystem with every capability
dropped), where docker can pull the base image; CI elsewhere builds and publishes it (README).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.deploy_render import DEPLOY, ROOT, one, render, run_cli

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def _arg_default(name: str) -> str:
    for word, rest in final_stage():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"ARG {name} has no default in the final stage")


def _pods() -> list[dict[str, Any]]:
    return [one(render(name), "Deployment")["spec"]["template"]["spec"] for name in ("overlays/ha", "prober")]


def test_the_image_user_is_the_manifests_numeric_non_root_user() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users == ["10001:10001"], "numeric, so the kubelet can verify runAsNonRoot"
    for pod in _pods():
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (10001, 10001)
    run = " ".join(rest for word, rest in final_stage() if word == "RUN")
    assert "--uid 10001" in run and "--gid 10001" in run


def test_ports_entrypoint_and_paths_match_the_deployment(tmp_path: Path) -> None:
    stage = final_stage()
    deployment = one(render("overlays/ha"), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    exposed = [int(rest) for word, rest in stage if word == "EXPOSE"]
    assert exposed == [p["containerPort"] for p in container["ports"]]
    entrypoint = json.loads(next(rest for word, rest in stage if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in stage if word == "CMD"))
    assert entrypoint[0] == "failover"
    assert "failover" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "command" not in container, "the Deployment keeps the image's entrypoint"
    # the image's default command and the manifests' arguments are commands the CLI accepts
    prober = next(
        c
        for c in one(render("prober"), "Deployment")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "prober"
    )
    for args in (cmd, container["args"], prober["args"]):
        result = run_cli(*entrypoint[1:], args[0], "--help")
        assert result.returncode == 0, (args, result.stderr)
    assert cmd == container["args"], "the image's default is what the Deployment runs"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert cmd[cmd.index("--config") + 1].rpartition("/")[0] in mounts
    assert ("WORKDIR", "/var/lib/failover") in stage
    assert "/var/lib/failover" in mounts, "the working directory is the writable state emptyDir"
    copied = [rest for word, rest in stage if word == "COPY" and "playbooks" in rest]
    assert copied == ["playbooks/*.yaml /etc/failover/playbooks/"]
    assert "/etc/failover/playbooks" in mounts


def test_nothing_is_written_at_run_time_and_no_healthcheck() -> None:
    stage = final_stage()
    assert not [word for word, _ in instructions() if word == "HEALTHCHECK"], (
        "Kubernetes probes, not HEALTHCHECK"
    )
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # a read-only root filesystem: no .pyc written at run time
    build = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "compileall" in build, "bytecode compiled at build time instead"
    for pod in _pods():
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            if container["name"] != "leafnode":
                assert "/tmp" in mounts, "Python's tempfile needs a writable /tmp"


def test_oci_labels_and_one_version_everywhere() -> None:
    labels = " ".join(rest for word, rest in final_stage() if word == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _arg_default("VERSION") == version
    assert run_cli("--version").stdout.split()[:2] == ["failover", version], "what the image reports"
    for kustomization in (DEPLOY / "base", DEPLOY / "prober"):
        images = yaml.safe_load((kustomization / "kustomization.yaml").read_text())["images"]
        assert [i["newTag"] for i in images if i["name"] == "failover"] == [version], kustomization


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert ignore[ignore.index("*") :][:1] == ["*"], "everything is excluded first"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        source.split("/")[0]
        for word, rest in instructions()
        if word == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
    }
    assert copied <= included | {"."}, (copied, included)
    assert not included & {".venv", ".git", "tests", ".failover", "deploy"}
