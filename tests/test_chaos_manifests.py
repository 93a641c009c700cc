"""chaos/k8s/: the Chaos Mesh and LitmusChaos manifests users apply to a real cluster.

Two layers. The project's own checks always run: the fields these manifests use, with the values the
official CRDs allow (read from `../shared/crds/`: Chaos Mesh v2.8.3, LitmusChaos chaos-operator 3.18.0;
Chaos Mesh's duration rule is its webhook's Go `time.ParseDuration`), and what makes each manifest the
fault the README says it is (the `failover drill` equivalent). Where `../shared/crds/` exists (as in CI,
where its absence fails), the values written here are compared with the CRDs, and every manifest is
validated against its CRD's full openAPIV3Schema with unknown fields refused, as `kubectl apply`'s
strict field validation refuses them. The CRDs are read in place, never copied into the project.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "chaos" / "k8s"


def _shared_crds() -> Path:
    """`../shared/crds` beside the repository; for a clone (CI's clean clone sits in a temporary
    directory), beside the repository it was cloned from, when that is a local path."""
    here = ROOT.parent / "shared" / "crds"
    if here.is_dir():
        return here
    try:
        origin = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin.startswith("/") and (Path(origin).parent / "shared" / "crds").is_dir():
        return Path(origin).parent / "shared" / "crds"
    return here


CRDS = _shared_crds()
CRD_FILES = {
    "NetworkChaos": "chaos-mesh.org_networkchaos.yaml",
    "PodChaos": "chaos-mesh.org_podchaos.yaml",
    "ChaosEngine": "litmuschaos.io_chaosengines.yaml",
    "ChaosExperiment": "litmuschaos.io_chaosexperiments.yaml",
}

# The fields the manifests use, with the values the CRDs allow (compared with them when they are present).
API_VERSIONS = {
    "NetworkChaos": "chaos-mesh.org/v1alpha1",
    "PodChaos": "chaos-mesh.org/v1alpha1",
    "ChaosEngine": "litmuschaos.io/v1alpha1",
    "ChaosExperiment": "litmuschaos.io/v1alpha1",
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}
CHAOS_MESH_REQUIRED = ["action", "mode", "selector"]
ACTIONS = {
    "NetworkChaos": {"netem", "delay", "loss", "duplicate", "corrupt", "partition", "bandwidth"},
    "PodChaos": {"pod-kill", "pod-failure", "container-kill"},
}
MODES = {"one", "all", "fixed", "fixed-percent", "random-max-percent"}
DIRECTIONS = {"to", "from", "both"}
ENGINE_STATES = {"active", "stop"}
CLEANUP_POLICIES = {"delete", "retain"}
APP_KINDS = {"deployment", "statefulset", "daemonset", "deploymentconfig", "rollout"}
SCOPES = {"Namespaced", "Cluster"}
POLICY_TYPES = {"ingress", "egress", "all"}  # the pod-network-partition experiment's POLICY_TYPES
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

# The placeholders users change, marked `# CHANGE` on every line that holds one.
APP_NAMESPACE, APP_LABELS = "web", {"app": "web"}
INGRESS_NAMESPACE = "ingress-nginx"
DRILL = "failover drill --config failover.yaml --cluster C --fault {fault} --yes"
FAULTS = {
    "chaos-mesh-network-partition.yaml": "deny-ingress",
    "chaos-mesh-pod-kill.yaml": "scale-to-zero",
    "litmus-pod-network-partition.yaml": "deny-ingress",
}

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _documents() -> list[tuple[str, Doc]]:
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml")) for d in _load(p)]


def _env(env: object) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in env} if isinstance(env, list) else {}


# The project's own checks -----------------------------------------------------------------------------


def _check_selector(where: str, selector: object) -> list[str]:
    if not isinstance(selector, dict) or not selector:
        return [f"{where}: a non-empty selector is required (an empty one selects every pod)"]
    problems = []
    for ns in selector.get("namespaces", []):
        if not DNS_LABEL.match(str(ns)):
            problems.append(f"{where}.namespaces: {ns!r} is not a namespace name")
    labels = selector.get("labelSelectors", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        problems.append(f"{where}.labelSelectors: a map of strings is required")
    return problems


def _check_mode(where: str, spec: Doc) -> list[str]:
    mode, value = spec.get("mode"), spec.get("value")
    if mode not in MODES:
        return [f"{where}.mode: {mode!r} is not one of {sorted(MODES)}"]
    if mode == "fixed" and not (isinstance(value, str) and value.isdigit() and int(value) > 0):
        return [f"{where}.value: mode fixed needs a pod count as a string, got {value!r}"]
    if mode in {"fixed-percent", "random-max-percent"} and not (
        isinstance(value, str) and value.isdigit() and 0 < int(value) <= 100
    ):
        return [f"{where}.value: mode {mode} needs a percentage 1..100 as a string, got {value!r}"]
    return []


def _check_chaos_mesh(kind: str, spec: Doc) -> list[str]:
    problems = [f"spec.{f}: required" for f in CHAOS_MESH_REQUIRED if f not in spec]
    if spec.get("action") not in ACTIONS[kind]:
        problems.append(f"spec.action: {spec.get('action')!r} is not one of {sorted(ACTIONS[kind])}")
    problems += _check_mode("spec", spec) + _check_selector("spec.selector", spec.get("selector"))
    duration = spec.get("duration")
    if duration is not None and not (isinstance(duration, str) and GO_DURATION.match(duration)):
        problems.append(f"spec.duration: {duration!r} is not a Go duration (60s, 1m30s)")
    if kind == "NetworkChaos":
        if spec.get("direction", "to") not in DIRECTIONS:
            problems.append(f"spec.direction: {spec.get('direction')!r} is not one of {sorted(DIRECTIONS)}")
        if duration is None:
            problems.append("spec.duration: required here: without it the fault lasts until deleted")
        target = spec.get("target")
        if spec.get("action") == "partition" and not (target or spec.get("externalTargets")):
            problems.append("spec.target: a partition needs the pods it is cut from")
        if target is not None:
            problems += _check_mode("spec.target", target)
            problems += _check_selector("spec.target.selector", target.get("selector"))
    if kind == "PodChaos":
        grace = spec.get("gracePeriod", 0)
        if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
            problems.append(f"spec.gracePeriod: {grace!r} is not a non-negative integer")
        if spec.get("action") == "pod-failure" and duration is None:
            problems.append("spec.duration: required for pod-failure")
    return problems


def _check_engine(spec: Doc) -> list[str]:
    problems = []
    if spec.get("engineState") not in ENGINE_STATES:
        problems.append(f"spec.engineState: {spec.get('engineState')!r} is not active or stop")
    if spec.get("jobCleanUpPolicy", "delete") not in CLEANUP_POLICIES:
        problems.append(f"spec.jobCleanUpPolicy: {spec.get('jobCleanUpPolicy')!r} is not delete or retain")
    app = spec.get("appinfo", {})
    if app.get("appkind") not in APP_KINDS:
        problems.append(f"spec.appinfo.appkind: {app.get('appkind')!r} is not one of {sorted(APP_KINDS)}")
    if not re.fullmatch(r"[A-Za-z0-9./_-]+=[A-Za-z0-9._-]+", str(app.get("applabel", ""))):
        problems.append(f"spec.appinfo.applabel: {app.get('applabel')!r} is not key=value")
    if not DNS_LABEL.match(str(app.get("appns", ""))):
        problems.append(f"spec.appinfo.appns: {app.get('appns')!r} is not a namespace name")
    if not spec.get("chaosServiceAccount"):
        problems.append("spec.chaosServiceAccount: required")
    experiments = spec.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        return [*problems, "spec.experiments: at least one experiment is required"]
    for i, experiment in enumerate(experiments):
        env = _env(experiment.get("spec", {}).get("components", {}).get("env"))
        seconds = env.get("TOTAL_CHAOS_DURATION")
        if not (isinstance(seconds, str) and seconds.isdigit() and int(seconds) > 0):
            problems.append(f"spec.experiments[{i}]: TOTAL_CHAOS_DURATION {seconds!r} is not seconds > 0")
        if env.get("POLICY_TYPES", "all") not in POLICY_TYPES:
            problems.append(f"spec.experiments[{i}]: POLICY_TYPES {env.get('POLICY_TYPES')!r} is invalid")
    return problems


def _check_experiment(spec: Doc) -> list[str]:
    definition = spec.get("definition", {})
    problems = []
    if definition.get("scope") not in SCOPES:
        problems.append(f"spec.definition.scope: {definition.get('scope')!r} is not one of {sorted(SCOPES)}")
    image = str(definition.get("image", ""))
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        problems.append(f"spec.definition.image: {image!r} is not pinned to a release")
    for field in ("command", "args"):
        if not all(isinstance(a, str) for a in definition.get(field, [])):
            problems.append(f"spec.definition.{field}: strings only")
    for name, value in _env(definition.get("env")).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not isinstance(value, str):
            problems.append(f"spec.definition.env: {name}={value!r} needs a C identifier and a string")
    for i, rule in enumerate(definition.get("permissions", [])):
        missing = {"apiGroups", "resources", "verbs"} - set(rule)
        if missing:
            problems.append(f"spec.definition.permissions[{i}]: {sorted(missing)} required")
    return problems


def check_document(doc: Doc) -> list[str]:
    """Every problem the project's own rules find in one manifest (an empty list: none)."""
    kind = doc.get("kind")
    if kind not in API_VERSIONS or doc.get("apiVersion") != API_VERSIONS[kind]:
        return [f"{doc.get('apiVersion')}/{kind}: not a kind these manifests ship"]
    meta = doc.get("metadata", {})
    problems = []
    if not DNS_SUBDOMAIN.match(str(meta.get("name", ""))):
        problems.append(f"metadata.name: {meta.get('name')!r} is not a DNS-1123 subdomain")
    if not DNS_LABEL.match(str(meta.get("namespace", ""))):
        problems.append(f"metadata.namespace: {meta.get('namespace')!r} is required: a namespace name")
    if "status" in doc:
        problems.append("status: written by the controller, never by a manifest")
    spec = doc.get("spec", {})
    if kind in ACTIONS:
        problems += _check_chaos_mesh(kind, spec)
    elif kind == "ChaosEngine":
        problems += _check_engine(spec)
    elif kind == "ChaosExperiment":
        problems += _check_experiment(spec)
    elif kind == "Role":
        for i, rule in enumerate(doc.get("rules", [])):
            if not all(isinstance(rule.get(f), list) for f in ("apiGroups", "resources", "verbs")):
                problems.append(f"rules[{i}]: apiGroups, resources and verbs lists required")
    return problems


