"""Jobs that do not fit on the real control plane, the operator running as a real process: an unplaceable job
waits Unschedulable with no pods until a node comes, and of two jobs applied together for the last GPUs one
runs and the other waits, neither ever half-placed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from maas_devcluster.testing import LocalCluster

from tests.cluster.operator.gangs import (
    PodWatch,
    add_pool_nodes,
    delete_nodes,
    events,
    gangs_never_half_released,
    pool_node_names,
    wait_whole_gang,
    worker_names,
)
from tests.cluster.operator.support import Jobs, train_job

pytestmark = pytest.mark.cluster

STAGES = 3
"""train_job's pipeline depth."""


@pytest.fixture
def third_node(cluster: LocalCluster, pool: str) -> Iterator[list[str]]:
    """Deletes the pool's third node after the test, if the test added it."""
    added = pool_node_names(pool, 3)[2:]
    yield added
    delete_nodes(cluster, added)


def _unschedulable(jobs: Jobs, name: str) -> dict[str, Any] | None:
    planned = jobs.condition(name, "Planned")
    return (
        planned if planned and planned["status"] == "False" and planned["reason"] == "Unschedulable" else None
    )


def test_an_unplaceable_job_waits_without_pods_until_a_node_is_added(
    jobs: Jobs, cluster: LocalCluster, pool: str, third_node: list[str]
) -> None:
    jobs.apply(train_job("huge", pool, parallelism={"replicas": 6}))  # 18 GPUs; the pool has 16

    def waiting() -> dict[str, Any] | None:
        assert jobs.pods("huge") == [], "an unplaceable job must have no pods at all"
        return _unschedulable(jobs, "huge")

    planned = jobs.wait("huge: Planned=False Unschedulable", waiting)
    assert planned["message"], "the planner's reason is the message"
    # The operator writes the status first and posts the event after it.
    warnings = jobs.wait("huge: an Unschedulable event", lambda: events(jobs, "huge", "Unschedulable"))
    assert warnings[0]["type"] == "Warning"
    assert warnings[0]["message"] == planned["message"]
    status = jobs.status("huge")
    assert status["phase"] == "Pending"
    assert jobs.condition("huge", "Ready")["status"] == "False"  # type: ignore[index]

    started = time.monotonic()
    add_pool_nodes(cluster, pool, 3)
    wait_whole_gang(jobs, "huge", worker_names("huge", 6, STAGES))
    print(f"\nhuge: Running {time.monotonic() - started:.1f} s after its node was added")
    assert jobs.condition("huge", "Planned")["status"] == "True"  # type: ignore[index]


def test_two_jobs_for_the_last_gpus_one_runs_the_other_waits_none_half_placed(
    jobs: Jobs, pool: str, core_v1: k8s.CoreV1Api
) -> None:
    # 4 of the pool's 16 GPUs taken; two jobs of 9 each want the 12 left.
    jobs.apply(train_job("base", pool, split={"stages": 2}, parallelism={"replicas": 2}))
    wait_whole_gang(jobs, "base", worker_names("base", 2, 2))
    contenders = [train_job(name, pool, parallelism={"replicas": 3}) for name in ("left", "right")]
    sizes = {"base": 4, "left": 3 * STAGES, "right": 3 * STAGES}

    with PodWatch(core_v1, jobs.namespace, gangs_never_half_released(sizes)) as pods:
        jobs.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": contenders})
        )

        def settled() -> tuple[str, str] | None:
            left, right = (_unschedulable(jobs, name) for name in ("left", "right"))
            if bool(left) == bool(right):
                return None
            return ("right", "left") if left else ("left", "right")

        winner, loser = jobs.wait("one contender planned, the other Unschedulable", settled, timeout=60)
        wait_whole_gang(jobs, winner, worker_names(winner, 3, STAGES))
        assert jobs.status(loser)["phase"] == "Pending"
        assert pods.most_pods.get(loser, 0) == 0, "the waiting job never had a pod"
        print(f"\n{winner} runs, {loser} waits; {pods.events} pod events, none half-placed")

    jobs.kubectl("delete", "maasjob", winner, "--wait=false")
    started = time.monotonic()
    # The garbage collector would delete the pods too, but it watches a CRD's objects only from its next
    # discovery sync (every 30 s), which a fresh test cluster may not have had yet: do its part at once.
    jobs.kubectl("delete", "pods", "-l", f"maas.dev/job={winner}", "--wait=false")
    jobs.wait(f"{winner}'s pods gone", lambda: not jobs.pods(winner), timeout=90)
    freed = time.monotonic() - started
    with PodWatch(core_v1, jobs.namespace, gangs_never_half_released(sizes)):
        wait_whole_gang(jobs, loser, worker_names(loser, 3, STAGES))
    print(
        f"{winner} deleted: its pods gone after {freed:.1f} s, "
        f"{loser} Running after {time.monotonic() - started:.1f} s"
    )
