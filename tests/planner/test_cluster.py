"""Reading Node objects: the three file shapes, taints, cordons, readiness and errors that name the field."""

from __future__ import annotations

import pytest
import yaml
from maas_operator.planner.cluster import NodeFileError, Taint, load_nodes, parse_node

from .helpers import node_object


def test_list_plain_list_and_multi_document_forms_agree() -> None:
    items = [node_object("a", 8), node_object("b", 4)]
    as_list = load_nodes(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    as_plain = load_nodes(yaml.safe_dump(items))
    as_docs = load_nodes(yaml.safe_dump_all(items))
    assert as_list == as_plain == as_docs
    assert [(n.name, n.gpus) for n in as_list] == [("a", 8), ("b", 4)]


def test_node_fields() -> None:
    raw = node_object("a", 8)
    raw["spec"] = {
        "unschedulable": True,
        "taints": [{"key": "gpu", "value": "broken", "effect": "NoSchedule"}],
    }
    raw["metadata"]["annotations"] = {"maas.dev/used-gpus": "3"}
    raw["metadata"]["labels"]["nvidia.com/gpu.memory"] = "81559"
    raw["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    parsed = parse_node(raw)
    assert parsed.unschedulable and not parsed.ready and parsed.used_gpus == 3
    assert parsed.taints == (Taint("gpu", "broken", "NoSchedule"),)
    assert str(parsed.taints[0]) == "gpu=broken:NoSchedule"
    assert parsed.gpu_memory_bytes == 81559 * 2**20
    assert parsed.gpu_product == "NVIDIA-H100-80GB-HBM3"


def test_node_without_gpu_resource_has_zero_gpus() -> None:
    raw = node_object("cpu-only")
    del raw["status"]["allocatable"]["nvidia.com/gpu"]
    assert parse_node(raw).gpus == 0


def test_errors_name_the_file_and_field() -> None:
    bad = node_object("a")
    bad["status"]["allocatable"]["nvidia.com/gpu"] = "lots"
    text = yaml.safe_dump({"kind": "List", "items": [node_object("ok"), bad]})
    with pytest.raises(
        NodeFileError, match=r"nodes.yaml: items\[1\].status.allocatable.nvidia.com/gpu: 'lots'"
    ):
        load_nodes(text, "nodes.yaml")
    with pytest.raises(NodeFileError, match=r"items\[0\].metadata.name: every node needs a name"):
        load_nodes(
            yaml.safe_dump({"kind": "List", "items": [{"kind": "Node", "metadata": {}}]}), "nodes.yaml"
        )
    with pytest.raises(NodeFileError, match="expected Node, got 'Pod'"):
        load_nodes(yaml.safe_dump({"kind": "Pod", "metadata": {"name": "x"}}))
    with pytest.raises(NodeFileError, match="not valid YAML"):
        load_nodes("kind: [unclosed")
    with pytest.raises(NodeFileError, match="repeated: a"):
        load_nodes(yaml.safe_dump([node_object("a"), node_object("a")]))
    with pytest.raises(NodeFileError, match=r"spec.taints\[0\]: a taint needs key and effect"):
        load_nodes(yaml.safe_dump([{**node_object("a"), "spec": {"taints": [{"key": "x"}]}}]))
