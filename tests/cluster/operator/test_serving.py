"""Serve mode on the real control plane, the operator running as a real process, kwok standing in for the
kubelet: the endpoint Service's EndpointSlices are watched throughout (tests/cluster/operator/endpoints.py), so
"the ready replicas never drop below the minimum" and "no endpoint belongs to a replica with a stage down" are
checked at every moment the endpoint changes, through rolling updates, a failed rollout, scaling and a failed
worker. kwok marks a pod's containers ready; the operator's readiness gate decides the entry pods' Ready."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from maas_devcluster.simulation import CONTAINERS_READY_ANNOTATION, exit_annotations
from maas_operator import names

from tests.cluster.operator.endpoints import EndpointRecord
from tests.cluster.operator.gangs import events, uids, worker_names
from tests.cluster.operator.support import TEST_POOL_LABEL, Jobs, load_example

pytestmark = pytest.mark.cluster

DRAIN_SECONDS = 1


def serve_job(name: str, pool: str, replicas: int, stages: int = 2, **spec: Any) -> dict[str, Any]:
    """A small Transformer served by `replicas` pipelines of `stages` one-GPU workers on the test's pool."""
    body: dict[str, Any] = {
        "mode": "Serve",
        "model": {"catalog": "Transformer", "args": {"vocab": 256, "dim": 64, "layers": 6, "heads": 4}},
        "split": {"stages": stages},
        "parallelism": {"replicas": replicas, "schedule": "GPipe", "maxReplicas": 4},
        "serving": {"drainSeconds": DRAIN_SECONDS},
        "resources": {"gpus": 1},
        "placement": {"nodeSelector": {TEST_POOL_LABEL: pool}},
        "failurePolicy": {"backoff": {"initialSeconds": 0, "maxSeconds": 0}},
    }
    for key, value in spec.items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": name}, "spec": body}


def entries(job: str, replicas: range | list[int]) -> list[str]:
    return [f"{job}-r{replica}-s0" for replica in replicas]


@pytest.fixture
def record(core_v1: k8s.CoreV1Api, admin_api: k8s.ApiClient, jobs: Jobs) -> Iterator[EndpointRecord]:
    with EndpointRecord(core_v1, k8s.DiscoveryV1Api(admin_api), jobs.namespace, "serve") as recording:
        yield recording


def wait_status(jobs: Jobs, name: str, timeout: float = 90.0, **fields: Any) -> dict[str, Any]:
    """Waits until status has these values; a field named like a condition type compares (status, reason)."""

    def probe() -> dict[str, Any] | None:
        status = jobs.status(name)
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}
        for key, value in fields.items():
            actual = conditions.get(key) if key[0].isupper() else status.get(key)
            if actual != value:
                return None
        return status

    try:
        result: dict[str, Any] = jobs.wait(f"{name}: status {fields}", probe, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nlast status: {json.dumps(jobs.status(name), indent=1)[:3000]}"
        ) from None
    return result


def serving_pods(jobs: Jobs, name: str) -> list[dict[str, Any]]:
    return [p for p in jobs.pods(name) if not p["metadata"].get("deletionTimestamp")]


def start_serving(
    jobs: Jobs, record: EndpointRecord, manifest: dict[str, Any], replicas: int
) -> dict[str, str]:
    jobs.apply(manifest)
    record.wait_ready(entries("serve", range(replicas)), timeout=90)
    wait_status(jobs, "serve", readyReplicas=replicas, Ready=("True", "MinimumReplicasServing"))
    return uids(serving_pods(jobs, "serve"))


def check_graceful(record: EndpointRecord, removed: list[str]) -> None:
    """Every removed replica left the endpoint before any of its pods began to stop."""
    for entry in removed:
        replica = entry.rsplit("-s", 1)[0]
        stops = [t for pod, t in record.first_deleting.items() if pod.startswith(f"{replica}-s")]
        assert entry in record.left_endpoint and stops, (entry, record.left_endpoint, record.first_deleting)
        assert record.left_endpoint[entry] < min(stops), f"{entry} was deleted before it left the endpoint"


