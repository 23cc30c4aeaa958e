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
from maas_api.status import ConditionType, MaaSJobStatus, Progress, RolloutStatus

from maas_operator import children, names, serving
from maas_operator.children import Gang, JobRef, Manifest
from maas_operator.healing import Failure, Verdict, backoff_seconds, find_failure, restart_or_fail
from maas_operator.planner import Node, PlanError, Unschedulable, build_plan
from maas_operator.settings import OperatorSettings
from maas_operator.status import (
    ROLLOUT_STOPPED,
    condition,
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
    ConditionType.PROGRESSING: "NoRollout",
}
"""Reasons of Progressing=False for a rollout that stopped: no more old replicas leave until the spec changes."""


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
    plan_surge: int = 0
    """The plan ConfigMap's record of how many of its replicas are a rollout's surge (Serve)."""


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


@dataclass(frozen=True)
class PodCondition:
    """A condition the operator sets on a pod's status (the PIPELINE_READY readiness gate)."""

    pod: str
    type: str
    status: bool
    reason: str
    message: str


@dataclass
class Decision:
    """What to change; the adapter applies it in this order: apply, delete, status, events."""

    status: MaaSJobStatus
    apply: list[Manifest] = field(default_factory=list)
    delete_pods: list[PodDeletion] = field(default_factory=list)
    delete_configmaps: list[str] = field(default_factory=list)
    verify_pods: list[str] = field(default_factory=list)
    """Terminating pods overdue to be gone: the adapter reads them again (and forgets those that are gone)."""
    pod_conditions: list[PodCondition] = field(default_factory=list)
    """Applied after the pods and before the deletes: a replica leaves the endpoint before its pods go."""
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
        self._gangs: dict[tuple[int, str], list[tuple[Gang, list[Manifest]]]] = {}
        self.surge = 0
        """How many of the effective plan's replicas are a rollout's surge (Serve)."""
        self.surge_problem = ""
        """Why the surge replicas a rollout wants do not fit now."""

    def gang_pods(self, spec: MaaSJobSpec, plan: Plan) -> list[tuple[Gang, list[Manifest]]]:
        """The plan's gangs with their desired pods (built once per plan and gang attempts)."""
        key = (id(plan), repr(sorted(self.status.attempts.items())))
        if key not in self._gangs:
            self._gangs[key] = _gang_pods(self, spec, plan)
        return self._gangs[key]

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
        spec = self.observed.spec
        serve = spec is not None and spec.mode == Mode.SERVE
        self.status.selector = names.selector(self.observed.job.name, serve=serve)
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
    if spec.mode == Mode.SERVE:
        plan, surge = _surge(step, spec, plan)
        _serve_children(step, spec, plan, surge)
    else:
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
    if step.status.ready_replicas is not None:
        step.status.ready_replicas = 0
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
    for gang, desired in step.gang_pods(spec, plan):
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
        if failure.verdict == Verdict.FAIL and spec.mode == Mode.SERVE:
            if _rollout_stopped(step, spec):
                continue  # reported when the rollout stopped; the old replicas serve on
            if is_true(step.status, ConditionType.PROGRESSING):
                # A new replica that cannot run must not take the old ones down with the job: stop here.
                message = (
                    f"{failure.message}: rollout stopped, replica {gang.key.removeprefix('r')} is left as it"
                    " is and the old replicas keep serving"
                )
                step.condition(ConditionType.PROGRESSING, False, "RolloutFailed", message, quiet=True)
                step.event("Warning", "RolloutFailed", message)
                continue
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
        step.surge = observed.plan_surge
        _record_plan(step, old, step.surge)
        return old
    previous = previous_placement(old, observed.nodes)
    try:
        plan = _build(step, spec, previous)
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
            step.surge = observed.plan_surge
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


def _build(step: _Step, spec: MaaSJobSpec, previous: Mapping[str, str]) -> Plan:
    """build_plan on the observed nodes. Serve: old workers that no new worker of the same name takes over
    keep their GPUs while their replica serves on through a rollout, so they count as held (a new replica
    takes over its own slot's GPUs, since a slot's new gang is made only after its old one is gone)."""
    observed = step.observed

    def build(used: Mapping[str, int]) -> Plan:
        return build_plan(
            spec,
            nodes=list(observed.nodes),
            used_gpus=used,
            previous=previous,
            name=observed.job.name,
            namespace=observed.job.namespace,
        )

    plan = build(observed.used_gpus)
    if spec.mode != Mode.SERVE:
        return plan
    wanted = {w.name for w in plan.workers}
    held = dict(observed.used_gpus)
    extra = False
    for pod in observed.pods:
        if pod.name not in wanted and pod.node and pod.gpus and not pod.finished:
            held[pod.node] = held.get(pod.node, 0) + pod.gpus
            extra = True
    return build(held) if extra else plan


