"""The reconcile decision, step by step on an in-memory cluster (tests/operator/fakes.py)."""

from __future__ import annotations

from datetime import timedelta

from maas_api.status import Condition
from maas_operator import names
from maas_operator.planner import Node
from maas_operator.reconcile import plan_inputs, reconcile

from tests.operator.fakes import FakeWorld, gpu_nodes, serve_manifest, spec_of, train_manifest

WORKERS = ["job-r0-s0", "job-r0-s1", "job-r0-s2"]


def running_world(**kwargs: object) -> FakeWorld:
    world = FakeWorld(train_manifest(**kwargs))  # type: ignore[arg-type]
    world.step()
    return world


def test_a_new_job_is_planned_and_its_gang_created_then_ungated() -> None:
    world = FakeWorld(train_manifest())
    decision = world.step()
    kinds = [m["kind"] for m in decision.apply]
    # The plan first, then the Service before any pod, then every pod gated, then the same pods ungated.
    assert kinds[0] == "ConfigMap" and "Service" in kinds
    pods = [m for m in decision.apply if m["kind"] == "Pod"]
    gated = [m for m in pods if m["spec"].get("schedulingGates")]
    assert [m["metadata"]["name"] for m in gated] == WORKERS
    assert [m["metadata"]["name"] for m in pods[len(gated) :]] == WORKERS
    assert all(not m["spec"].get("schedulingGates") for m in pods[len(gated) :])
    assert decision.planned
    assert world.condition("Planned") == ("True", "Planned")
    assert world.status.start_time == world.now
    assert world.status.selector == "maas.dev/job=job"
    # Placed and made at once: one event tells both.
    assert [(e.reason, e.message) for e in decision.events] == [
        ("WorkersCreated", "created 3 worker pod(s): 3 worker(s) of 1 GPU(s) on 1 node(s)")
    ]


def test_the_job_becomes_ready_when_every_worker_runs_and_then_nothing_changes() -> None:
    world = running_world()
    decision = world.step()
    assert world.condition("Ready") == ("True", "AllWorkersReady")
    assert world.status.phase == "Running"
    assert world.status.ready_workers == "3/3"
    assert [e.reason for e in decision.events] == ["AllWorkersReady"]
    # Level-based: the same world gives the same (empty) decision and the same status.
    again = world.decide()
    assert again.apply == [] and again.delete_pods == [] and again.events == []
    assert again.status == world.status


def test_every_condition_type_is_present_with_the_generation() -> None:
    world = running_world()
    types = {c.type: c for c in world.status.conditions}
    assert set(types) == {
        "Planned",
        "Ready",
        "Succeeded",
        "Failed",
        "Suspended",
        "Restarting",
        "Reconciling",
        "Stalled",
        "Progressing",
    }
    assert all(c.observed_generation == 1 for c in types.values())


def test_a_crash_in_the_middle_of_creating_a_gang_is_finished_without_duplicates() -> None:
    world = FakeWorld(train_manifest())
    decision = world.decide()
    # Only the plan and the first gated pod made it before the operator died.
    first_pod = next(m for m in decision.apply if m["kind"] == "Pod")
    world.carry_out(
        type(decision)(status=decision.status, apply=[decision.apply[0], first_pod]),
    )
    assert list(world.pods) == ["job-r0-s0"] and world.pods["job-r0-s0"]["spec"]["schedulingGates"]
    world.step()
    assert sorted(world.pods) == WORKERS
    assert len(world.gang_labels()) == 1
    assert all(pod["status"]["phase"] == "Running" for pod in world.pods.values())


def test_a_partial_gang_stays_gated_until_every_pod_exists() -> None:
    world = FakeWorld(train_manifest())
    decision = world.decide()
    pods = [m for m in decision.apply if m["kind"] == "Pod" and m["spec"].get("schedulingGates")]
    world.carry_out(type(decision)(status=decision.status, apply=[decision.apply[0], *pods[:2]]))
    assert all(world.pods[name]["spec"]["schedulingGates"] for name in WORKERS[:2])
    assert all(world.pods[name]["status"]["phase"] == "Pending" for name in WORKERS[:2])


