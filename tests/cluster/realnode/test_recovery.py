"""A train job's failures and scaling on the real node, the operator as a real process: a worker process
killed and a worker pod deleted restart the gang, which resumes from its checkpoint (a volume on the node) and
ends with the single-process run's losses; `kubectl scale` 2 -> 1 resumes at the new degree; an unknown model
factory fails the job at once with the runtime's own message."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from maas_api.contract import ExitCode
from maas_api.plan import Plan
from maas_operator import names

from tests.cluster.operator.support import Jobs, bound_claim
from tests.cluster.realnode.serving_load import kill_worker_process
from tests.cluster.realnode.support import reference_train_job, step_events
from tests.runtime.reference import reference_training
from tests.runtime.support import TOLERANCE

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.timeout(900)]

# The reference model trains ~10 steps/s in pods here: long enough to act between checkpoints, which the
# operator sees through the workers' /progress (read every few seconds).
STEPS = 600
CHECKPOINT_INTERVAL = 100
BACKOFF_SECONDS = 3
CLAIM = "checkpoints"


def checkpointed_job(jobs: Jobs, name: str, folder: Path, replicas: int) -> dict[str, Any]:
    """The reference job as 2 stages x `replicas`, checkpointing every CHECKPOINT_INTERVAL steps to a folder
    of the host mounted through a PersistentVolume, restarting after BACKOFF_SECONDS."""
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # the workers' non-root user writes there
    for document in bound_claim(jobs.namespace, CLAIM, str(folder)):
        jobs.kubectl("apply", "-f", "-", stdin=json.dumps(document))
    job = reference_train_job(name, STEPS, stages=2, replicas=replicas)
    spec = job["spec"]
    spec["checkpoint"] = {"claimName": CLAIM, "intervalSteps": CHECKPOINT_INTERVAL}
    spec["failurePolicy"] = {"backoff": {"initialSeconds": BACKOFF_SECONDS}}
    return job


def pod_uid(jobs: Jobs, pod: str) -> str | None:
    result = jobs.kubectl("get", "pod", pod, "-o", "jsonpath={.metadata.uid}", check=False)
    return result.stdout or None


def wait_checkpoint(jobs: Jobs, name: str, at_least: int) -> int:
    """Waits until the job's progress reports a checkpoint at or past `at_least`; returns its step."""

    def saved() -> int | None:
        progress = jobs.status(name).get("progress") or {}
        step = progress.get("lastCheckpointStep")
        return step if step is not None and step >= at_least else None

    step: int = jobs.wait(f"a checkpoint at step {at_least} or later", saved, timeout=300)
    return step


def wait_resumed(jobs: Jobs, job: str, pod: str, replaced_uid: str) -> int:
    """Waits for the pod's replacement (another uid) to log that it resumed; returns the step it resumed at."""

    def resumed() -> int | None:
        if pod_uid(jobs, pod) in (None, replaced_uid):
            return None
        logs = jobs.kubectl("logs", pod, check=False).stdout
        steps = [event["step"] for event in step_events(logs) if event["event"] == "resumed"]
        return steps[0] if steps else None

    try:
        step: int = jobs.wait(f"{pod}'s replacement resumed", resumed, timeout=300)
    except AssertionError as error:
        pods = [
            (p["metadata"]["name"], p["metadata"]["uid"], p["status"].get("phase")) for p in jobs.pods(job)
        ]
        logs = jobs.kubectl("logs", pod, check=False)
        raise AssertionError(
            f"{error}\nstatus: {jobs.status(job)}\npods: {pods}\n{pod} log tail:\n"
            + "\n".join((logs.stdout + logs.stderr).splitlines()[-30:])
        ) from error
    return step


def plan_of(jobs: Jobs, name: str) -> Plan:
    configmap = json.loads(
        jobs.kubectl("get", "configmap", names.plan_configmap_name(name), "-o", "json").stdout
    )
    return Plan.model_validate_json(configmap["data"][names.PLAN_KEY])


def logged_losses(jobs: Jobs, pod: str) -> dict[int, float]:
    return {
        event["step"]: event["loss"]
        for event in step_events(jobs.kubectl("logs", pod).stdout)
        if event["event"] == "step"
    }


def created_at(jobs: Jobs, pod: str) -> float:
    stamp = jobs.kubectl("get", "pod", pod, "-o", "jsonpath={.metadata.creationTimestamp}").stdout
    return datetime.fromisoformat(stamp).timestamp()


