"""The watch-backed cache: which node changes wake jobs, the GPUs every pod holds, children filed under their
job, and our own writes racing the watch."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from maas_operator import names
from maas_operator.cache import WorldCache, job_key_of
from maas_operator.world import used_gpus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(
    name: str = "n0", gpus: int = 8, ready: bool = True, heartbeat: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "resourceVersion": "1"},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastHeartbeatTime": heartbeat}
            ],
        },
    }


def pod(
    name: str,
    job: str | None = "train",
    namespace: str = "ns",
    gpus: int = 1,
    bound_to: str | None = None,
    pinned_to: str | None = None,
    phase: str = "Pending",
    version: int = 1,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {"name": "worker", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}}
        ]
    }
    if bound_to:
        spec["nodeName"] = bound_to
    if pinned_to:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [pinned_to]}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    labels = {names.JOB_LABEL: job} if job else {}
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "resourceVersion": str(version)},
        "spec": spec,
        "status": {"phase": phase},
    }


def maasjob(name: str = "train", namespace: str = "ns", version: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "u1", "resourceVersion": str(version)},
        "spec": {"mode": "Train", "model": {"catalog": "LargeModel"}, "resources": {"gpus": 1}},
    }


def configmap(name: str, job: str = "train", namespace: str = "ns", version: int = 1) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {names.JOB_LABEL: job},
            "resourceVersion": str(version),
        },
        "data": {},
    }


# -- nodes ------------------------------------------------------------------------------------------------


def test_a_node_heartbeat_wakes_nothing() -> None:
    cache = WorldCache()
    assert cache.put_node("ADDED", node()) is True, "a new node is news: jobs may fit now"
    beat = node(heartbeat="2026-01-01T00:00:40Z")
    beat["metadata"]["resourceVersion"] = "2"
    assert cache.put_node("MODIFIED", beat) is False


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda n: n["metadata"]["labels"].update({"rack": "r1"}), id="label"),
        pytest.param(lambda n: n["status"]["conditions"][0].update({"status": "False"}), id="not-ready"),
        pytest.param(lambda n: n["status"]["allocatable"].update({"nvidia.com/gpu": "4"}), id="gpus"),
        pytest.param(lambda n: n.setdefault("spec", {}).update({"unschedulable": True}), id="cordoned"),
        pytest.param(
            lambda n: n.setdefault("spec", {}).update({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
            id="taint",
        ),
    ],
)
def test_a_node_change_that_placement_reads_wakes_the_jobs(change: Any) -> None:
    cache = WorldCache()
    cache.put_node("ADDED", node())
    changed = node()
    change(changed)
    assert cache.put_node("MODIFIED", changed) is True
    assert cache.put_node("MODIFIED", changed) is False, "the same state twice is news once"


def test_a_node_turning_ready_again_wakes_the_jobs() -> None:
    cache = WorldCache()
    cache.put_node("ADDED", node(ready=False))
    assert not cache.nodes["n0"].ready
    assert cache.put_node("MODIFIED", node(ready=True)) is True
    assert cache.nodes["n0"].ready


def test_a_deleted_node_is_news_once() -> None:
    cache = WorldCache()
    cache.put_node("ADDED", node())
    assert cache.put_node("DELETED", node()) is True
    assert "n0" not in cache.nodes
    assert cache.put_node("DELETED", node()) is False


def test_an_unreadable_node_is_dropped() -> None:
    cache = WorldCache()
    cache.put_node("ADDED", node())
    broken = node()
    broken["status"]["allocatable"]["nvidia.com/gpu"] = "many"
    assert cache.put_node("MODIFIED", broken) is True
    assert "n0" not in cache.nodes


# -- GPU holders ------------------------------------------------------------------------------------------


def test_gpus_are_held_on_the_bound_or_else_the_pinned_node() -> None:
    cache = WorldCache()
    cache.put_pod("ADDED", pod("bound", bound_to="n0", pinned_to="n9", gpus=2, phase="Running"))
    cache.put_pod("ADDED", pod("gated", pinned_to="n1", gpus=4))
    cache.put_pod("ADDED", pod("unpinned", gpus=1))
    cache.put_pod("ADDED", pod("cpu-only", bound_to="n0", gpus=0))
    held = {key: (holder.node, holder.gpus) for key, holder in cache.holders.items()}
    assert held == {"ns/bound": ("n0", 2), "ns/gated": ("n1", 4)}


def test_finished_and_deleted_pods_hold_no_gpus() -> None:
    cache = WorldCache()
    cache.put_pod("ADDED", pod("w0", bound_to="n0", phase="Running"))
    cache.put_pod("ADDED", pod("w1", bound_to="n0", phase="Running"))
    cache.put_pod("MODIFIED", pod("w0", bound_to="n0", phase="Succeeded"))
    cache.put_pod("DELETED", pod("w1", bound_to="n0", phase="Running"))
    assert cache.holders == {}


_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
        st.sampled_from(["a-0", "a-1", "b-0", "c-0"]),
        st.sampled_from(["a", "b", None]),
        st.sampled_from(["n0", "n1", None]),
        st.integers(min_value=0, max_value=3),
        st.sampled_from(["Pending", "Running", "Succeeded"]),
        st.sampled_from(["u1", "u2"]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_EVENTS)
def test_the_gpu_ledger_always_equals_a_walk_over_every_holder(
    events: list[tuple[str, str, str | None, str | None, int, str, str]],
) -> None:
    """The per-node sums a decision reads are kept as pods come and go; whatever the order of events
    (new UIDs, late DELETEDs, finished pods, moves), they equal summing every holder afresh."""
    cache = WorldCache()
    for version, (event, name, job, node_name, gpus, phase, uid) in enumerate(events, start=1):
        body = pod(name, job=job, gpus=gpus, bound_to=node_name, phase=phase, version=version)
        body["metadata"]["uid"] = uid
        cache.put_pod(event, body)
    for job in ("ns/a", "ns/b", "ns/none"):
        assert dict(cache.ledger.held_by_others(job)) == used_gpus(cache.holders.values(), except_job=job)
    everything = used_gpus(cache.holders.values())
    assert cache.ledger.total == everything
    assert all(count > 0 for own in cache.ledger.by_job.values() for count in own.values())


def test_a_job_sees_the_gpus_of_every_pod_but_its_own() -> None:
    cache = WorldCache()
    cache.put_job("ADDED", maasjob("train"))
    cache.put_pod("ADDED", pod("train-r0-s0", job="train", bound_to="n0", gpus=2))
    cache.put_pod("ADDED", pod("other-r0-s0", job="other", bound_to="n0", gpus=3))
    cache.put_pod("ADDED", pod("not-a-worker", job=None, pinned_to="n1", gpus=1))
    cache.put_pod("ADDED", pod("same-name-job", job="train", namespace="elsewhere", bound_to="n1", gpus=4))
    observed = cache.observe("ns/train", NOW)
    assert observed is not None
    assert dict(observed.used_gpus) == {"n0": 3, "n1": 5}
    assert [p.name for p in observed.pods] == ["train-r0-s0"]


# -- children filed under their job ------------------------------------------------------------------------


def test_the_job_key_of_a_child_comes_from_its_job_label_and_namespace() -> None:
    assert job_key_of(pod("w", job="train", namespace="team")) == "team/train"
    assert job_key_of(pod("w", job=None)) is None
    assert job_key_of({"metadata": {"name": "w", "labels": {names.JOB_LABEL: "train"}}}) == "default/train"


def test_pod_events_return_the_job_to_wake() -> None:
    cache = WorldCache()
    assert cache.put_pod("ADDED", pod("train-r0-s0")) == "ns/train"
    assert cache.put_pod("ADDED", pod("stranger", job=None, bound_to="n0")) is None
    assert cache.put_pod("DELETED", pod("train-r0-s0")) == "ns/train"
    assert cache.pods["ns/train"] == {}


def test_plan_and_replica_configmaps_are_told_apart() -> None:
    cache = WorldCache()
    assert (
        cache.put_configmap("ADDED", configmap(names.plan_configmap_name("serve"), job="serve")) == "ns/serve"
    )
    cache.put_configmap("ADDED", configmap(names.replica_configmap_name("serve", 0), job="serve"))
    cache.put_configmap("ADDED", configmap(names.replica_configmap_name("serve", 1), job="serve"))
    cache.put_configmap("DELETED", configmap(names.replica_configmap_name("serve", 1), job="serve"))
    assert set(cache.plan_configmaps) == {"ns/serve"}
    assert cache.replica_configmaps["ns/serve"] == {"serve-plan-r0"}
    unlabelled = configmap("kube-root-ca.crt")
    unlabelled["metadata"]["labels"] = {}
    assert cache.put_configmap("ADDED", unlabelled) is None


def test_forgetting_a_job_drops_its_plans() -> None:
    cache = WorldCache()
    cache.put_job("ADDED", maasjob("train"))
    cache.put_configmap("ADDED", configmap(names.plan_configmap_name("train")))
    cache.forget_job("ns/train")
    assert cache.observe("ns/train", NOW) is None
    assert cache.plan_configmaps == {}


# -- our own writes racing the watch -----------------------------------------------------------------------


def test_a_pod_deleted_by_the_watch_is_not_brought_back_by_our_delete_answer() -> None:
    """The bug this guards against: a force-deleted pod whose DELETED event came before the DELETE answer
    stayed in the cache as "terminating" for ever, and its job waited for it (Restarting, no pods) for ever."""
    cache = WorldCache()
    cache.put_job("ADDED", maasjob("train"))
    cache.put_pod("ADDED", pod("train-r0-s0", bound_to="n0", phase="Running", version=5))
    answer = pod("train-r0-s0", bound_to="n0", phase="Running", version=6)
    answer["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deleted_event = copy.deepcopy(answer)
    deleted_event["metadata"]["resourceVersion"] = "7"
    cache.put_pod("DELETED", deleted_event)
    assert cache.put_own_write(answer) is False
    observed = cache.observe("ns/train", NOW)
    assert observed is not None and observed.pods == ()


def test_a_delete_answer_marks_a_cached_pod_terminating() -> None:
    cache = WorldCache()
    cache.put_pod("ADDED", pod("train-r0-s0", bound_to="n0", phase="Running", version=5))
    answer = pod("train-r0-s0", bound_to="n0", phase="Running", version=6)
    answer["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert cache.put_own_write(answer) is True
    assert cache.pods["ns/train"]["train-r0-s0"]["metadata"]["deletionTimestamp"]


def test_an_apply_answer_older_than_the_watch_is_ignored() -> None:
    cache = WorldCache()
    cache.put_pod("MODIFIED", pod("train-r0-s0", bound_to="n0", phase="Running", version=9))
    assert cache.put_own_write(pod("train-r0-s0", pinned_to="n0", version=8)) is False
    assert cache.pods["ns/train"]["train-r0-s0"]["status"]["phase"] == "Running"
    assert cache.put_own_write(pod("train-r0-s0", bound_to="n0", phase="Running", version=10)) is True


def test_a_created_pod_is_written_through_before_its_event() -> None:
    cache = WorldCache()
    assert cache.put_own_write(pod("train-r0-s0", pinned_to="n0", version=3)) is True
    assert cache.holders["ns/train-r0-s0"].node == "n0"


def test_a_status_answer_neither_revives_a_deleted_job_nor_overwrites_a_newer_spec() -> None:
    cache = WorldCache()
    assert cache.put_own_write(maasjob(version=4)) is False, "the job is not (or no longer) known"
    newer = maasjob(version=6)
    newer["spec"]["parallelism"] = {"replicas": 3}
    cache.put_job("MODIFIED", newer)
    assert cache.put_own_write(maasjob(version=5)) is False
    assert cache.jobs["ns/train"]["spec"]["parallelism"] == {"replicas": 3}
    assert cache.put_own_write(maasjob(version=7)) is True


def test_a_plan_configmap_answer_older_than_the_watch_is_ignored() -> None:
    cache = WorldCache()
    cache.put_configmap("MODIFIED", configmap("train-plan", version=12))
    assert cache.put_own_write(configmap("train-plan", version=11)) is False
    assert cache.plan_configmaps["ns/train"]["metadata"]["resourceVersion"] == "12"


def test_a_termination_message_is_read_once_per_line_and_shortened() -> None:
    from maas_operator.world import MESSAGE_QUOTED_CHARS, worker_pod

    def failed_with(message: str) -> dict[str, Any]:
        terminated = {"exitCode": 78, "reason": "Error", "message": message}
        return {
            "metadata": {"name": "w0"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}],
            },
        }

    # Two processes of one pod failed alike: one quote.
    parsed = worker_pod(failed_with("exit 78: bad plan\nexit 78: bad plan\n"))
    assert (parsed.exit_code, parsed.reason, parsed.message) == (78, "Error", "exit 78: bad plan")
    long = worker_pod(failed_with("x" * 5000)).message
    assert len(long) == MESSAGE_QUOTED_CHARS and long.endswith("...")
