"""kstatus's summary conditions (Reconciling, Stalled): derived from the job's own conditions, in the pure
function and through whole reconciles of an in-memory cluster."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from maas_api.status import ConditionType, MaaSJobStatus
from maas_operator.planner import Node
from maas_operator.status import set_condition, summary_conditions

from tests.operator.fakes import FakeWorld, gpu_nodes, serve_manifest, train_manifest

T0 = datetime(2026, 1, 1, tzinfo=UTC)
C = ConditionType


def status_with(**conditions: tuple[bool, str]) -> MaaSJobStatus:
    """A status holding the given conditions (type name -> (value, reason)), message = 'why <reason>'."""
    status = MaaSJobStatus()
    for name, (value, reason) in conditions.items():
        set_condition(status, C(name), value, reason, f"why {reason}", T0, 1)
    return status


def summary(status: MaaSJobStatus) -> tuple[tuple[bool, str, str], tuple[bool, str, str]]:
    reconciling, stalled = summary_conditions(status)
    assert (reconciling.type, stalled.type) == (C.RECONCILING, C.STALLED)
    return (reconciling.value, reconciling.reason, reconciling.message), (
        stalled.value,
        stalled.reason,
        stalled.message,
    )


@pytest.mark.parametrize(
    ("conditions", "reconciling"),
    [
        # Nothing observed yet: planning.
        ({}, (True, "Planning", "")),
        ({"Planned": (False, "Unschedulable")}, (True, "Unschedulable", "why Unschedulable")),
        (
            {"Planned": (True, "Planned"), "Ready": (False, "WorkersNotReady")},
            (True, "WorkersNotReady", "why WorkersNotReady"),
        ),
        (
            {"Planned": (True, "Planned"), "Ready": (True, "AllWorkersReady")},
            (False, "AllWorkersReady", "why AllWorkersReady"),
        ),
        # A Serve job keeps serving while one replica restarts: still on its way.
        (
            {
                "Planned": (True, "Planned"),
                "Ready": (True, "AllWorkersReady"),
                "Restarting": (True, "WorkerFailed"),
            },
            (True, "WorkerFailed", "why WorkerFailed"),
        ),
        # A running job whose scaled spec does not fit: the running plan stays, the spec is not met yet.
        (
            {"Planned": (False, "Unschedulable"), "Ready": (True, "AllWorkersReady")},
            (True, "Unschedulable", "why Unschedulable"),
        ),
        (
            {
                "Planned": (True, "Planned"),
                "Succeeded": (True, "AllWorkersSucceeded"),
                "Ready": (True, "Succeeded"),
            },
            (False, "AllWorkersSucceeded", "why AllWorkersSucceeded"),
        ),
        (
            {"Planned": (True, "Planned"), "Suspended": (True, "Suspended"), "Ready": (False, "Suspended")},
            (False, "Suspended", "why Suspended"),
        ),
    ],
)
def test_reconciling_is_true_until_the_job_is_ready_finished_or_suspended(
    conditions: dict[str, tuple[bool, str]], reconciling: tuple[bool, str, str]
) -> None:
    found_reconciling, found_stalled = summary(status_with(**conditions))
    assert found_reconciling == reconciling
    assert found_stalled == (False, "NoFailure", "")


def test_stalled_mirrors_failed_and_then_nothing_is_reconciling() -> None:
    status = status_with(
        Planned=(True, "Planned"),
        Ready=(False, "PermanentExitCode"),
        Restarting=(True, "WorkerFailed"),
        Failed=(True, "PermanentExitCode"),
    )
    reconciling, stalled = summary(status)
    assert stalled == (True, "PermanentExitCode", "why PermanentExitCode")
    assert reconciling == (False, "PermanentExitCode", "why PermanentExitCode")
    assert summary(status_with(Failed=(False, "SpecChanged")))[1] == (False, "SpecChanged", "why SpecChanged")


# -- through reconcile ------------------------------------------------------------------------------------


def reconciling_and_stalled(world: FakeWorld) -> tuple[tuple[str, str], tuple[str, str]]:
    return world.condition("Reconciling"), world.condition("Stalled")


def test_a_train_job_reads_in_progress_until_ready_and_current_when_it_succeeds() -> None:
    world = FakeWorld(train_manifest())
    decision = world.step()
    # Pods created and running in the fake, but the status was computed before they ran.
    assert reconciling_and_stalled(world) == (("True", "WorkersNotReady"), ("False", "NoFailure"))
    assert not {e.reason for e in decision.events} & {"Reconciling", "Stalled"}
    world.step()
    assert reconciling_and_stalled(world) == (("False", "AllWorkersReady"), ("False", "NoFailure"))
    for name in list(world.pods):
        world.exit(name, 0)
    world.step()
    assert reconciling_and_stalled(world) == (("False", "AllWorkersSucceeded"), ("False", "NoFailure"))


def test_a_restart_reads_in_progress_and_a_failure_stalls() -> None:
    world = FakeWorld(train_manifest())
    world.settle()
    world.exit("job-r0-s1", 75)
    world.step()
    assert reconciling_and_stalled(world) == (("True", "WorkerFailed"), ("False", "NoFailure"))
    world.later(600)
    world.settle()
    assert world.condition("Reconciling") == ("False", "AllWorkersReady")
    world.exit("job-r0-s0", 78)
    world.step()
    assert reconciling_and_stalled(world) == (("False", "PermanentExitCode"), ("True", "PermanentExitCode"))
    assert world.status.phase == "Failed"


def test_a_job_waiting_for_room_reads_in_progress_with_the_reason() -> None:
    world = FakeWorld(train_manifest(), nodes=gpu_nodes(1, gpus=2))
    world.step()
    reconciling = next(c for c in world.status.conditions if c.type == "Reconciling")
    assert (reconciling.status, reconciling.reason) == ("True", "Unschedulable")
    assert reconciling.message == next(c for c in world.status.conditions if c.type == "Planned").message
    world.nodes.append(Node(name="big", gpus=8))
    world.settle()
    assert world.condition("Reconciling") == ("False", "AllWorkersReady")


def test_a_scale_that_does_not_fit_keeps_a_serve_job_in_progress() -> None:
    world = FakeWorld(serve_manifest(replicas=2), nodes=gpu_nodes(1, gpus=4))
    world.settle()
    assert world.condition("Reconciling") == ("False", "MinimumReplicasServing")
    world.edit(parallelism={"replicas": 3, "schedule": "GPipe"})
    world.settle()
    assert world.condition("Ready")[0] == "True"
    assert reconciling_and_stalled(world) == (("True", "Unschedulable"), ("False", "NoFailure"))


def test_a_suspended_job_is_settled_and_every_summary_carries_the_generation() -> None:
    world = FakeWorld(train_manifest())
    world.settle()
    world.edit(runPolicy={"suspend": True})
    world.step()
    assert world.condition("Reconciling") == ("False", "Suspended")
    summaries = [c for c in world.status.conditions if c.type in {"Reconciling", "Stalled"}]
    assert {c.observed_generation for c in summaries} == {2} == {world.status.observed_generation}


def test_a_stopped_rollout_reads_stalled_while_a_running_one_reads_in_progress() -> None:
    from maas_api.status import ConditionType, MaaSJobStatus
    from maas_operator.status import set_condition, summary_conditions

    status = MaaSJobStatus()
    now = FakeWorld(serve_manifest()).now
    for type_, value, reason in [("Planned", True, "Planned"), ("Ready", True, "MinimumReplicasServing")]:
        set_condition(status, ConditionType(type_), value, reason, "", now, 1)
    set_condition(status, ConditionType.PROGRESSING, True, "RollingUpdate", "1 of 2 updated", now, 1)
    reconciling, stalled = summary_conditions(status)
    assert (reconciling.value, reconciling.reason, stalled.value) == (True, "RollingUpdate", False)
    set_condition(status, ConditionType.PROGRESSING, False, "ProgressDeadlineExceeded", "stopped", now, 1)
    reconciling, stalled = summary_conditions(status)
    assert (reconciling.value, stalled.value, stalled.reason) == (False, True, "ProgressDeadlineExceeded")