def test_a_killed_worker_and_a_deleted_pod_resume_from_the_checkpoint_with_the_uninterrupted_losses(
    real_jobs: Jobs, tmp_path: Path
) -> None:
    name = "recovers"
    real_jobs.apply(checkpointed_job(real_jobs, name, tmp_path / "checkpoints", replicas=2))
    rank0 = f"{name}-r0-s0"

    # 1. SIGKILL to one worker's training process: its pod exits 137, a counted restart after the backoff.
    wait_checkpoint(real_jobs, name, CHECKPOINT_INTERVAL)
    killed_uid = pod_uid(real_jobs, rank0)
    assert killed_uid is not None
    killed_pod_uid = pod_uid(real_jobs, f"{name}-r1-s1")
    assert killed_pod_uid is not None
    kill_worker_process(killed_pod_uid)
    killed_at = time.time()
    first_resume = wait_resumed(real_jobs, name, rank0, killed_uid)
    assert first_resume >= CHECKPOINT_INTERVAL and first_resume % CHECKPOINT_INTERVAL == 0
    status = real_jobs.status(name)
    assert (status["restarts"], status.get("disruptions", 0)) == (1, 0), status
    # Whole seconds in creationTimestamp: the replacement came at least the backoff (less rounding) later.
    assert created_at(real_jobs, rank0) >= killed_at + BACKOFF_SECONDS - 1
    # A counted restart for a failed worker: the event quotes one failed worker, the killed one (137) or a peer
    # that lost it (75, whichever the operator saw first).
    reasons = {event["reason"]: event["message"] for event in real_jobs.events(name)}
    assert re.search(r"exited (137|75)", reasons["WorkerFailed"]), reasons

    # 2. A worker pod deleted: a disruption, restarted without counting, resumed from a later checkpoint.
    wait_checkpoint(real_jobs, name, first_resume + CHECKPOINT_INTERVAL)
    deleted_uid = pod_uid(real_jobs, rank0)
    assert deleted_uid is not None
    real_jobs.kubectl("delete", "pod", f"{name}-r0-s1", "--wait=false")
    second_resume = wait_resumed(real_jobs, name, rank0, deleted_uid)
    assert second_resume > first_resume
    status = real_jobs.status(name)
    assert (status["restarts"], status["disruptions"]) == (1, 1), status
    assert "WorkerDeleted" in {event["reason"] for event in real_jobs.events(name)}

    status = real_jobs.wait_phase(name, "Succeeded", timeout=400)
    # Every step after the last resume, and the final loss the operator read, are the uninterrupted run's.
    reference = reference_training(plan_of(real_jobs, name)).losses
    losses = logged_losses(real_jobs, rank0)
    assert sorted(losses) == list(range(second_resume + 1, STEPS + 1))
    assert [losses[step] for step in sorted(losses)] == pytest.approx(
        reference[second_resume:], abs=TOLERANCE
    )
    assert status["progress"]["loss"] == pytest.approx(reference[-1], abs=TOLERANCE)
    assert status["progress"]["finished"] is True


def test_kubectl_scale_2_to_1_mid_run_resumes_at_the_new_degree(real_jobs: Jobs, tmp_path: Path) -> None:
    name = "rescaled"
    job = checkpointed_job(real_jobs, name, tmp_path / "checkpoints", replicas=2)
    job["spec"]["parallelism"].update(minReplicas=1, maxReplicas=2)
    real_jobs.apply(job)
    rank0 = f"{name}-r0-s0"
    wait_checkpoint(real_jobs, name, CHECKPOINT_INTERVAL)
    before = pod_uid(real_jobs, rank0)
    assert before is not None
    real_jobs.kubectl("scale", f"maasjob/{name}", "--replicas=1")
    resumed = wait_resumed(real_jobs, name, rank0, before)
    assert resumed >= CHECKPOINT_INTERVAL

    status = real_jobs.wait_phase(name, "Succeeded", timeout=400)
    assert status["replicas"] == 1 and len(real_jobs.pods(name)) == 2
    # A rescale is the user's choice: neither a counted restart nor a disruption.
    assert (status["restarts"], status.get("disruptions", 0)) == (0, 0), status
    # The single-process run with 2 replicas' batches until the resume step and 1 replica's after it.
    plan = plan_of(real_jobs, name)
    assert plan.replicas == 1
    schedule = [2] * resumed + [1] * (STEPS - resumed)
    reference = reference_training(plan, replicas=schedule).losses
    losses = logged_losses(real_jobs, rank0)
    assert sorted(losses) == list(range(resumed + 1, STEPS + 1))
    assert [losses[step] for step in sorted(losses)] == pytest.approx(reference[resumed:], abs=TOLERANCE)


def test_an_unknown_model_factory_fails_at_once_with_the_runtimes_message(real_jobs: Jobs) -> None:
    name = "no-such-model"
    job = reference_train_job(name, STEPS, stages=2, replicas=1)
    profile = [
        {"name": f"layer_{index}", "params": 1000, "flopsPerSample": 1000, "activationBytesPerSample": 64}
        for index in range(4)
    ]
    job["spec"]["model"] = {"factory": "maas_no_such_package.models:build", "profile": profile}
    real_jobs.apply(job)
    status = real_jobs.wait_phase(name, "Failed", timeout=300)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True"
    # The runtime's own one-line reason, quoted by the operator; no restart was tried.
    assert f"exit {int(ExitCode.PERMANENT)}" in failed["message"], failed
    assert "maas_no_such_package" in failed["message"], failed
    assert status["restarts"] == 0
