"""The real kube-scheduler places GPU pods on kwok's fake nodes, and refuses pods no node can hold."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s
from maas_devcluster.testing import wait_until
from maas_devcluster.topology import (
    BLOCK_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    HOSTNAME_LABEL,
    RACK_LABEL,
)

pytestmark = pytest.mark.cluster


def gpu_pod(gpus: int) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=f"gpus-{gpus}-{uuid.uuid4().hex[:6]}"),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="main",
                    # kwok never pulls images; any reference will do.
                    image="registry.invalid/maas/noop:0",
                    resources=k8s.V1ResourceRequirements(limits={GPU_RESOURCE: str(gpus)}),
                )
            ]
        ),
    )


def test_fake_nodes_carry_gpu_capacity_and_topology_labels(core_v1: k8s.CoreV1Api) -> None:
    nodes = core_v1.list_node(label_selector="type=kwok").items

    assert len(nodes) == 4
    for node in nodes:
        labels = node.metadata.labels
        assert node.status.capacity[GPU_RESOURCE] == "8"
        assert node.status.allocatable[GPU_RESOURCE] == "8"
        assert labels[GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
        assert labels[HOSTNAME_LABEL] == node.metadata.name
        assert not node.spec.taints, "pods must schedule on fake nodes without tolerations"
    assert sorted(node.metadata.labels[RACK_LABEL] for node in nodes) == [
        "rack-0",
        "rack-0",
        "rack-1",
        "rack-1",
    ]
    assert {node.metadata.labels[BLOCK_LABEL] for node in nodes} == {"block-0"}


def test_pod_requesting_two_gpus_is_scheduled_and_runs(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    name = core_v1.create_namespaced_pod(namespace, gpu_pod(2)).metadata.name

    pod = wait_until(
        f"pod {name} to run",
        lambda: (found := core_v1.read_namespaced_pod(name, namespace)).status.phase == "Running" and found,
    )

    node = core_v1.read_node(pod.spec.node_name)
    assert node.metadata.labels[GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
    assert pod.status.pod_ip, "kwok assigns pod IPs from its --cidr"


def test_pod_requesting_more_gpus_than_any_node_stays_pending(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    name = core_v1.create_namespaced_pod(namespace, gpu_pod(9)).metadata.name

    def unschedulable_condition() -> k8s.V1PodCondition | None:
        pod = core_v1.read_namespaced_pod(name, namespace)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return condition
        return None

    condition = wait_until(f"the scheduler to give up on {name}", unschedulable_condition)
    assert condition.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition.message
    events = wait_until(
        "a FailedScheduling event",
        lambda: [
            event
            for event in core_v1.list_namespaced_event(
                namespace, field_selector=f"involvedObject.name={name}"
            ).items
            if event.reason == "FailedScheduling"
        ],
    )
    assert "Insufficient nvidia.com/gpu" in events[0].message
    assert core_v1.read_namespaced_pod(name, namespace).status.phase == "Pending"