def test_a_retryable_exit_restarts_the_gang_after_the_backoff() -> None:
    world = running_world()
    old_gang = world.gang_labels()
    world.exit("job-r0-s1", 75)
    decision = world.decide()
    world.carry_out(decision, linger=True)
    assert world.status.restarts == 1 and world.status.attempts == {"all": 1}
    assert world.status.restart_at == world.now + timedelta(seconds=10)
    assert world.condition("Restarting") == ("True", "WorkerFailed")
    assert world.status.phase == "Restarting"
    assert {d.name for d in decision.delete_pods} == set(WORKERS)
    assert [e.type for e in decision.events if e.reason == "WorkerFailed"] == ["Warning"]
    # While the old pods terminate nothing new is made, and the failure is not counted twice.
    waiting = world.decide()
    assert waiting.apply == [] and world.status.restarts == 1 and waiting.status.restarts == 1
    world.pods.clear()
    world.later(5)
    early = world.step()
    assert early.apply == [] and early.requeue_after is not None and 4.9 < early.requeue_after <= 5
    world.later(5)
    world.step()
    assert sorted(world.pods) == WORKERS and world.gang_labels().isdisjoint(old_gang)
    assert {p["metadata"]["labels"][names.ATTEMPT_LABEL] for p in world.pods.values()} == {"1"}
    world.step()
    assert world.condition("Ready") == ("True", "AllWorkersReady")
    assert world.condition("Restarting")[0] == "False"


def test_restarts_past_max_restarts_fail_the_job() -> None:
    world = running_world()
    for restart in range(2):
        world.exit("job-r0-s0", 75)
        world.step()
        world.later(600)
        world.settle()
        assert world.status.restarts == restart + 1
    world.exit("job-r0-s0", 75)
    world.step()
    assert world.condition("Failed") == ("True", "RestartLimitExceeded")
    assert world.status.phase == "Failed" and world.status.completion_time == world.now


def test_a_permanent_exit_code_fails_the_job_at_once_and_keeps_the_failed_pod() -> None:
    world = running_world()
    world.exit("job-r0-s2", 78)
    decision = world.step()
    assert world.condition("Failed") == ("True", "PermanentExitCode")
    assert world.status.restarts == 0
    # cleanPodPolicy Running (the default): running workers go, the failed one stays for its logs.
    assert {d.name for d in decision.delete_pods} == {"job-r0-s0", "job-r0-s1"}
    assert list(world.pods) == ["job-r0-s2"]
    # Finished is final: nothing is re-created.
    assert world.step().apply == []


def test_exit_code_rules_of_the_job_come_first() -> None:
    world = running_world(failurePolicy={"exitCodes": [{"codes": [78], "action": "Retry"}]})
    world.exit("job-r0-s0", 78)
    world.step()
    assert world.condition("Restarting") == ("True", "WorkerFailed")