def _record_plan(step: _Step, plan: Plan, surge: int = 0) -> None:
    step.status.plan = plan_summary(plan)
    step.status.stages = len(plan.stages)
    step.status.replicas = plan.replicas - surge
    if not is_true(step.status, ConditionType.PLANNED):
        step.condition(ConditionType.PLANNED, True, "Planned", f"{len(plan.workers)} worker(s)")


def _children(step: _Step, spec: MaaSJobSpec, plan: Plan) -> None:
    """Train: one gang; stale pods go first, then the gang is made whole."""
    observed = step.observed
    gang_list = step.gang_pods(spec, plan)
    wanted_names = {w.name for w in plan.workers}
    step.delete_pods([p for p in observed.pods if p.name not in wanted_names])
    by_name = {p.name: p for p in observed.pods}
    current: list[WorkerPod] = []
    made: list[Gang] = []
    waiting_for_stale = False
    for gang, desired in gang_list:
        gang_hash = children.gang_hash_of(desired)
        present = [by_name[m["metadata"]["name"]] for m in desired if m["metadata"]["name"] in by_name]
        stale = [p for p in present if p.gang != gang_hash]
        if stale:
            step.delete_pods(stale)
            waiting_for_stale = True
            _verify_overdue(step, stale)
            continue
        current += present
        if _make_gang(step, desired, present):
            made.append(gang)
    if waiting_for_stale:
        step.decision.requeue(STALE_POD_POLL_SECONDS)
    _support(step, spec, made)
    step.decision.delete_configmaps += sorted(observed.replica_configmaps)
    _worker_status(step, plan, current)


def _verify_overdue(step: _Step, stale: Sequence[WorkerPod]) -> None:
    overdue = step.now - timedelta(seconds=OVERDUE_DELETION_SECONDS)
    step.decision.verify_pods += [
        p.name for p in stale if p.deletion_deadline is not None and p.deletion_deadline < overdue
    ]


def _make_gang(step: _Step, desired: Sequence[Manifest], present: Sequence[WorkerPod]) -> int:
    """Creates the gang's missing pods behind the scheduling gate (after the restart backoff) and lifts the
    gates once every pod exists. Returns how many pods it creates."""
    present_names = {p.name for p in present}
    missing = [m for m in desired if m["metadata"]["name"] not in present_names]
    if missing:
        restart_at = step.status.restart_at
        if restart_at is not None and step.now < restart_at:
            step.decision.requeue((restart_at - step.now).total_seconds())
            return 0
        step.decision.apply += missing
    # Every pod of the gang exists now (or was just applied): lift the gates of those still gated.
    gated = {p.name for p in present if p.gated} | {m["metadata"]["name"] for m in missing}
    for manifest in desired:
        if manifest["metadata"]["name"] in gated:
            ungated = {
                **manifest,
                "spec": {k: v for k, v in manifest["spec"].items() if k != "schedulingGates"},
            }
            step.decision.apply.append(ungated)
    return len(missing)


def _support(step: _Step, spec: MaaSJobSpec, made: Sequence[Gang]) -> None:
    """Before the first new pod: the Services and the plans of the gangs being made."""
    created = sum(1 for m in step.decision.apply if m["kind"] == "Pod" and m["spec"].get("schedulingGates"))
    if not made or not created:
        return
    job = step.observed.job
    # The Services and the per-replica plans must exist before workers resolve or mount them.
    support = [children.worker_service(job, spec)]
    if spec.mode == Mode.SERVE:
        support.append(children.endpoint_service(job, spec))
    support += [children.gang_configmap(job, gang) for gang in made if gang.key != "all"]
    first_pod = next(i for i, m in enumerate(step.decision.apply) if m["kind"] == "Pod")
    step.decision.apply[first_pod:first_pod] = support
    if step.status.start_time is None:
        step.status.start_time = step.now
    attempts = sorted(f"{k} {v}" for k, v in step.status.attempts.items() if v)
    which = f" (attempt {', '.join(attempts)})" if attempts else ""
    message = f"created {created} worker pod(s){which}"
    planned = next((e for e in step.decision.events if e.type == "Normal" and e.reason == "Planned"), None)
    if planned is not None:
        # Placed and made in one decision is one happening, told once (the Planned condition keeps its own
        # record): a POST less per new job, which is a third of the operator's events.
        step.decision.events.remove(planned)
        message = f"{message}: {planned.message}"
    step.event("Normal", "WorkersCreated", message)


