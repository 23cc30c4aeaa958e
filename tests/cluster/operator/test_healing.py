"""Healing on the real control plane, the operator running as a real process: a node lost under a running
job (deleted, or NotReady) is planned around, and only its workers move."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from maas_devcluster.simulation import NODE_READY_ANNOTATION
from maas_devcluster.testing import LocalCluster

from tests.cluster.operator.gangs import (
    add_pool_nodes,
    delete_nodes,
    events,
    nodes,
    pool_node_names,
    uids,
    wait_whole_gang,
    worker_names,
)
from tests.cluster.operator.support import Jobs, train_job

pytestmark = pytest.mark.cluster

STAGES, REPLICAS = 3, 4
"""12 one-GPU workers: more than one 8-GPU node holds, so the job spans nodes and a lost node leaves
workers behind on the others."""


@pytest.fixture
def three_nodes(cluster: LocalCluster, pool: str) -> Iterator[list[str]]:
    """The test's pool grown to 3 nodes x 8 GPUs: room to re-place a lost node's workers."""
    added = pool_node_names(pool, 3)[2:]
    try:
        add_pool_nodes(cluster, pool, 3)
        yield pool_node_names(pool, 3)
    finally:
        delete_nodes(cluster, added)


def _lose_a_node(jobs: Jobs, name: str, lose: str) -> tuple[dict[str, str], dict[str, str], str]:
    """Runs the 12-worker job, loses the node holding the fewest of its workers (`lose`: 'delete' or
    'not-ready'), and waits for the gang to run again. Returns nodes before, nodes after, the lost node."""
    expected = worker_names(name, REPLICAS, STAGES)
    jobs.apply(train_job(name, jobs.namespace, parallelism={"replicas": REPLICAS}, split={"stages": STAGES}))
    before_pods = wait_whole_gang(jobs, name, expected)
    before = nodes(before_pods)
    per_node = Counter(before.values())
    assert len(per_node) >= 2, f"the job should span nodes to test keeping workers: {before}"
    lost = min(per_node, key=lambda node: (per_node[node], node))
    if lose == "delete":
        jobs.cluster.kubectl("delete", "node", lost, "--wait=false")
    else:
        jobs.cluster.kubectl("annotate", "node", lost, f"{NODE_READY_ANNOTATION}=false")
    after_pods = wait_whole_gang(jobs, name, expected, timeout=120, new_since=uids(before_pods).values())
    return before, nodes(after_pods), lost


def _check_replan(jobs: Jobs, name: str, before: dict[str, str], after: dict[str, str], lost: str) -> int:
    """Asserts the re-plan kept every unaffected worker on its node; returns how many workers moved."""
    kept = {w: node for w, node in before.items() if node != lost}
    assert {w: after[w] for w in kept} == kept, "workers on healthy nodes must keep their node"
    assert lost not in after.values()
    moved = sorted(w for w in before if before[w] != after[w])
    assert moved == sorted(w for w, node in before.items() if node == lost)
    status = jobs.status(name)
    # Not the job's fault: counted as a disruption, never against failurePolicy.maxRestarts.
    assert status["disruptions"] == 1
    assert status.get("restarts", 0) == 0
    assert status["phase"] == "Running"
    replanned = events(jobs, name, "Replanned")
    assert replanned and f"{len(kept)} of {len(before)} worker(s) kept" in replanned[-1]["message"]
    assert events(jobs, name, "NodeLost")
    print(f"\n{name}: lost {lost}; {len(moved)} of {len(before)} workers moved: {moved}")
    return len(moved)


def test_a_deleted_node_is_planned_around_keeping_the_other_workers(
    jobs: Jobs, three_nodes: list[str]
) -> None:
    before, after, lost = _lose_a_node(jobs, "lost-node", "delete")
    _check_replan(jobs, "lost-node", before, after, lost)


def test_a_not_ready_node_is_planned_around_keeping_the_other_workers(
    jobs: Jobs, three_nodes: list[str]
) -> None:
    before, after, lost = _lose_a_node(jobs, "sick-node", "not-ready")
    _check_replan(jobs, "sick-node", before, after, lost)
