"""The statuses GitOps tools read, from the operator as a real process on the local cluster: each phase of a
job is driven for real, read back, and judged by Argo CD's health check (our Lua) and by kstatus itself.

The same objects are recorded under tests/gitops/statuses/ (run with MAAS_RECORD_GITOPS=1 to record them
again), where the fast tests in tests/gitops/ read them; without the variable this test fails when the live
statuses no longer match the recorded ones (same phase, condition types, statuses and reasons).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from maas_devcluster.binaries import find_binaries
from maas_devcluster.simulation import exit_annotations

from tests.cluster.operator.support import Jobs, OperatorProcess, train_job
from tests.gitops.support import (
    EXPECTED,
    RECORD_VARIABLE,
    STATUSES,
    argocd_health,
    kstatus,
    recorded,
    shape,
)

pytestmark = pytest.mark.cluster

Job = dict[str, Any]
RECORDED_NAMESPACE = "team-a"
"""Recorded objects get a fixed namespace (each test runs in a random one)."""


@pytest.fixture(scope="module")
def kstatus_binary() -> Path:
    return find_binaries(("kstatus",))["kstatus"]


def condition_is(job: Job, type_: str, status: str, reason: str | None = None) -> bool:
    found = next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)
    return found is not None and found["status"] == status and (reason is None or found["reason"] == reason)


def observed(job: Job) -> bool:
    return bool((job.get("status") or {}).get("observedGeneration") == job["metadata"]["generation"])


def wait_for(jobs: Jobs, name: str, what: str, probe: Callable[[Job], bool], timeout: float = 60) -> Job:
    def check() -> Job | None:
        job = jobs.get(name)
        return job if observed(job) and probe(job) else None

    found: Job = jobs.wait(f"{name}: {what}", check, timeout=timeout)
    return found


def fate(exit_code: int) -> dict[str, Any]:
    return {"annotations": exit_annotations(exit_code, 1)}


# -- each phase, driven for real --------------------------------------------------------------------------


def not_observed(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    """Applied while the operator is down: the API server's status default is all there is."""
    operator.stop()
    try:
        jobs.apply(train_job("unseen", pool))
        job = jobs.get("unseen")
    finally:
        operator.start()
    return job


def unschedulable(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    jobs.apply(train_job("too-big", pool, parallelism={"replicas": 6}))  # 18 GPUs; the pool has 16
    return wait_for(
        jobs, "too-big", "Unschedulable", lambda j: condition_is(j, "Planned", "False", "Unschedulable")
    )


def starting(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    """Workers created but never scheduled (a scheduler nobody runs), so they never become ready."""
    jobs.apply(train_job("starting", pool, template={"schedulerName": "nobody"}))
    return wait_for(
        jobs,
        "starting",
        "workers created, none ready",
        lambda j: condition_is(j, "Planned", "True") and j["status"].get("readyWorkers") == "0/3",
    )


def running(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    jobs.apply(train_job("serving", pool))
    return wait_for(jobs, "serving", "Running", lambda j: j["status"].get("phase") == "Running")


def restarting(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    policy = {"maxRestarts": 3, "backoff": {"initialSeconds": 600, "maxSeconds": 600}}
    jobs.apply(train_job("flaky", pool, template=fate(75), failurePolicy=policy))
    return wait_for(jobs, "flaky", "Restarting", lambda j: j["status"].get("phase") == "Restarting")


def scale_does_not_fit(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    """Running, then scaled beyond the pool: the running plan stays, the new spec waits for room."""
    jobs.apply(train_job("grow", pool, parallelism={"replicas": 1, "maxReplicas": 8}))
    wait_for(jobs, "grow", "Running", lambda j: j["status"].get("phase") == "Running")
    jobs.kubectl("scale", "mj/grow", "--replicas=6")
    return wait_for(
        jobs,
        "grow",
        "the scale Unschedulable while running",
        lambda j: condition_is(j, "Planned", "False", "Unschedulable") and condition_is(j, "Ready", "True"),
    )


def suspended(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    jobs.apply(train_job("paused", pool, runPolicy={"suspend": True}))
    return wait_for(jobs, "paused", "Suspended", lambda j: j["status"].get("phase") == "Suspended")


def succeeded(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    jobs.apply(train_job("done", pool, template=fate(0)))
    return wait_for(jobs, "done", "Succeeded", lambda j: j["status"].get("phase") == "Succeeded")


def failed(jobs: Jobs, pool: str, operator: OperatorProcess) -> Job:
    jobs.apply(train_job("broken", pool, template=fate(78)))
    return wait_for(jobs, "broken", "Failed", lambda j: j["status"].get("phase") == "Failed")


PHASES: dict[str, Callable[[Jobs, str, OperatorProcess], Job]] = {
    "not-observed": not_observed,
    "unschedulable": unschedulable,
    "starting": starting,
    "running": running,
    "restarting": restarting,
    "scale-does-not-fit": scale_does_not_fit,
    "suspended": suspended,
    "succeeded": succeeded,
    "failed": failed,
}


def for_the_record(job: Job) -> Job:
    """The object as recorded: identity and server bookkeeping that differ per run left out."""
    metadata = job["metadata"]
    return {
        "apiVersion": job["apiVersion"],
        "kind": job["kind"],
        "metadata": {
            "name": metadata["name"],
            "namespace": RECORDED_NAMESPACE,
            "generation": metadata["generation"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": job["spec"],
        "status": job.get("status") or {},
    }


def test_every_phase_to_record_has_an_expectation() -> None:
    assert set(PHASES) == set(EXPECTED)


@pytest.mark.parametrize("phase", list(PHASES))
def test_gitops_tools_read_each_phase_of_a_live_job(
    jobs: Jobs, pool: str, operator: OperatorProcess, kstatus_binary: Path, phase: str
) -> None:
    job = for_the_record(PHASES[phase](jobs, pool, operator))
    argocd, flux = EXPECTED[phase]
    assert argocd_health(job)[0] == argocd, job["status"]
    [reading] = kstatus(kstatus_binary, [job])
    assert reading["status"] == flux, (reading, job["status"])
    path = STATUSES / f"{phase}.yaml"
    if os.environ.get(RECORD_VARIABLE) == "1":
        path.write_text(yaml.safe_dump(job, sort_keys=False))
    assert shape(job) == shape(recorded(phase)), (
        f"the live {phase} status differs from {path.name}: if the change is meant, record again with"
        f" {RECORD_VARIABLE}=1"
    )