def test_the_endpoint_holds_exactly_the_replicas_whose_whole_pipeline_is_ready(
    jobs: Jobs, pool: str, core_v1: k8s.CoreV1Api, record: EndpointRecord
) -> None:
    start_serving(jobs, record, serve_job("serve", pool, 2), 2)
    service = core_v1.read_namespaced_service(names.endpoint_service_name("serve"), jobs.namespace).spec
    assert service is not None and service.type == "ClusterIP" and service.cluster_ip not in (None, "None")
    status = jobs.status("serve")
    assert status["endpoint"] == f"http://serve-endpoint.{jobs.namespace}.svc:8080"
    assert status["selector"] == "maas.dev/job=serve,maas.dev/stage=0"
    record.arm(1)
    record.grace_seconds = 10.0

    # One stage of replica 1 goes down (its readiness probe would fail): the replica leaves the endpoint.
    jobs.kubectl("annotate", "pod", "serve-r1-s1", f"{CONTAINERS_READY_ANNOTATION}=false")
    record.wait_ready(entries("serve", [0]))
    record.assert_clean()
    wait_status(jobs, "serve", readyReplicas=1, Ready=("False", "TooFewReplicasServing"))
    assert record.stage_down_lag and max(record.stage_down_lag) < 10.0
    print(f"\nstage down -> endpoint removed: {max(record.stage_down_lag):.2f} s")
    jobs.kubectl("annotate", "pod", "serve-r1-s1", f"{CONTAINERS_READY_ANNOTATION}-")
    record.wait_ready(entries("serve", [0, 1]))
    wait_status(jobs, "serve", readyReplicas=2, Ready=("True", "MinimumReplicasServing"))
    record.assert_clean()
    assert jobs.status("serve").get("restarts", 0) == 0, "a stage not ready is no failure"


def test_a_rolling_update_to_another_split_keeps_every_replica_serving(
    jobs: Jobs, pool: str, record: EndpointRecord
) -> None:
    old = start_serving(jobs, record, serve_job("serve", pool, 2), 2)
    record.arm(2)  # maxUnavailable 0 (the default): both replicas serve at every moment
    started = time.monotonic()
    jobs.apply(serve_job("serve", pool, 2, stages=3))
    wait_status(jobs, "serve", timeout=120, Progressing=("True", "RollingUpdate"))
    status = wait_status(
        jobs, "serve", timeout=120, Progressing=("False", "RolloutComplete"), readyReplicas=2
    )
    took = time.monotonic() - started
    pods = serving_pods(jobs, "serve")
    assert sorted(uids(pods)) == worker_names("serve", 2, 3)
    assert not set(uids(pods).values()) & set(old.values()), "every pod is new"
    assert (status["stages"], status["replicas"], status["updatedReplicas"]) == (3, 2, 2)
    record.wait_ready(entries("serve", range(2)))
    record.assert_clean()
    check_graceful(record, entries("serve", range(3)))  # replicas 0, 1 (old) and the surge replica 2
    reasons = [e["reason"] for e in jobs.events("serve")]
    assert {"SurgeReplicas", "RollingUpdate", "RolloutComplete"} <= set(reasons)
    print(
        f"\nrollout 2 replicas, 2 -> 3 stages, maxSurge 1: {took:.1f} s, {len(record.samples)} endpoint changes,"
        f" fewest ready {record.fewest_ready} (minimum 2)"
    )
    assert record.fewest_ready == 2


def test_a_rolling_update_with_max_unavailable_keeps_the_minimum(
    jobs: Jobs, pool: str, record: EndpointRecord
) -> None:
    rollout = {"drainSeconds": DRAIN_SECONDS, "rollout": {"maxUnavailable": 1, "maxSurge": 0}}
    old = start_serving(jobs, record, serve_job("serve", pool, 3, serving=rollout), 3)
    record.arm(2)
    jobs.apply(serve_job("serve", pool, 3, serving=rollout, env=[{"name": "MODEL_REVISION", "value": "2"}]))
    wait_status(jobs, "serve", timeout=120, Progressing=("False", "RolloutComplete"), readyReplicas=3)
    pods = serving_pods(jobs, "serve")
    assert sorted(uids(pods)) == sorted(old) and not set(uids(pods).values()) & set(old.values())
    record.wait_ready(entries("serve", range(3)))
    record.assert_clean()
    check_graceful(record, entries("serve", range(3)))
    assert "SurgeReplicas" not in [e["reason"] for e in jobs.events("serve")]
    print(f"\nrollout 3 replicas, maxUnavailable 1: fewest ready {record.fewest_ready} (minimum 2)")
    assert record.fewest_ready == 2


