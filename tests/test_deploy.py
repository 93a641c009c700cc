"""deploy/: every kustomization renders and validates (kubernetes-validate, strict, one pinned
Kubernetes version; the Prometheus Operator objects against the official CRDs), the ha overlay has the
shape lease leadership needs, the config the overlays carry passes `failover validate` with its secrets
from Secrets and no anonymous access, the NetworkPolicy lets through what that config uses, and the
stand-alone prober probes what the daemon knows.

Elsewhere: Pod Security "restricted" in tests/test_deploy_pod_security.py, alerts and the ServiceMonitor
in tests/test_alert_rules.py, the dashboard in tests/test_grafana_dashboard.py, RBAC in
tests/test_deploy_rbac.py, NATS and the prober's leaf node in tests/test_deploy_nats.py, the image in
tests/test_deploy_image.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.core.config import load_config
from tests.deploy_render import (
    DEPLOY,
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    PROMETHEUS_CRDS,
    ROOT,
    Doc,
    config_map_data,
    crd_schema,
    one,
    render,
    render_target_cluster_with_components,
    run_cli,
)
from tests.test_chaos_manifests import _strict

DAEMON_OVERLAYS = ("overlays/single", "overlays/ha")
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SECRET_TEMPLATES = sorted((DEPLOY / "secrets").glob("*.example.yaml"))


def _validate(documents: list[Doc]) -> None:
    for doc in documents:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in PROMETHEUS_CRDS:
            schema = _strict(crd_schema(doc["kind"]))
            errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(doc), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{where}: {e.message} at {list(e.path)}") from e


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_validates(name: str) -> None:
    documents = render(name)
    assert documents
    _validate(documents)
    for doc in documents:  # everything lands in a namespace of ours, named, labelled as ours
        if doc["kind"] not in ("Namespace",) and doc["kind"] in POD_OWNERS | {"Service", "ConfigMap"}:
            assert doc["metadata"].get("namespace"), doc["metadata"]["name"]


def test_the_target_cluster_kustomization_validates_with_every_component(tmp_path: Path) -> None:
    documents = render_target_cluster_with_components(tmp_path / "all")
    _validate(documents)
    roles = {d["metadata"]["name"] for d in documents if d["kind"] == "Role"}
    assert roles == {
        "failover-workloads",
        "failover-gateway-api",
        "failover-istio",
        "failover-smi",
        "failover-emissary",
        "failover-external-dns",
        "failover-drills",
    }


def test_strict_validation_refuses_what_an_api_server_refuses() -> None:
    """The checks above would catch a typo: kubernetes-validate in strict mode refuses unknown fields."""
    deployment = one(render("overlays/ha"), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# the ha overlay: the shape lease leadership supports ----------------------------------------------


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def test_the_ha_overlay_runs_two_replicas_that_never_share_a_node() -> None:
    documents = render("overlays/ha")
    deployment = one(documents, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    # one replica at a time in a rollout: a surge pod could find no node under the hard anti-affinity
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    required = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [t["topologyKey"] for t in required] == ["kubernetes.io/hostname"]
    assert _selects(required[0]["labelSelector"], pod_labels)
    pdb = one(documents, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    assert _selects(pdb["spec"]["selector"], pod_labels)
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # SIGTERM: 20 s for running steps, then the lease is released
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30

    config = yaml.safe_load(config_map_data(documents, "failover-config-")["failover.yaml"])
    assert config["nats"]["url"].startswith("nats://"), "two replicas need an external NATS (no embedded)"
    assert config["nats"]["replicas"] == 3, "JetStream R3 on the 3-node NATS of deploy/nats"
    assert "leadership" in config
    # every replica's in-process probing counts as one vantage, whichever leads (DESIGN §12)
    assert config["detection"]["daemon_vantage"] in config["detection"]["vantages"]
    assert config["probing"]["vantage"] == "${POD_NAME}"

    single = render("overlays/single")
    assert one(single, "Deployment")["spec"]["replicas"] == 1
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"], "a one-replica PDB blocks drains"


def test_probes_service_and_ports_agree() -> None:
    from orchestrator.api.routes import ROUTES

    paths = {route.path for route in ROUTES}
    for name in DAEMON_OVERLAYS:
        documents = render(name)
        deployment, service = one(documents, "Deployment"), one(documents, "Service")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        config = yaml.safe_load(config_map_data(documents, "failover-config-")["failover.yaml"])
        assert ports == {"http": int(config["api"]["listen"].rpartition(":")[2])}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert {"/healthz", "/readyz", "/metrics"} <= paths
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        # /readyz is 503 while a balancer cannot be read: the API must stay reachable exactly then
        assert service["spec"]["publishNotReadyAddresses"] is True


# the config the overlays carry ---------------------------------------------------------------------


def _secret_templates() -> dict[tuple[str, str], str]:
    shipped: dict[tuple[str, str], str] = {}
    for path in SECRET_TEMPLATES:
        for doc in yaml.safe_load_all(path.read_text()):
            for key, value in (doc.get("stringData") or {}).items():
                shipped[(doc["metadata"]["name"], key)] = value
    return shipped


def _strings(node: object) -> list[str]:
    """Every string value of a parsed YAML document (its comments are not configuration)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def _ref(env_entry: Doc) -> tuple[str, str]:
    ref = env_entry["valueFrom"]["secretKeyRef"]
    return str(ref["name"]), str(ref["key"])


