"""deploy/kubernetes: every manifest valid against the Kubernetes schemas, the Role granting
exactly the verbs the discovery code uses, and the pieces fitting together (the config the
router reads, the pods it would discover)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from router.config import parse_config
from router.discovery.kubernetes import VERBS
from router.discovery.pods import BOOTSTRAP_PORT_ANNOTATIONS, PORT_ANNOTATION
from tests.procs import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests are checked against


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def test_the_deploy_folder_has_every_piece():
    kinds = sorted(doc["kind"] for _, doc in manifests())
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Role",
                     "RoleBinding", "Service", "ServiceAccount"]


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_role_grants_exactly_the_verbs_discovery_uses_on_pods_only():
    (role,) = of_kind("Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": list(VERBS)}]
    assert not of_kind("ClusterRole") and not of_kind("ClusterRoleBinding")


def test_the_router_runs_with_its_account_config_and_token():
    (config_map,) = of_kind("ConfigMap")
    router = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "pdfleet-router")
    pod = router["spec"]["template"]["spec"]
    (binding,) = of_kind("RoleBinding")
    assert pod["serviceAccountName"] == binding["subjects"][0]["name"]
    (container,) = pod["containers"]
    mount = container["volumeMounts"][0]["mountPath"]
    (config_file,) = config_map["data"]
    assert container["command"] == ["pdfleet", "router", "--config", f"{mount}/{config_file}"]
    assert [e["name"] for e in container["env"]] == ["PDFLEET_ADMIN_TOKEN"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    config = parse_config(yaml.safe_load(config_map["data"][config_file]), "router-config")
    assert config.discovery.kubernetes is not None
    assert config.discovery.kubernetes.kubeconfig is None  # the in-cluster account
    assert config.router.port == container["ports"][0]["containerPort"]


def test_the_example_pods_match_the_router_selectors_and_say_their_ports():
    (config_map,) = of_kind("ConfigMap")
    config = parse_config(yaml.safe_load(next(iter(config_map["data"].values()))))
    assert config.discovery.kubernetes is not None
    selectors = config.discovery.kubernetes.selectors.by_role()
    engines = [d for d in of_kind("Deployment") if d["metadata"]["labels"].get("app") == "sglang"]
    roles = []
    for deployment in engines:
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        matched = [role for role, selector in selectors.items() if selector.matches(labels)]
        assert len(matched) == 1, labels
        roles.append(matched[0].value)
        annotations = template["metadata"]["annotations"]
        (container,) = template["spec"]["containers"]
        assert int(annotations[PORT_ANNOTATION]) == container["ports"][0]["containerPort"]
        if matched[0].value == "prefill":
            bootstrap = next(annotations[a] for a in BOOTSTRAP_PORT_ANNOTATIONS
                             if a in annotations)
            assert f"--disaggregation-bootstrap-port {bootstrap}" in " ".join(
                container["command"])
    assert sorted(roles) == ["decode", "prefill"]


def test_kubernetes_validate_rejects_a_broken_manifest():
    (role,) = of_kind("Role")
    broken = {**role, "rules": [{"apiGroups": [""], "resources": ["pods"], "verb": ["get"]}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_docs_name_each_manifest():
    page = (Path(ROOT) / "docs" / "kubernetes.md").read_text()
    for path in DEPLOY.glob("*.yaml"):
        assert f"deploy/kubernetes/{path.name}" in page