def test_a_rollout_whose_new_replicas_never_get_ready_stops_and_the_old_ones_serve_on(
    jobs: Jobs, pool: str, record: EndpointRecord
) -> None:
    serving = {"drainSeconds": DRAIN_SECONDS, "rollout": {"progressDeadlineSeconds": 5}}
    manifest = serve_job("serve", pool, 2, serving=serving)
    old = start_serving(jobs, record, manifest, 2)
    record.arm(2)
    broken = serve_job(
        "serve", pool, 2, serving=serving, template={"annotations": {CONTAINERS_READY_ANNOTATION: "false"}}
    )
    jobs.apply(broken)
    status = wait_status(jobs, "serve", timeout=60, Progressing=("False", "ProgressDeadlineExceeded"))
    assert status["readyReplicas"] == 2 and status["updatedReplicas"] == 0
    assert events(jobs, "serve", "ProgressDeadlineExceeded")
    time.sleep(3)  # stopped: nothing more happens to the old replicas
    pods = {name: uid for name, uid in uids(serving_pods(jobs, "serve")).items() if name in old}
    assert pods == old
    assert jobs.condition("serve", "Ready")["status"] == "True"  # type: ignore[index]
    # Back to the working spec: the surge replica goes, the old replicas were never touched.
    jobs.apply(manifest)
    wait_status(jobs, "serve", timeout=60, Progressing=("False", "RolloutComplete"), readyReplicas=2)
    jobs.wait("only the old pods left", lambda: uids(jobs.pods("serve")) == old)
    record.assert_clean()
    assert record.fewest_ready == 2


def test_scaling_adds_replicas_to_the_endpoint_and_removes_them_gracefully(
    jobs: Jobs, pool: str, record: EndpointRecord
) -> None:
    start_serving(jobs, record, serve_job("serve", pool, 2), 2)
    record.arm(1)
    jobs.kubectl("scale", "mj/serve", "--replicas=3")
    record.wait_ready(entries("serve", range(3)))
    wait_status(jobs, "serve", replicas=3, readyReplicas=3, updatedReplicas=3)
    jobs.kubectl("scale", "mj/serve", "--replicas=1")
    record.wait_ready(entries("serve", [0]))
    wait_status(jobs, "serve", replicas=1, readyReplicas=1, Ready=("True", "MinimumReplicasServing"))
    jobs.wait(
        "only replica 0's pods", lambda: sorted(uids(jobs.pods("serve"))) == worker_names("serve", 1, 2)
    )
    check_graceful(record, entries("serve", [1, 2]))
    record.assert_clean()


def test_a_failed_worker_replaces_its_replica_while_the_other_serves(
    jobs: Jobs, pool: str, record: EndpointRecord
) -> None:
    old = start_serving(jobs, record, serve_job("serve", pool, 2), 2)
    record.arm(1)
    jobs.kubectl("annotate", "pod", "serve-r1-s1", *[f"{k}={v}" for k, v in exit_annotations(75).items()])
    jobs.wait(
        "replica 1 made again",
        lambda: (
            {n for n, uid in uids(serving_pods(jobs, "serve")).items() if old.get(n) != uid}
            == {"serve-r1-s0", "serve-r1-s1"}
        ),
    )
    record.wait_ready(entries("serve", [0, 1]))
    status = wait_status(jobs, "serve", readyReplicas=2)
    assert status["restarts"] == 1 and status["attempts"] == {"r1": 1}
    assert "serve-r0-s0" not in record.left_endpoint, "replica 0 served throughout"
    assert {n: u for n, u in uids(jobs.pods("serve")).items() if n.startswith("serve-r0")} == {
        n: u for n, u in old.items() if n.startswith("serve-r0")
    }
    record.assert_clean()


def test_a_horizontal_pod_autoscaler_reads_the_scale_subresource(
    jobs: Jobs, pool: str, record: EndpointRecord, admin_api: k8s.ApiClient
) -> None:
    start_serving(jobs, record, serve_job("serve", pool, 2), 2)
    # The example's HPA, pointed at this test's job.
    hpa = load_example("serve-autoscaling.yaml")
    hpa["metadata"]["name"] = "serve"
    hpa["spec"]["scaleTargetRef"]["name"] = "serve"
    jobs.apply(hpa)
    autoscaling = k8s.AutoscalingV2Api(admin_api)

    def read_scale() -> Any:
        status = autoscaling.read_namespaced_horizontal_pod_autoscaler("serve", jobs.namespace).status
        if status is None:
            return None
        conditions = {c.type: c for c in status.conditions or []}
        able = conditions.get("AbleToScale")
        return status if able is not None and able.status == "True" and status.current_replicas else None

    # The local cluster serves no custom metrics, so the HPA cannot compute a target (ScalingActive False),
    # but it reads the job's scale (replicas 2, and the entry pods through status.selector).
    status = jobs.wait("the HPA read the MaaSJob's scale", read_scale, timeout=90)
    conditions = {c.type: c for c in status.conditions}
    assert conditions["AbleToScale"].reason == "SucceededGetScale"
    assert status.current_replicas == 2
    assert conditions["ScalingActive"].status == "False"
