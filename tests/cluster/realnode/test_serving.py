"""Serve mode end to end on the real node, the operator as a real process: a served transformer answers a
steady stream of concurrent requests while (a) a rolling update to a new split runs and (b) one replica's
worker process is killed. Every answer equals a single-process forward pass of the weights that the
answering replica serves; failed requests are counted: none during the rolling update, during the kill only
those in flight on the killed replica.

The requests go from the host straight to the pod addresses that the `<job>-endpoint` Service's
EndpointSlices list as ready (serving_load.py): the real node runs no kube-proxy, so the Service's ClusterIP
does not route. The same slices and the job's pods are watched throughout (tests/cluster/operator/
endpoints.py): at every change of the endpoint, the ready replicas are at least the minimum and none has a
stage down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from maas_api.plan import Plan
from maas_operator import names, world
from maas_runtime.model import run_model

from tests.cluster.operator.endpoints import EndpointRecord
from tests.cluster.operator.support import Jobs, load_example
from tests.cluster.realnode.conftest import RealNodeCluster
from tests.cluster.realnode.serving_load import Answer, LoadStream, kill_worker_process, summary
from tests.cluster.realnode.support import ON_REAL_NODE
from tests.runtime.reference import full_model
from tests.runtime.support import TOLERANCE

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.timeout(900)]

JOB = "serve"
PORT = 8080
VOCAB, SEQ_LEN = 64, 8
CLIENTS = 4
PAUSE_SECONDS = 0.02
"""Between one client's requests: a steady stream that leaves the 2 cores room for the workers and the
operator."""
DRAIN_SECONDS = 3


def serve_job(stages: int, layers: int) -> dict[str, Any]:
    """examples/transformer-serve.yaml made small, without GPUs, on the real node, in float32 (so answers
    compare to a single-process forward pass within TOLERANCE)."""
    job = load_example("transformer-serve.yaml")
    job["metadata"]["name"] = JOB
    spec = job["spec"]
    spec["model"]["args"] = {"vocab": VOCAB, "dim": 32, "layers": layers, "heads": 4, "seqLen": SEQ_LEN}
    spec["model"]["dtype"] = "float32"
    spec["split"]["stages"] = stages
    spec["serving"]["drainSeconds"] = DRAIN_SECONDS
    spec["serving"]["maxBatchSize"] = 8
    spec["resources"] = {"gpus": 0}
    spec["placement"] = {"nodeSelector": ON_REAL_NODE}
    spec["failurePolicy"] = {"backoff": {"initialSeconds": 0, "maxSeconds": 0}}
    return job


def request_inputs() -> list[torch.Tensor]:
    """Eight requests of 1 to 3 token sequences."""
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (n, SEQ_LEN), generator=generator) for n in (1, 2, 3, 1, 2, 1, 3, 1)]


def entries(replicas: Sequence[int]) -> list[str]:
    return [f"{JOB}-r{replica}-s0" for replica in replicas]


def job_plan(jobs: Jobs) -> Plan:
    configmap = json.loads(
        jobs.kubectl("get", "configmap", names.plan_configmap_name(JOB), "-o", "json").stdout
    )
    return Plan.model_validate_json(configmap["data"][names.PLAN_KEY])


def single_process_outputs(plan: Plan, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The whole model of the plan in this process (its weights seeded per unit, as every worker seeds
    them), one forward pass per request."""
    units, heads = full_model(plan)
    with torch.no_grad():
        return [run_model(units, heads, x) for x in inputs]


def stages_of(record: EndpointRecord, answer: Answer) -> int:
    """The stage count of the replica that answered (its entry pod, by uid, as the pod watch saw it)."""
    size = world.worker_pod(record.pods_by_uid[answer.endpoint.uid]).gang_size
    assert size is not None
    return size


def wrong_answers(
    record: EndpointRecord, answers: Sequence[Answer], expected: dict[int, list[torch.Tensor]]
) -> list[str]:
    """Answers that differ from the single-process forward pass of the answering replica's revision."""
    wrong = []
    for answer in answers:
        if answer.ok:
            assert answer.outputs is not None
            reference = expected[stages_of(record, answer)][answer.index]
            difference = float((answer.outputs - reference).abs().max())
            if answer.outputs.shape != reference.shape or difference > TOLERANCE:
                wrong.append(f"{answer.endpoint.pod} input {answer.index}: off by {difference}")
    return wrong


