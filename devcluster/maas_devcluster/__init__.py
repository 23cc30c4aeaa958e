"""A local Kubernetes control plane built from Go modules, with fake GPU nodes, for tests and the demo."""

from maas_devcluster.control_plane import ClusterStatus, DevCluster, default_state_dir, down, status, up
from maas_devcluster.topology import (
    ClusterDescription,
    NodePool,
    build_node_manifests,
    load_cluster_description,
)

__all__ = [
    "ClusterDescription",
    "ClusterStatus",
    "DevCluster",
    "NodePool",
    "build_node_manifests",
    "default_state_dir",
    "down",
    "load_cluster_description",
    "status",
    "up",
]
