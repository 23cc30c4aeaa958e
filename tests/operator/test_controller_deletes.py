"""What the controller records of its own pod deletes: a forced delete is gone at once, a graceful one
terminates until its watch event, and one terminating long past its grace period is looked up again."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from maas_operator import names
from maas_operator.controller import Controller
from maas_operator.kube import Kube
from maas_operator.reconcile import Decision, PodDeletion, reconcile
from maas_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POD = "train-r0-s0"
NODE = {
    "kind": "Node",
    "metadata": {"name": "n0", "labels": {"kubernetes.io/hostname": "n0"}},
    "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
}


class FakeKube:
    """Answers deletes as the API server does (the pod's last state, marked for deletion), lookups as if
    the pod were gone, and writes by echoing them."""

    def __init__(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.deletes: list[tuple[str, int | None]] = []
        self.lookups: list[str] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.lookups.append(name)
        return None

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return manifest

    async def apply_status(self, job: Any, status: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "MaaSJob",
            "metadata": {"name": job.name, "namespace": job.namespace},
            "status": status,
        }

    async def post_event(self, job: Any, event: Any, count: int = 1) -> None:
        return None

    async def delete(
        self, kind: str, namespace: str, name: str, grace_seconds: int | None = None, uid: str | None = None
    ) -> dict[str, Any] | None:
        self.deletes.append((name, grace_seconds))
        answer = copy.deepcopy(self.pod)
        answer["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        answer["metadata"]["deletionGracePeriodSeconds"] = 30 if grace_seconds is None else grace_seconds
        answer["metadata"]["resourceVersion"] = "8"
        return answer


def job_body() -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": "train", "namespace": "ns", "uid": "u1", "resourceVersion": "1"},
        "spec": {"mode": "Train", "model": {"catalog": "LargeModel"}, "resources": {"gpus": 1}},
    }


def pod_body(finalizers: list[str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": POD,
        "namespace": "ns",
        "labels": {names.JOB_LABEL: "train"},
        "resourceVersion": "7",
    }
    if finalizers:
        metadata["finalizers"] = finalizers
    return {
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": "n0", "containers": [{"name": "worker"}]},
        "status": {"phase": "Running"},
    }


def delete_once(force: bool, finalizers: list[str] | None = None) -> dict[str, Any] | None:
    """Runs one decision that deletes the pod; returns the pod as the cache has it afterwards."""
    pod = pod_body(finalizers)
    kube = FakeKube(pod)
    controller = Controller(cast(Kube, kube), OperatorSettings())
    controller.on_job("ADDED", job_body())
    controller.on_pod("ADDED", pod)

    async def carry_out() -> None:
        observed = controller.cache.observe("ns/train", NOW)
        assert observed is not None
        decision = Decision(status=observed.status, delete_pods=[PodDeletion(POD, force=force)])
        await controller._carry_out("ns/train", observed, decision)

    asyncio.run(carry_out())
    assert kube.deletes == [(POD, 0 if force else None)]
    return controller.cache.pods["ns/train"].get(POD)


def test_a_forced_delete_is_gone_from_the_cache_at_once() -> None:
    """The bug this guards against: a restarted operator force-deletes the old gang's pods before kopf's
    watch begins, so their DELETED events never come; kept as terminating, they blocked the new gang."""
    assert delete_once(force=True) is None


@pytest.mark.parametrize(
    ("force", "finalizers"), [(False, None), (True, ["example.com/keep"])], ids=["graceful", "finalizer"]
)
def test_a_delete_that_takes_time_leaves_the_pod_terminating(
    force: bool, finalizers: list[str] | None
) -> None:
    cached = delete_once(force, finalizers)
    assert cached is not None and cached["metadata"]["deletionTimestamp"]


def test_a_pod_terminating_long_past_its_grace_period_is_looked_up_again() -> None:
    """The bug this guards against: a restarted operator deleted the old gang's failed pods before kopf's
    watch began; their DELETED events never came, and the job waited for them (Restarting, no pods)."""
    kube = FakeKube(pod_body())
    controller = Controller(cast(Kube, kube), OperatorSettings())
    controller.on_job("ADDED", job_body())
    controller.on_node("ADDED", NODE)
    ghost = pod_body()
    ghost["metadata"]["deletionTimestamp"] = "2025-12-31T23:59:00Z"  # a minute before NOW
    ghost["metadata"]["labels"][names.GANG_LABEL] = "an-older-attempt"
    controller.on_pod("MODIFIED", ghost)

    async def reconcile_now() -> None:
        observed = controller.cache.observe("ns/train", NOW)
        assert observed is not None
        decision = reconcile(observed, OperatorSettings())
        assert decision.verify_pods == [POD]
        await controller._carry_out("ns/train", observed, decision)

    asyncio.run(reconcile_now())
    assert kube.lookups == [POD]
    assert controller.cache.pods["ns/train"] == {}


def test_a_pod_terminating_within_its_grace_period_is_left_to_its_watch_event() -> None:
    controller = Controller(cast(Kube, FakeKube(pod_body())), OperatorSettings())
    controller.on_job("ADDED", job_body())
    controller.on_node("ADDED", NODE)
    terminating = pod_body()
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:05Z"  # its grace period ends after NOW
    terminating["metadata"]["labels"][names.GANG_LABEL] = "an-older-attempt"
    controller.on_pod("MODIFIED", terminating)
    observed = controller.cache.observe("ns/train", NOW)
    assert observed is not None
    assert reconcile(observed, OperatorSettings()).verify_pods == []
