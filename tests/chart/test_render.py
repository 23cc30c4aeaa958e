"""The chart rendered by helm over several value sets: lint, objects, settings, RBAC, schema, CRD drift."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from maas_devcluster.node_config import NODE_NAME, REAL_NODE_LABEL
from maas_devcluster.node_images import PythonInstallation, worker_pod_patch
from maas_devcluster.real_node import RealNode
from maas_operator.settings import OperatorSettings

from tests.chart.support import (
    CHART,
    FULLNAME,
    RELEASE_NAMESPACE,
    REPO,
    container_env,
    kubernetes_version,
    of_kind,
    one,
    permissions,
    render,
    render_error,
    run_helm,
    values_arguments,
)

pytestmark = pytest.mark.packaging

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "monitored-json": {
        "metrics.serviceMonitor.enabled": True,
        "metrics.serviceMonitor.labels": {"release": "prometheus"},
        "logFormat": "json",
    },
    "own-account": {"serviceAccount.create": False, "serviceAccount.name": "ops-robot", "rbac.create": False},
    "everything-set": {
        "image": {"repository": "registry.example/maas-operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "runtime.image": {
            "repository": "registry.example/maas-runtime",
            "tag": "cu13",
            "pullPolicy": "Always",
        },
        "workerPodPatch": {"spec": {"runtimeClassName": "nvidia", "priorityClassName": "training"}},
        "imagePullSecrets": [{"name": "registry"}],
        "reconcileWorkers": 8,
        "resyncSeconds": 30,
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"operator": "Exists"}],
        "podAnnotations": {"example.com/team": "ml"},
        "metrics.service.enabled": False,
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
    },
}

# What the operator calls (operator/maas_operator/kube.py, controller.py; kopf's watches), and nothing else.
JOB_NAMESPACE_PERMISSIONS = {
    ("maas.dev", "maasjobs", "list"),
    ("maas.dev", "maasjobs", "watch"),
    ("maas.dev", "maasjobs", "delete"),
    ("maas.dev", "maasjobs/status", "patch"),
    ("maas.dev", "maasjobs/finalizers", "update"),
    *(("", "pods", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")),
    ("", "pods/status", "patch"),
    *(("", "configmaps", verb) for verb in ("list", "watch", "create", "patch", "delete")),
    ("", "services", "create"),
    ("", "services", "patch"),
    ("", "events", "create"),
}
NODE_PERMISSIONS = {("", "nodes", "list"), ("", "nodes", "watch")}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_passes(values: dict[str, Any]) -> None:
    result = run_helm(
        "lint", "--strict", CHART, "--kube-version", kubernetes_version(), *values_arguments(values)
    )
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_value_set_renders_one_recreated_restricted_operator(values: dict[str, Any]) -> None:
    objects = render(values)
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    # The Pod Security Standard "restricted" (the cluster test also has the API server enforce it).
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Both probes ask kopf's liveness endpoint, on the port the operator is told to serve it on.
    settings = OperatorSettings.from_environment(container_env(objects))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert settings.liveness_endpoint == f"http://0.0.0.0:{ports['health']}/healthz"
    assert settings.metrics_port == ports["metrics"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Every namespaced object lands in the release's namespace or a watched one.
    for item in objects:
        namespace = item["metadata"].get("namespace")
        assert namespace in (None, RELEASE_NAMESPACE, *settings.watch_namespaces), item["metadata"]


def test_values_become_the_operators_settings() -> None:
    objects = render(VALUE_SETS["everything-set"])
    settings = OperatorSettings.from_environment(container_env(objects))
    assert settings.runtime_image == "registry.example/maas-runtime:cu13"
    assert settings.image_pull_policy == "Always"
    assert settings.worker_pod_patch == {
        "spec": {"runtimeClassName": "nvidia", "priorityClassName": "training"}
    }
    assert (settings.workers, settings.resync_seconds) == (8, 30.0)
    assert settings.watch_namespaces == ()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/maas-operator:0.1.0-rc1"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert not of_kind(objects, "Service")
    # The extras come after the chart's own entries, which they do not replace.
    (container,) = pod["containers"]
    assert container["env"][-1] == {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}
    assert [volume["name"] for volume in pod["volumes"]] == ["tmp", "ca-bundle"]
    assert [mount["mountPath"] for mount in container["volumeMounts"]] == ["/tmp", "/etc/ssl/corporate"]


def test_default_images_follow_the_charts_app_version() -> None:
    objects = render()
    settings = OperatorSettings.from_environment(container_env(objects))
    chart = (CHART / "Chart.yaml").read_text()
    app_version = next(line.split('"')[1] for line in chart.splitlines() if line.startswith("appVersion:"))
    assert settings.runtime_image == f"maas-runtime:{app_version}"
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"maas-operator:{app_version}"
    )
    # The operator's own default runtime image is the same one.
    assert settings.runtime_image == OperatorSettings().runtime_image
    assert settings.log_format == "text"


def test_cluster_wide_rbac_is_one_cluster_role_with_exactly_the_operators_calls() -> None:
    objects = render()
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    role = one(objects, "ClusterRole")
    assert permissions(role["rules"]) == JOB_NAMESPACE_PERMISSIONS | NODE_PERMISSIONS
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    account = one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": RELEASE_NAMESPACE}
    ]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


def test_namespaced_rbac_is_a_role_per_watched_namespace_and_only_nodes_cluster_wide() -> None:
    objects = render(VALUE_SETS["namespaced"])
    assert permissions(one(objects, "ClusterRole")["rules"]) == NODE_PERMISSIONS
    roles = {role["metadata"]["namespace"]: role for role in of_kind(objects, "Role")}
    bindings = {binding["metadata"]["namespace"]: binding for binding in of_kind(objects, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        assert permissions(role["rules"]) == JOB_NAMESPACE_PERMISSIONS
        assert bindings[namespace]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[namespace]["subjects"][0]["namespace"] == RELEASE_NAMESPACE
    settings = OperatorSettings.from_environment(container_env(objects))
    assert settings.watch_namespaces == ("team-a", "team-b")


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_value_set_grants_secrets_or_wildcards(values: dict[str, Any]) -> None:
    for role in of_kind(render(values), "ClusterRole") + of_kind(render(values), "Role"):
        for group, resource, verb in permissions(role["rules"]):
            assert "*" not in (group, resource, verb)
            assert resource != "secrets"
            assert verb not in {"escalate", "bind", "impersonate"}


def test_an_existing_account_without_rbac_renders_neither() -> None:
    objects = render(VALUE_SETS["own-account"])
    assert not of_kind(objects, "ServiceAccount")
    assert not [item for item in objects if item["apiVersion"].startswith("rbac.authorization.k8s.io")]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-robot"
    assert "serviceAccount.name: name the existing ServiceAccount" in render_error(
        {"serviceAccount.create": False}
    )


def test_the_service_monitor_scrapes_the_metrics_service() -> None:
    assert not of_kind(render(), "ServiceMonitor")
    objects = render(VALUE_SETS["monitored-json"])
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    # The Service reaches the operator pod's metrics port.
    pod = one(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert port["targetPort"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert OperatorSettings.from_environment(container_env(objects)).log_format == "json"
    assert "needs metrics.service.enabled" in render_error(
        {"metrics.serviceMonitor.enabled": True, "metrics.service.enabled": False}
    )


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"image.registry": "x"}, "at '/image': additional properties 'registry' not allowed"),
        (
            {"metrics.serviceMonitor.scrapeInterval": "1m"},
            "additional properties 'scrapeInterval' not allowed",
        ),
        ({"runtime.image.pullPolicy": "Sometimes"}, "/runtime/image/pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"reconcileWorkers": 0}, "/reconcileWorkers"),
        ({"extraVolumeMounts": [{"name": "ca", "mountPath": "etc/ca"}]}, "/extraVolumeMounts/0/mountPath"),
        ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    ],
)
def test_the_schema_rejects_unknown_keys_and_bad_values(values: dict[str, Any], complaint: str) -> None:
    assert complaint in render_error(values)


def test_the_real_nodes_values_run_the_operator_pod_there_with_the_host_python() -> None:
    patch = worker_pod_patch(PythonInstallation(Path("/root/.cache/venv/x"), Path("/usr")))
    node = RealNode(
        name=NODE_NAME,
        label=f"{REAL_NODE_LABEL}=true",
        pids={},
        images={"runtime": "maas-runtime:0123", "operator": "maas-operator:4567"},
        worker_pod_patch=patch,
        gateway="10.244.0.1",
        kubelet_port=10250,
        startup_seconds=1.0,
        api_port=6443,
    )
    objects = render(node.chart_values())
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (container["image"], container["imagePullPolicy"]) == ("maas-operator:4567", "Never")
    assert pod["nodeSelector"] == {REAL_NODE_LABEL: "true"}
    assert pod["tolerations"] == patch["spec"]["tolerations"]
    # The operator container mounts the host's Python exactly as the workers do.
    assert pod["volumes"][1:] == patch["spec"]["volumes"]
    assert container["volumeMounts"][1:] == patch["spec"]["containers"][0]["volumeMounts"]
    environment = container_env(objects)
    assert (environment["KUBERNETES_SERVICE_HOST"], environment["KUBERNETES_SERVICE_PORT"]) == (
        "10.244.0.1",
        "6443",
    )
    settings = OperatorSettings.from_environment(environment)
    assert (settings.runtime_image, settings.image_pull_policy) == ("maas-runtime:0123", "Never")
    assert settings.worker_pod_patch == patch
    # Without a reachable API server the values are refused, with the remedy.
    with pytest.raises(RuntimeError, match="up --real-node"):
        replace(node, api_port=None).chart_values()


def test_the_charts_crd_is_the_generated_one() -> None:
    # Helm cannot read outside the chart, so crds/ holds a copy: `make crds` writes both.
    assert (CHART / "crds" / "maasjob.yaml").read_bytes() == (REPO / "crds" / "maasjob.yaml").read_bytes()
    result = run_helm("template", "maas", CHART, "--include-crds", "--kube-version", kubernetes_version())
    first = next(document for document in yaml.safe_load_all(result.stdout) if document)
    assert (first["kind"], first["metadata"]["name"]) == ("CustomResourceDefinition", "maasjobs.maas.dev")


def test_the_kind_scripts_install_values_the_chart_accepts() -> None:
    # CI cannot run hack/kind-up.sh (no Docker): at least its helm values and names must fit the chart.
    script = (REPO / "hack" / "kind-up.sh").read_text()
    assert "release=maas\n" in script and "namespace=maas-system\n" in script
    sets = re.findall(r'--set ([\w.]+)="?([^"\s]+)"?', script)
    assert {key for key, _ in sets} == {
        "image.tag",
        "image.pullPolicy",
        "runtime.image.tag",
        "runtime.image.pullPolicy",
    }
    values = {key: "dev" if value == "$tag" else value for key, value in sets}
    objects = render({key: value for key, value in values.items()})
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["name"] == FULLNAME
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "maas-operator:dev"
    assert OperatorSettings.from_environment(container_env(objects)).runtime_image == "maas-runtime:dev"
    # The e2e script reads the operator's log from the same Deployment.
    assert f"deployment/{FULLNAME}" in (REPO / "hack" / "kind-e2e.sh").read_text()