def test_the_manifests_ship_one_file_per_fault() -> None:
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(FAULTS)
    kinds = sorted(d["kind"] for _, d in _documents())
    assert kinds == sorted([*CRD_FILES, "ServiceAccount", "Role", "RoleBinding"])


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_manifest_passes_the_projects_checks(name: str) -> None:
    for doc in _load(K8S / name):
        assert check_document(doc) == [], f"{name}: {doc['kind']}"


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_manifest_says_what_it_emulates_how_long_and_its_drill(name: str) -> None:
    text = (K8S / name).read_text()
    header = text[: text.index("\napiVersion:")]
    assert "What it emulates:" in header
    assert "How long:" in header
    assert DRILL.format(fault=FAULTS[name]) in header
    assert f"apply -f chaos/k8s/{name}" in header
    # every placeholder users change is marked where it stands
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if re.search(rf"\b{APP_NAMESPACE}\b|{INGRESS_NAMESPACE}", code):
            assert "# CHANGE" in line, f"{name}: unmarked placeholder: {line.strip()}"


def test_the_faults_are_the_ones_the_drill_injects() -> None:
    """What makes each manifest the drill's fault, not just a valid object."""
    docs = {d["kind"]: d for _, d in _documents()}
    for kind in ("NetworkChaos", "PodChaos"):
        spec = docs[kind]["spec"]
        assert spec["mode"] == "all", "every pod of the app: the whole cluster loses it"
        assert spec["selector"] == {"namespaces": [APP_NAMESPACE], "labelSelectors": APP_LABELS}
    partition = docs["NetworkChaos"]["spec"]
    assert (partition["action"], partition["direction"]) == ("partition", "both")
    assert partition["target"]["mode"] == "all"
    assert partition["target"]["selector"]["namespaces"] == [INGRESS_NAMESPACE]
    kill = docs["PodChaos"]["spec"]
    assert (kill["action"], kill["gracePeriod"]) == ("pod-kill", 0)

    engine = docs["ChaosEngine"]
    assert engine["spec"]["appinfo"]["appns"] == APP_NAMESPACE
    assert engine["spec"]["appinfo"]["applabel"] == "{}={}".format(*next(iter(APP_LABELS.items())))
    env = _env(engine["spec"]["experiments"][0]["spec"]["components"]["env"])
    # a policy with no peer, port or IP denies all ingress; any of them would let some traffic through
    assert env["POLICY_TYPES"] == "ingress"
    narrowing = {"POD_SELECTOR", "NAMESPACE_SELECTOR", "DESTINATION_IPS", "DESTINATION_HOSTS", "PORTS"}
    assert not narrowing & set(env)


