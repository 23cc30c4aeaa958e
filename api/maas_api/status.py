"""The MaaSJob status: what the operator observed, in Kubernetes API conventions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from maas_api.base import ApiModel


class ConditionType(StrEnum):
    PLANNED = "Planned"
    """A plan exists and every worker has a place (False with reason Unschedulable otherwise)."""
    READY = "Ready"
    """The job is where its spec wants it: all workers run (Train), or at least replicas -
    serving.rollout.maxUnavailable replicas (and one) serve (Serve), or training has succeeded (reason
    Succeeded). GitOps tools read this one (kstatus when nothing else decides)."""
    SUCCEEDED = "Succeeded"
    """Training finished."""
    FAILED = "Failed"
    """The job failed and will not be restarted."""
    SUSPENDED = "Suspended"
    """runPolicy.suspend is true; the job has no pods."""
    RESTARTING = "Restarting"
    """A worker failed with a retryable code; the gang is being restarted."""
    RECONCILING = "Reconciling"
    """kstatus's summary (Flux reads it): True while the job is on its way to what its spec asks (planning,
    starting, restarting, waiting for room); False once it is Ready, Succeeded, Failed or Suspended."""
    STALLED = "Stalled"
    """kstatus's summary: True exactly when Failed is (the operator gives up; only a spec edit helps)."""
    PROGRESSING = "Progressing"
    """Serve: a rollout replaces old replicas (False once done, or when it stopped: reason
    ProgressDeadlineExceeded or RolloutFailed)."""


class Phase(StrEnum):
    """A one-word summary of the conditions, for `kubectl get`."""

    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Condition(ApiModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str
    """Condition type (Planned, Ready, Succeeded, Failed, Suspended, Restarting, Progressing, Reconciling,
    Stalled)."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase reason for the last transition."""
    message: str = ""
    """Human-readable details."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: int | None = None
    """The spec generation this condition was computed from."""


class StageSummary(ApiModel):
    """One stage of the plan, as status shows it."""

    index: int
    """Position in the pipeline."""
    units: list[str]
    """Units of the stage."""
    gpus: int
    """GPUs used by this stage over all replicas."""
    memory_bytes: int
    """Estimated peak memory of one worker of this stage."""


class WorkerSummary(ApiModel):
    """Where one worker runs."""

    name: str
    """Pod name."""
    replica: int
    """Data-parallel replica."""
    stages: list[int]
    """Model stages of the worker."""
    node: str | None = None
    """Node the worker is placed on."""


class PlanSummary(ApiModel):
    """The current plan in brief (the whole plan is in the ConfigMap `<job>-plan`)."""

    stages: list[StageSummary] = Field(default_factory=list)
    """Pipeline stages."""
    workers: list[WorkerSummary] = Field(default_factory=list)
    """Worker -> node, for up to 64 workers (status must stay small)."""
    replicas: int = 0
    """Data-parallel replicas in the plan."""
    microbatches: int = 0
    """Microbatches per step."""
    schedule: str = ""
    """Pipeline schedule."""
    bottleneck: float = 0
    """Cost of the most expensive stage."""
    estimated_bubble: float = 0
    """Estimated pipeline bubble fraction."""


class WorkerCounts(ApiModel):
    """Worker pods by state."""

    total: int = 0
    """Workers in the plan."""
    ready: int = 0
    """Workers running and ready."""
    failed: int = 0
    """Workers that failed."""


class Progress(ApiModel):
    """Training progress reported by the workers."""

    step: int = 0
    """Last finished optimizer step."""
    total_steps: int | None = None
    """Optimizer steps the job runs in all."""
    loss: float | None = None
    """Loss of that step (mean over replicas)."""
    samples_per_second: float | None = None
    """Throughput over the last steps, all replicas."""
    last_checkpoint_step: int | None = None
    """Step of the last saved checkpoint: a restarted gang resumes from there."""
    finished: bool = False
    """Every step ran and the final checkpoint is saved."""
    updated_at: datetime | None = None
    """When the operator read it from the job's first worker."""


class RolloutStatus(ApiModel):
    """The last rollout of a Serve job: a change of its workers, rolled replica by replica."""

    revision: str
    """Hash of the spec being rolled out (every field but the replica counts)."""
    start_time: datetime
    """When the rollout began."""
    last_progress_time: datetime
    """When a replica of the new revision last started serving (serving.rollout.progressDeadlineSeconds counts
    from here)."""
    updated_serving: int = 0
    """Replicas of the new revision serving at that moment."""


class MaaSJobStatus(ApiModel):
    """Observed state of a MaaSJob."""

    observed_generation: int = 0
    """The spec generation the status was computed from (0: the operator has not seen the job yet, so GitOps
    tools read a new job as in progress, not as done)."""
    phase: Phase = Phase.PENDING
    """Summary of the conditions for `kubectl get`."""
    conditions: list[Condition] = Field(default_factory=list)
    """Planned, Ready, Succeeded, Failed, Suspended, Restarting, Progressing, and kstatus's Reconciling and
    Stalled."""
    plan: PlanSummary | None = None
    """The current plan in brief."""
    stages: int | None = None
    """Pipeline stages in the plan."""
    replicas: int | None = None
    """Data-parallel replicas running now (the scale subresource's status)."""
    selector: str | None = None
    """Label selector of the worker pods (for the scale subresource)."""
    workers: WorkerCounts = Field(default_factory=WorkerCounts)
    """Worker pods by state."""
    ready_workers: str | None = None
    """`ready/total`, for `kubectl get`."""
    restarts: int = 0
    """Gang restarts after the job's own failures so far (counted against failurePolicy.maxRestarts)."""
    disruptions: int = 0
    """Gang restarts after disruptions that were not the job's fault (node lost, eviction, preemption)."""
    attempts: dict[str, int] = Field(default_factory=dict)
    """Attempt of each gang: `all` for a Train job (one world), `r<N>` for each Serve replica. Worker pods
    carry it as the label maas.dev/attempt."""
    restart_at: datetime | None = None
    """When restarted workers are created (the failure policy's backoff after the last failure)."""
    start_time: datetime | None = None
    """When the workers were first created."""
    completion_time: datetime | None = None
    """When the job succeeded or failed."""
    endpoint: str | None = None
    """In-cluster URL of the serving endpoint (mode Serve): a Service whose endpoints are the first-stage
    workers of the replicas whose whole pipeline is ready."""
    ready_replicas: int | None = None
    """Serve: replicas serving (every stage ready, in the endpoint)."""
    updated_replicas: int | None = None
    """Serve: replicas whose workers have the current spec (the rest are old replicas of a rollout)."""
    rollout: RolloutStatus | None = None
    """Serve: the last rollout."""
    progress: Progress | None = None
    """Training progress."""
