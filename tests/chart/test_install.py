"""The chart installed on the local cluster, and the operator running with the chart's ServiceAccount token
(not the admin's) and the chart's settings: a whole job lifecycle works (the RBAC is enough), Secrets and, in
namespaced mode, everything outside the watched namespaces are refused (the RBAC is least).

The operator runs as a process of this machine: the local cluster's nodes are kwok's and run no containers.
The chart's Deployment is still created, and its pod admitted under the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from maas_devcluster.simulation import exit_annotations
from maas_devcluster.testing import LocalCluster, wait_until

from tests.chart.support import CHART, FULLNAME, RELEASE, RELEASE_NAMESPACE, run_helm, values_arguments
from tests.cluster.operator.support import Jobs, OperatorProcess, train_job

pytestmark = pytest.mark.cluster


def helm_install(cluster: LocalCluster, values: dict[str, Any]) -> str:
    """`helm upgrade --install` of the chart as release `maas`; returns helm's output (NOTES included)."""
    result = run_helm(
        "upgrade",
        "--install",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE_NAMESPACE,
        "--kubeconfig",
        cluster.kubeconfig,
        *values_arguments(values),
    )
    return result.stdout


def create_namespace(cluster: LocalCluster, name: str, labels: dict[str, str] | None = None) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def installed_environment(cluster: LocalCluster) -> dict[str, str]:
    """The operator container's environment as installed (the Deployment the API server holds)."""
    deployment = json.loads(
        cluster.kubectl("get", "deployment", FULLNAME, "-n", RELEASE_NAMESPACE, "-o", "json").stdout
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # An empty value is left out of the stored object.
    return {variable["name"]: variable.get("value", "") for variable in container["env"]}


def account_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    """A kubeconfig whose only credential is a token the TokenRequest API issued for the chart's account."""
    token = cluster.kubectl(
        "create", "token", FULLNAME, "-n", RELEASE_NAMESPACE, "--duration", "1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_cert)},
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def operator_as_account(
    cluster: LocalCluster, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, k8s.ApiClient]]:
    """The operator with the installed settings and the account's token, and a client with the same token."""
    kubeconfig = account_kubeconfig(cluster, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(
        cluster, tmp_path, kubeconfig=kubeconfig, environment=installed_environment(cluster)
    )
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield operator, api
    finally:
        operator.stop()
        api.close()


@contextmanager
def phases_seen(cluster: LocalCluster, namespace: str, name: str) -> Iterator[list[str]]:
    """Every phase the job's status passes through, from a watch (polling could miss a short one)."""
    seen: list[str] = []
    command = cluster.dev_cluster.kubectl_command(
        "get", "maasjob", name, "-n", namespace, "--watch", "-o", "jsonpath={.status.phase}{'\\n'}"
    )
    watch = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield seen
    finally:
        watch.terminate()
        output, _ = watch.communicate(timeout=10)
        for line in output.splitlines():
            if line and (not seen or seen[-1] != line):
                seen.append(line)


def refused(call: Any, *arguments: Any) -> bool:
    """True when the API server answers 403 to this request."""
    try:
        call(*arguments)
    except ApiException as error:
        if error.status == 403:
            return True
        raise
    return False


def short_job(name: str) -> dict[str, Any]:
    """3 workers that exit 0 after 4 s (kwok's simulation), then the job is deleted 2 s after it succeeded."""
    return train_job(
        name,
        template={"annotations": exit_annotations(0, 4)},
        runPolicy={"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 2},
    )


def run_lifecycle(jobs: Jobs, operator: OperatorProcess, cluster: LocalCluster, name: str) -> list[str]:
    """Applies a short job before the operator starts (so the watch sees its first status), then waits for the
    operator to take it through its life until its TTL deletes it; returns the phases it went through."""
    jobs.apply(short_job(name))
    with phases_seen(cluster, jobs.namespace, name) as phases:
        operator.start()
        jobs.wait_phase(name, "Succeeded", timeout=90)
        jobs.wait(
            f"{name} deleted after its TTL",
            lambda: jobs.kubectl("get", "maasjob", name, check=False).returncode != 0,
        )
    return phases


def assert_pending_ready_succeeded(phases: list[str]) -> None:
    # Pending first, Running (all workers Ready) on the way, Succeeded last. (While the workers finish one by
    # one the phase may show Pending again for a moment: the status counts a finished worker as not ready.)
    assert phases[0] == "Pending" and phases[-1] == "Succeeded", phases
    assert "Running" in phases and "Failed" not in phases and "Restarting" not in phases, phases


def assert_no_refusals(operator: OperatorProcess) -> None:
    log = operator.log_text()
    for sign in ("403", "Forbidden", "forbidden", "Not enough permissions"):
        assert sign not in log, f"the operator was refused something:\n{log[-4000:]}"


def test_cluster_wide_install_runs_a_job_with_the_accounts_token_and_no_more(
    chart_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = chart_cluster
    # The API server itself checks the Deployment's pod against the "restricted" Pod Security Standard.
    create_namespace(cluster, RELEASE_NAMESPACE, {"pod-security.kubernetes.io/enforce": "restricted"})
    notes = helm_install(cluster, {})
    assert "reconciles MaaSJobs in every namespace" in notes
    wait_until(
        "the operator Deployment's pod admitted",
        lambda: json.loads(
            cluster.kubectl(
                "get",
                "pods",
                "-n",
                RELEASE_NAMESPACE,
                "-l",
                f"app.kubernetes.io/instance={RELEASE}",
                "-o",
                "json",
            ).stdout
        )["items"],
    )
    assert installed_environment(cluster)["MAAS_WATCH_NAMESPACES"] == ""

    create_namespace(cluster, "jobs")
    jobs = Jobs(cluster, "jobs")
    with operator_as_account(cluster, tmp_path) as (operator, api):
        phases = run_lifecycle(jobs, operator, cluster, "first")
        assert_pending_ready_succeeded(phases)
        assert_no_refusals(operator)
        # The operator made each kind of call the chart grants it for (its own request counter).
        requests = operator.metrics()
        for verb, kind in [
            ("PATCH", "Pod"),
            ("DELETE", "Pod"),
            ("PATCH", "ConfigMap"),
            ("PATCH", "Service"),
            ("PATCH", "MaaSJob/status"),
            ("POST", "Event"),
            ("DELETE", "MaaSJob"),
        ]:
            assert f'maas_api_requests_total{{kind="{kind}",verb="{verb}"}}' in requests, (verb, kind)

        # Least: no Secrets anywhere, nothing beyond its own kinds.
        core = k8s.CoreV1Api(api)
        assert refused(core.list_secret_for_all_namespaces)
        assert refused(core.list_namespaced_secret, "jobs")
        assert refused(core.list_namespaced_secret, RELEASE_NAMESPACE)
        assert refused(core.read_namespaced_secret, "anything", "jobs")
        assert refused(k8s.AppsV1Api(api).list_deployment_for_all_namespaces)
        assert refused(core.list_namespace)
        assert not refused(core.list_pod_for_all_namespaces)


def test_namespaced_install_reconciles_only_its_namespaces_and_reads_nothing_else(
    chart_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = chart_cluster
    create_namespace(cluster, RELEASE_NAMESPACE, {"pod-security.kubernetes.io/enforce": "restricted"})
    for namespace in ("team-a", "team-b"):
        create_namespace(cluster, namespace)
    notes = helm_install(cluster, {"watchNamespaces": ["team-a"]})
    assert "It reconciles MaaSJobs in: team-a" in notes
    assert installed_environment(cluster)["MAAS_WATCH_NAMESPACES"] == "team-a"

    team_a, team_b = Jobs(cluster, "team-a"), Jobs(cluster, "team-b")
    with operator_as_account(cluster, tmp_path) as (operator, api):
        team_b.apply(train_job("elsewhere"))
        phases = run_lifecycle(team_a, operator, cluster, "inside")
        assert_pending_ready_succeeded(phases)
        assert_no_refusals(operator)
        # The job outside its namespaces was never touched: no pods, and only the CRD's defaults in its status
        # (no condition, observedGeneration 0: never observed).
        untouched = team_b.get("elsewhere").get("status") or {}
        assert not untouched.get("conditions") and untouched.get("observedGeneration", 0) == 0, untouched
        assert not team_b.pods("elsewhere")

        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        for namespace in ("team-b", RELEASE_NAMESPACE, "default"):
            assert refused(core.list_namespaced_pod, namespace)
            assert refused(core.list_namespaced_config_map, namespace)
            event = k8s.CoreV1Event(
                metadata=k8s.V1ObjectMeta(generate_name="probe."),
                involved_object=k8s.V1ObjectReference(kind="Pod", name="probe", namespace=namespace),
            )
            assert refused(core.create_namespaced_event, namespace, event)
            assert refused(
                custom.list_namespaced_custom_object, "maas.dev", "v1alpha1", namespace, "maasjobs"
            )
        assert refused(core.list_pod_for_all_namespaces)
        assert refused(custom.list_cluster_custom_object, "maas.dev", "v1alpha1", "maasjobs")
        assert refused(core.list_namespaced_secret, "team-a")
        # What it may do: its own namespace's kinds, and read Nodes.
        assert not refused(core.list_namespaced_pod, "team-a")
        assert not refused(core.list_node)


def test_the_less_obvious_grants_are_needed(chart_cluster: LocalCluster, tmp_path: Path) -> None:
    """Server-side apply that creates a child needs `create` besides `patch`, and a child whose owner reference
    blocks the owner's deletion needs `update` on maasjobs/finalizers (OwnerReferencesPermissionEnforcement,
    on in the local cluster as in OpenShift): without either, the operator could not make its first pod."""
    cluster = chart_cluster
    namespace = "grants"
    create_namespace(cluster, namespace)
    cluster.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "probe",
        "-n",
        namespace,
        "--role",
        "probe",
        f"--serviceaccount={namespace}:probe",
    )
    Jobs(cluster, namespace).apply(train_job("owner"))
    uid = json.loads(cluster.kubectl("get", "maasjob", "owner", "-n", namespace, "-o", "json").stdout)[
        "metadata"
    ]["uid"]
    token = cluster.kubectl("create", "token", "probe", "-n", namespace).stdout.strip()
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": "maas.dev/v1alpha1",
                    "kind": "MaaSJob",
                    "name": "owner",
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
    }

    def answer_with(grants: list[dict[str, Any]], refusal: str | None) -> None:
        """Grants the probe account exactly `grants`, then applies the child as that account until the answer
        is the expected one (RBAC changes reach the authorizer within a moment): refused with `refusal`, or
        accepted when it is None. Another answer until the timeout fails the test."""
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "probe", "namespace": namespace},
            "rules": grants,
        }
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(role))
        command = [
            str(cluster.dev_cluster.kubectl),
            "--server",
            cluster.server,
            "--certificate-authority",
            str(cluster.ca_cert),
            "--token",
            token,
            "apply",
            "--server-side",
            "--field-manager",
            "maas-operator",
            "-f",
            "-",
        ]

        def expected_answer() -> bool:
            result = subprocess.run(command, input=json.dumps(child), capture_output=True, text=True)
            return result.returncode == 0 if refusal is None else refusal in result.stderr

        wait_until(f"the answer {refusal or 'accepted'}", expected_answer, timeout=15)

    patch = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}
    answer_with([patch], 'cannot create resource "configmaps"')
    patch_and_create = {**patch, "verbs": ["patch", "create"]}
    answer_with([patch_and_create], "cannot set blockOwnerDeletion")
    finalizers = {"apiGroups": ["maas.dev"], "resources": ["maasjobs/finalizers"], "verbs": ["update"]}
    answer_with([patch_and_create, finalizers], None)