@pytest.mark.parametrize("name", DAEMON_OVERLAYS)
def test_the_overlay_config_validates_with_secrets_from_secrets_and_no_anonymous_access(
    name: str, tmp_path: Path
) -> None:
    documents = render(name)
    config_text = config_map_data(documents, "failover-config-")["failover.yaml"]
    deployment = one(documents, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}

    # every ${VAR} in the config that is not the pod's own name comes from a Secret
    variables = {
        v for text in _strings(yaml.safe_load(config_text)) for v in re.findall(r"\$\{([A-Z0-9_]+)", text)
    }
    secret_vars = {v for v in variables if "secretKeyRef" in env[v].get("valueFrom", {})}
    assert variables - secret_vars == {"POD_NAME"}
    assert "fieldRef" in env["POD_NAME"]["valueFrom"]
    # the Secret templates ship with the names and keys the Deployment reads, and no usable value
    shipped = _secret_templates()
    for var in secret_vars:
        assert _ref(env[var]) in shipped, var
        assert shipped[_ref(env[var])] == "", var
    # the files the config reads are mounted from the Secrets the templates describe
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config = yaml.safe_load(config_text)
    files = [config["nats"]["password_file"]] + [c["kubernetes"]["kubeconfig"] for c in config["clusters"]]
    for file in files:
        directory, _, key = file.rpartition("/")
        secret = volumes[mounts[directory]]["secret"]["secretName"]
        assert (secret, key) in shipped, file
    assert mounts[config["playbooks"]["paths"][0]] == "playbooks"
    assert "emptyDir" in volumes[mounts[config["state_dir"]]]

    # `failover validate` of the shipped config and its playbooks, with generated secrets
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    for file, text in config_map_data(documents, "failover-playbooks-").items():
        (playbooks / file).write_text(text)
    config_file = tmp_path / "failover.yaml"
    config_file.write_text(config_text)
    values = {
        v: "https://hooks.example.com/services/T0/B0/x"
        if v.endswith("_URL")
        else f"generated-{v.lower()}-0a1b2c3d"
        for v in variables
    }
    values = {v: value.replace("_", "-") for v, value in values.items()}
    result = run_cli("validate", "--config", str(config_file), str(playbooks), env=values)
    assert result.returncode == 0, result.stderr
    assert f"{len(list(playbooks.iterdir()))} playbook(s)" in result.stdout
    assert "anonymous" not in result.stderr
    loaded = load_config(config_file, env=values)
    assert loaded.api.host not in ("127.0.0.1", "localhost", "::1"), "the API listens on the pod network"
    assert loaded.api.tokens and not loaded.api.allow_anonymous
    assert {t.role for t in loaded.api.tokens} == {"admin", "operator", "viewer"}
    assert all(t.token.get_secret_value().startswith("generated-") for t in loaded.api.tokens)

    # the Secret templates applied as shipped (empty values): the daemon refuses to start, never runs open
    empty = {**values, **{v: shipped[_ref(env[v])] for v in secret_vars}}
    result = run_cli("validate", "--config", str(config_file), str(playbooks), env=empty)
    assert result.returncode == 1 and "api.tokens[0].token" in result.stderr, result.stderr

    # and with the tokens taken out, the shipped listen address is refused: anonymous admin is impossible
    data = yaml.safe_load(config_text)
    del data["api"]["tokens"]
    open_config = tmp_path / "open.yaml"
    open_config.write_text(yaml.safe_dump(data))
    result = run_cli("validate", "--config", str(open_config), str(playbooks), env=values)
    assert result.returncode == 1 and "api.listen" in result.stderr and "not loopback" in result.stderr


def test_no_secret_template_holds_a_value_or_is_applied() -> None:
    templates = [
        *SECRET_TEMPLATES,
        DEPLOY / "nats" / "secret.example.yaml",
        DEPLOY / "prober" / "secret.example.yaml",
    ]
    for path in templates:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "Secret"
            for key, value in doc["stringData"].items():
                if value.startswith("apiVersion: v1"):  # a kubeconfig: its credentials are empty
                    kubeconfig = yaml.safe_load(value)
                    assert all(u["user"]["token"] == "" for u in kubeconfig["users"]), key
                    assert all(
                        c["cluster"]["certificate-authority-data"] == "" for c in kubeconfig["clusters"]
                    )
                else:
                    assert value == "", f"{path.name}: {key}"
    # no kustomization applies a template: a template value can never replace a real one
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())
        for entry in [*(listed.get("resources") or []), *(listed.get("components") or [])]:
            assert ".example." not in entry and "secrets" not in entry, (kustomization, entry)


