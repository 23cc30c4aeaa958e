"""The reference train job end to end on the real node, the operator as a real process: 3 stages x 2 replicas
without GPUs go Pending -> Ready -> Succeeded, and the loss equals a single-process run of the same plan."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from maas_api.plan import Plan
from maas_devcluster.node_config import NODE_NAME
from maas_operator import names

from tests.cluster.operator.support import Jobs
from tests.cluster.realnode.support import reference_train_job, step_events
from tests.runtime.reference import reference_training
from tests.runtime.support import TOLERANCE

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.timeout(900)]

STEPS = 30


def test_the_reference_train_job_succeeds_on_the_real_node_with_the_single_process_loss(
    real_jobs: Jobs,
) -> None:
    name = "large-model"
    applied = time.monotonic()
    real_jobs.apply(reference_train_job(name, STEPS))
    # Each change of (phase, Ready), as `kubectl get mj -w` would show it.
    seen: list[tuple[str, str]] = []
    status: dict[str, Any] = {}
    while time.monotonic() < applied + 600:
        status = real_jobs.status(name)
        ready = next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "Unknown")
        state = (status.get("phase", ""), ready)
        if state[0] and (not seen or seen[-1] != state):
            seen.append(state)
        if state[0] in ("Succeeded", "Failed"):
            break
        time.sleep(0.3)
    pods = real_jobs.pods(name)
    assert seen and seen[-1][0] == "Succeeded", (seen, status, [p["status"] for p in pods])
    assert seen[0][0] == "Pending", seen
    became_ready = [index for index, (_, ready) in enumerate(seen) if ready == "True"]
    assert became_ready and seen[became_ready[0]][0] == "Running", seen
    assert len(pods) == 6 and {pod["spec"]["nodeName"] for pod in pods} == {NODE_NAME}
    assert {pod["status"]["phase"] for pod in pods} == {"Succeeded"}

    # Rank 0 logs every step's loss, averaged over the replicas, as JSON lines.
    events = step_events(real_jobs.kubectl("logs", f"{name}-r0-s0").stdout)
    losses = [event["loss"] for event in events if event["event"] == "step"]
    configmap = json.loads(
        real_jobs.kubectl("get", "configmap", names.plan_configmap_name(name), "-o", "json").stdout
    )
    plan = Plan.model_validate_json(configmap["data"][names.PLAN_KEY])
    assert len(losses) == STEPS
    assert losses == pytest.approx(reference_training(plan).losses, abs=TOLERANCE)
    # The operator read worker 0's /progress through the pod network: the final state is in the status.
    progress = status.get("progress") or {}
    assert (progress.get("step"), progress.get("totalSteps"), progress.get("finished")) == (
        STEPS,
        STEPS,
        True,
    )
    assert progress["loss"] == pytest.approx(losses[-1], abs=TOLERANCE)
