"""`kubectl scale mj/NAME` on the real control plane, the operator running as a real process: Train restarts
its gang at the new data-parallel degree, Serve adds or removes whole replicas and leaves the others alone, and
a scale beyond the pool's capacity keeps the running plan."""

from __future__ import annotations

import json
from typing import Any

import pytest
from maas_operator import names

from tests.cluster.operator.gangs import (
    env,
    events,
    gated,
    name_of,
    uids,
    wait_whole_gang,
    worker_names,
)
from tests.cluster.operator.support import TEST_POOL_LABEL, Jobs, train_job

pytestmark = pytest.mark.cluster

STAGES = 3
"""train_job's pipeline depth."""
SERVE_STAGES = 2


def scale(jobs: Jobs, name: str, replicas: int) -> None:
    jobs.kubectl("scale", f"mj/{name}", f"--replicas={replicas}")


def serve_job(name: str, pool: str, replicas: int) -> dict[str, Any]:
    """A small Transformer served by `replicas` pipelines of 2 one-GPU stages on the test's pool."""
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": name},
        "spec": {
            "mode": "Serve",
            "model": {
                "catalog": "Transformer",
                "args": {"vocab": 256, "dim": 64, "layers": 4, "heads": 4, "seqLen": 32},
            },
            "split": {"stages": SERVE_STAGES},
            "parallelism": {"replicas": replicas, "minReplicas": 1, "maxReplicas": 3},
            "serving": {},
            "resources": {"gpus": 1},
            "placement": {"nodeSelector": {TEST_POOL_LABEL: pool}},
            "failurePolicy": {"backoff": {"initialSeconds": 0, "maxSeconds": 0}},
        },
    }


def _check_world_size(pods: list[dict[str, Any]], workers: int) -> None:
    assert {env(p, "PET_NNODES") for p in pods} == {str(workers)}
    assert sorted(int(env(p, "MAAS_WORKER_INDEX") or -1) for p in pods) == list(range(workers))


def test_scaling_a_train_job_restarts_its_gang_at_the_new_degree(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("elastic", pool, parallelism={"replicas": 2, "minReplicas": 1, "maxReplicas": 4}))
    pods = wait_whole_gang(jobs, "elastic", worker_names("elastic", 2, STAGES))
    _check_world_size(pods, 2 * STAGES)

    for replicas in (4, 1):
        scale(jobs, "elastic", replicas)
        # One world: every worker is new (a collective cannot change size), at the new world size.
        pods = wait_whole_gang(
            jobs, "elastic", worker_names("elastic", replicas, STAGES), new_since=uids(pods).values()
        )
        _check_world_size(pods, replicas * STAGES)
        status = jobs.status("elastic")
        assert status["replicas"] == replicas
        assert status.get("restarts", 0) == 0 and status.get("disruptions", 0) == 0, "a scale is no failure"
        planned = jobs.condition("elastic", "Planned")
        assert planned is not None and planned["status"] == "True"
        assert planned["observedGeneration"] == jobs.get("elastic")["metadata"]["generation"]


def test_scaling_a_serve_job_adds_and_removes_whole_replicas_only(jobs: Jobs, pool: str) -> None:
    jobs.apply(serve_job("serve", pool, replicas=2))
    two = wait_whole_gang(jobs, "serve", worker_names("serve", 2, SERVE_STAGES), per_replica=True)
    # Each replica is its own world: two workers each, ranks 0 and 1.
    assert {env(p, "PET_NNODES") for p in two} == {str(SERVE_STAGES)}

    scale(jobs, "serve", 3)
    added = sorted(set(worker_names("serve", 3, SERVE_STAGES)) - set(worker_names("serve", 2, SERVE_STAGES)))
    three = jobs.wait(
        "serve: a third replica beside the untouched two",
        lambda: _serving(jobs, "serve", 3, keep=uids(two)),
        timeout=90,
    )
    assert sorted(set(uids(three)) - set(uids(two))) == added

    scale(jobs, "serve", 1)
    kept = {name: uid for name, uid in uids(three).items() if name in worker_names("serve", 1, SERVE_STAGES)}
    one = jobs.wait(
        "serve: only replica 0, untouched", lambda: _serving(jobs, "serve", 1, keep=kept), timeout=90
    )
    assert uids(one) == kept
    # The removed replicas' one-replica plans go with them.
    jobs.wait(
        "serve: only replica 0's plan ConfigMap left",
        lambda: _replica_configmaps(jobs, "serve") == [names.replica_configmap_name("serve", 0)],
    )
    status = jobs.status("serve")
    assert status["replicas"] == 1
    assert status.get("restarts", 0) == 0 and status.get("disruptions", 0) == 0, "a scale is no failure"


