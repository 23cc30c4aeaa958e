"""What the controller records of its own pod deletes: a forced delete is gone at once, a graceful one
terminates until its watch event."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from maas_operator import names
from maas_operator.controller import Controller
from maas_operator.kube import Kube
from maas_operator.reconcile import Decision, PodDeletion
from maas_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POD = "train-r0-s0"


class FakeKube:
    """Answers deletes as the API server does: the pod's last state, marked for deletion."""

    def __init__(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.deletes: list[tuple[str, int | None]] = []

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
