"""Views of a job's worker pods for the healing, scaling and crash tests: who runs where, which pods are new,
and whether a gang is whole."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from maas_devcluster.testing import LocalCluster
from maas_operator import names
from maas_operator.planner import worker_name

from tests.cluster.operator.support import Jobs, pool_node_manifests, wait_nodes_ready

Pod = dict[str, Any]


def worker_names(job: str, replicas: int, stages: int) -> list[str]:
    """Worker names of a job, replica by replica."""
    return [worker_name(job, r, s) for r in range(replicas) for s in range(stages)]


def name_of(pod: Pod) -> str:
    return str(pod["metadata"]["name"])


def uids(pods: Iterable[Pod]) -> dict[str, str]:
    return {name_of(p): str(p["metadata"]["uid"]) for p in pods}


def nodes(pods: Iterable[Pod]) -> dict[str, str]:
    """Worker -> the node it is bound to (or '' while unbound)."""
    return {name_of(p): str(p["spec"].get("nodeName") or "") for p in pods}


def gated(pod: Pod) -> bool:
    return bool(pod["spec"].get("schedulingGates"))


def env(pod: Pod, variable: str) -> str | None:
    container = pod["spec"]["containers"][0]
    return next((e.get("value") for e in container.get("env", []) if e["name"] == variable), None)


def running(pod: Pod) -> bool:
    return (
        pod["status"].get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and not gated(pod)
        and bool(pod["spec"].get("nodeName"))
    )


def gang_labels(pods: Iterable[Pod]) -> dict[str, set[str]]:
    """Gang labels by replica label (a Train job's replicas share one gang; a Serve replica is its own)."""
    labels: dict[str, set[str]] = {}
    for pod in pods:
        pod_labels = pod["metadata"]["labels"]
        labels.setdefault(pod_labels.get(names.REPLICA_LABEL, ""), set()).add(
            pod_labels.get(names.GANG_LABEL, "")
        )
    return labels


def whole_gang(jobs: Jobs, job: str, expected: Sequence[str], per_replica: bool = False) -> list[Pod] | None:
    """The job's pods when they are exactly `expected`, all Running, of one gang (`per_replica`: one gang per
    replica, as Serve has), and the job is Ready."""
    pods = jobs.pods(job)
    if sorted(name_of(p) for p in pods) != sorted(expected) or not all(running(p) for p in pods):
        return None
    by_replica = gang_labels(pods)
    if not all(len(gangs) == 1 for gangs in by_replica.values()):
        return None
    if not per_replica and len(set().union(*by_replica.values())) != 1:
        return None
    status = jobs.status(job)
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    if ready is None or ready["status"] != "True" or status.get("readyWorkers") != f"{len(pods)}/{len(pods)}":
        return None
    return pods


def describe(jobs: Jobs, job: str) -> str:
    """The job's status and pods in a few lines, for failure messages."""
    status = jobs.status(job)
    lines = [
        f"phase {status.get('phase')}, readyWorkers {status.get('readyWorkers')}, "
        f"restarts {status.get('restarts', 0)}, disruptions {status.get('disruptions', 0)}"
    ]
    lines += [
        f"  {c['type']}={c['status']} {c['reason']}: {c.get('message', '')}"
        for c in status.get("conditions", [])
    ]
    for pod in sorted(jobs.pods(job), key=name_of):
        lines.append(
            f"  pod {name_of(pod)} {pod['status'].get('phase')} node={pod['spec'].get('nodeName')} "
            f"gated={gated(pod)} gang={pod['metadata']['labels'].get(names.GANG_LABEL)} "
            f"deleting={bool(pod['metadata'].get('deletionTimestamp'))}"
        )
    return "\n".join(lines)


def wait_whole_gang(
    jobs: Jobs,
    job: str,
    expected: Sequence[str],
    timeout: float = 90.0,
    new_since: Iterable[str] = (),
    per_replica: bool = False,
) -> list[Pod]:
    """Waits for `whole_gang`; with `new_since` (pod UIDs), for a gang made of none of those pods."""
    old = set(new_since)

    def probe() -> list[Pod] | None:
        pods = whole_gang(jobs, job, expected, per_replica)
        return pods if pods is not None and not old & set(uids(pods).values()) else None

    what = f"{job}: exactly {len(expected)} Running workers of one {'new ' if old else ''}gang and Ready"
    try:
        pods: list[Pod] = jobs.wait(what, probe, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{describe(jobs, job)}") from None
    return pods


def pool_node_names(pool: str, total: int) -> list[str]:
    return [m["metadata"]["name"] for m in pool_node_manifests(pool, total)]


def add_pool_nodes(cluster: LocalCluster, pool: str, total: int, gpus_per_node: int = 8) -> list[str]:
    """Grows the test's pool (the `pool` fixture made nodes n0 and n1) to `total` nodes; returns the new
    nodes' names. The caller deletes them (the `pool` fixture deletes only its own), also when this fails."""
    manifests = pool_node_manifests(pool, total, gpus_per_node)[2:]
    for manifest in manifests:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    added = [m["metadata"]["name"] for m in manifests]
    wait_nodes_ready(cluster, added)
    return added


def delete_nodes(cluster: LocalCluster, node_names: Sequence[str]) -> None:
    if node_names:
        cluster.kubectl("delete", "nodes", *node_names, "--ignore-not-found", "--wait=false")


def events(jobs: Jobs, job: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in jobs.events(job) if e.get("reason") == reason]


Check = Callable[[list[Pod]], None]
"""Asserts something of a namespace's pods at one moment (raises AssertionError when it does not hold)."""


class PodWatch:
    """Watches a namespace's pods in a thread and checks every state the watch delivers, so a test can say
    "at no moment": each event updates the picture of all pods, then `check` runs on it."""

    def __init__(self, core_v1: k8s.CoreV1Api, namespace: str, check: Check) -> None:
        self.core_v1 = core_v1
        self.namespace = namespace
        self.check = check
        self.pods: dict[str, Pod] = {}
        self.events = 0
        self.most_pods: dict[str, int] = {}
        """The most pods each job (by its label) had at once."""
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pod-watch-{namespace}", daemon=True)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self.violations, "\n".join(self.violations[:10])

    def _run(self) -> None:
        serialize = self.core_v1.api_client.sanitize_for_serialization
        # A List first, so the check starts from the whole picture rather than pod by pod.
        listing = self.core_v1.list_namespaced_pod(self.namespace)
        for pod in map(serialize, listing.items):
            self._record("ADDED", pod)
        self._check("the initial List")
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        version = listing.metadata.resource_version if listing.metadata else ""
        while not self._stop.is_set():
            # Short watches, so the thread notices a stop; each resumes where the last one ended.
            for event in stream.stream(  # type: ignore[no-untyped-call]
                self.core_v1.list_namespaced_pod,
                self.namespace,
                resource_version=version,
                timeout_seconds=1,
                allow_watch_bookmarks=True,
            ):
                if event["type"] == "BOOKMARK":
                    continue
                pod = serialize(event["object"])
                self._record(event["type"], pod)
                self._check(f"event {self.events} ({event['type']} {name_of(pod)})")
            version = stream.resource_version

    def _record(self, event_type: str, pod: Pod) -> None:
        if event_type == "DELETED":
            self.pods.pop(name_of(pod), None)
        else:
            self.pods[name_of(pod)] = pod
        self.events += 1
        job = pod["metadata"].get("labels", {}).get(names.JOB_LABEL)
        if job is not None:
            count = sum(1 for p in self.pods.values() if p["metadata"]["labels"].get(names.JOB_LABEL) == job)
            self.most_pods[job] = max(self.most_pods.get(job, 0), count)

    def _check(self, after: str) -> None:
        try:
            self.check(list(self.pods.values()))
        except AssertionError as error:
            self.violations.append(f"after {after}: {error}")


def gangs_never_half_released(sizes: dict[str, int]) -> Check:
    """A check while gangs are made (not torn down): a job's pods are released (ungated or bound) only when
    every pod of its gang exists, all of one gang; and the scheduler never finds a released pod no room (that
    would mean GPUs counted twice). `sizes` gives each job's worker count."""

    def check(pods: list[Pod]) -> None:
        by_job: dict[str, list[Pod]] = {}
        for pod in pods:
            job = pod["metadata"].get("labels", {}).get(names.JOB_LABEL)
            if job is not None:
                by_job.setdefault(job, []).append(pod)
        for job, members in by_job.items():
            live = [p for p in members if not p["metadata"].get("deletionTimestamp")]
            released = sorted(name_of(p) for p in live if not gated(p) or p["spec"].get("nodeName"))
            assert not released or len(live) == sizes[job], (
                f"{job}: {released} released with {len(live)} of {sizes[job]} pods"
            )
            assert not released or len({p["metadata"]["labels"].get(names.GANG_LABEL) for p in live}) == 1, (
                f"{job}: pods of several gangs released together"
            )
            refused = sorted(
                name_of(p)
                for p in live
                for c in p.get("status", {}).get("conditions") or []
                if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            )
            assert not refused, f"{job}: the scheduler found no room for {refused}"

    return check