def _replica_configmaps(jobs: Jobs, name: str) -> list[str]:
    answer = jobs.kubectl(
        "get", "configmaps", "-l", f"{names.JOB_LABEL}={name},{names.REPLICA_LABEL}", "-o", "json"
    )
    return sorted(m["metadata"]["name"] for m in json.loads(answer.stdout)["items"])


def _serving(jobs: Jobs, name: str, replicas: int, keep: dict[str, str]) -> list[dict[str, Any]] | None:
    """The job's pods once exactly `replicas` replicas serve and Ready; fails as soon as a pod in `keep` was
    replaced (a UID other than the kept one under the same name)."""
    pods = jobs.pods(name)
    replaced = sorted(n for n, uid in uids(pods).items() if n in keep and keep[n] != uid)
    assert not replaced, f"pods of untouched replicas were re-created: {replaced}"
    status = jobs.status(name)
    expected = worker_names(name, replicas, SERVE_STAGES)
    ready = jobs.condition(name, "Ready")
    if (
        sorted(uids(pods)) != sorted(expected)
        or status.get("replicas") != replicas
        or ready is None
        or ready["status"] != "True"
        or any(gated(p) or p["status"].get("phase") != "Running" for p in pods)
        or any(p["metadata"].get("deletionTimestamp") for p in pods)
    ):
        return None
    missing = sorted(set(keep) - set(uids(pods)))
    assert not missing, f"pods of untouched replicas are gone: {missing}"
    return pods


def test_a_scale_beyond_capacity_keeps_the_running_plan(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("greedy", pool, parallelism={"replicas": 2, "minReplicas": 1, "maxReplicas": 8}))
    running = wait_whole_gang(jobs, "greedy", worker_names("greedy", 2, STAGES))

    scale(jobs, "greedy", 6)  # 18 GPUs; the pool has 16
    generation = jobs.get("greedy")["metadata"]["generation"]

    def refused() -> dict[str, Any] | None:
        # Every sample while the operator decides: the running gang, whole and untouched, and nothing more.
        pods = jobs.pods("greedy")
        assert uids(pods) == uids(running), f"the running gang changed: {sorted(map(name_of, pods))}"
        assert not any(gated(p) or p["metadata"].get("deletionTimestamp") for p in pods)
        planned = jobs.condition("greedy", "Planned")
        done = planned and planned["observedGeneration"] == generation and planned["status"] == "False"
        return planned if done else None

    planned = jobs.wait("greedy: Planned=False for the new generation", refused, timeout=60)
    assert planned["reason"] == "Unschedulable"
    assert "GPU" in planned["message"], planned["message"]
    status = jobs.status("greedy")
    assert status["replicas"] == 2 and status["readyWorkers"] == "6/6"
    assert jobs.condition("greedy", "Ready")["status"] == "True"  # type: ignore[index]
    jobs.wait("greedy: a ReplanUnschedulable event", lambda: events(jobs, "greedy", "ReplanUnschedulable"))

    # Back within capacity: the new shape is planned and runs.
    scale(jobs, "greedy", 3)
    pods = wait_whole_gang(
        jobs, "greedy", worker_names("greedy", 3, STAGES), new_since=uids(running).values()
    )
    _check_world_size(pods, 3 * STAGES)
