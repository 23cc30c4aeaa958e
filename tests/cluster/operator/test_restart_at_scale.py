"""The scale benchmark's restart, small: 20 running jobs (80 pods) on nodes of their own, the operator stopped
and started again. Once it has reconciled every job (its queue empty) it must have changed nothing: a pod watch
from before the restart sees no pod created or deleted, every pod keeps its UID and version, every job its
version (no status write), and the operator sent no pod write at all (other tests' jobs may share it)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from maas_devcluster.testing import LocalCluster, wait_until

from tests.cluster.operator.gangs import uids
from tests.cluster.operator.support import (
    Jobs,
    OperatorProcess,
    pool_node_manifests,
    seconds_since,
    train_job,
    wait_nodes_ready,
)

pytestmark = pytest.mark.cluster

JOBS, STAGES, REPLICAS = 20, 2, 2
NODES = JOBS * STAGES * REPLICAS // 8
SETTLE_SECONDS = 5.0
"""After the restarted operator is in sync: anything the restart would still do shows up by then."""


@pytest.fixture
def big_pool(cluster: LocalCluster, namespace: str) -> Iterator[str]:
    """Exactly enough nodes of the test's own for every job's workers."""
    manifests = pool_node_manifests(namespace, NODES)
    for manifest in manifests:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    names = [m["metadata"]["name"] for m in manifests]
    wait_nodes_ready(cluster, names, timeout=60)
    yield namespace
    cluster.kubectl("delete", "nodes", *names, "--ignore-not-found", "--wait=false")


class PodEvents:
    """Counts the pod events of one namespace from a resourceVersion on, in a thread."""

    def __init__(self, core_v1: k8s.CoreV1Api, namespace: str, version: str) -> None:
        self.core_v1 = core_v1
        self.namespace = namespace
        self.version = version
        self.counts: Counter[str] = Counter()
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restart-pod-events", daemon=True)

    def __enter__(self) -> PodEvents:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            while not self._stop.is_set():
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.core_v1.list_namespaced_pod,
                    self.namespace,
                    resource_version=self.version,
                    timeout_seconds=1,
                    allow_watch_bookmarks=True,
                ):
                    self.counts[event["type"]] += 1
                self.version = stream.resource_version or self.version
        except Exception as error:  # reported by the test, which must not pass on a blind watch
            self.failure = error


def _metrics(operator: OperatorProcess) -> dict[str, float]:
    samples = {}
    for line in operator.metrics().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_a_restart_with_20_running_jobs_creates_and_deletes_no_pod(
    jobs: Jobs, big_pool: str, operator: OperatorProcess, core_v1: k8s.CoreV1Api
) -> None:
    names = [f"job-{index:02d}" for index in range(JOBS)]
    for name in names:
        jobs.apply(train_job(name, big_pool, split={"stages": STAGES}, parallelism={"replicas": REPLICAS}))
    for name in names:
        jobs.wait_phase(name, "Running", timeout=120)
    listing = core_v1.list_namespaced_pod(jobs.namespace)
    pods = [core_v1.api_client.sanitize_for_serialization(pod) for pod in listing.items]
    assert len(pods) == JOBS * STAGES * REPLICAS
    versions = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in pods}
    job_versions = {name: jobs.get(name)["metadata"]["resourceVersion"] for name in names}
    all_jobs = len(json.loads(jobs.kubectl("get", "maasjobs", "-A", "-o", "json").stdout)["items"])

    assert listing.metadata is not None and listing.metadata.resource_version
    with PodEvents(core_v1, jobs.namespace, listing.metadata.resource_version) as events:
        operator.stop()
        started = time.monotonic()
        operator.start()

        def in_sync() -> bool:
            samples = _metrics(operator)
            return (
                samples.get("maas_reconcile_duration_seconds_count", 0) >= all_jobs
                and samples.get("maas_workqueue_depth", 1) == 0
            )

        wait_until("the restarted operator in sync", in_sync, timeout=60, interval=0.2)
        in_sync_after = seconds_since(started)
        time.sleep(SETTLE_SECONDS)
    assert events.failure is None, f"the pod watch failed: {events.failure!r}"

    assert events.counts["ADDED"] == 0 and events.counts["DELETED"] == 0, dict(events.counts)
    after = [
        core_v1.api_client.sanitize_for_serialization(pod)
        for pod in core_v1.list_namespaced_pod(jobs.namespace).items
    ]
    assert uids(after) == uids(pods), "no pod may be re-created"
    assert {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in after} == versions
    assert {name: jobs.get(name)["metadata"]["resourceVersion"] for name in names} == job_versions
    pod_writes = {
        name: value
        for name, value in _metrics(operator).items()
        if name.startswith("maas_api_requests_total{")
        and 'kind="Pod' in name
        and 'verb="GET"' not in name
        and value > 0
    }
    assert pod_writes == {}, pod_writes
    print(f"\nrestart with {all_jobs} jobs present: in sync after {in_sync_after:.1f} s, no pod touched")
