"""Our kwok Stages: fake nodes stay Ready or are lost on demand, and pods run, exit or vanish as told."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip(
    "kubernetes", reason="the cluster tests talk to the API server with the `kubernetes` client"
)

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from maas_devcluster.fake_nodes import node_is_schedulable
from maas_devcluster.simulation import CONTAINERS_READY_ANNOTATION, exit_annotations, node_ready_annotations
from maas_devcluster.testing import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

# `kubectl delete pod` of a Running pod waits for the pod to be gone; a kubelet-like fake must not make it
# sit out the 30 s grace period.
QUICK_DELETE_SECONDS = 5.0


def fake_pod(annotations: dict[str, str] | None = None, containers: int = 1) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=f"sim-{uuid.uuid4().hex[:6]}", annotations=annotations),
        spec=k8s.V1PodSpec(
            # A worker's process ends once; the Stages never restart it whatever the policy says.
            restart_policy="Never",
            containers=[
                # kwok never pulls images; any reference will do.
                k8s.V1Container(name=f"main-{index}", image="registry.invalid/maas/noop:0")
                for index in range(containers)
            ],
        ),
    )


def wait_for_phase(core_v1: k8s.CoreV1Api, namespace: str, name: str, phase: str) -> k8s.V1Pod:
    def pod_in_phase() -> k8s.V1Pod | None:
        pod = core_v1.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == phase else None

    return wait_until(f"pod {name} to be {phase}", pod_in_phase)


def condition_status(conditions: list[k8s.V1PodCondition] | None, condition_type: str) -> str | None:
    return next((c.status for c in conditions or [] if c.type == condition_type), None)


def test_fake_nodes_are_ready_and_renew_their_leases(
    core_v1: k8s.CoreV1Api, admin_api: k8s.ApiClient
) -> None:
    nodes = core_v1.list_node(label_selector="type=kwok").items

    assert nodes
    for node in nodes:
        name = node.metadata.name
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("True", "KubeletReady"), name
        assert {c.type: c.status for c in node.status.conditions if c.type != "Ready"} == {
            "MemoryPressure": "False",
            "DiskPressure": "False",
            "PIDPressure": "False",
        }, name
        assert {address.type for address in node.status.addresses} == {"InternalIP", "Hostname"}, name
        assert node.status.allocatable == node.status.capacity, name
        assert node.status.node_info.kubelet_version, name
        assert node.status.node_info.architecture == node.metadata.labels["kubernetes.io/arch"], name
        # What keeps a node Ready between status reports: the node lifecycle controller watches this Lease.
        lease = k8s.CoordinationV1Api(admin_api).read_namespaced_lease(name, "kube-node-lease")
        renewed_ago = datetime.now(UTC) - lease.spec.renew_time
        assert renewed_ago < timedelta(seconds=lease.spec.lease_duration_seconds), name


@pytest.fixture
def lost_node(core_v1: k8s.CoreV1Api, admin_api: k8s.ApiClient) -> Iterator[str]:
    """A fake node the test may mark lost; it is Ready and schedulable again afterwards, for other tests."""
    name = sorted(node.metadata.name for node in core_v1.list_node(label_selector="type=kwok").items)[-1]
    yield name
    core_v1.patch_node(name, {"metadata": {"annotations": node_ready_annotations(ready=True)}})
    wait_until(
        f"node {name} to be schedulable again",
        lambda: node_is_schedulable(admin_api.sanitize_for_serialization(core_v1.read_node(name))),
    )


def test_node_annotated_not_ready_is_lost_until_the_annotation_goes(
    core_v1: k8s.CoreV1Api, admin_api: k8s.ApiClient, lost_node: str
) -> None:
    def ready_status() -> str | None:
        return condition_status(core_v1.read_node(lost_node).status.conditions, "Ready")

    core_v1.patch_node(lost_node, {"metadata": {"annotations": node_ready_annotations(ready=False)}})
    wait_until(f"node {lost_node} to turn NotReady", lambda: ready_status() == "False")
    # The node lifecycle controller believes it: no new pods go there.
    wait_until(
        f"the not-ready taint on {lost_node}",
        lambda: not node_is_schedulable(admin_api.sanitize_for_serialization(core_v1.read_node(lost_node))),
    )

    core_v1.patch_node(lost_node, {"metadata": {"annotations": node_ready_annotations(ready=True)}})
    wait_until(f"node {lost_node} to be Ready again", lambda: ready_status() == "True")


def test_pod_bound_to_a_fake_node_runs_and_is_ready(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    name = core_v1.create_namespaced_pod(namespace, fake_pod(containers=2)).metadata.name

    pod = wait_for_phase(core_v1, namespace, name, "Running")

    assert condition_status(pod.status.conditions, "Ready") == "True"
    assert condition_status(pod.status.conditions, "ContainersReady") == "True"
    assert [status.name for status in pod.status.container_statuses] == ["main-0", "main-1"]
    for status in pod.status.container_statuses:
        assert status.ready and status.state.running is not None, status.name
    node = core_v1.read_node(pod.spec.node_name)
    assert pod.status.host_ip in {a.address for a in node.status.addresses if a.type == "InternalIP"}
    assert pod.status.pod_ip
    assert pod.status.start_time is not None


def test_exit_code_zero_makes_the_pod_succeed(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    pod = fake_pod(exit_annotations(0), containers=2)
    name = core_v1.create_namespaced_pod(namespace, pod).metadata.name

    pod = wait_for_phase(core_v1, namespace, name, "Succeeded")

    assert condition_status(pod.status.conditions, "Ready") == "False"
    for status in pod.status.container_statuses:
        assert not status.ready, status.name
        assert (status.state.terminated.exit_code, status.state.terminated.reason) == (0, "Completed")


def test_exit_code_after_seconds_fails_the_pod_after_it_ran(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    after_seconds = 1
    pod = fake_pod(exit_annotations(75, after_seconds=after_seconds))
    name = core_v1.create_namespaced_pod(namespace, pod).metadata.name

    wait_for_phase(core_v1, namespace, name, "Running")
    pod = wait_for_phase(core_v1, namespace, name, "Failed")

    assert condition_status(pod.status.conditions, "Ready") == "False"
    (status,) = pod.status.container_statuses
    terminated = status.state.terminated
    assert (terminated.exit_code, terminated.reason) == (75, "Error")
    assert terminated.finished_at - terminated.started_at >= timedelta(seconds=after_seconds)


def test_running_pod_annotated_later_exits_with_that_code(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    name = core_v1.create_namespaced_pod(namespace, fake_pod()).metadata.name
    wait_for_phase(core_v1, namespace, name, "Running")

    # Its deadline (startTime + 0 s) has passed: it ends as soon as kwok sees the annotation.
    core_v1.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": exit_annotations(3)}})
    pod = wait_for_phase(core_v1, namespace, name, "Failed")

    (status,) = pod.status.container_statuses
    assert status.state.terminated.exit_code == 3


def test_deleting_a_running_pod_is_quick(
    cluster: LocalCluster, core_v1: k8s.CoreV1Api, namespace: str
) -> None:
    name = core_v1.create_namespaced_pod(namespace, fake_pod()).metadata.name
    wait_for_phase(core_v1, namespace, name, "Running")

    started = time.monotonic()
    # Default grace period (30 s); kubectl waits until the pod is gone.
    cluster.kubectl("delete", "pod", name, "--namespace", namespace, timeout=30)
    elapsed = time.monotonic() - started

    assert elapsed < QUICK_DELETE_SECONDS, f"kubectl delete pod took {elapsed:.1f} s"
    with pytest.raises(ApiException) as missing:
        core_v1.read_namespaced_pod(name, namespace)
    assert missing.value.status == 404


def test_scheduling_gated_pod_stays_pending_without_a_node(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    gated = fake_pod()
    gated.spec.scheduling_gates = [k8s.V1PodSchedulingGate(name="maas.dev/test-gate")]
    gated_name = core_v1.create_namespaced_pod(namespace, gated).metadata.name
    # A pod created after it runs: the scheduler and kwok have handled the gated one's events by then.
    control_name = core_v1.create_namespaced_pod(namespace, fake_pod()).metadata.name
    wait_for_phase(core_v1, namespace, control_name, "Running")

    pod = core_v1.read_namespaced_pod(gated_name, namespace)

    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "SchedulingGated")


def test_ready_follows_containers_ready_and_the_readiness_gates(
    core_v1: k8s.CoreV1Api, namespace: str
) -> None:
    gate = "test.maas.dev/gate"
    gated = fake_pod()
    gated.spec.readiness_gates = [k8s.V1PodReadinessGate(condition_type=gate)]
    name = core_v1.create_namespaced_pod(namespace, gated).metadata.name

    def conditions() -> tuple[str | None, str | None]:
        pod_conditions = core_v1.read_namespaced_pod(name, namespace).status.conditions
        return condition_status(pod_conditions, "ContainersReady"), condition_status(pod_conditions, "Ready")

    wait_for_phase(core_v1, namespace, name, "Running")
    assert conditions() == ("True", "False"), "the gate is not set yet"

    def set_gate(status: str) -> None:
        body = {"status": {"conditions": [{"type": gate, "status": status}]}}
        core_v1.patch_namespaced_pod_status(name, namespace, body)

    set_gate("True")
    wait_until("Ready once the gate is True", lambda: conditions() == ("True", "True"))
    annotation = {CONTAINERS_READY_ANNOTATION: "false"}
    core_v1.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotation}})
    wait_until("containers not ready, so not Ready", lambda: conditions() == ("False", "False"))
    core_v1.patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": {CONTAINERS_READY_ANNOTATION: None}}}
    )
    wait_until("containers ready again", lambda: conditions() == ("True", "True"))
    set_gate("False")
    wait_until("not Ready once the gate is False", lambda: conditions() == ("True", "False"))


def test_a_pod_annotated_not_ready_runs_without_being_ready(core_v1: k8s.CoreV1Api, namespace: str) -> None:
    name = core_v1.create_namespaced_pod(
        namespace, fake_pod({CONTAINERS_READY_ANNOTATION: "false"})
    ).metadata.name

    pod = wait_for_phase(core_v1, namespace, name, "Running")

    assert condition_status(pod.status.conditions, "ContainersReady") == "False"
    assert condition_status(pod.status.conditions, "Ready") == "False"
    assert not pod.status.container_statuses[0].ready
    core_v1.patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": {CONTAINERS_READY_ANNOTATION: None}}}
    )
    wait_until(
        "ready once the annotation is gone",
        lambda: (
            condition_status(core_v1.read_namespaced_pod(name, namespace).status.conditions, "Ready")
            == "True"
        ),
    )