def test_the_litmus_engine_has_its_experiment_and_the_rights_it_needs() -> None:
    docs = _load(K8S / "litmus-pod-network-partition.yaml")
    by_kind = {d["kind"]: d for d in docs}
    engine = by_kind["ChaosEngine"]
    namespace = engine["metadata"]["namespace"]
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    experiment = by_kind["ChaosExperiment"]
    assert [e["name"] for e in engine["spec"]["experiments"]] == [experiment["metadata"]["name"]]
    account = engine["spec"]["chaosServiceAccount"]
    assert by_kind["ServiceAccount"]["metadata"]["name"] == account
    binding = by_kind["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    assert binding["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    granted = {
        (group, resource, verb)
        for rule in by_kind["Role"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("create", "get", "list", "delete"):
        assert ("networking.k8s.io", "networkpolicies", verb) in granted
    for resource in ("chaosengines", "chaosexperiments", "chaosresults"):
        assert ("litmuschaos.io", resource, "get") in granted


def _set(path: str, value: object) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return mutate


# Mistakes the project's checks must catch: (kind, mutation, whether the official schema alone does).
MISTAKES = {
    "action": ("NetworkChaos", _set("spec.action", "partitions"), True),
    "direction": ("NetworkChaos", _set("spec.direction", "inbound"), True),
    "target-mode": ("NetworkChaos", _set("spec.target.mode", "every"), True),
    "duration": ("NetworkChaos", _set("spec.duration", "60 seconds"), False),  # Chaos Mesh's webhook's rule
    "fixed-without-value": ("PodChaos", _set("spec.mode", "fixed"), False),  # the webhook's rule too
    "grace-period": ("PodChaos", _set("spec.gracePeriod", -1), True),
    "engine-state": ("ChaosEngine", _set("spec.engineState", "running"), True),
    "app-kind": ("ChaosEngine", _set("spec.appinfo.appkind", "Deployment"), True),
    "chaos-seconds": ("ChaosEngine", _set("spec.experiments.0.spec.components.env.0.value", "1m"), False),
    "scope": ("ChaosExperiment", _set("spec.definition.scope", "Namespace"), True),
}


def _shipped(kind: str) -> Doc:
    return copy.deepcopy(next(d for _, d in _documents() if d["kind"] == kind))


@pytest.mark.parametrize(("kind", "mutate", "_schema"), MISTAKES.values(), ids=MISTAKES)
def test_the_projects_checks_catch_mistakes(kind: str, mutate: Callable[[Doc], None], _schema: bool) -> None:
    doc = _shipped(kind)
    mutate(doc)
    assert check_document(doc), f"{kind}: the mistake went through"


# Against the official CRDs, where ../shared/crds exists ----------------------------------------------


def _crds() -> dict[str, Doc]:
    """The CRD of each kind the manifests use: a failure in CI, a skip with a reason elsewhere."""
    if not CRDS.is_dir():
        if IN_CI:
            pytest.fail(f"{CRDS} is missing and CI=true: CI reads the official CRDs from ../shared/crds/")
        pytest.skip(f"{CRDS} is missing: only the project's own checks ran")
    return _read_crds()


@functools.cache
def _read_crds() -> dict[str, Doc]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return {kind: yaml.load((CRDS / name).read_text(), Loader=loader) for kind, name in CRD_FILES.items()}


def _version(crd: Doc, api_version: str) -> Doc:
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    found: Doc = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    assert found["served"], f"{api_version} is not served"
    return found


def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as a JSON schema that refuses unknown fields, as kubectl apply's strict field
    validation does, except where the CRD preserves them; int-or-string and nullable spelled out."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _strict(_version(_read_crds()[kind], API_VERSIONS[kind])["schema"]["openAPIV3Schema"])
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _alternatives(pattern: str) -> set[str]:
    """`^(a|b)$` -> {a, b}: how the Litmus CRDs spell their enums."""
    match = re.fullmatch(r"\^\((.*)\)\$", pattern)
    assert match, pattern
    return set(match.group(1).split("|")) - {"^$"}


def test_the_projects_values_are_the_official_crds() -> None:
    crds = _crds()

    def schema(kind: str) -> Doc:
        found: Doc = _version(crds[kind], API_VERSIONS[kind])["schema"]["openAPIV3Schema"]
        return found

    for kind in ("NetworkChaos", "PodChaos"):
        spec = schema(kind)["properties"]["spec"]
        assert sorted(spec["required"]) == sorted(CHAOS_MESH_REQUIRED)
        assert set(spec["properties"]["action"]["enum"]) == ACTIONS[kind]
        assert set(spec["properties"]["mode"]["enum"]) == MODES
    network = schema("NetworkChaos")["properties"]["spec"]["properties"]
    assert set(network["direction"]["enum"]) == DIRECTIONS
    assert set(network["target"]["properties"]["mode"]["enum"]) == MODES
    engine = schema("ChaosEngine")["properties"]["spec"]["properties"]
    assert _alternatives(engine["engineState"]["pattern"]) == ENGINE_STATES
    assert _alternatives(engine["jobCleanUpPolicy"]["pattern"]) == CLEANUP_POLICIES
    assert _alternatives(engine["appinfo"]["properties"]["appkind"]["pattern"]) == APP_KINDS
    definition = schema("ChaosExperiment")["properties"]["spec"]["properties"]["definition"]
    assert _alternatives(definition["properties"]["scope"]["pattern"]) == SCOPES


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_manifest_validates_against_its_official_schema(name: str) -> None:
    _crds()
    checked = 0
    for doc in _load(K8S / name):
        if doc["kind"] in CRD_FILES:
            errors = [e.message for e in _validator(doc["kind"]).iter_errors(doc)]
            assert errors == [], f"{name}: {doc['kind']}"
            checked += 1
    assert checked, f"{name}: no custom resource in it"


@pytest.mark.parametrize(("kind", "mutate", "schema_catches"), MISTAKES.values(), ids=MISTAKES)
def test_the_official_schema_catches_what_it_can(
    kind: str, mutate: Callable[[Doc], None], schema_catches: bool
) -> None:
    _crds()
    validator = _validator(kind)
    doc = _shipped(kind)
    mutate(doc)
    assert bool(list(validator.iter_errors(doc))) is schema_catches


# Where a misspelt field goes in each kind: a node whose CRD lists its fields and preserves no others.
TYPO_AT = {
    "NetworkChaos": "spec",
    "PodChaos": "spec",
    "ChaosEngine": "spec.appinfo",
    "ChaosExperiment": "spec",
}


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_the_official_schema_refuses_unknown_fields(kind: str) -> None:
    """A misspelt field (`durations`) is silently pruned by a lenient apply: strict validation refuses it."""
    _crds()
    validator = _validator(kind)
    doc = _shipped(kind)
    _set(f"{TYPO_AT[kind]}.durations", "60s")(doc)
    doc["unknownTopLevel"] = 1
    messages = " ".join(e.message for e in validator.iter_errors(doc))
    assert "unknownTopLevel" in messages
    assert "durations" in messages


def test_the_readme_lists_each_manifest_and_its_drill() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Chaos Mesh and LitmusChaos") :]
    section = section[: section.index("\n#", 1)]
    for name, fault in FAULTS.items():
        assert f"chaos/k8s/{name}" in section
        assert f"--fault {fault}" in section
