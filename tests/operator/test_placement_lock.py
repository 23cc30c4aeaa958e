"""The placement lock covers the decision only: a decision's new pods are recorded in the cache before their
creates go out, so no request is made under the lock and the next job's decision still counts their GPUs; a
create that fails drops its record again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from maas_devcluster.topology import ClusterDescription, NodePool, build_node_manifests
from maas_operator.cache import WorldCache
from maas_operator.children import JobRef, Manifest
from maas_operator.controller import Controller, new_pods
from maas_operator.kube import Kube
from maas_operator.reconcile import Event
from maas_operator.settings import OperatorSettings
from maas_operator.world import worker_pod


class RecordingKube:
    """Answers writes as the API server would (with a UID), recording each with whether the placement lock was
    held; `fail_pods` makes every pod create fail with that HTTP status."""

    def __init__(self, fail_pods: int | None = None) -> None:
        self.controller: Controller | None = None
        self.calls: list[tuple[str, bool]] = []
        self.gpus_held_at_creates: list[int] = []
        """GPUs the cache counts as held when each pod create goes out."""
        self.fail_pods = fail_pods

    def _record(self, what: str) -> None:
        assert self.controller is not None
        self.calls.append((what, self.controller.placement_lock.locked()))

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        kind = manifest["kind"]
        gated = bool(manifest.get("spec", {}).get("schedulingGates"))
        self._record(f"{kind} applied {'gated' if gated else 'ungated'}" if kind == "Pod" else kind)
        return await self._answer(manifest)

    async def create(self, manifest: Manifest) -> dict[str, Any] | None:
        gated = bool(manifest.get("spec", {}).get("schedulingGates"))
        self._record(f"{manifest['kind']} created {'gated' if gated else 'ungated'}")
        assert self.controller is not None
        self.gpus_held_at_creates.append(sum(h.gpus for h in self.controller.cache.holders.values()))
        return await self._answer(manifest)

    async def lift_gates(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("Pod gates lifted")
        assert self.controller is not None
        pod = self.controller.cache.pods[f"{namespace}/{name.rsplit('-', 2)[0]}"][name]
        return await self._answer(
            {**pod, "spec": {k: v for k, v in pod["spec"].items() if k != "schedulingGates"}}
        )

    async def _answer(self, manifest: Manifest) -> dict[str, Any]:
        # Yield, as a real request does, so concurrent reconciles interleave.
        await asyncio.sleep(0)
        if manifest["kind"] == "Pod" and self.fail_pods is not None:
            raise ApiException(status=self.fail_pods, reason="refused")
        metadata = {
            **manifest["metadata"],
            "uid": f"uid-{manifest['metadata']['name']}",
            "resourceVersion": "5",
        }
        return {**manifest, "metadata": metadata}

    async def apply_status(self, job: JobRef, status: dict[str, Any]) -> dict[str, Any]:
        self._record("status")
        await asyncio.sleep(0)
        assert self.controller is not None
        return {**self.controller.cache.jobs[f"{job.namespace}/{job.name}"], "status": status}

    async def post_event(self, job: JobRef, event: Event, count: int = 1) -> None:
        self._record(f"event {event.reason}")
        await asyncio.sleep(0)


def controller_with_nodes(
    gpus_per_node: int, kube: RecordingKube | None = None
) -> tuple[Controller, RecordingKube]:
    kube = kube or RecordingKube()
    controller = Controller(cast(Kube, kube), OperatorSettings())
    kube.controller = controller
    description = ClusterDescription(pools=(NodePool(count=1, gpus_per_node=gpus_per_node),))
    for node in build_node_manifests(description):
        controller.on_node("ADDED", node)
    return controller, kube


def add_job(controller: Controller, name: str) -> str:
    """A job of 4 one-GPU workers (2 stages x 2 replicas)."""
    controller.on_job(
        "ADDED",
        {
            "apiVersion": "maas.dev/v1alpha1",
            "kind": "MaaSJob",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
            "spec": {
                "mode": "Train",
                "model": {"catalog": "LargeModel"},
                "split": {"stages": 2},
                "parallelism": {"replicas": 2, "microbatches": 4},
                "resources": {"gpus": 1},
            },
        },
    )
    return f"ns/{name}"


def test_no_request_is_made_under_the_lock_and_the_created_pods_are_the_servers() -> None:
    controller, kube = controller_with_nodes(gpus_per_node=8)
    key = add_job(controller, "job")

    async def reconcile_and_post_events() -> None:
        await controller.reconcile(key)
        await controller.events.flush()

    asyncio.run(reconcile_and_post_events())

    assert [what for what, _ in kube.calls] == [
        "status", "ConfigMap", "Service", *["Pod created gated"] * 4, *["Pod gates lifted"] * 4,
        "event WorkersCreated",
    ]  # fmt: skip
    assert not any(locked for _, locked in kube.calls)
    pods = controller.cache.pods[key]
    assert len(pods) == 4 and all(pod["metadata"]["uid"].startswith("uid-") for pod in pods.values())
    assert len(controller.cache.holders) == 4


def test_two_jobs_placed_at_once_never_count_the_same_free_gpus() -> None:
    """One node of 4 GPUs, two jobs of 4: whichever decides second sees the first one's pods as taken, though
    none of the first one's creates has been answered yet when it decides."""
    controller, kube = controller_with_nodes(gpus_per_node=4)
    keys = [add_job(controller, "first"), add_job(controller, "second")]

    async def both() -> None:
        await asyncio.gather(*(controller.reconcile(key) for key in keys))

    asyncio.run(both())

    placed = {key: len(controller.cache.pods.get(key, {})) for key in keys}
    assert sorted(placed.values()) == [0, 4], placed
    waiting = next(key for key in keys if not placed[key])
    planned = next(
        c for c in controller.cache.jobs[waiting]["status"]["conditions"] if c["type"] == "Planned"
    )
    assert (planned["status"], planned["reason"]) == ("False", "Unschedulable")
    assert sum(what == "Pod created gated" for what, _ in kube.calls) == 4