def wait_status(jobs: Jobs, timeout: float, **fields: Any) -> dict[str, Any]:
    """Waits until the status has these values; a field named like a condition type compares (status,
    reason)."""

    def probe() -> dict[str, Any] | None:
        status = jobs.status(JOB)
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}
        matches = all(
            (conditions.get(key) if key[0].isupper() else status.get(key)) == value
            for key, value in fields.items()
        )
        return status if matches else None

    try:
        result: dict[str, Any] = jobs.wait(f"{JOB}: status {fields}", probe, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\nlast status: {json.dumps(jobs.status(JOB))[:3000]}") from None
    return result


@pytest.fixture
def record(real_node_cluster: RealNodeCluster, real_jobs: Jobs) -> Iterator[EndpointRecord]:
    """The watch on the endpoint's slices and the job's pods, from before the job exists."""
    api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(real_node_cluster.cluster.kubeconfig)
    )
    with EndpointRecord(k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api), real_jobs.namespace, JOB) as recording:
        yield recording


def start_serving(jobs: Jobs, record: EndpointRecord, stages: int, layers: int) -> None:
    jobs.apply(serve_job(stages, layers))
    record.wait_ready(entries([0, 1]), timeout=400)
    wait_status(jobs, 60, readyReplicas=2, Ready=("True", "MinimumReplicasServing"))


def timeline(record: EndpointRecord, since: float) -> str:
    return "\n".join(
        f"  {sample.at - since:7.2f} s  {len(sample.ready)} ready: {', '.join(sample.ready)}"
        for sample in record.samples
        if sample.at >= since
    )


def test_a_rolling_update_to_a_new_split_under_load_fails_no_request(
    real_jobs: Jobs, record: EndpointRecord
) -> None:
    """2 replicas of a 4-layer transformer in 2 stages roll to a 6-layer one in 3 stages (maxSurge 1,
    maxUnavailable 0), while 4 clients send requests: old and new replicas answer with their own weights
    (the new revision changes the model too, so an answer tells which one it came from), and no request
    fails."""
    start_serving(real_jobs, record, stages=2, layers=4)
    old_plan = job_plan(real_jobs)
    inputs = request_inputs()
    with LoadStream(record.ready_endpoints, PORT, inputs, CLIENTS, PAUSE_SECONDS) as stream:
        stream.wait_answers(20)
        record.arm(2)
        rollout_started = time.monotonic()
        real_jobs.apply(serve_job(stages=3, layers=6))
        wait_status(real_jobs, 120, Progressing=("True", "RollingUpdate"))
        status = wait_status(
            real_jobs, 600, Progressing=("False", "RolloutComplete"), readyReplicas=2, updatedReplicas=2
        )
        rollout_seconds = time.monotonic() - rollout_started
        record.wait_ready(entries([0, 1]), timeout=60)
        stream.wait_answers(20, since=time.monotonic())
    new_plan = job_plan(real_jobs)
    answers = stream.answers
    expected = {
        2: single_process_outputs(old_plan, inputs),
        3: single_process_outputs(new_plan, inputs),
    }
    assert len(old_plan.stages) == 2 and len(new_plan.stages) == 3 and status["stages"] == 3
    assert any(float((a - b).abs().max()) > 1e-3 for a, b in zip(expected[2], expected[3], strict=True)), (
        "the two revisions must answer differently, or the check below could not tell them apart"
    )

    during = [a for a in answers if a.started >= rollout_started]
    by_revision = {size: sum(1 for a in during if a.ok and stages_of(record, a) == size) for size in (2, 3)}
    failed = [a for a in answers if not a.ok]
    print(
        f"\nrolling update 2 replicas, 2 -> 3 stages (4 -> 6 layers), maxSurge 1, maxUnavailable 0:"
        f" {rollout_seconds:.1f} s; {len(answers)} requests, {len(during)} after the update began"
        f" ({by_revision[2]} answered by old replicas, {by_revision[3]} by new), {len(failed)} failed,"
        f" {stream.not_connected} connections not made, fewest ready replicas {record.fewest_ready}"
        f" (minimum 2)\nendpoint changes after the update began:\n{timeline(record, rollout_started)}"
        f"\n{summary(during)}"
    )
    assert not failed, [(a.endpoint.pod, a.status, a.error) for a in failed[:10]]
    assert stream.not_connected == 0, "a client picked an endpoint that no longer listened"
    assert not wrong_answers(record, answers, expected)
    assert by_revision[2] > 0 and by_revision[3] > 0
    record.assert_clean()
    assert record.fewest_ready == 2