def _rollout_stopped(step: _Step, spec: MaaSJobSpec) -> bool:
    """The rollout of the current spec stopped (deadline or a failed new replica): no more old replicas
    leave until the spec changes."""
    progressing = condition(step.status, ConditionType.PROGRESSING)
    record = step.status.rollout
    return (
        progressing is not None
        and progressing.status == "False"
        and progressing.reason in ROLLOUT_STOPPED
        and record is not None
        and record.revision == serving.revision(spec)
    )


def _with_replicas(spec: MaaSJobSpec, plan: Plan, replicas: int) -> MaaSJobSpec:
    """The spec planned at another replica count, everything else as in `plan` (an auto split keeps the
    stages and microbatches it chose, so the replicas it has stay the same)."""
    parallelism = spec.parallelism.model_copy(
        update={"replicas": replicas, "min_replicas": None, "max_replicas": None}
    )
    update: dict[str, object] = {"parallelism": parallelism}
    if spec.split.stages == "auto":
        update["split"] = spec.split.model_copy(update={"stages": len(plan.stages)})
        update["parallelism"] = parallelism.model_copy(update={"microbatches": plan.microbatches})
    return spec.model_copy(update=update)


def _store_plan(step: _Step, spec: MaaSJobSpec, plan: Plan, surge: int) -> None:
    """The plan ConfigMap of this decision (one: a later plan of the same decision replaces an earlier)."""
    name = names.plan_configmap_name(step.observed.job.name)
    step.decision.apply = [
        m for m in step.decision.apply if not (m["kind"] == "ConfigMap" and m["metadata"]["name"] == name)
    ]
    step.decision.apply.append(children.plan_configmap(step.observed.job, plan, plan_inputs(spec), surge))
    _record_plan(step, plan, surge)


def _surge(step: _Step, spec: MaaSJobSpec, plan: Plan) -> tuple[Plan, int]:
    """Serve: the plan holds serving.rollout.maxSurge extra replicas while old replicas of a rollout serve,
    and drops them once every replica runs the current spec and serves (or keeps them while a stopped
    rollout waits). Returns the plan the children follow and its surge."""
    surge = step.surge
    replicas = plan.replicas - surge
    layout = serving.slots(step.gang_pods(spec, plan), step.observed.pods, step.lost_nodes)
    minimum = serving.minimum_serving(replicas, spec)
    choice = serving.choose(layout, replicas, minimum, False, 0, step.now)
    if choice.to_roll and not _rollout_stopped(step, spec):
        want = serving.rollout_of(spec).max_surge
    elif surge and not choice.core_serving:
        want = surge
    else:
        want = 0
    if want == surge:
        return plan, surge
    if want < surge:
        # The first replicas of a plan are a plan: no placement changes.
        kept = [w for w in plan.workers if w.replica < replicas + want]
        smaller = plan.model_copy(update={"replicas": replicas + want, "workers": kept})
        _store_plan(step, spec, smaller, want)
        return smaller, want
    previous = {w.name: w.node for w in plan.workers if w.node and w.node not in step.lost_nodes}
    try:
        bigger = _build(step, _with_replicas(spec, plan, replicas + want), previous)
    except (Unschedulable, PlanError) as error:
        step.surge_problem = str(error)
        return plan, surge
    step.decision.planned = True
    _store_plan(step, spec, bigger, want)
    step.event(
        "Normal",
        "SurgeReplicas",
        f"rollout: {want} replica(s) of the new spec beside the {replicas} serving (serving.rollout.maxSurge)",
    )
    return bigger, want


