"""Fake node manifests from cluster descriptions (pure: no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from maas_devcluster.topology import (
    BLOCK_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    HOSTNAME_LABEL,
    KWOK_ANNOTATION_KEY,
    RACK_LABEL,
    ClusterDescription,
    NodePool,
    build_node_manifests,
    load_cluster_description,
    parse_cluster_description,
)


def test_default_cluster_is_four_nodes_of_eight_h100s_in_two_racks_of_one_block() -> None:
    nodes = build_node_manifests(load_cluster_description())

    assert [node["metadata"]["name"] for node in nodes] == [f"gpu-node-{index}" for index in range(4)]
    for node in nodes:
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
        assert node["metadata"]["labels"][HOSTNAME_LABEL] == node["metadata"]["name"]
        assert node["metadata"]["annotations"][KWOK_ANNOTATION_KEY] == "fake"
        assert "taints" not in node["spec"]
    assert [node["metadata"]["labels"][RACK_LABEL] for node in nodes] == [
        "rack-0",
        "rack-0",
        "rack-1",
        "rack-1",
    ]
    assert {node["metadata"]["labels"][BLOCK_LABEL] for node in nodes} == {"block-0"}


def test_pools_get_racks_and_blocks_of_their_own() -> None:
    cluster = ClusterDescription(
        pools=(
            NodePool(name_prefix="h100-", count=3, nodes_per_rack=2, racks_per_block=1),
            NodePool(name_prefix="a100-", count=2, gpu_product="NVIDIA-A100-SXM4-80GB", nodes_per_rack=2),
        )
    )
    labels = [node["metadata"]["labels"] for node in build_node_manifests(cluster)]

    assert [(label[RACK_LABEL], label[BLOCK_LABEL]) for label in labels] == [
        ("rack-0", "block-0"),
        ("rack-0", "block-0"),
        ("rack-1", "block-1"),
        ("rack-2", "block-2"),
        ("rack-2", "block-2"),
    ]
    assert labels[-1][GPU_PRODUCT_LABEL] == "NVIDIA-A100-SXM4-80GB"


def test_node_count_override_scales_to_thousands_with_unique_names_and_addresses() -> None:
    nodes = build_node_manifests(load_cluster_description().with_node_count(5000))

    assert len({node["metadata"]["name"] for node in nodes}) == 5000
    assert nodes[0]["metadata"]["name"] == "gpu-node-0000"
    addresses = {node["status"]["addresses"][0]["address"] for node in nodes}
    assert len(addresses) == 5000


def test_cluster_file_errors_name_the_field(tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text("pools:\n  - count: -1\n")
    with pytest.raises(ValueError, match=r"pools\[0\]\.count"):
        load_cluster_description(cluster_file)
    with pytest.raises(ValueError, match="unknown keys"):
        parse_cluster_description({"pools": [{"gpus": 8}]})
    two_pools = ClusterDescription(pools=(NodePool(name_prefix="a-"), NodePool(name_prefix="b-")))
    with pytest.raises(ValueError, match="one-pool"):
        two_pools.with_node_count(10)
