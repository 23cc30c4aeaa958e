"""Fixtures for operator tests: the CRD, the operator as a real process, a test's own fake GPU nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from maas_devcluster.testing import LocalCluster, wait_until

from tests.cluster.operator.support import (
    Jobs,
    OperatorProcess,
    install_crd,
    pool_node_manifests,
    wait_nodes_ready,
)


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> None:
    install_crd(cluster)


@pytest.fixture(scope="session")
def operator(
    cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator process for the session; a test that kills it must start it again (`start()`)."""
    process = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def jobs(cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> Iterator[Jobs]:
    """MaaSJob verbs in the test's namespace, with the operator running."""
    if not operator.alive():
        operator.start()
    yield Jobs(cluster, namespace)
    if operator.process is None or operator.process.poll() is not None:
        operator.start()


@pytest.fixture
def pool(cluster: LocalCluster, namespace: str) -> Iterator[str]:
    """Two fake nodes x 8 GPUs of the test's own (label test.maas.dev/pool=<namespace>); removed afterwards."""
    manifests = pool_node_manifests(namespace, 2)
    for manifest in manifests:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    names = [m["metadata"]["name"] for m in manifests]
    wait_nodes_ready(cluster, names)
    yield namespace
    cluster.kubectl("delete", "nodes", *names, "--ignore-not-found", "--wait=false")
    wait_until(
        "the test's nodes gone",
        lambda: (
            not json.loads(
                cluster.kubectl("get", "nodes", "-l", f"test.maas.dev/pool={namespace}", "-o", "json").stdout
            )["items"]
        ),
    )