def test_every_worker_exiting_zero_is_success() -> None:
    world = running_world(runPolicy={"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 30})
    for name in WORKERS:
        world.exit(name, 0)
    decision = world.step()
    assert world.condition("Succeeded") == ("True", "AllWorkersSucceeded")
    assert world.condition("Ready") == ("True", "Succeeded")
    assert [e.reason for e in decision.events] == ["AllWorkersSucceeded"]
    assert world.status.phase == "Succeeded"
    assert {d.name for d in decision.delete_pods} == set(WORKERS)
    assert decision.requeue_after == 30 and not decision.delete_job
    world.later(30)
    assert world.step().delete_job


def test_a_lost_node_restarts_without_counting_and_keeps_workers_elsewhere() -> None:
    world = running_world(replicas=6, stages=2)
    nodes_before = {name: pod["spec"]["nodeName"] for name, pod in world.pods.items()}
    lost = sorted(set(nodes_before.values()))[0]
    world.nodes = [n for n in world.nodes if n.name != lost] + [Node(name="spare", gpus=8)]
    decision = world.step()
    assert world.status.restarts == 0 and world.status.disruptions == 1
    assert world.condition("Restarting") == ("True", "NodeLost")
    # Pods on the lost node are deleted at once (no kubelet will ever confirm a graceful stop).
    forced = {d.name for d in decision.delete_pods if d.force}
    assert forced == {name for name, node in nodes_before.items() if node == lost}
    world.settle()
    after = {name: pod["spec"]["nodeName"] for name, pod in world.pods.items()}
    assert lost not in after.values()
    kept = [name for name in after if nodes_before[name] != lost and after[name] == nodes_before[name]]
    assert len(kept) == sum(1 for node in nodes_before.values() if node != lost)


def test_a_job_that_does_not_fit_is_unschedulable_with_no_pods() -> None:
    world = FakeWorld(train_manifest(), nodes=gpu_nodes(1, gpus=2))
    decision = world.step()
    assert world.condition("Planned") == ("False", "Unschedulable")
    assert world.pods == {} and world.plan_configmap is None
    assert [e.type for e in decision.events] == ["Warning"]
    world.nodes.append(Node(name="big", gpus=8))
    world.step()
    assert sorted(world.pods) == WORKERS


def test_gpus_held_by_others_are_not_planned_on() -> None:
    world = FakeWorld(train_manifest(), nodes=gpu_nodes(2, gpus=2))
    world.used_gpus = {"n0": 2}
    world.step()
    assert world.condition("Planned") == ("False", "Unschedulable")
    world.used_gpus = {"n0": 0}
    world.step()
    assert sorted(world.pods) == WORKERS


def test_suspend_deletes_workers_and_keeps_the_plan_then_resume_brings_them_back() -> None:
    world = running_world()
    gang = world.gang_labels()
    world.edit(runPolicy={"suspend": True})
    world.step()
    assert world.pods == {} and world.plan_configmap is not None
    assert world.status.phase == "Suspended" and world.status.start_time is None
    world.edit(runPolicy={"suspend": False})
    decision = world.step()
    assert sorted(world.pods) == WORKERS and world.gang_labels() == gang
    assert not decision.planned
    assert world.condition("Suspended") == ("False", "Resumed")


def test_the_active_deadline_fails_the_job() -> None:
    world = running_world(runPolicy={"activeDeadlineSeconds": 60})
    assert world.step().requeue_after == 60
    world.later(61)
    world.step()
    assert world.condition("Failed") == ("True", "DeadlineExceeded")
    assert world.pods == {}


def test_scaling_a_train_job_restarts_the_gang_at_the_new_degree() -> None:
    world = running_world()
    gang = world.gang_labels()
    world.edit(parallelism={"replicas": 2, "microbatches": 4})
    world.settle()
    assert sorted(world.pods) == sorted([*WORKERS, "job-r1-s0", "job-r1-s1", "job-r1-s2"])
    assert world.gang_labels().isdisjoint(gang) and len(world.gang_labels()) == 1
    env = {e["name"]: e.get("value") for e in world.pods["job-r1-s2"]["spec"]["containers"][0]["env"]}
    assert env["PET_NNODES"] == "6" and env["MAAS_WORKER_INDEX"] == "5"
    assert world.status.restarts == 0 and world.status.replicas == 2


def test_scaling_a_serve_job_touches_only_the_replicas_that_change() -> None:
    world = FakeWorld(serve_manifest(replicas=2))
    world.settle()
    before = {name: pod["metadata"]["labels"][names.GANG_LABEL] for name, pod in world.pods.items()}
    world.edit(parallelism={"replicas": 3, "schedule": "GPipe"})
    up = world.step()
    assert up.delete_pods == []
    assert {m["metadata"]["name"] for m in up.apply if m["kind"] == "Pod"} == {"svc-r2-s0", "svc-r2-s1"}
    assert all(
        world.pods[name]["metadata"]["labels"][names.GANG_LABEL] == gang for name, gang in before.items()
    )
    assert world.replica_configmaps == {"svc-plan-r0", "svc-plan-r1", "svc-plan-r2"}
    world.edit(parallelism={"replicas": 1, "schedule": "GPipe"})
    down = world.step()
    # Replica 2 never served (its gate was not yet opened): it goes at once. Replica 1 serves: it leaves the
    # endpoint first, and its pods go serving.drainSeconds (5) later (+1: condition times have whole seconds).
    assert {d.name for d in down.delete_pods} == {"svc-r2-s0", "svc-r2-s1"}
    assert [(c.pod, c.status, c.reason) for c in down.pod_conditions] == [("svc-r1-s0", False, "Draining")]
    assert down.requeue_after == 6.0
    world.later(5)
    assert not world.step().delete_pods
    world.later(1)
    drained = world.step()
    assert {d.name for d in drained.delete_pods} == {"svc-r1-s0", "svc-r1-s1"}
    world.step()
    # A removed replica's plan goes once its pods are gone.
    assert world.replica_configmaps == {"svc-plan-r0"}
    assert {n: world.pods[n]["metadata"]["labels"][names.GANG_LABEL] for n in ("svc-r0-s0", "svc-r0-s1")} == {
        n: before[n] for n in ("svc-r0-s0", "svc-r0-s1")
    }


def test_a_failed_serve_replica_restarts_alone() -> None:
    world = FakeWorld(serve_manifest(replicas=2))
    world.settle()
    world.exit("svc-r1-s0", 75)
    decision = world.step()
    assert {d.name for d in decision.delete_pods} == {"svc-r1-s0", "svc-r1-s1"}
    assert world.status.attempts == {"r1": 1} and world.status.restarts == 1


def test_an_env_edit_restarts_pods_but_keeps_the_plan() -> None:
    world = running_world()
    plan_before = world.plan_configmap
    world.edit(env=[{"name": "EXTRA", "value": "1"}])
    decision = world.step()
    assert not decision.planned and world.plan_configmap == plan_before
    assert {d.name for d in decision.delete_pods} == set(WORKERS)
    world.settle()
    env = world.pods["job-r0-s0"]["spec"]["containers"][0]["env"]
    assert {"name": "EXTRA", "value": "1"} in env


def test_an_unparseable_spec_fails_with_its_reason() -> None:
    world = FakeWorld(train_manifest())
    observed = world.observe()
    broken = type(observed)(**{**observed.__dict__, "spec": None, "spec_error": "spec.mode: Field required"})
    decision = reconcile(broken, __import__("tests.operator.fakes", fromlist=["SETTINGS"]).SETTINGS)
    failed = next(c for c in decision.status.conditions if c.type == "Failed")
    assert (failed.status, failed.reason, failed.message) == (
        "True",
        "InvalidSpec",
        "spec.mode: Field required",
    )


def test_a_plan_error_fails_until_the_spec_changes() -> None:
    world = FakeWorld(train_manifest(stages=3))
    world.edit(split={"stages": 3, "balanceBy": "flops"}, resources={"gpus": 1, "gpuMemory": "1Ki"})
    world.step()
    assert world.condition("Failed")[1] == "InvalidSpec"
    assert world.pods == {}
    world.edit(resources={"gpus": 1})
    world.step()
    assert world.condition("Failed") == ("False", "SpecChanged")
    assert sorted(world.pods) == WORKERS


def test_plan_inputs_ignore_fields_that_do_not_change_placement() -> None:
    spec = spec_of(train_manifest())
    edited = spec_of(train_manifest(runPolicy={"suspend": True}, env=[{"name": "A", "value": "b"}]))
    scaled = spec_of(train_manifest(replicas=2))
    assert plan_inputs(spec) == plan_inputs(edited) != plan_inputs(scaled)


def test_transitions_keep_their_time_when_nothing_changes() -> None:
    world = running_world()
    world.step()
    ready: Condition = next(c for c in world.status.conditions if c.type == "Ready")
    world.later(100)
    world.step()
    assert next(c for c in world.status.conditions if c.type == "Ready").last_transition_time == (
        ready.last_transition_time
    )
