"""The controller applies a decision's objects in concurrent waves without losing the order that matters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from maas_devcluster.topology import ClusterDescription, NodePool, build_node_manifests
from maas_operator.cache import WorldCache
from maas_operator.children import Manifest
from maas_operator.controller import apply_waves
from maas_operator.reconcile import reconcile
from maas_operator.settings import OperatorSettings


def manifest(kind: str, name: str) -> Manifest:
    return {"kind": kind, "metadata": {"name": name}}


def first_decision_applies() -> list[Manifest]:
    """What the operator applies for a new job of 8 one-GPU workers on two empty 8-GPU nodes."""
    cache = WorldCache()
    for node in build_node_manifests(ClusterDescription(pools=(NodePool(count=2),))):
        cache.put_node(None, node)
    job: dict[str, Any] = {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": "job", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "mode": "Train",
            "model": {"catalog": "LargeModel"},
            "split": {"stages": 2},
            "parallelism": {"replicas": 4, "microbatches": 4},
            "resources": {"gpus": 1},
        },
    }
    key = cache.put_job(None, job)
    observed = cache.observe(key, datetime(2026, 1, 1, tzinfo=UTC))
    assert observed is not None
    return list(reconcile(observed, OperatorSettings()).apply)


def test_waves_keep_the_order_and_split_between_pods_and_what_they_need_or_at_a_repeated_name() -> None:
    applies = [
        manifest("ConfigMap", "job-plan"),
        manifest("Service", "job"),
        manifest("ConfigMap", "job-plan-r0"),
        manifest("Pod", "a"),
        manifest("Pod", "b"),
        manifest("Pod", "a"),
        manifest("Pod", "b"),
        manifest("ConfigMap", "job-plan-r0"),
        manifest("ConfigMap", "job-plan-r0"),
    ]
    waves = apply_waves(applies)
    assert [[(m["kind"], m["metadata"]["name"]) for m in wave] for wave in waves] == [
        [("ConfigMap", "job-plan"), ("Service", "job"), ("ConfigMap", "job-plan-r0")],
        [("Pod", "a"), ("Pod", "b")],
        [("Pod", "a"), ("Pod", "b")],
        [("ConfigMap", "job-plan-r0")],
        [("ConfigMap", "job-plan-r0")],
    ]
    assert apply_waves([]) == []


def test_a_new_gang_is_created_in_one_wave_and_ungated_in_the_next() -> None:
    applies = first_decision_applies()
    waves = apply_waves(applies)
    assert [m for wave in waves for m in wave] == applies
    pod_waves = [wave for wave in waves if wave[0]["kind"] == "Pod"]
    assert len(pod_waves) == 2
    created, ungated = pod_waves
    assert len(created) == len(ungated) == 8
    assert all(pod["spec"].get("schedulingGates") for pod in created)
    assert not any(pod["spec"].get("schedulingGates") for pod in ungated)
    # Everything the pods need comes in earlier waves.
    assert waves.index(created) > 0
    assert all(wave[0]["kind"] != "Pod" for wave in waves[: waves.index(created)])


def test_gates_of_pods_made_before_a_crash_are_lifted_only_after_their_missing_peers_exist() -> None:
    """After a restart, some gated pods exist and the rest are missing: the missing ones are created first,
    and no gate (not even of a pod that already existed) is lifted in the same wave (a SIGKILL trial caught
    this: 4 old pods were released while only 10 of 16 existed)."""
    applies = first_decision_applies()
    pods = [m for m in applies if m["kind"] == "Pod"]
    gated, ungated = pods[:8], pods[8:]
    # The decision after a crash: pods 0-3 exist; 4-7 are created; then all 8 gates are lifted.
    resumed = [*gated[4:], *ungated]
    waves = apply_waves(resumed)
    assert [len(wave) for wave in waves] == [4, 8]
    assert all(pod["spec"].get("schedulingGates") for pod in waves[0])
    assert not any(pod["spec"].get("schedulingGates") for pod in waves[1])
