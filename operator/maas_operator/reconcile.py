"""The reconcile decision: everything observed about one MaaSJob in, what should change out.

Pure and level-based: the desired world is computed from the whole job and what is observed, every time, so
running it twice (or after a crash at any point) converges to the same children. The steps, in order:

1. Finished jobs only clean up (cleanPodPolicy) and expire (ttlSecondsAfterFinished); suspended jobs have no pods.
2. The active deadline.
3. Failures of the current gangs (healing.find_failure): fail, or restart with the failure policy's backoff.
4. The plan: kept while its inputs (the spec fields it was made from) are unchanged and its nodes are healthy and
   big enough; else re-planned around what is kept (`previous` placement), or Unschedulable.
5. Children: stale pods (another gang hash) are deleted first; a gang's missing pods are created behind a
   scheduling gate, and the gates are lifted only once every pod of the gang exists.
6. Status: conditions, phase, counts and the plan summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from maas_api.plan import Plan
from maas_api.spec import MaaSJobSpec, Mode
from maas_api.status import ConditionType, MaaSJobStatus, Progress

from maas_operator import children, names
from maas_operator.children import JobRef, Manifest
from maas_operator.healing import Failure, Verdict, backoff_seconds, find_failure, restart_or_fail
from maas_operator.planner import Node, PlanError, Unschedulable, build_plan
from maas_operator.settings import OperatorSettings
from maas_operator.status import (
    is_true,
    observe_generation,
    phase_of,
    plan_summary,
    set_condition,
    summary_conditions,
    worker_counts,
)
from maas_operator.world import WorkerPod

STALE_POD_POLL_SECONDS = 2.0
"""Requeue while stale pods terminate (their delete events also wake the job)."""
OVERDUE_DELETION_SECONDS = 10.0
"""A pod still terminating this long after its grace period is looked up once more: its DELETED event may
have been missed (a restarted operator deletes before kopf's watch begins), and the job waits for it."""

UNSCHEDULABLE = "Unschedulable"
"""Reason of Planned=False when no placement fits now (the job waits for nodes or freed GPUs)."""

# Spec fields that do not change the plan: editing them restarts pods (their hash changes) but keeps placement.
NOT_PLAN_INPUTS = frozenset({"run_policy", "failure_policy", "image", "env", "template"})


# Every condition type is always present; these are the reasons of a False that nothing has set yet
# (Reconciling and Stalled are derived from the others, see status.summary_conditions).
INITIAL_REASONS = {
    ConditionType.PLANNED: "Planning",
    ConditionType.READY: "WorkersNotReady",
    ConditionType.SUCCEEDED: "NotFinished",
    ConditionType.FAILED: "NoFailure",
    ConditionType.SUSPENDED: "NotSuspended",
    ConditionType.RESTARTING: "NoRestart",
}


@dataclass(frozen=True)
class Observed:
    """One job and its world, as the caches saw it at `now`."""

    job: JobRef
    generation: int
    spec: MaaSJobSpec | None
    """None when the stored spec does not parse (then `spec_error` says why)."""
    status: MaaSJobStatus
    plan: Plan | None
    """The plan in the job's plan ConfigMap, if any."""
    plan_inputs: str | None
    """The plan ConfigMap's record of the spec hash it was made from."""
    pods: tuple[WorkerPod, ...]
    nodes: tuple[Node, ...]
    used_gpus: Mapping[str, int]
    """GPUs held per node by pods that are not this job's."""
    now: datetime
    replica_configmaps: frozenset[str] = frozenset()
    """Names of this job's existing per-replica plan ConfigMaps (Serve)."""
    spec_error: str = ""
    progress: Progress | None = None
    """The last progress worker 0 reported (Train), if the operator read one since it started."""


@dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


@dataclass(frozen=True)
class PodDeletion:
    name: str
    force: bool = False
    """Grace period 0: the pod's node is gone, so no kubelet will ever confirm a graceful stop."""


@dataclass
class Decision:
    """What to change; the adapter applies it in this order: apply, delete, status, events."""

    status: MaaSJobStatus
    apply: list[Manifest] = field(default_factory=list)
    delete_pods: list[PodDeletion] = field(default_factory=list)
    delete_configmaps: list[str] = field(default_factory=list)
    verify_pods: list[str] = field(default_factory=list)
    """Terminating pods overdue to be gone: the adapter reads them again (and forgets those that are gone)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    planned: bool = False
    """A new plan was made in this decision (for metrics)."""

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def creates_pods(self, existing: Sequence[WorkerPod]) -> bool:
        present = {pod.name for pod in existing}
        return any(m["kind"] == "Pod" and m["metadata"]["name"] not in present for m in self.apply)


def plan_inputs(spec: MaaSJobSpec) -> str:
    """Hash of the spec fields that the plan is made from (a change means re-planning)."""
    fields = set(MaaSJobSpec.model_fields) - NOT_PLAN_INPUTS
    return children.content_hash(spec.model_dump(mode="json", by_alias=True, include=fields))


class _Step:
    """The decision being built, with small helpers so each step reads as a sentence."""

    def __init__(self, observed: Observed, settings: OperatorSettings) -> None:
        self.observed = observed
        self.settings = settings
        self.now = observed.now
        self.status = observed.status.model_copy(deep=True)
        self.decision = Decision(status=self.status)
        self.lost_nodes = frozenset(_lost_nodes(observed))

    def condition(
        self, type_: ConditionType, value: bool, reason: str, message: str, quiet: bool = False
    ) -> bool:
        """Sets a condition; a transition becomes an event when it is news: a condition turning True, or any
        change of Planned, Suspended and Failed (Ready and Restarting turning False say nothing new).
        Returns whether the condition changed status or reason."""
        transition = set_condition(
            self.status, type_, value, reason, message, self.now, self.observed.generation
        )
        news = value or type_ in {ConditionType.PLANNED, ConditionType.SUSPENDED, ConditionType.FAILED}
        if transition is not None and news and not quiet:
            kind = "Warning" if transition.warning else "Normal"
            self.decision.events.append(Event(kind, reason, message or f"{type_} is {transition.status}"))
        return transition is not None

    def event(self, kind: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(kind, reason, message))

    def delete_pods(self, pods: Sequence[WorkerPod]) -> None:
        for pod in pods:
            if not pod.terminating:
                self.decision.delete_pods.append(PodDeletion(pod.name, force=pod.node in self.lost_nodes))

    def finish(self) -> Decision:
        for type_, reason in INITIAL_REASONS.items():
            if not any(c.type == type_ for c in self.status.conditions):
                self.condition(type_, False, reason, "", quiet=True)
        if self.observed.progress is not None:
            self.status.progress = self.observed.progress
        # No events for these: they restate the conditions above for kstatus.
        for summary in summary_conditions(self.status):
            set_condition(
                self.status,
                summary.type,
                summary.value,
                summary.reason,
                summary.message,
                self.now,
                self.observed.generation,
            )
        observe_generation(self.status, self.observed.generation)
        self.status.phase = phase_of(self.status)
        self.status.observed_generation = self.observed.generation
        self.status.selector = names.selector(self.observed.job.name)
        return self.decision


def _lost_nodes(observed: Observed) -> set[str]:
    """Nodes the job's pods or plan point at that are gone or NotReady."""
    known = {node.name: node for node in observed.nodes}
    pointed = {pod.node for pod in observed.pods if pod.node} | {
        w.node for w in (observed.plan.workers if observed.plan else []) if w.node
    }
    return {name for name in pointed if name not in known or not known[name].ready}


def reconcile(observed: Observed, settings: OperatorSettings) -> Decision:
    """The whole decision for one job (see the module docstring for the steps)."""
    step = _Step(observed, settings)
    spec = observed.spec
    if spec is None:
        # Quiet: the Failed condition tells the same story in one event.
        step.condition(ConditionType.PLANNED, False, "InvalidSpec", observed.spec_error, quiet=True)
        return _fail(step, None, "InvalidSpec", observed.spec_error)
    if _finished(step.status, observed.generation):
        return _after_finish(step, spec)
    if is_true(step.status, ConditionType.FAILED):
        # A failed plan of an older generation: the spec was edited, so try again.
        step.condition(ConditionType.FAILED, False, "SpecChanged", "the spec changed since the job failed")
        step.status.completion_time = None
    if spec.run_policy.suspend:
        return _suspend(step)
    if is_true(step.status, ConditionType.SUSPENDED):
        step.condition(ConditionType.SUSPENDED, False, "Resumed", "runPolicy.suspend is false")

    deadline = spec.run_policy.active_deadline_seconds
    if deadline is not None and step.status.start_time is not None:
        remaining = (step.status.start_time + timedelta(seconds=deadline) - step.now).total_seconds()
        if remaining <= 0:
            return _fail(
                step,
                spec,
                "DeadlineExceeded",
                f"the job ran longer than runPolicy.activeDeadlineSeconds ({deadline} s)",
            )
        step.decision.requeue(remaining)

    if observed.plan is not None:
        outcome = _heal(step, spec, observed.plan)
        if outcome is not None:
            return outcome
    plan = _effective_plan(step, spec)
    if is_true(step.status, ConditionType.FAILED):
        return step.finish()
    if plan is None:
        # No placement: a gang that cannot run whole must not run in part.
        step.delete_pods(observed.pods)
        step.condition(ConditionType.READY, False, "NotPlanned", "no plan places every worker")
        return step.finish()
    _children(step, spec, plan)
    return step.finish()


def _finished(status: MaaSJobStatus, generation: int) -> bool:
    if is_true(status, ConditionType.SUCCEEDED):
        return True
    failed = next((c for c in status.conditions if c.type == ConditionType.FAILED), None)
    if failed is None or failed.status != "True":
        return False
    # An invalid spec is final only for the generation it was found in; an edit gets another try.
    return failed.reason != "InvalidSpec" or (failed.observed_generation or 0) >= generation


def _fail(step: _Step, spec: MaaSJobSpec | None, reason: str, message: str) -> Decision:
    step.condition(ConditionType.FAILED, True, reason, message)
    step.condition(ConditionType.READY, False, reason, message)
    step.condition(ConditionType.RESTARTING, False, reason, "the job failed")
    step.status.completion_time = step.now
    step.status.restart_at = None
    if spec is None:
        return step.finish()
    return _after_finish(step, spec)


def _after_finish(step: _Step, spec: MaaSJobSpec) -> Decision:
    """cleanPodPolicy, then ttlSecondsAfterFinished."""
    policy = spec.run_policy.clean_pod_policy
    pods = step.observed.pods
    if policy == "All":
        step.delete_pods(pods)
    elif policy == "Running":
        step.delete_pods([pod for pod in pods if not pod.finished])
    ttl = spec.run_policy.ttl_seconds_after_finished
    if ttl is not None and step.status.completion_time is not None:
        remaining = (step.status.completion_time + timedelta(seconds=ttl) - step.now).total_seconds()
        if remaining <= 0:
            step.decision.delete_job = True
        else:
            step.decision.requeue(remaining)
    return step.finish()


def _suspend(step: _Step) -> Decision:
    step.delete_pods(step.observed.pods)
    step.condition(
        ConditionType.SUSPENDED, True, "Suspended", "runPolicy.suspend is true: workers deleted, plan kept"
    )
    step.condition(ConditionType.READY, False, "Suspended", "the job is suspended")
    step.condition(ConditionType.RESTARTING, False, "Suspended", "the job is suspended")
    # As with Kubernetes Jobs, the active deadline counts again from the resume.
    step.status.start_time = None
    step.status.restart_at = None
    step.status.workers = worker_counts(step.status.workers.total, [])
    step.status.ready_workers = f"0/{step.status.workers.total}"
    return step.finish()


def _gang_pods(step: _Step, spec: MaaSJobSpec, plan: Plan) -> list[tuple[children.Gang, list[Manifest]]]:
    job = step.observed.job
    return [
        (
            gang,
            children.gang_pods(
                job, spec, gang, step.status.attempts.get(gang.key, 0), step.settings, gated=True
            ),
        )
        for gang in children.gangs(job, plan)
    ]


def _heal(step: _Step, spec: MaaSJobSpec, plan: Plan) -> Decision | None:
    """Failures and success of the current gangs. Returns a final decision when the job ends."""
    policy = spec.failure_policy
    succeeded = []
    for gang, desired in _gang_pods(step, spec, plan):
        gang_hash = children.gang_hash_of(desired)
        expected = {worker.name for worker in gang.workers}
        current = [p for p in step.observed.pods if p.name in expected and p.gang == gang_hash]
        started = any(not p.gated for p in current)
        if (
            spec.mode == Mode.TRAIN
            and len(current) == len(expected)
            and all(p.phase == "Succeeded" for p in current)
        ):
            succeeded.append(gang.key)
            continue
        failure = find_failure(current, expected, started, step.lost_nodes, policy)
        if failure is None and spec.mode == Mode.SERVE:
            exited = sorted(p.name for p in current if p.phase == "Succeeded")
            if exited:
                failure = Failure(
                    Verdict.RETRY, "WorkerExited", f"serving worker {exited[0]} exited 0 unasked"
                )
        if failure is None:
            continue
        failure = restart_or_fail(failure, step.status.restarts, policy)
        if failure.verdict == Verdict.FAIL:
            return _fail(step, spec, failure.reason, failure.message)
        step.status.attempts[gang.key] = step.status.attempts.get(gang.key, 0) + 1
        if failure.verdict == Verdict.RETRY:
            step.status.restarts += 1
            delay = backoff_seconds(step.status.restarts, policy)
        else:
            step.status.disruptions += 1
            delay = 0.0
        restart_at = step.now + timedelta(seconds=delay)
        step.status.restart_at = max(restart_at, step.status.restart_at or restart_at)
        which = "the gang" if gang.key == "all" else f"replica {gang.key.removeprefix('r')}"
        counted = (
            f"restart {step.status.restarts} of {policy.max_restarts}"
            if failure.verdict == Verdict.RETRY
            else "not counted"
        )
        message = f"{failure.message}: restarting {which} in {delay:.0f} s ({counted})"
        # Quiet condition, explicit event: a second failure while restarting is news too.
        step.condition(ConditionType.RESTARTING, True, failure.reason, message, quiet=True)
        step.event("Warning", failure.reason, message)
    if spec.mode == Mode.TRAIN and succeeded:
        step.condition(ConditionType.SUCCEEDED, True, "AllWorkersSucceeded", "every worker exited 0")
        # Ready stays the summary GitOps tools read (kstatus falls back to it): a finished job is where its
        # spec wants it. Quiet: Succeeded tells the news.
        step.condition(ConditionType.READY, True, "Succeeded", "training finished", quiet=True)
        step.condition(ConditionType.RESTARTING, False, "Succeeded", "training finished")
        step.status.completion_time = step.now
        step.status.restart_at = None
        step.status.workers = worker_counts(len(plan.workers), [])
        return _after_finish(step, spec)
    return None


def _plan_problem(step: _Step, spec: MaaSJobSpec, plan: Plan | None, inputs: str) -> str | None:
    """Why the stored plan cannot stay (None: it stays)."""
    if plan is None:
        return "NoPlan"
    if step.observed.plan_inputs != inputs or plan.job != step.observed.job.name:
        return "SpecChanged"
    if any(w.node in step.lost_nodes for w in plan.workers if w.node):
        return "NodeLost"
    nodes = {node.name: node for node in step.observed.nodes}
    need: dict[str, int] = {}
    for worker in plan.workers:
        if worker.node:
            need[worker.node] = need.get(worker.node, 0) + worker.gpus
    for node_name, gpus in need.items():
        node = nodes[node_name]
        if node.gpus - step.observed.used_gpus.get(node_name, 0) < gpus:
            return "CapacityLost"
    return None


def previous_placement(plan: Plan | None, nodes: Sequence[Node]) -> dict[str, str]:
    """Worker -> node of `plan` for the workers whose node is still there and Ready: a new plan keeps them
    where they are (`build_plan`'s `previous`)."""
    ready = {node.name for node in nodes if node.ready}
    return {w.name: w.node for w in (plan.workers if plan else []) if w.node and w.node in ready}


def _effective_plan(step: _Step, spec: MaaSJobSpec) -> Plan | None:
    """The plan the children follow: the stored one while valid, else a new one; None when none places."""
    observed = step.observed
    inputs = plan_inputs(spec)
    old = observed.plan
    problem = _plan_problem(step, spec, old, inputs)
    if problem is None and old is not None:
        _record_plan(step, old)
        return old
    previous = previous_placement(old, observed.nodes)
    try:
        plan = build_plan(
            spec,
            nodes=list(observed.nodes),
            used_gpus=observed.used_gpus,
            previous=previous,
            name=observed.job.name,
            namespace=observed.job.namespace,
        )
    except Unschedulable as error:
        refused_now = step.condition(ConditionType.PLANNED, False, UNSCHEDULABLE, str(error))
        if old is not None and problem == "SpecChanged" and not step.lost_nodes:
            # The running gang is whole and healthy: keep it until the new shape fits (said once, not at
            # every reconcile while it does not fit).
            if refused_now:
                step.event(
                    "Warning",
                    "ReplanUnschedulable",
                    f"the changed spec does not fit now, keeping the running plan: {error}",
                )
            return old
        return None
    except PlanError as error:
        step.condition(ConditionType.PLANNED, False, "InvalidSpec", str(error), quiet=True)
        _fail(step, spec, "InvalidSpec", str(error))
        return None
    step.decision.planned = True
    step.decision.apply.append(children.plan_configmap(observed.job, plan, inputs))
    nodes = {w.node for w in plan.workers if w.node}
    if old is None:
        message = f"{len(plan.workers)} worker(s) of {plan.gpus_per_worker} GPU(s) on {len(nodes)} node(s)"
    else:
        kept = sum(1 for w in plan.workers if w.node is not None and previous.get(w.name) == w.node)
        message = f"re-planned ({problem}): {kept} of {len(plan.workers)} worker(s) kept on their node"
        step.event("Normal", "Replanned", message)
    step.condition(ConditionType.PLANNED, True, "Planned", message)
    _record_plan(step, plan)
    return plan


def _record_plan(step: _Step, plan: Plan) -> None:
    step.status.plan = plan_summary(plan)
    step.status.stages = len(plan.stages)
    step.status.replicas = plan.replicas
    if not is_true(step.status, ConditionType.PLANNED):
        step.condition(ConditionType.PLANNED, True, "Planned", f"{len(plan.workers)} worker(s)")


def _children(step: _Step, spec: MaaSJobSpec, plan: Plan) -> None:
    observed = step.observed
    job = observed.job
    gang_list = _gang_pods(step, spec, plan)
    wanted_names = {w.name for w in plan.workers}
    step.delete_pods([p for p in observed.pods if p.name not in wanted_names])
    by_name = {p.name: p for p in observed.pods}
    current: list[WorkerPod] = []
    created = 0
    waiting_for_stale = False
    for _gang, desired in gang_list:
        gang_hash = children.gang_hash_of(desired)
        present = [by_name[m["metadata"]["name"]] for m in desired if m["metadata"]["name"] in by_name]
        stale = [p for p in present if p.gang != gang_hash]
        if stale:
            step.delete_pods(stale)
            waiting_for_stale = True
            overdue = step.now - timedelta(seconds=OVERDUE_DELETION_SECONDS)
            step.decision.verify_pods += [
                p.name for p in stale if p.deletion_deadline is not None and p.deletion_deadline < overdue
            ]
            continue
        current += present
        missing = [m for m in desired if m["metadata"]["name"] not in by_name]
        if missing:
            restart_at = step.status.restart_at
            if restart_at is not None and step.now < restart_at:
                step.decision.requeue((restart_at - step.now).total_seconds())
                continue
            step.decision.apply += missing
            created += len(missing)
        # Every pod of the gang exists now (or was just applied): lift the gates of those still gated.
        gated = {p.name for p in present if p.gated} | {m["metadata"]["name"] for m in missing}
        for manifest in desired:
            if manifest["metadata"]["name"] in gated:
                ungated = {
                    **manifest,
                    "spec": {k: v for k, v in manifest["spec"].items() if k != "schedulingGates"},
                }
                step.decision.apply.append(ungated)
    if waiting_for_stale:
        step.decision.requeue(STALE_POD_POLL_SECONDS)
    if created:
        # The Service and the per-replica plans must exist before workers resolve or mount them.
        support = [children.worker_service(job, spec), *children.gang_configmaps(job, plan)]
        first_pod = next(i for i, m in enumerate(step.decision.apply) if m["kind"] == "Pod")
        step.decision.apply[first_pod:first_pod] = support
        if step.status.start_time is None:
            step.status.start_time = step.now
        attempts = sorted(f"{k} {v}" for k, v in step.status.attempts.items() if v)
        which = f" (attempt {', '.join(attempts)})" if attempts else ""
        step.event("Normal", "WorkersCreated", f"created {created} worker pod(s){which}")
    wanted_configmaps = {m["metadata"]["name"] for m in children.gang_configmaps(job, plan)}
    step.decision.delete_configmaps += sorted(observed.replica_configmaps - wanted_configmaps)
    _worker_status(step, plan, current)


def _worker_status(step: _Step, plan: Plan, current: Sequence[WorkerPod]) -> None:
    counts = worker_counts(len(plan.workers), current)
    step.status.workers = counts
    step.status.ready_workers = f"{counts.ready}/{counts.total}"
    if counts.ready == counts.total and counts.total > 0:
        step.condition(ConditionType.READY, True, "AllWorkersReady", f"{counts.total} worker(s) running")
        step.condition(ConditionType.RESTARTING, False, "AllWorkersReady", "every worker runs")
        step.status.restart_at = None
    else:
        reason = "Restarting" if is_true(step.status, ConditionType.RESTARTING) else "WorkersNotReady"
        step.condition(ConditionType.READY, False, reason, f"{counts.ready}/{counts.total} worker(s) ready")