def test_a_failed_create_gives_the_gpus_back_and_the_retry_reserves_them_again() -> None:
    kube = RecordingKube(fail_pods=403)
    controller, _ = controller_with_nodes(gpus_per_node=4, kube=kube)
    key = add_job(controller, "job")

    for _ in range(2):
        with pytest.raises(ApiException):
            asyncio.run(controller.reconcile(key))
        assert controller.cache.pods.get(key, {}) == {}
        assert controller.cache.holders == {}
    # Each attempt's pods were counted as holding their GPUs while their creates were out.
    assert kube.gpus_held_at_creates == [4] * 8

    kube.fail_pods = None  # the cause is fixed (say, the missing ServiceAccount made)
    asyncio.run(controller.reconcile(key))
    assert len(controller.cache.pods[key]) == 4 and len(controller.cache.holders) == 4


def test_a_reservation_outlives_a_late_deleted_event_of_an_older_pod_of_its_name() -> None:
    cache = WorldCache()
    manifest: dict[str, Any] = {
        "kind": "Pod",
        "metadata": {"name": "job-r0-s0", "namespace": "ns", "labels": {"maas.dev/job": "job"}},
        "spec": {
            "nodeName": "n0",
            "containers": [{"name": "worker", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
        },
    }
    (record,) = cache.reserve_pods([manifest])
    older = {**manifest, "metadata": {**manifest["metadata"], "uid": "an-older-pod", "resourceVersion": "3"}}

    cache.put_pod("DELETED", older)
    cache.drop_unconfirmed([])

    assert cache.pods["ns/job"]["job-r0-s0"] is record
    assert len(cache.holders) == 1
    # The server's answer replaces it, and then it is no longer the reservation's to drop.
    cache.put_own_write(
        {**manifest, "metadata": {**manifest["metadata"], "uid": "new", "resourceVersion": "9"}}
    )
    cache.drop_unconfirmed([record])
    assert cache.pods["ns/job"]["job-r0-s0"]["metadata"]["uid"] == "new"
    assert len(cache.holders) == 1


def test_new_pods_are_the_first_apply_of_each_pod_that_does_not_exist() -> None:
    controller, _ = controller_with_nodes(gpus_per_node=8)
    key = add_job(controller, "job")
    observed = controller.cache.observe(key, datetime.now(UTC))
    assert observed is not None
    applies = controller._decide(observed).apply
    created = new_pods(applies, observed.pods)
    assert [m["metadata"]["name"] for m in created] == ["job-r0-s0", "job-r0-s1", "job-r1-s0", "job-r1-s1"]
    assert all(m["spec"]["schedulingGates"] for m in created)
    # After a crash that left every pod made but gated, lifting the gates creates nothing.
    assert new_pods(applies, [worker_pod(m) for m in created]) == []


def test_a_new_job_is_planned_once_unless_the_world_changed_while_it_waited_for_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from maas_operator import controller as controller_module
    from maas_operator.reconcile import reconcile as decide

    plans: list[str] = []

    def counting(observed: Any, settings: OperatorSettings) -> Any:
        decision = decide(observed, settings)
        if decision.planned:
            plans.append(observed.job.name)
        return decision

    monkeypatch.setattr(controller_module, "reconcile", counting)

    controller, kube = controller_with_nodes(gpus_per_node=4)
    asyncio.run(controller.reconcile(add_job(controller, "alone")))
    assert plans == ["alone"]

    # Another placement holds the lock while the job decides; meanwhile pods of another job take the node.
    controller, kube = controller_with_nodes(gpus_per_node=4)
    key = add_job(controller, "waiting")

    async def scenario() -> None:
        async with controller.placement_lock:
            task = asyncio.create_task(controller.reconcile(key))
            await asyncio.sleep(0.01)  # it has decided and waits for the lock
            for index in range(4):
                controller.on_pod(
                    "ADDED",
                    {
                        "metadata": {"name": f"other-{index}", "namespace": "ns", "uid": f"o{index}"},
                        "spec": {
                            "nodeName": "gpu-node-0",
                            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                        },
                        "status": {"phase": "Running"},
                    },
                )
        await task

    plans.clear()
    asyncio.run(scenario())
    # Decided twice (before the lock, and again under it on the changed world), and placed nothing.
    assert plans == ["waiting"]
    assert controller.cache.pods.get(key, {}) == {}
    assert not any(what.startswith("Pod") for what, _ in kube.calls)
