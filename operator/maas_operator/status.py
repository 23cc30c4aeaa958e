"""Status from what was decided and observed: conditions, phase, worker counts and the plan summary.

Pure. Conditions follow the Kubernetes API conventions: every type is always present, `lastTransitionTime`
changes only when the status flips, and each carries the generation it was computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from maas_api.plan import Plan
from maas_api.status import (
    Condition,
    ConditionType,
    MaaSJobStatus,
    Phase,
    PlanSummary,
    StageSummary,
    WorkerCounts,
    WorkerSummary,
)

from maas_operator.world import WorkerPod

ROLLOUT_STOPPED = frozenset({"ProgressDeadlineExceeded", "RolloutFailed"})
"""Progressing=False reasons of a Serve rollout that stopped: the old replicas serve, the spec is not applied."""

MAX_WORKERS_IN_STATUS = 64
"""PlanSummary.workers lists at most this many (status must stay small; the ConfigMap has them all)."""

# Condition types whose True state is bad news: their events are Warnings.
WARNING_CONDITIONS = frozenset({ConditionType.FAILED, ConditionType.RESTARTING})


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: one event on the job."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        bad_news = self.type in WARNING_CONDITIONS and self.status == "True"
        unplaceable = self.type == ConditionType.PLANNED and self.status == "False"
        return bad_news or unplaceable


def set_condition(
    status: MaaSJobStatus,
    type_: ConditionType,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> Transition | None:
    """Sets one condition in place; returns the transition when it is new or its status or reason changed."""
    wanted = "True" if value else "False"
    for index, existing in enumerate(status.conditions):
        if existing.type != type_:
            continue
        changed = existing.status != wanted or existing.reason != reason
        status.conditions[index] = Condition(
            type=type_,
            status=wanted,
            reason=reason,
            message=message,
            last_transition_time=now if existing.status != wanted else existing.last_transition_time,
            observed_generation=generation,
        )
        return Transition(type_, wanted, reason, message) if changed else None
    status.conditions.append(
        Condition(
            type=type_,
            status=wanted,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        )
    )
    # A first condition is a transition too (a new job found Unschedulable is news); the caller keeps the
    # placeholders that every condition starts with quiet.
    return Transition(type_, wanted, reason, message)


def observe_generation(status: MaaSJobStatus, generation: int) -> None:
    """Marks every condition as computed from `generation`: a reconcile re-evaluates all of them from the
    whole job, so one it left unchanged is as current as one it set (lastTransitionTime stays)."""
    status.conditions = [
        c if c.observed_generation == generation else c.model_copy(update={"observed_generation": generation})
        for c in status.conditions
    ]


def condition(status: MaaSJobStatus, type_: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def is_true(status: MaaSJobStatus, type_: ConditionType) -> bool:
    found = condition(status, type_)
    return found is not None and found.status == "True"


def phase_of(status: MaaSJobStatus) -> Phase:
    """The one-word summary: the most final condition that holds wins."""
    for type_, phase in (
        (ConditionType.FAILED, Phase.FAILED),
        (ConditionType.SUCCEEDED, Phase.SUCCEEDED),
        (ConditionType.SUSPENDED, Phase.SUSPENDED),
        (ConditionType.RESTARTING, Phase.RESTARTING),
        (ConditionType.READY, Phase.RUNNING),
    ):
        if is_true(status, type_):
            return phase
    return Phase.PENDING


@dataclass(frozen=True)
class Summary:
    """The value of one of kstatus's summary conditions (Reconciling, Stalled), derived from the others."""

    type: ConditionType
    value: bool
    reason: str
    message: str


# The conditions after which the operator has nothing left to do (until the spec changes).
_SETTLED = (ConditionType.FAILED, ConditionType.SUCCEEDED, ConditionType.SUSPENDED)


def summary_conditions(status: MaaSJobStatus) -> tuple[Summary, Summary]:
    """kstatus's abnormal-true conditions, from the job's own: Flux (kstatus) reads a custom resource as
    InProgress while Reconciling is True, Failed while Stalled is True, and Current otherwise.

    Reconciling is True until the job is Failed, Succeeded or Suspended, or Ready with a plan for its current
    spec and no rollout under way (a running job whose scaled spec does not fit yet is still on its way); its
    reason and message are those of the condition that explains it. Stalled mirrors Failed, and is True too
    when a Serve rollout stopped (ProgressDeadlineExceeded, RolloutFailed). The two are never True together.
    """
    failed = condition(status, ConditionType.FAILED)
    progressing = condition(status, ConditionType.PROGRESSING)
    if progressing is not None and progressing.status == "False" and progressing.reason in ROLLOUT_STOPPED:
        # Like a Deployment past its progress deadline: only a spec edit moves it on.
        stalled = Summary(ConditionType.STALLED, True, progressing.reason, progressing.message)
    else:
        stalled = Summary(
            ConditionType.STALLED,
            failed is not None and failed.status == "True",
            failed.reason if failed is not None else "NoFailure",
            failed.message if failed is not None else "",
        )
    if stalled.value and (failed is None or failed.status != "True"):
        return Summary(ConditionType.RECONCILING, False, stalled.reason, stalled.message), stalled
    for type_ in _SETTLED:
        settled = condition(status, type_)
        if settled is not None and settled.status == "True":
            return Summary(ConditionType.RECONCILING, False, settled.reason, settled.message), stalled
    planned = condition(status, ConditionType.PLANNED)
    restarting = condition(status, ConditionType.RESTARTING)
    ready = condition(status, ConditionType.READY)
    if planned is None or planned.status != "True":
        why = planned
    elif restarting is not None and restarting.status == "True":
        why = restarting
    elif progressing is not None and progressing.status == "True":
        why = progressing  # a Serve rollout replaces replicas
    elif ready is not None and ready.status == "True":
        return Summary(ConditionType.RECONCILING, False, ready.reason, ready.message), stalled
    else:
        why = ready
    reason, message = (why.reason, why.message) if why is not None else ("Planning", "")
    return Summary(ConditionType.RECONCILING, True, reason, message), stalled


def plan_summary(plan: Plan, max_workers: int | None = MAX_WORKERS_IN_STATUS) -> PlanSummary:
    """The plan in brief, with at most `max_workers` workers (None: all of them, for `kubectl maas status`)."""
    gpus_per_stage: dict[int, int] = {}
    for worker in plan.workers:
        for stage in worker.stages:
            gpus_per_stage[stage] = gpus_per_stage.get(stage, 0) + worker.gpus
    return PlanSummary(
        stages=[
            StageSummary(
                index=stage.index,
                units=stage.units,
                gpus=gpus_per_stage.get(stage.index, 0),
                memory_bytes=stage.memory_bytes,
            )
            for stage in plan.stages
        ],
        workers=[
            WorkerSummary(name=w.name, replica=w.replica, stages=w.stages, node=w.node)
            for w in plan.workers[:max_workers]
        ],
        replicas=plan.replicas,
        microbatches=plan.microbatches,
        schedule=plan.schedule,
        bottleneck=plan.bottleneck,
        estimated_bubble=plan.estimated_bubble,
    )


def worker_counts(expected: int, pods: Sequence[WorkerPod]) -> WorkerCounts:
    """Counts over the current gang(s) pods: ready = running and Ready; failed = phase Failed."""
    return WorkerCounts(
        total=expected,
        ready=sum(1 for p in pods if p.phase == "Running" and p.ready and not p.terminating),
        failed=sum(1 for p in pods if p.phase == "Failed"),
    )
