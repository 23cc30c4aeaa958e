"""The operator turns a MaaSJob into running workers and a Ready status."""

from __future__ import annotations

import pytest

from tests.cluster.operator.support import Jobs, train_job

pytestmark = pytest.mark.cluster


def test_a_train_job_on_its_pool_becomes_ready(jobs: Jobs, pool: str) -> None:
    jobs.apply(train_job("smoke", pool, parallelism={"replicas": 2}))
    status = jobs.wait_phase("smoke", "Running")
    assert status["readyWorkers"] == "6/6"
    assert status["selector"] == "maas.dev/job=smoke"
    pods = jobs.pods("smoke")
    assert sorted(p["metadata"]["name"] for p in pods) == [
        f"smoke-r{r}-s{s}" for r in range(2) for s in range(3)
    ]
    assert {p["spec"]["nodeName"] for p in pods} <= {f"{pool}-n0", f"{pool}-n1"}
    assert all(not p["spec"].get("schedulingGates") for p in pods)
