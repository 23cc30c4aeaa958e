"""Turns a cluster description (YAML) into the fake GPU Node manifests that kwok keeps alive."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# The operator's placement defaults read these exact keys; keep them in step with maas_api.
HOSTNAME_LABEL = "kubernetes.io/hostname"
RACK_LABEL = "topology.maas.dev/rack"
BLOCK_LABEL = "topology.maas.dev/block"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_RESOURCE = "nvidia.com/gpu"

# kwok manages only nodes with this annotation (started with --manage-nodes-with-annotation-selector).
KWOK_ANNOTATION_KEY = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
KWOK_NODE_SELECTOR = f"{KWOK_ANNOTATION_KEY}={KWOK_ANNOTATION_VALUE}"

# Fake node addresses live outside the service range (10.0.0.0/24) and kwok's pod range.
NODE_ADDRESS_RANGE = ipaddress.ip_network("172.16.0.0/12")


@dataclass(frozen=True)
class NodePool:
    """A group of identical fake nodes laid out rack by rack."""

    name_prefix: str = "gpu-node-"
    count: int = 4
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_memory_mib: int = 81559
    cpu: str = "192"
    memory: str = "2Ti"
    pods: int = 110
    nodes_per_rack: int = 2
    racks_per_block: int = 2
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterDescription:
    """What the local cluster looks like: its name and its pools of fake GPU nodes."""

    name: str = "maas-dev"
    pools: tuple[NodePool, ...] = (NodePool(),)

    @property
    def node_count(self) -> int:
        return sum(pool.count for pool in self.pools)

    def with_node_count(self, count: int) -> ClusterDescription:
        """The same cluster with `count` nodes, for scale runs; only a one-pool description can be resized."""
        if len(self.pools) != 1:
            raise ValueError(
                f"--nodes resizes a one-pool cluster, but {self.name!r} has {len(self.pools)} pools; "
                "edit the pool counts in the cluster file instead"
            )
        return replace(self, pools=(replace(self.pools[0], count=count),))


_POOL_KEYS = {
    "namePrefix": "name_prefix",
    "count": "count",
    "gpusPerNode": "gpus_per_node",
    "gpuProduct": "gpu_product",
    "gpuMemoryMiB": "gpu_memory_mib",
    "cpu": "cpu",
    "memory": "memory",
    "pods": "pods",
    "nodesPerRack": "nodes_per_rack",
    "racksPerBlock": "racks_per_block",
    "labels": "labels",
}


def parse_cluster_description(document: dict[str, Any], source: str = "<cluster>") -> ClusterDescription:
    """Validates a parsed cluster YAML; errors name the field and the file."""
    unknown = set(document) - {"name", "pools"}
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)}; expected 'name' and 'pools'")
    raw_pools = document.get("pools") or []
    if not isinstance(raw_pools, list) or not raw_pools:
        raise ValueError(f"{source}: 'pools' must be a non-empty list of node pools")
    pools = []
    for index, raw_pool in enumerate(raw_pools):
        where = f"{source}: pools[{index}]"
        unknown = set(raw_pool) - set(_POOL_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_POOL_KEYS)}")
        pool = NodePool(**{_POOL_KEYS[key]: value for key, value in raw_pool.items()})
        for number_field in ("count", "gpus_per_node", "nodes_per_rack", "racks_per_block", "pods"):
            value = getattr(pool, number_field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}.{number_field}: must be a whole number >= 0, got {value!r}")
        if pool.nodes_per_rack == 0 or pool.racks_per_block == 0:
            raise ValueError(f"{where}: nodesPerRack and racksPerBlock must be at least 1")
        pools.append(replace(pool, cpu=str(pool.cpu), memory=str(pool.memory)))
    prefixes = [pool.name_prefix for pool in pools]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"{source}: every pool needs its own namePrefix, got {prefixes}")
    return ClusterDescription(name=str(document.get("name", "maas-dev")), pools=tuple(pools))


def load_cluster_description(path: Path | None = None) -> ClusterDescription:
    """Reads a cluster file; without one, the packaged default (4 nodes x 8 H100s)."""
    if path is None:
        text = resources.files("maas_devcluster").joinpath("clusters/default.yaml").read_text()
        return parse_cluster_description(yaml.safe_load(text), "default.yaml")
    return parse_cluster_description(yaml.safe_load(path.read_text()) or {}, str(path))


def build_node_manifests(cluster: ClusterDescription) -> list[dict[str, Any]]:
    """One Node per fake machine, with GPU capacity in status (kwok keeps what it finds there)."""
    nodes: list[dict[str, Any]] = []
    address_offset = 1
    # Racks and blocks are numbered across pools (each pool starts a fresh rack and block), so two pools
    # never share a rack by accident.
    first_rack = 0
    first_block = 0
    for pool in cluster.pools:
        width = max(1, len(str(pool.count - 1)))
        for index in range(pool.count):
            rack_in_pool = index // pool.nodes_per_rack
            rack_index = first_rack + rack_in_pool
            block_index = first_block + rack_in_pool // pool.racks_per_block
            node_name = f"{pool.name_prefix}{index:0{width}d}"
            resources_of_node = {
                "cpu": pool.cpu,
                "memory": pool.memory,
                "pods": str(pool.pods),
                "ephemeral-storage": "10Ti",
            }
            if pool.gpus_per_node:
                resources_of_node[GPU_RESOURCE] = str(pool.gpus_per_node)
            labels = {
                HOSTNAME_LABEL: node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                RACK_LABEL: f"rack-{rack_index}",
                BLOCK_LABEL: f"block-{block_index}",
                **pool.labels,
            }
            if pool.gpus_per_node:
                labels[GPU_PRODUCT_LABEL] = pool.gpu_product
                labels[GPU_COUNT_LABEL] = str(pool.gpus_per_node)
                labels[GPU_MEMORY_LABEL] = str(pool.gpu_memory_mib)
            node_address = str(NODE_ADDRESS_RANGE[address_offset])
            address_offset += 1
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": node_name,
                        "labels": labels,
                        "annotations": {
                            KWOK_ANNOTATION_KEY: KWOK_ANNOTATION_VALUE,
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                    },
                    # No kwok taint: pods schedule here without tolerations, as on a real GPU pool.
                    "spec": {},
                    "status": {
                        "capacity": resources_of_node,
                        "allocatable": dict(resources_of_node),
                        "addresses": [
                            {"type": "InternalIP", "address": node_address},
                            {"type": "Hostname", "address": node_name},
                        ],
                    },
                }
            )
        racks_in_pool = -(-pool.count // pool.nodes_per_rack)
        first_rack += racks_in_pool
        first_block += -(-racks_in_pool // pool.racks_per_block)
    return nodes
