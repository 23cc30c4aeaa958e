"""status: condition transitions, the generation they carry, the phase, and worker counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from maas_api.status import ConditionType, MaaSJobStatus, Phase
from maas_operator.status import (
    condition,
    is_true,
    observe_generation,
    phase_of,
    set_condition,
    worker_counts,
)

from .helpers import exited, pod

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)


def with_conditions(*true: ConditionType) -> MaaSJobStatus:
    """A status where every condition type is present and exactly `true` hold."""
    status = MaaSJobStatus()
    for type_ in ConditionType:
        set_condition(status, type_, type_ in true, "Reason", "", T0, 1)
    return status


# -- transitions ------------------------------------------------------------------------------------------


def test_a_new_condition_is_a_transition_whatever_its_status() -> None:
    # Whether it is news (an event) is the reconcile's call: a first Planned=False Unschedulable is.
    status = MaaSJobStatus()
    first_false = set_condition(status, ConditionType.FAILED, False, "NoFailure", "", T0, 1)
    assert first_false is not None and first_false.status == "False"
    transition = set_condition(status, ConditionType.READY, True, "AllWorkersReady", "3 running", T0, 1)
    assert transition is not None
    assert (transition.type, transition.status, transition.reason) == ("Ready", "True", "AllWorkersReady")
    assert [c.type for c in status.conditions] == ["Failed", "Ready"]


def test_setting_the_same_status_and_reason_keeps_the_transition_time_and_is_no_news() -> None:
    status = MaaSJobStatus()
    set_condition(status, ConditionType.READY, False, "WorkersNotReady", "0/3", T0, 1)
    assert set_condition(status, ConditionType.READY, False, "WorkersNotReady", "2/3", T1, 1) is None
    ready = condition(status, ConditionType.READY)
    assert ready is not None
    assert ready.last_transition_time == T0
    assert ready.message == "2/3"


def test_a_new_reason_with_the_same_status_is_news_but_keeps_the_transition_time() -> None:
    status = MaaSJobStatus()
    set_condition(status, ConditionType.READY, False, "WorkersNotReady", "", T0, 1)
    transition = set_condition(status, ConditionType.READY, False, "Restarting", "", T1, 1)
    assert transition is not None and transition.reason == "Restarting"
    ready = condition(status, ConditionType.READY)
    assert ready is not None and ready.last_transition_time == T0


def test_a_status_flip_moves_the_transition_time() -> None:
    status = MaaSJobStatus()
    set_condition(status, ConditionType.READY, False, "WorkersNotReady", "", T0, 1)
    set_condition(status, ConditionType.READY, True, "AllWorkersReady", "", T1, 1)
    set_condition(status, ConditionType.READY, True, "AllWorkersReady", "", T2, 1)
    ready = condition(status, ConditionType.READY)
    assert ready is not None and ready.last_transition_time == T1
    assert len(status.conditions) == 1


def test_a_set_condition_carries_the_generation_it_was_computed_from() -> None:
    status = MaaSJobStatus()
    set_condition(status, ConditionType.PLANNED, True, "Planned", "", T0, 1)
    set_condition(status, ConditionType.PLANNED, True, "Planned", "", T1, 4)
    planned = condition(status, ConditionType.PLANNED)
    assert planned is not None and planned.observed_generation == 4


def test_observe_generation_marks_every_condition_and_keeps_transition_times() -> None:
    status = with_conditions(ConditionType.PLANNED)
    observe_generation(status, 7)
    assert {c.observed_generation for c in status.conditions} == {7}
    assert {c.last_transition_time for c in status.conditions} == {T0}
    assert is_true(status, ConditionType.PLANNED)


@pytest.mark.parametrize(
    ("type_", "value", "warning"),
    [
        (ConditionType.FAILED, True, True),
        (ConditionType.RESTARTING, True, True),
        (ConditionType.PLANNED, False, True),
        (ConditionType.READY, True, False),
        (ConditionType.SUCCEEDED, True, False),
        (ConditionType.FAILED, False, False),
        (ConditionType.PLANNED, True, False),
    ],
)
def test_bad_news_transitions_are_warnings(type_: ConditionType, value: bool, warning: bool) -> None:
    status = MaaSJobStatus()
    set_condition(status, type_, not value, "Before", "", T0, 1)
    transition = set_condition(status, type_, value, "After", "", T1, 1)
    assert transition is not None and transition.warning is warning


# -- phase ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("true", "phase"),
    [
        ((), Phase.PENDING),
        ((ConditionType.PLANNED,), Phase.PENDING),
        ((ConditionType.PLANNED, ConditionType.READY), Phase.RUNNING),
        ((ConditionType.READY, ConditionType.RESTARTING), Phase.RESTARTING),
        ((ConditionType.RESTARTING, ConditionType.SUSPENDED), Phase.SUSPENDED),
        ((ConditionType.SUSPENDED, ConditionType.SUCCEEDED), Phase.SUCCEEDED),
        ((ConditionType.SUCCEEDED, ConditionType.FAILED), Phase.FAILED),
        (tuple(ConditionType), Phase.FAILED),
    ],
)
def test_the_most_final_condition_that_holds_names_the_phase(
    true: tuple[ConditionType, ...], phase: Phase
) -> None:
    assert phase_of(with_conditions(*true)) == phase


def test_no_conditions_is_pending() -> None:
    assert phase_of(MaaSJobStatus()) == Phase.PENDING


# -- worker counts ----------------------------------------------------------------------------------------


def test_worker_counts_count_ready_running_pods_and_failed_ones() -> None:
    pods = [
        pod("ready"),
        pod("running-not-ready", ready=False),
        pod("leaving", terminating=True),
        pod("waiting", "Pending", ready=False),
        exited("done", 0),
        exited("failed", 75),
    ]
    counts = worker_counts(6, pods)
    assert (counts.total, counts.ready, counts.failed) == (6, 1, 1)


def test_worker_counts_of_no_pods_keep_the_expected_total() -> None:
    counts = worker_counts(4, [])
    assert (counts.total, counts.ready, counts.failed) == (4, 0, 0)
