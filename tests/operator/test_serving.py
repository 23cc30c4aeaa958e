"""Serve mode step by step on the in-memory cluster: the pipeline readiness gate, the endpoint, rolling
updates (surge, unavailability, a split change, a deadline, a failing new replica) and graceful removal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maas_devcluster.simulation import CONTAINERS_READY_ANNOTATION
from maas_operator import names
from maas_operator.planner import Node
from maas_operator.reconcile import Decision

from tests.operator.fakes import FakeWorld, gpu_nodes, serve_manifest

Check = Callable[[FakeWorld], None]


def serving_replicas(world: FakeWorld) -> dict[int, list[str]]:
    """Replica -> its pods, for the replicas whose entry pod is Ready (what the EndpointSlice controller
    puts in the endpoint), each checked to have every stage ready: no endpoint with a stage down."""
    by_replica: dict[int, list[dict[str, Any]]] = {}
    for pod in world.pods.values():
        by_replica.setdefault(int(pod["metadata"]["labels"][names.REPLICA_LABEL]), []).append(pod)
    serving = {}
    for replica, pods in by_replica.items():
        entry = next((p for p in pods if p["metadata"]["labels"][names.PIPELINE_RANK_LABEL] == "0"), None)
        if entry is None or not _true(entry, "Ready"):
            continue
        size = len(entry["spec"]["containers"][0]["env"])  # any: only used in the message below
        down = [p["metadata"]["name"] for p in pods if not _true(p, "ContainersReady")]
        assert not down, f"replica {replica} serves with {down} down ({size})"
        assert len({p["metadata"]["labels"][names.GANG_LABEL] for p in pods}) == 1, f"replica {replica} mixed"
        serving[replica] = sorted(p["metadata"]["name"] for p in pods)
    return serving


def _true(pod: dict[str, Any], type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in pod["status"].get("conditions", []))


def at_least(minimum: int) -> Check:
    def check(world: FakeWorld) -> None:
        serving = serving_replicas(world)
        assert len(serving) >= minimum, f"{len(serving)} replicas serving, minimum {minimum}: {serving}"

    return check


def run(
    world: FakeWorld, check: Check, until: Callable[[FakeWorld], bool], steps: int = 80
) -> list[Decision]:
    """Reconciles, checking the world after every decision; when a decision changes nothing, time moves to
    its requeue (a drain ending, a deadline)."""
    decisions = []
    for _ in range(steps):
        decision = world.step()
        decisions.append(decision)
        check(world)
        if until(world):
            return decisions
        idle = not (decision.apply or decision.delete_pods or decision.pod_conditions)
        if idle:
            world.later(min(decision.requeue_after or 1.0, 60.0))
    raise AssertionError(f"not done after {steps} steps: {world.status.conditions}")


def progressing(world: FakeWorld) -> tuple[str, str]:
    return world.condition("Progressing")


def serving_world(replicas: int = 2, **spec: Any) -> FakeWorld:
    world = FakeWorld(serve_manifest(replicas, **spec))
    run(world, lambda w: None, lambda w: len(serving_replicas(w)) == replicas)
    world.step()
    return world


def gangs(world: FakeWorld) -> dict[str, str]:
    return {name: pod["metadata"]["labels"][names.GANG_LABEL] for name, pod in world.pods.items()}


def events(decisions: list[Decision]) -> list[str]:
    return [event.reason for decision in decisions for event in decision.events]


def test_a_replica_serves_once_every_stage_is_ready_and_stops_with_one_stage_down() -> None:
    world = FakeWorld(serve_manifest(2))
    first = world.step()
    services = {m["metadata"]["name"]: m for m in first.apply if m["kind"] == "Service"}
    endpoint = services[names.endpoint_service_name("svc")]["spec"]
    assert endpoint["type"] == "ClusterIP" and "clusterIP" not in endpoint
    assert endpoint["selector"] == {
        names.JOB_LABEL: "svc",
        "app.kubernetes.io/component": "worker",
        names.PIPELINE_RANK_LABEL: "0",
    }
    entry = world.pods["svc-r0-s0"]
    assert entry["spec"]["readinessGates"] == [{"conditionType": names.PIPELINE_READY}]
    assert entry["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "readinessGates" not in world.pods["svc-r0-s1"]["spec"]
    # The pods run, but no entry is Ready until the operator saw the whole pipeline ready.
    assert serving_replicas(world) == {}
    gates = world.step().pod_conditions
    assert sorted((g.pod, g.status, g.reason) for g in gates) == [
        ("svc-r0-s0", True, "PipelineReady"),
        ("svc-r1-s0", True, "PipelineReady"),
    ]
    assert serving_replicas(world) == {0: ["svc-r0-s0", "svc-r0-s1"], 1: ["svc-r1-s0", "svc-r1-s1"]}
    world.step()
    status = world.status
    assert status.endpoint == "http://svc-endpoint.ns.svc:8080"
    assert (status.ready_replicas, status.updated_replicas, status.replicas) == (2, 2, 2)
    assert world.condition("Ready") == ("True", "MinimumReplicasServing")
    assert status.selector == "maas.dev/job=svc,maas.dev/stage=0"

    # Stage 1 of replica 1 goes down: replica 1 leaves the endpoint; the default maxUnavailable 0 makes the
    # minimum 2, so the job is not Ready.
    world.set_condition("svc-r1-s1", "ContainersReady", False)
    down = world.step()
    assert [(g.pod, g.status, g.reason) for g in down.pod_conditions] == [
        ("svc-r1-s0", False, "StageNotReady")
    ]
    assert "svc-r1-s1" in down.pod_conditions[0].message
    assert down.delete_pods == [], "a stage not ready is no failure: the replica waits for it"
    assert sorted(serving_replicas(world)) == [0]
    assert world.status.ready_replicas == 1
    assert world.condition("Ready") == ("False", "TooFewReplicasServing")
    world.set_condition("svc-r1-s1", "ContainersReady", True)
    world.step()  # the gate opens; the entry's Ready follows, and its event brings the next reconcile
    world.step()
    assert sorted(serving_replicas(world)) == [0, 1] and world.condition("Ready")[0] == "True"


def test_a_rollout_with_surge_never_drops_below_the_replicas_and_ends_with_only_new_pods() -> None:
    world = serving_world(2)
    old = gangs(world)
    world.edit(image="maas-runtime:0.2.0")
    most = 0

    def check(w: FakeWorld) -> None:
        nonlocal most
        at_least(2)(w)
        most = max(most, len({p["metadata"]["labels"][names.REPLICA_LABEL] for p in w.pods.values()}))

    decisions = run(world, check, lambda w: progressing(w) == ("False", "RolloutComplete"))
    assert most == 3, "maxSurge 1: one replica beside the two old ones, never more"
    assert sorted(world.pods) == sorted(old) and set(gangs(world).values()).isdisjoint(old.values())
    assert all(p["spec"]["containers"][0]["image"] == "maas-runtime:0.2.0" for p in world.pods.values())
    reasons = events(decisions)
    assert reasons.index("SurgeReplicas") < reasons.index("RollingUpdate") < reasons.index("RolloutComplete")
    assert world.status.rollout is not None and world.status.updated_replicas == 2
    assert world.replica_configmaps == {"svc-plan-r0", "svc-plan-r1"}
    assert world.status.restarts == 0 and world.status.replicas == 2


def test_a_rollout_to_another_split_with_max_unavailable_keeps_the_minimum() -> None:
    world = serving_world(3, serving={"rollout": {"maxUnavailable": 1, "maxSurge": 0}})
    world.edit(split={"stages": 3}, parallelism={"replicas": 3, "schedule": "GPipe", "microbatches": 4})
    decisions = run(world, at_least(2), lambda w: progressing(w) == ("False", "RolloutComplete"))
    assert sorted(world.pods) == [f"svc-r{r}-s{s}" for r in range(3) for s in range(3)]
    assert world.status.stages == 3 and world.status.ready_replicas == 3
    assert "SurgeReplicas" not in events(decisions)


def test_old_workers_that_no_new_worker_replaces_keep_their_gpus_in_the_plan() -> None:
    """From 3 stages to 2: the old stage-2 workers serve on until their replica is replaced, so the new plan
    must not put a new worker on their GPUs."""
    world = FakeWorld(
        serve_manifest(1, split={"stages": 3}, parallelism={"replicas": 1, "schedule": "GPipe"}),
        nodes=[Node(name="a", gpus=3), Node(name="b", gpus=2)],
    )
    run(world, lambda w: None, lambda w: len(serving_replicas(w)) == 1)
    held = {name: pod["spec"]["nodeName"] for name, pod in world.pods.items()}
    world.edit(split={"stages": 2})
    world.step()
    # Plan: r0 keeps s0, s1 on their nodes; the surge replica r1 must avoid the GPU of the old r0-s2.
    surge = {name: pod["spec"]["nodeName"] for name, pod in world.pods.items() if name.startswith("svc-r1")}
    used = list(held.values()) + list(surge.values())
    assert all(used.count(node) <= {"a": 3, "b": 2}[node] for node in used), (held, surge)
    run(world, at_least(1), lambda w: progressing(w) == ("False", "RolloutComplete"))


def test_a_rollout_whose_new_replicas_never_get_ready_stops_at_the_deadline() -> None:
    world = serving_world(2, serving={"rollout": {"progressDeadlineSeconds": 30}})
    old = gangs(world)
    world.edit(template={"annotations": {CONTAINERS_READY_ANNOTATION: "false"}})
    decisions = run(world, at_least(2), lambda w: progressing(w)[1] == "ProgressDeadlineExceeded")
    assert "ProgressDeadlineExceeded" in events(decisions)
    message = next(c.message for c in world.status.conditions if c.type == "Progressing")
    assert "progressDeadlineSeconds" in message and "0 of 2" in message
    # Stopped: the old replicas keep serving, the surge replica stays for inspection, nothing else moves.
    assert {n: g for n, g in gangs(world).items() if n in old} == old
    assert sorted(serving_replicas(world)) == [0, 1]
    for _ in range(3):
        world.later(60)
        quiet = world.step()
        assert not quiet.delete_pods and not quiet.pod_conditions and not quiet.events
    assert world.condition("Ready") == ("True", "MinimumReplicasServing")
    # Back to the old spec: the surge replica goes, the old replicas were never touched.
    world.edit(template={})
    run(world, at_least(2), lambda w: progressing(w) == ("False", "RolloutComplete"))
    assert gangs(world) == old


def test_a_new_replica_that_fails_for_good_stops_the_rollout_not_the_job() -> None:
    world = serving_world(2)
    old = gangs(world)
    world.edit(image="maas-runtime:broken")
    world.step()  # the surge replica's pods are made and run
    world.step()
    world.exit("svc-r2-s1", 78)
    decision = world.step()
    assert "RolloutFailed" in [e.reason for e in decision.events]
    assert progressing(world) == ("False", "RolloutFailed")
    assert world.condition("Failed")[0] == "False" and world.condition("Ready")[0] == "True"
    assert {n: g for n, g in gangs(world).items() if n in old} == old
    world.later(60)
    assert not world.step().events, "reported once"


def test_a_surge_that_does_not_fit_is_reported_and_max_unavailable_rolls_alone() -> None:
    spec = {"serving": {"rollout": {"maxUnavailable": 1, "maxSurge": 1}}}
    world = FakeWorld(serve_manifest(2, **spec), nodes=gpu_nodes(1, gpus=4))
    run(world, lambda w: None, lambda w: len(serving_replicas(w)) == 2)
    world.edit(image="maas-runtime:0.2.0")
    decisions = run(world, at_least(1), lambda w: progressing(w) == ("False", "RolloutComplete"))
    assert "SurgeUnschedulable" in events(decisions)
    assert "SurgeReplicas" not in events(decisions)


def test_rollout_settings_and_the_replica_count_roll_nothing() -> None:
    world = serving_world(2)
    old = gangs(world)
    world.edit(serving={"drainSeconds": 1, "rollout": {"maxSurge": 2, "progressDeadlineSeconds": 60}})
    world.step()
    world.step()
    assert gangs(world) == old
    assert progressing(world) == ("False", "NoRollout")


def test_a_replica_on_a_lost_node_goes_at_once_and_the_other_serves_on() -> None:
    world = FakeWorld(serve_manifest(2), nodes=gpu_nodes(3, gpus=2))
    run(world, lambda w: None, lambda w: len(serving_replicas(w)) == 2)
    nodes = {name: pod["spec"]["nodeName"] for name, pod in world.pods.items()}
    assert nodes["svc-r0-s0"] != nodes["svc-r1-s0"], nodes
    kept = {n: g for n, g in gangs(world).items() if n.startswith("svc-r0")}
    world.nodes = [n for n in world.nodes if n.name != nodes["svc-r1-s0"]]
    decision = world.step()
    # Not drained: a replica on a lost node serves nobody, so it is not waited for.
    assert {(d.name, d.force) for d in decision.delete_pods} == {("svc-r1-s0", True), ("svc-r1-s1", True)}
    assert not any(c.reason == names.DRAINING for c in decision.pod_conditions)
    assert world.status.disruptions == 1
    run(world, at_least(1), lambda w: len(serving_replicas(w)) == 2)
    assert {n: g for n, g in gangs(world).items() if n.startswith("svc-r0")} == kept


def test_a_failed_worker_replaces_its_replica_after_the_backoff_while_the_other_serves() -> None:
    world = serving_world(2, failurePolicy={"maxRestarts": 1, "backoff": {"initialSeconds": 10}})
    kept = {n: g for n, g in gangs(world).items() if n.startswith("svc-r0")}
    world.exit("svc-r1-s1", 75)
    first = world.step()
    assert {d.name for d in first.delete_pods} == {"svc-r1-s0", "svc-r1-s1"}
    assert world.status.restarts == 1 and world.status.attempts == {"r1": 1}
    world.later(5)
    assert not [m for m in world.step().apply if m["kind"] == "Pod"], "the backoff holds the new pods back"
    assert sorted(serving_replicas(world)) == [0]
    world.later(5)
    run(world, at_least(1), lambda w: len(serving_replicas(w)) == 2)
    assert {n: g for n, g in gangs(world).items() if n.startswith("svc-r0")} == kept
    # The restart budget is the job's: one more failure past maxRestarts fails it.
    world.exit("svc-r1-s0", 75)
    world.step()
    assert world.condition("Failed") == ("True", "RestartLimitExceeded")
