"""The Helm chart's Deployment as a pod on the real node: the operator image, installed with the values
`maas dev-cluster chart-values` prints, runs with the chart's ServiceAccount, reaches the API server from the pod
network and reconciles a train job to Succeeded (the host's operator process is stopped meanwhile: one operator
at a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from maas_devcluster.node_config import NODE_NAME

from tests.chart.support import CHART, FULLNAME, RELEASE, RELEASE_NAMESPACE, run_helm, values_arguments
from tests.cluster.operator.support import Jobs, OperatorProcess
from tests.cluster.realnode.conftest import RealNodeCluster
from tests.cluster.realnode.support import reference_train_job

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.timeout(600)]

STEPS = 10


def chart_values(real_node_cluster: RealNodeCluster) -> dict[str, Any]:
    """What a user gets from `maas dev-cluster chart-values` for this cluster."""
    printed = subprocess.run(
        [sys.executable, "-m", "maas_devcluster", "chart-values"],
        capture_output=True,
        text=True,
        env={**os.environ, "MAAS_DEV_CLUSTER_DIR": str(real_node_cluster.cluster.dev_cluster.state_dir)},
        timeout=60,
        check=True,
    )
    values: dict[str, Any] = yaml.safe_load(printed.stdout)
    return values


@pytest.fixture
def operator_pod(
    real_node_cluster: RealNodeCluster, real_operator: OperatorProcess
) -> Iterator[dict[str, Any]]:
    """The chart installed with the real node's values and its operator pod Ready; uninstalled afterwards."""
    cluster = real_node_cluster.cluster
    # One operator at a time: the host's process stops while the chart's runs.
    real_operator.stop()
    values = chart_values(real_node_cluster)
    run_helm(
        "upgrade", "--install", RELEASE, CHART, "--namespace", RELEASE_NAMESPACE, "--create-namespace",
        "--kubeconfig", cluster.kubeconfig, *values_arguments(values),
    )  # fmt: skip
    try:
        # Ready means kopf's /healthz answered the kubelet's probe: the operator listed the cluster from the pod.
        cluster.kubectl(
            "-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{FULLNAME}", "--timeout=180s",
            timeout=200,
        )  # fmt: skip
        pods = json.loads(
            cluster.kubectl(
                "-n", RELEASE_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=maas-operator", "-o", "json"
            ).stdout
        )["items"]  # fmt: skip
        (pod,) = pods
        yield pod
    finally:
        run_helm(
            "uninstall",
            RELEASE,
            "--namespace",
            RELEASE_NAMESPACE,
            "--wait",
            "--kubeconfig",
            cluster.kubeconfig,
        )
        # The session's host operator again, for the tests after this one.
        real_operator.start()


def test_the_charts_operator_runs_as_a_pod_on_the_real_node_and_reconciles_a_job(
    real_node_cluster: RealNodeCluster, real_namespace: str, operator_pod: dict[str, Any]
) -> None:
    cluster = real_node_cluster.cluster
    assert operator_pod["spec"]["nodeName"] == NODE_NAME
    assert operator_pod["spec"]["serviceAccountName"] == FULLNAME
    (container,) = operator_pod["spec"]["containers"]
    assert container["image"] == real_node_cluster.node.images["operator"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    jobs = Jobs(cluster, real_namespace)
    name = "from-the-pod"
    jobs.apply(reference_train_job(name, STEPS, stages=2, replicas=1))
    status = jobs.wait_phase(name, "Succeeded", timeout=400)
    assert status["progress"]["step"] == STEPS and status["progress"]["finished"] is True
    pods = jobs.pods(name)
    assert len(pods) == 2 and {pod["spec"]["nodeName"] for pod in pods} == {NODE_NAME}

    # The pod's operator did it: it signs the job's events with its host name, the pod's name.
    events = jobs.events(name)
    assert events and {event.get("reportingInstance") for event in events} == {
        operator_pod["metadata"]["name"]
    }
