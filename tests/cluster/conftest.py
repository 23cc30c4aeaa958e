"""Starts one real local control plane for the cluster tests of a session and stops it at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from maas_devcluster.control_plane import down, up
from maas_devcluster.testing import LocalCluster, wait_until

if TYPE_CHECKING:
    from kubernetes import client as k8s

# The fixtures import the `kubernetes` client (a test dependency) lazily, so the rest of the suite starts fast.


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster (the default description: 4 nodes x 8 GPUs) for the whole session, in a temp folder."""
    state_dir = tmp_path_factory.mktemp("dev-cluster")
    running = up(state_dir)
    try:
        yield LocalCluster(running)
    finally:
        down(state_dir)


@pytest.fixture(scope="session")
def admin_api(cluster: LocalCluster) -> k8s.ApiClient:
    """The official Python client, as the cluster admin."""
    from kubernetes import config as k8s_config

    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core_v1(admin_api: k8s.ApiClient) -> k8s.CoreV1Api:
    from kubernetes import client as k8s

    return k8s.CoreV1Api(admin_api)


@pytest.fixture
def namespace(core_v1: k8s.CoreV1Api) -> Iterator[str]:
    """A namespace of the test's own, so tests never see each other's objects."""
    from kubernetes import client as k8s

    name = f"test-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    # Pods in a new namespace are refused until the controller-manager has made its default ServiceAccount.
    wait_until(
        f"the default ServiceAccount in {name}",
        lambda: any(
            account.metadata.name == "default"
            for account in core_v1.list_namespaced_service_account(name).items
        ),
    )
    yield name
    core_v1.delete_namespace(name, propagation_policy="Background")