def _serve_children(step: _Step, spec: MaaSJobSpec, plan: Plan, surge: int) -> None:
    """Serve: slots, gates, graceful removal and creation (maas_operator.serving), then status."""
    assert spec.serving is not None
    observed = step.observed
    replicas = plan.replicas - surge
    minimum = serving.minimum_serving(replicas, spec)
    layout = serving.slots(step.gang_pods(spec, plan), observed.pods, step.lost_nodes)
    choice = serving.choose(
        layout, replicas, minimum, _rollout_stopped(step, spec), spec.serving.drain_seconds, step.now
    )
    step.delete_pods(choice.delete)
    step.decision.pod_conditions += [
        PodCondition(gate.pod, names.PIPELINE_READY, gate.ready, gate.reason, gate.message)
        for gate in choice.gates
    ]
    if choice.recheck_at is not None:
        step.decision.requeue((choice.recheck_at - step.now).total_seconds())
    if choice.waiting_for_stale:
        step.decision.requeue(STALE_POD_POLL_SECONDS)
        _verify_overdue(step, [p for slot in layout for p in slot.stale if p.terminating])
    current: list[WorkerPod] = []
    made: list[Gang] = []
    for slot in choice.create:
        assert slot.gang is not None
        current += slot.current
        if _make_gang(step, slot.desired, slot.current):
            made.append(slot.gang)
    _support(step, spec, made)
    # A slot's plan goes once the slot is gone from the plan and holds no pods.
    occupied = {names.replica_configmap_name(observed.job.name, slot.index) for slot in layout if slot.stale}
    wanted = {names.replica_configmap_name(observed.job.name, r) for r in range(plan.replicas)}
    step.decision.delete_configmaps += sorted(observed.replica_configmaps - wanted - occupied)

    counts = worker_counts(len(plan.workers), current)
    status = step.status
    status.workers = counts
    status.ready_workers = f"{counts.ready}/{counts.total}"
    status.endpoint = children.endpoint_url(observed.job, spec)
    status.ready_replicas = choice.serving
    status.updated_replicas = choice.updated
    serving_now = f"{choice.serving} of {replicas} replica(s) serving (minimum {minimum})"
    if choice.serving >= minimum:
        step.condition(ConditionType.READY, True, "MinimumReplicasServing", serving_now)
    else:
        reason = "Restarting" if is_true(status, ConditionType.RESTARTING) else "TooFewReplicasServing"
        step.condition(ConditionType.READY, False, reason, serving_now)
    if choice.core_serving:
        step.condition(ConditionType.RESTARTING, False, "AllReplicasServing", "every replica serves")
        status.restart_at = None
    _rollout(step, spec, choice, replicas, minimum)


def _rollout(step: _Step, spec: MaaSJobSpec, choice: serving.Choice, replicas: int, minimum: int) -> None:
    """The Progressing condition and status.rollout: a rollout opens when old replicas of another spec
    serve, completes when every replica runs the current spec and serves, and stops when no new replica
    started serving for serving.rollout.progressDeadlineSeconds."""
    status, now = step.status, step.now
    revision = serving.revision(spec)
    record = status.rollout
    progressing = condition(status, ConditionType.PROGRESSING)
    running = progressing is not None and progressing.status == "True"
    if _rollout_stopped(step, spec):
        return
    if not running and not choice.to_roll:
        if progressing is not None and progressing.reason in ROLLOUT_STOPPED and choice.settled:
            # The spec changed since the rollout stopped (a fix, or back to the old one), and all serve.
            step.condition(
                ConditionType.PROGRESSING,
                False,
                "RolloutComplete",
                f"all {replicas} replica(s) serve the spec",
            )
        return
    if record is None or record.revision != revision:
        record = RolloutStatus(
            revision=revision, start_time=now, last_progress_time=now, updated_serving=choice.updated_serving
        )
    elif choice.updated_serving > record.updated_serving:
        record = record.model_copy(
            update={"last_progress_time": now, "updated_serving": choice.updated_serving}
        )
    elif choice.updated_serving != record.updated_serving:
        record = record.model_copy(update={"updated_serving": choice.updated_serving})
    status.rollout = record
    if choice.settled:
        message = f"all {replicas} replica(s) updated and serving"
        step.condition(ConditionType.PROGRESSING, False, "RolloutComplete", message, quiet=True)
        step.event("Normal", "RolloutComplete", message)
        return
    deadline = serving.rollout_of(spec).progress_deadline_seconds
    due = record.last_progress_time + timedelta(seconds=deadline)
    updated = (
        f"{choice.updated} of {replicas} replica(s) updated, {choice.serving} serving (minimum {minimum})"
    )
    if now >= due:
        message = (
            f"no replica of the new spec started serving for {deadline} s"
            f" (serving.rollout.progressDeadlineSeconds): rollout stopped with {updated}; the old replicas keep"
            " serving, a new spec starts a new rollout"
        )
        step.condition(ConditionType.PROGRESSING, False, "ProgressDeadlineExceeded", message, quiet=True)
        step.event("Warning", "ProgressDeadlineExceeded", message)
        return
    step.decision.requeue((due - now).total_seconds())
    if step.surge_problem:
        message = (
            f"{updated}; the surge replicas do not fit ({step.surge_problem}), so only maxUnavailable rolls"
        )
        step.condition(ConditionType.PROGRESSING, True, "SurgeUnschedulable", message)
    else:
        step.condition(ConditionType.PROGRESSING, True, "RollingUpdate", updated)


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