def test_the_playbooks_configmap_holds_the_shipped_playbooks() -> None:
    """deploy/base/playbooks/ is a copy (kustomize loads nothing outside its root): it must not drift."""
    shipped = {p.name: p.read_text() for p in (ROOT / "playbooks").glob("*.yaml")}
    copies = {p.name: p.read_text() for p in (DEPLOY / "base" / "playbooks").glob("*.yaml")}
    assert copies == shipped
    assert config_map_data(render("overlays/ha"), "failover-playbooks-") == shipped


# the NetworkPolicy lets through what the config uses, and nothing else comes in ---------------------


def _egress_allows(policy: Doc, port: int, namespace: str | None = None, external: bool = False) -> bool:
    for rule in policy["spec"]["egress"]:
        if not any(p["port"] == port for p in rule.get("ports") or []):
            continue
        for peer in rule.get("to") or []:
            ns = (
                (peer.get("namespaceSelector") or {})
                .get("matchLabels", {})
                .get("kubernetes.io/metadata.name")
            )
            if namespace is not None and ns == namespace:
                return True
            if external and "ipBlock" in peer:
                return True
    return False


@pytest.mark.parametrize("name", DAEMON_OVERLAYS)
def test_the_network_policy_allows_what_the_config_uses(name: str) -> None:
    documents = render(name)
    policy = one(documents, "NetworkPolicy")
    deployment = one(documents, "Deployment")
    assert _selects(policy["spec"]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    config = yaml.safe_load(config_map_data(documents, "failover-config-")["failover.yaml"])

    def service(url: str) -> tuple[str, int]:
        match = re.fullmatch(r"[a-z]+://([a-z0-9-]+(?:\.[a-z0-9-]+)*):(\d+)", url)
        assert match, url
        host, port = match.group(1), int(match.group(2))
        parts = host.split(".")
        # <service>.<namespace>.svc, or <pod>.<service>.<namespace>.svc (a StatefulSet's pods)
        assert "svc" in parts[2:], f"{url}: expected a Service name (<name>.<namespace>.svc)"
        return parts[parts.index("svc") - 1], port

    assert _egress_allows(policy, 53, namespace="kube-system")
    assert any(p == {"port": 53, "protocol": "UDP"} for r in policy["spec"]["egress"] for p in r["ports"])
    assert _egress_allows(
        policy, service(config["nats"]["url"])[1], namespace=service(config["nats"]["url"])[0]
    )
    for balancer in config["load_balancers"]:
        for admin in balancer["haproxy"]["admin"]:
            namespace, port = service(admin)
            assert _egress_allows(policy, port, namespace=namespace), admin
    for cluster in config["clusters"]:
        for probe in cluster["probes"]:
            if "http" in probe:
                assert probe["http"]["url"].startswith("https://")
                assert _egress_allows(policy, 443, external=True)
    assert _egress_allows(policy, 6443, external=True), "the target clusters' API servers"
    # ingress: the API port only, from named namespaces only (never an empty selector: all namespaces)
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}
            assert set(peer["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}
    allowed = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for r in policy["spec"]["ingress"]
        for p in r["from"]
    }
    scraper = one(render("monitoring"), "ServiceMonitor")
    assert "monitoring" in allowed, f"Prometheus ({scraper['metadata']['name']}) scrapes from `monitoring`"


# the stand-alone prober -------------------------------------------------------------------------------


def test_the_prober_probes_what_the_daemon_knows_and_validates(tmp_path: Path) -> None:
    prober_docs = render("prober")
    prober = yaml.safe_load(config_map_data(prober_docs, "failover-prober-config-")["failover.yaml"])
    daemon = yaml.safe_load(config_map_data(render("overlays/ha"), "failover-config-")["failover.yaml"])
    known = {(c["name"], p["name"]): p for c in daemon["clusters"] for p in c["probes"]}
    for cluster in prober["clusters"]:
        for probe in cluster["probes"]:
            assert (cluster["name"], probe["name"]) in known, "the daemon drops reports of unknown probes"
            assert probe == known[(cluster["name"], probe["name"])]
    vantage = prober["probing"]["vantage"]
    assert vantage in prober["detection"]["vantages"]
    assert prober["detection"]["daemon_vantage"] == daemon["detection"]["daemon_vantage"]
    # the prober reaches only the leaf node beside it, over loopback
    leaf = config_map_data(prober_docs, "failover-prober-leafnode-")["leafnode.conf"]
    listen = re.search(r"^listen: (\S+)$", leaf, re.M)
    assert listen and prober["nats"]["url"] == f"nats://{listen.group(1)}"
    assert listen.group(1).startswith("127.0.0.1:")
    container = next(
        c
        for c in one(prober_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "prober"
    )
    assert container["args"][:1] == ["probe"]
    config_file = tmp_path / "prober.yaml"
    config_file.write_text(yaml.safe_dump(prober))
    result = run_cli("validate", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
