"""The start-up contract between the operator and a worker: files, environment, ranks and exit codes.

The operator creates one pod per worker; each pod runs

    python -m maas_runtime.agent

which is torchrun's agent with the same flags, the program fixed to `-m maas_runtime`, and one difference:
the pod exits with its workers' exit code (torchrun exits 1 for any failure, which would make every retryable
failure permanent). Flags come from `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_RDZV_BACKEND=c10d`,
`PET_RDZV_ENDPOINT=<worker 0's stable DNS name>:29400`, `PET_RDZV_ID` and `PET_MAX_RESTARTS=0`; the plan is
mounted at PLAN_PATH and MAAS_WORKER_INDEX is set. Worker 0 hosts the rendezvous store: the endpoint is its
own hostname, so the agent there serves it and every other pod connects.
"""

from __future__ import annotations

from enum import IntEnum

from maas_api.base import ApiModel

PLAN_PATH = "/etc/maas/plan.json"
"""Where the plan ConfigMap is mounted in every worker."""
PLAN_PATH_ENV = "MAAS_PLAN_PATH"
"""Overrides PLAN_PATH (tests, local runs)."""
WORKER_INDEX_ENV = "MAAS_WORKER_INDEX"
"""The pod's worker index (required). c10d rendezvous orders nodes by host name, not --node-rank, so the
runtime joins the process group as global_rank(MAAS_WORKER_INDEX, local rank) instead of torchrun's RANK."""
PROGRESS_PORT_ENV = "MAAS_PROGRESS_PORT"
"""Port of the `/progress` and `/metrics` HTTP endpoint on global rank 0 (train) or every first stage (serve)."""
DEFAULT_PROGRESS_PORT = 9400
PROGRESS_PATH = "/progress"
"""The path of the progress document (a ProgressReport as JSON)."""
PROGRESS_FINISHED = "Finished"
"""ProgressReport.phase once every step ran and the last checkpoint is saved."""
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
"""Where a failing worker writes why (the pod's terminationMessagePath): the kubelet puts it in the container's
terminated state, and the operator quotes it in the job's condition."""
TERMINATION_MESSAGE_ENV = "MAAS_TERMINATION_MESSAGE_PATH"
"""Tells the runtime where to write that message; unset (local runs): nowhere."""
TERMINATION_MESSAGE_LIMIT = 4096
"""The kubelet keeps at most this many bytes of a termination message."""
RENDEZVOUS_PORT = 29400
"""torchrun's c10d rendezvous port on worker 0."""


class ExitCode(IntEnum):
    """Exit codes of `python -m maas_runtime`; the operator maps them to Retry or Fail."""

    SUCCESS = 0
    """Training finished all steps, or serving drained after SIGTERM."""
    UNCAUGHT_ERROR = 1
    """The user's model code (factory, weight initialisation, forward) raised, whatever the exception and its
    message, or an error the runtime did not classify: permanent by default, as in Kubeflow."""
    RETRYABLE = 75
    """A transient failure (rendezvous failed, peer lost, a collective failed or timed out), or training
    stopped by SIGTERM after saving its checkpoint: restart the gang."""
    PERMANENT = 78
    """Bad input that a restart cannot fix: invalid plan, missing or wrong environment (MAAS_WORKER_INDEX,
    rendezvous settings), unknown model or factory, missing data path."""


# Default exit-code handling when no spec.failurePolicy.exitCodes rule matches (Kubeflow's permanent set
# plus the runtime's own PERMANENT). Everything else, e.g. 137 (OOM-killed) or 143 (SIGTERM), is retried.
PERMANENT_EXIT_CODES: frozenset[int] = frozenset({1, 2, 126, 127, 128, 139, ExitCode.PERMANENT})


def processes_per_worker(gpus_per_worker: int) -> int:
    """One process per GPU; a CPU worker runs one process."""
    return max(1, gpus_per_worker)


def worker_index(replica: int, pipeline_rank: int, pipeline_degree: int) -> int:
    """Workers are numbered replica-major: the pipeline of replica r is workers r*p .. r*p+p-1."""
    return replica * pipeline_degree + pipeline_rank


def global_rank(worker: int, local_rank: int, procs_per_worker: int) -> int:
    """torchrun's rank: a pod's processes get consecutive ranks (node rank * nproc + local rank)."""
    return worker * procs_per_worker + local_rank


def stages_of_pipeline_rank(pipeline_rank: int, pipeline_degree: int, stages_per_worker: int) -> list[int]:
    """Model stages a pipeline rank runs: stage i lives on rank i % p (torch's interleaved layout)."""
    return [pipeline_rank + k * pipeline_degree for k in range(stages_per_worker)]


class ProgressReport(ApiModel):
    """The document `GET /progress` answers on global rank 0 of a training job: written by the runtime
    (maas_runtime.progress), read by the operator into status.progress. Unknown fields are refused, so the
    two sides cannot drift apart silently."""

    job: str
    namespace: str
    phase: str
    """Starting, Training, or Finished once every step ran and the last checkpoint is saved."""
    step: int
    """Optimizer steps completed."""
    total_steps: int
    loss: float | None = None
    """Loss of the last step, mean over replicas."""
    samples_per_second: float
    samples_seen: int
    last_checkpoint_step: int | None = None
    elapsed_seconds: float