def test_a_killed_worker_fails_only_the_requests_in_flight_on_its_replica(
    real_jobs: Jobs, record: EndpointRecord
) -> None:
    """The last stage's worker process of replica 1 is SIGKILLed from the host: replica 1 leaves the
    endpoint, replica 0 answers on, replica 1 is made again and serves; the only failed requests are
    replica 1's, sent before it left the endpoint."""
    start_serving(real_jobs, record, stages=2, layers=4)
    plan = job_plan(real_jobs)
    inputs = request_inputs()
    victim = record.pods[f"{JOB}-r1-s1"]["metadata"]["uid"]
    old_entry = record.pods[f"{JOB}-r1-s0"]["metadata"]["uid"]
    record.grace_seconds = 15.0  # a stage killed on purpose reaches the endpoint through operator and kubelet

    def new_entry_serving() -> bool:
        return any(e.pod == f"{JOB}-r1-s0" and e.uid != old_entry for e in record.ready_endpoints())

    with LoadStream(record.ready_endpoints, PORT, inputs, CLIENTS, PAUSE_SECONDS) as stream:
        stream.wait_answers(20)
        record.arm(1)
        killed_at = time.monotonic()
        pid = kill_worker_process(victim)
        real_jobs.wait("replica 1 out of the endpoint", lambda: entries([1])[0] not in record.ready(), 60)
        left_at = record.left_endpoint[entries([1])[0]]
        real_jobs.wait("replica 1 made again and serving", new_entry_serving, timeout=400)
        back_at = time.monotonic()
        stream.wait_answers(20, since=back_at)
    answers = stream.answers
    status = wait_status(real_jobs, 60, readyReplicas=2)

    failed = [a for a in answers if not a.ok]
    in_flight_at_kill = [
        a for a in answers if a.endpoint.uid == old_entry and a.started <= killed_at < a.ended
    ]
    outage = [a for a in answers if killed_at <= a.started <= back_at]
    replica_0_in_outage = sum(1 for a in outage if a.ok and a.endpoint.pod == entries([0])[0])
    new_replica_1 = sum(
        1 for a in answers if a.ok and a.endpoint.pod == entries([1])[0] and a.endpoint.uid != old_entry
    )
    print(
        f"\nkilled pid {pid} (replica 1, last stage): out of the endpoint after {left_at - killed_at:.2f} s,"
        f" serving again after {back_at - killed_at:.1f} s; {len(answers)} requests, {len(failed)} failed"
        f" ({len(in_flight_at_kill)} were in flight on replica 1 at the kill), {stream.not_connected}"
        f" connections not made (retried); replica 0 answered {replica_0_in_outage} requests meanwhile,"
        f" the new replica 1 {new_replica_1}\nendpoint changes after the kill:\n{timeline(record, killed_at)}"
        f"\nfailed: {[(a.endpoint.pod, round(a.started - killed_at, 2), a.status, a.error) for a in failed]}"
    )
    assert all(
        a.endpoint.uid == old_entry and a.started <= left_at and a.ended >= killed_at for a in failed
    ), "a request failed that was not in flight on the killed replica"
    assert not [a for a in failed if a.endpoint.pod == entries([0])[0]]
    assert replica_0_in_outage > 0 and new_replica_1 > 0
    assert not wrong_answers(record, answers, {2: single_process_outputs(plan, inputs)})
    assert status["restarts"] == 1 and status["attempts"] == {"r1": 1}, status
    assert entries([0])[0] not in record.left_endpoint, "replica 0 served throughout"
    record.assert_clean()
    assert record.fewest_ready == 1
