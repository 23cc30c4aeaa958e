"""One real-node cluster for the session (`up --real-node`), and the operator running workers on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from maas_devcluster.control_plane import down, up
from maas_devcluster.real_node import RealNode
from maas_devcluster.testing import LocalCluster, wait_until
from maas_devcluster.topology import ClusterDescription, NodePool

from tests.cluster.operator.support import Jobs, OperatorProcess, install_crd

# One small fake GPU node beside the real one: the usual kind of cluster, with pods that really run added.
SMALL_FLEET = ClusterDescription(name="maas-real", pools=(NodePool(count=1),))


@dataclass
class RealNodeCluster:
    cluster: LocalCluster
    node: RealNode


@pytest.fixture(scope="session")
def real_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeCluster]:
    """A cluster of its own with the real node (the session's `cluster` fixture stays kwok-only)."""
    state_dir = tmp_path_factory.mktemp("real-node-cluster")
    running = up(state_dir, SMALL_FLEET, real_node=True, timeout_seconds=300)
    try:
        node = running.real_node()
        assert node is not None
        yield RealNodeCluster(LocalCluster(running), node)
    finally:
        down(state_dir)


@pytest.fixture
def real_namespace(real_node_cluster: RealNodeCluster) -> Iterator[str]:
    """A namespace of the test's own on the real-node cluster."""
    cluster = real_node_cluster.cluster
    name = f"real-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
    wait_until(
        f"the default ServiceAccount in {name}",
        lambda: cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def real_operator(
    real_node_cluster: RealNodeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as a real process, set up by the node's own settings (runtime image, worker pod patch)."""
    install_crd(real_node_cluster.cluster)
    process = OperatorProcess(
        real_node_cluster.cluster,
        tmp_path_factory.mktemp("real-operator"),
        environment=real_node_cluster.node.operator_environment(),
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def real_jobs(
    real_node_cluster: RealNodeCluster, real_namespace: str, real_operator: OperatorProcess
) -> Jobs:
    """MaaSJob verbs in the test's namespace of the real-node cluster, with the operator running."""
    if not real_operator.alive():
        real_operator.start()
    return Jobs(real_node_cluster.cluster, real_namespace)
