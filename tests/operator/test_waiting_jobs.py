"""Jobs that wait for room: a new unplaceable job says so in one event, and freed GPUs wake it at once
(rather than at the next resync)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from maas_api.job import parse_maasjob
from maas_api.plan import Plan
from maas_api.status import ConditionType, MaaSJobStatus
from maas_operator import names
from maas_operator.children import JobRef
from maas_operator.controller import Controller
from maas_operator.kube import Kube
from maas_operator.reconcile import UNSCHEDULABLE, Observed, reconcile
from maas_operator.settings import OperatorSettings
from maas_operator.world import pinned_node, planner_node, worker_pod

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec(replicas: int) -> dict[str, Any]:
    return {
        "mode": "Train",
        "model": {"catalog": "LargeModel"},
        "split": {"stages": 3},
        "parallelism": {"replicas": replicas},
        "resources": {"gpus": 1},
    }


def node_body(name: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def observed(replicas: int, status: MaaSJobStatus | None = None) -> Observed:
    job = parse_maasjob(
        {
            "apiVersion": "maas.dev/v1alpha1",
            "kind": "MaaSJob",
            "metadata": {"name": "huge", "namespace": "ns"},
            "spec": spec(replicas),
        }
    )
    node = planner_node(node_body("n0"))
    assert node is not None
    return Observed(
        job=JobRef("huge", "ns", "uid-1"),
        generation=1,
        spec=job.spec,
        status=status or MaaSJobStatus(),
        plan=None,
        plan_inputs=None,
        pods=(),
        nodes=(node,),
        used_gpus={},
        now=NOW,
    )


def test_a_new_unplaceable_job_gets_one_warning_event_with_the_planners_reason() -> None:
    first = reconcile(observed(replicas=6), OperatorSettings())  # 18 GPUs on one 8-GPU node
    planned = next(c for c in first.status.conditions if c.type == ConditionType.PLANNED)
    assert (planned.status, planned.reason) == ("False", UNSCHEDULABLE)
    assert [(e.type, e.reason, e.message) for e in first.events] == [
        ("Warning", UNSCHEDULABLE, planned.message)
    ]
    assert not first.apply and not first.delete_pods

    again = reconcile(observed(replicas=6, status=first.status), OperatorSettings())
    assert again.events == [], "the same state is news once"


def test_a_new_job_that_fits_says_nothing_of_the_conditions_it_starts_with() -> None:
    decision = reconcile(observed(replicas=2), OperatorSettings())
    assert [e.reason for e in decision.events] == ["WorkersCreated"]


def _body(name: str, conditions: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": "1"},
        "spec": spec(1),
        "status": {"conditions": conditions},
    }


def _pod(name: str, job: str, gpus: int) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": {names.JOB_LABEL: job}},
        "spec": {
            "nodeName": "n0",
            "containers": [{"name": "worker", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


def controller_with_a_waiting_job() -> Controller:
    controller = Controller(cast(Kube, object()), OperatorSettings())
    waiting = {"type": "Planned", "status": "False", "reason": UNSCHEDULABLE, "lastTransitionTime": "x"}
    running = {"type": "Planned", "status": "True", "reason": "Planned", "lastTransitionTime": "x"}
    controller.on_job("ADDED", _body("waiting", [waiting]))
    controller.on_job("ADDED", _body("running", [running]))
    controller.on_pod("ADDED", _pod("running-r0-s0", "running", gpus=1))
    controller.on_pod("ADDED", _pod("running-r0-s1", "running", gpus=0))
    assert controller.cache.unschedulable_job_keys() == ["ns/waiting"]
    return controller


def drain(controller: Controller) -> set[str]:
    """The keys queued now, taken out of the queue."""

    async def take_all() -> set[str]:
        keys = set()
        while len(controller.queue):
            key = await controller.queue.get()
            controller.queue.done(key)
            keys.add(key)
        return keys

    return asyncio.run(take_all())


def test_freed_gpus_wake_the_jobs_waiting_for_room() -> None:
    controller = controller_with_a_waiting_job()
    drain(controller)
    finished = _pod("running-r0-s0", "running", gpus=1)
    finished["status"]["phase"] = "Failed"
    controller.on_pod("MODIFIED", finished)
    assert drain(controller) == {"ns/running", "ns/waiting"}


def test_pods_that_free_no_gpus_wake_only_their_own_job() -> None:
    controller = controller_with_a_waiting_job()
    drain(controller)
    controller.on_pod("DELETED", _pod("running-r0-s1", "running", gpus=0))
    controller.on_pod("MODIFIED", _pod("running-r0-s0", "running", gpus=1))
    assert drain(controller) == {"ns/running"}


def test_a_scale_that_does_not_fit_is_told_once_and_keeps_the_running_plan() -> None:
    running = observed(replicas=2)
    first = reconcile(running, OperatorSettings())
    plan_document = next(m for m in first.apply if m["metadata"]["name"] == names.plan_configmap_name("huge"))
    plan = Plan.model_validate_json(plan_document["data"][names.PLAN_KEY])
    inputs = plan_document["metadata"]["annotations"][names.PLAN_INPUTS_ANNOTATION]
    # The first decision's pods, as they run once the scheduler and kubelet are done with them.
    manifests = {m["metadata"]["name"]: m for m in first.apply if m["kind"] == "Pod"}
    pods = tuple(
        worker_pod(
            {
                **manifest,
                "spec": {**manifest["spec"], "nodeName": pinned_node(manifest)},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )
        for manifest in manifests.values()
    )
    assert len(pods) == 6 and not any(p.gated for p in pods)
    steady = reconcile(
        replace(observed(replicas=2, status=first.status), plan=plan, plan_inputs=inputs, pods=pods),
        OperatorSettings(),
    )
    assert [e.reason for e in steady.events] == ["AllWorkersReady"]
    scaled = replace(
        observed(replicas=6, status=steady.status), plan=plan, plan_inputs=inputs, generation=2, pods=pods
    )

    refused = reconcile(scaled, OperatorSettings())
    planned = next(c for c in refused.status.conditions if c.type == ConditionType.PLANNED)
    assert (planned.status, planned.reason, planned.observed_generation) == ("False", UNSCHEDULABLE, 2)
    assert refused.status.replicas == 2, "the running plan stays"
    assert sorted(e.reason for e in refused.events) == ["ReplanUnschedulable", UNSCHEDULABLE]

    again = reconcile(replace(scaled, status=refused.status), OperatorSettings())
    assert again.events == [], "the same refusal is news once"
