"""The operator killed with SIGKILL on the real control plane: in the middle of making a gang it leaves, once
restarted, exactly one gang and no orphan; in the middle of replacing a gang it counts the cause once; with
running jobs a restart changes nothing."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import pytest
from kubernetes import client as k8s
from maas_devcluster.simulation import NODE_READY_ANNOTATION, exit_annotations
from maas_devcluster.testing import wait_until

from tests.cluster.operator.gangs import (
    Pod,
    PodWatch,
    describe,
    gangs_never_half_released,
    gated,
    name_of,
    uids,
    wait_whole_gang,
    worker_names,
)
from tests.cluster.operator.gangs import (
    nodes as nodes_of,
)
from tests.cluster.operator.support import Jobs, OperatorProcess, train_job

pytestmark = pytest.mark.cluster

STAGES, REPLICAS = 2, 8
"""16 one-GPU workers: the whole pool, so the operator takes a while to make the gang."""
WORKERS = STAGES * REPLICAS


@dataclass(frozen=True)
class KillPoint:
    """When to kill the operator: `delay` seconds after `kubectl apply` returned, or as soon as the watch
    sees `pods` pods of the job, or `released` of them without their scheduling gate."""

    label: str
    delay: float | None = None
    pods: int | None = None
    released: int | None = None

    def reached(self, pods: list[Pod]) -> bool:
        if self.pods is not None:
            return len(pods) >= self.pods
        if self.released is not None:
            return sum(1 for p in pods if not gated(p)) >= self.released
        return False


KILL_POINTS = [
    *(KillPoint(f"{delay:.1f}s", delay=delay) for delay in (0.0, 0.1, 0.2, 0.4, 0.8)),
    KillPoint("1st pod", pods=1),
    KillPoint(f"{WORKERS // 2} pods", pods=WORKERS // 2),
    KillPoint(f"{WORKERS} pods", pods=WORKERS),
    KillPoint("1st gate lifted", released=1),
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.label for p in KILL_POINTS])
def test_sigkill_while_making_a_gang_leaves_exactly_one_gang(
    jobs: Jobs, pool: str, operator: OperatorProcess, core_v1: k8s.CoreV1Api, point: KillPoint
) -> None:
    name = "crash"
    expected = worker_names(name, REPLICAS, STAGES)
    killed = threading.Event()
    invariant = gangs_never_half_released({name: WORKERS})

    def check(pods: list[Pod]) -> None:
        if not killed.is_set() and point.reached(pods):
            operator.kill()
            killed.set()
        invariant(pods)

    with PodWatch(core_v1, jobs.namespace, check) as watch:
        jobs.apply(train_job(name, pool, split={"stages": STAGES}, parallelism={"replicas": REPLICAS}))
        if point.delay is not None:
            time.sleep(point.delay)  # the point of the test: a kill at this moment
            operator.kill()
            killed.set()
        wait_until(f"the kill at {point.label}", killed.is_set, timeout=60)
        # Only the operator lifts gates, so this is the state it died in (the scheduler may bind more).
        at_kill = jobs.pods(name)
        hit = f"{len(at_kill)} pods, {sum(1 for p in at_kill if gated(p))} gated"

        operator.start()
        pods = wait_whole_gang(jobs, name, expected)
    print(f"\nkill at {point.label}: {hit}; {watch.events} pod events seen")

    assert sorted(map(name_of, pods)) == sorted(expected)
    assert len({p["metadata"]["labels"]["maas.dev/gang"] for p in pods}) == 1
    assert {p["metadata"]["labels"]["maas.dev/attempt"] for p in pods} == {"0"}, "no gang restart"
    everything = json.loads(jobs.kubectl("get", "pods", "-o", "json").stdout)["items"]
    assert sorted(map(name_of, everything)) == sorted(expected), "no orphan pod"
    survivors = {n: uid for n, uid in uids(at_kill).items() if n in expected}
    assert {n: uid for n, uid in uids(pods).items() if n in survivors} == survivors, (
        "pods made before the kill are kept, not re-created"
    )
    status = jobs.status(name)
    assert status["phase"] == "Running" and status["readyWorkers"] == f"{WORKERS}/{WORKERS}"
    assert status.get("restarts", 0) == 0 and status.get("disruptions", 0) == 0


def test_sigkill_while_replacing_a_gang_counts_the_disruption_once(
    jobs: Jobs, pool: str, operator: OperatorProcess, core_v1: k8s.CoreV1Api
) -> None:
    """The operator writes the new attempt into the status before it deletes the old gang: killed between
    the two, its successor finishes the replacement without counting the node loss again."""
    name = "replace"
    expected = worker_names(name, 2, 3)
    jobs.apply(train_job(name, pool, parallelism={"replicas": 2}))
    before = wait_whole_gang(jobs, name, expected)
    sick = sorted(set(nodes_of(before).values()))[0]
    armed, killed = threading.Event(), threading.Event()

    def kill_at_the_first_deletion(pods: list[Pod]) -> None:
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if armed.is_set() and not killed.is_set() and len(live) < len(expected):
            operator.kill()
            killed.set()

    with PodWatch(core_v1, jobs.namespace, kill_at_the_first_deletion):
        armed.set()
        jobs.cluster.kubectl("annotate", "node", sick, f"{NODE_READY_ANNOTATION}=false")
        wait_until("the kill at the first deletion of the old gang", killed.is_set, timeout=60)
        left = [n for n, uid in uids(jobs.pods(name)).items() if uid in set(uids(before).values())]
        operator.start()
        after = wait_whole_gang(jobs, name, expected, new_since=uids(before).values())
    print(f"\nkill while replacing: {len(left)} of {len(expected)} old pods left at the kill")

    assert sick not in nodes_of(after).values()
    assert {p["metadata"]["labels"]["maas.dev/attempt"] for p in after} == {"1"}
    status = jobs.status(name)
    assert status["disruptions"] == 1 and status.get("restarts", 0) == 0
    everything = json.loads(jobs.kubectl("get", "pods", "-o", "json").stdout)["items"]
    assert sorted(map(name_of, everything)) == sorted(expected), "no orphan pod"


def test_sigkill_while_restarting_a_failed_gang_goes_on_after_the_restart(
    jobs: Jobs, pool: str, operator: OperatorProcess, core_v1: k8s.CoreV1Api
) -> None:
    """A retryable failure replaces the gang with graceful deletes; killed at the first one, the successor
    finishes the replacement and counts the failure once."""
    name = "flaky"
    expected = worker_names(name, 2, 3)
    fate = exit_annotations(75, after_seconds=2)  # 75: retryable (EX_TEMPFAIL)
    jobs.apply(
        train_job(
            name,
            pool,
            parallelism={"replicas": 2},
            template={"annotations": fate},
            failurePolicy={"maxRestarts": 20},
        )
    )
    armed, killed = threading.Event(), threading.Event()

    def kill_at_the_first_deletion(pods: list[Pod]) -> None:
        if not armed.is_set() and len(pods) == len(expected):
            armed.set()
        gone = len(pods) < len(expected) or any(p["metadata"].get("deletionTimestamp") for p in pods)
        if armed.is_set() and not killed.is_set() and gone:
            operator.kill()
            killed.set()

    with PodWatch(core_v1, jobs.namespace, kill_at_the_first_deletion):
        wait_until("the kill at the first deletion of the failed gang", killed.is_set, timeout=60)
        restarts_at_kill = jobs.status(name).get("restarts", 0)
        operator.start()

        def next_attempt_runs() -> bool:
            pods = jobs.pods(name)
            attempts = {p["metadata"]["labels"]["maas.dev/attempt"] for p in pods}
            return (
                len(pods) == len(expected)
                and len(attempts) == 1
                and int(attempts.pop()) > restarts_at_kill - 1
                and all(p["status"].get("phase") == "Running" and not gated(p) for p in pods)
            )

        try:
            jobs.wait(f"{name}: the next attempt running", next_attempt_runs, timeout=120)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{describe(jobs, name)}") from None
    status = jobs.status(name)
    assert status["restarts"] == status["attempts"]["all"], "each failure counted once"
    print(f"\nkill while restarting: restarts {restarts_at_kill} at the kill, {status['restarts']} now")


def test_an_operator_restart_changes_nothing(jobs: Jobs, pool: str, operator: OperatorProcess) -> None:
    expected = worker_names("steady", 2, 3)
    jobs.apply(train_job("steady", pool, parallelism={"replicas": 2}))
    pods = wait_whole_gang(jobs, "steady", expected)
    versions = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in pods}
    status_before = jobs.status("steady")

    operator.kill()
    operator.start()
    # The new operator queues every job at start-up; wait until it has reconciled as many and its queue is
    # empty (a job with nothing to change is reconciled without any write).
    all_jobs = len(json.loads(jobs.cluster.kubectl("get", "maasjobs", "-A", "-o", "json").stdout)["items"])
    wait_until(
        "the restarted operator's first reconciles",
        lambda: (
            _metric(operator, "maas_reconcile_duration_seconds_count") >= all_jobs
            and _metric(operator, "maas_workqueue_depth") == 0
        ),
        timeout=30,
    )
    after = jobs.pods("steady")
    assert uids(after) == uids(pods), "no pod may be re-created"
    assert {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in after} == versions
    assert jobs.status("steady") == status_before
    assert "PATCH" not in _pod_writes(operator) and "DELETE" not in _pod_writes(operator)


def _metric(operator: OperatorProcess, name: str) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    return 0.0


def _pod_writes(operator: OperatorProcess) -> set[str]:
    """Verbs of the Pod requests the operator has sent since it started."""
    verbs = set()
    for line in operator.metrics().splitlines():
        if (
            line.startswith("maas_api_requests_total{")
            and 'kind="Pod"' in line
            and float(line.split()[-1]) > 0
        ):
            verbs.add(line.split('verb="', 1)[1].split('"', 1)[0])
    return verbs
