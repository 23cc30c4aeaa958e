"""The placement lock covers what placement needs and no more: a decision that creates pods holds it until
those pods are in the cache (status, the objects the pods need, the gated pods), and lifts the gates, posts
events and deletes after releasing it, so one job's round trips do not hold up the next job's placement."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

from maas_devcluster.topology import ClusterDescription, NodePool, build_node_manifests
from maas_operator.children import JobRef, Manifest
from maas_operator.controller import Controller, apply_waves, placing_waves
from maas_operator.kube import Kube
from maas_operator.reconcile import Event
from maas_operator.settings import OperatorSettings
from maas_operator.world import worker_pod


class RecordingKube:
    """Echoes writes as the API server would, recording each with whether the placement lock was held."""

    def __init__(self) -> None:
        self.controller: Controller | None = None
        self.calls: list[tuple[str, bool]] = []

    def _record(self, what: str) -> None:
        assert self.controller is not None
        self.calls.append((what, self.controller.placement_lock.locked()))

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        gated = bool(manifest.get("spec", {}).get("schedulingGates"))
        kind = manifest["kind"]
        self._record(f"{kind} {'gated' if gated else 'ungated'}" if kind == "Pod" else kind)
        # Yield, as a real request does, so concurrent reconciles interleave.
        await asyncio.sleep(0)
        return {**manifest, "metadata": {**manifest["metadata"], "uid": manifest["metadata"]["name"]}}

    async def apply_status(self, job: JobRef, status: dict[str, Any]) -> dict[str, Any]:
        self._record("status")
        await asyncio.sleep(0)
        return {
            "kind": "MaaSJob",
            "metadata": {"name": job.name, "namespace": job.namespace},
            "status": status,
        }

    async def post_event(self, job: JobRef, event: Event) -> None:
        self._record(f"event {event.reason}")
        await asyncio.sleep(0)


def controller_with_nodes(gpus_per_node: int, nodes: int = 1) -> tuple[Controller, RecordingKube]:
    kube = RecordingKube()
    controller = Controller(cast(Kube, kube), OperatorSettings())
    kube.controller = controller
    description = ClusterDescription(pools=(NodePool(count=nodes, gpus_per_node=gpus_per_node),))
    for node in build_node_manifests(description):
        controller.on_node("ADDED", node)
    return controller, kube


def add_job(controller: Controller, name: str, stages: int = 2, replicas: int = 2) -> str:
    controller.on_job(
        "ADDED",
        {
            "apiVersion": "maas.dev/v1alpha1",
            "kind": "MaaSJob",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
            "spec": {
                "mode": "Train",
                "model": {"catalog": "LargeModel"},
                "split": {"stages": stages},
                "parallelism": {"replicas": replicas, "microbatches": 4},
                "resources": {"gpus": 1},
            },
        },
    )
    return f"ns/{name}"


def test_a_new_job_holds_the_lock_until_its_gated_pods_exist_and_lifts_the_gates_after() -> None:
    controller, kube = controller_with_nodes(gpus_per_node=8)
    key = add_job(controller, "job")

    asyncio.run(controller.reconcile(key))

    held = [what for what, locked in kube.calls if locked]
    released = [what for what, locked in kube.calls if not locked]
    assert held == ["status", "ConfigMap", "Service", *["Pod gated"] * 4]
    assert released == [*["Pod ungated"] * 4, "event Planned", "event WorkersCreated"]
    assert not controller.placement_lock.locked()


def test_two_jobs_placed_at_once_never_count_the_same_free_gpus() -> None:
    """One node of 4 GPUs, two jobs of 4: whichever decides second sees the first one's gated pods as taken,
    although the first one's gates are still being lifted outside the lock."""
    controller, kube = controller_with_nodes(gpus_per_node=4)
    keys = [add_job(controller, "first"), add_job(controller, "second")]

    async def both() -> None:
        await asyncio.gather(*(controller.reconcile(key) for key in keys))

    asyncio.run(both())

    placed = {key: len(controller.cache.pods.get(key, {})) for key in keys}
    assert sorted(placed.values()) == [0, 4], placed
    waiting = next(key for key in keys if not placed[key])
    status = controller.cache.jobs[waiting]["status"]
    planned = next(c for c in status["conditions"] if c["type"] == "Planned")
    assert (planned["status"], planned["reason"]) == ("False", "Unschedulable")
    assert sum(what == "Pod gated" for what, _ in kube.calls) == 4


def test_the_waves_under_the_lock_end_with_the_last_one_that_creates_a_pod() -> None:
    controller, _ = controller_with_nodes(gpus_per_node=8)
    key = add_job(controller, "job")
    observed = controller.cache.observe(key, datetime.now(UTC))
    assert observed is not None
    decision = controller._decide(observed)
    waves = apply_waves(decision.apply)
    # [plan ConfigMap + Service], [gated pods], [ungated pods]
    assert placing_waves(waves, observed.pods) == 2
    # After a crash that left every pod made but gated, lifting the gates places nothing new.
    made = [worker_pod(m) for m in waves[1]]
    assert placing_waves(waves[2:], made) == 0
    assert placing_waves([], []) == 0
