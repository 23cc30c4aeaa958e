"""Cross-field rules of the MaaSJob spec, each written once as CEL (for the API server) and as Python.

The CRD carries the CEL form as `x-kubernetes-validations` on `spec`; the models run the Python form, so
`maas plan` and the operator reject exactly what the API server rejects, with the same message. Tests hold
one invalid manifest per rule and check both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic.alias_generators import to_snake

from maas_api.batch import DEFAULT_BATCH_SIZE, replica_batch
from maas_api.contract import processes_per_worker
from maas_api.limits import MAX_STAGES

if TYPE_CHECKING:
    from maas_api.spec import MaaSJobSpec

# CEL sees no Python defaults of an absent object: the batch rules spell out DEFAULT_BATCH_SIZE and
# contract.processes_per_worker (one process per GPU, one on a CPU worker).
_CEL_TRAIN_BATCH = f"(has(self.training) ? self.training.batchSize : {DEFAULT_BATCH_SIZE})"
_CEL_SERVE_BATCH = f"(has(self.serving) ? self.serving.maxBatchSize : {DEFAULT_BATCH_SIZE})"
_CEL_PROCESSES = "(self.resources.gpus > 0 ? self.resources.gpus : 1)"


@dataclass(frozen=True)
class SpecRule:
    """A rule over the whole spec: `cel` must hold (self = spec); `holds` is the same rule in Python."""

    name: str
    field_path: str
    """Path below `spec` that the error points at, e.g. `parallelism.minReplicas`."""
    cel: str
    message: str
    """Says what is wrong and how to fix it."""
    holds: Callable[[MaaSJobSpec], bool]


def _fixed_stages(spec: MaaSJobSpec) -> int | None:
    return spec.split.stages if isinstance(spec.split.stages, int) else None


def _processes(spec: MaaSJobSpec) -> int:
    return processes_per_worker(spec.resources.gpus)


def _replica_bound(name: str, low: str, high: str, field: str) -> SpecRule:
    """`parallelism.<low> <= parallelism.<high>` when both are set (low and high in camelCase)."""

    def holds(spec: MaaSJobSpec) -> bool:
        low_value = getattr(spec.parallelism, to_snake(low))
        high_value = getattr(spec.parallelism, to_snake(high))
        return low_value is None or high_value is None or bool(low_value <= high_value)

    return SpecRule(
        name=name,
        field_path=f"parallelism.{field}",
        cel=f"!has(self.parallelism.{low}) || !has(self.parallelism.{high})"
        f" || self.parallelism.{low} <= self.parallelism.{high}",
        message=f"parallelism.{field} must be {'<=' if field == low else '>='} parallelism."
        f"{high if field == low else low}",
        holds=holds,
    )


def _only_in_mode(section: str, mode: str) -> SpecRule:
    """`spec.<section>` is read in one mode only: refuse it in the other rather than ignore it silently."""
    return SpecRule(
        name=f"{section}-only-for-{mode.lower()}",
        field_path=section,
        cel=f"self.mode == '{mode}' || !has(self.{section})",
        message=f"{section} is only used in mode {mode}: remove it or set mode {mode}",
        holds=lambda s: s.mode == mode or getattr(s, section) is None,
    )


SPEC_RULES: tuple[SpecRule, ...] = (
    SpecRule(
        name="catalog-xor-factory",
        field_path="model",
        cel="has(self.model.catalog) != has(self.model.factory)",
        message="set exactly one of model.catalog or model.factory",
        holds=lambda s: (s.model.catalog is None) != (s.model.factory is None),
    ),
    SpecRule(
        name="factory-needs-profile",
        field_path="model.profile",
        cel="!has(self.model.factory) || has(self.model.profile)",
        message="a factory model needs model.profile: print it with `maas profile --factory MODULE:FUNCTION`",
        holds=lambda s: s.model.factory is None or s.model.profile is not None,
    ),
    SpecRule(
        name="stages-positive-or-auto",
        field_path="split.stages",
        cel="type(self.split.stages) == int"
        f" ? self.split.stages >= 1 && self.split.stages <= {MAX_STAGES} : self.split.stages == 'auto'",
        message=f"split.stages must be a whole number from 1 to {MAX_STAGES} or the string auto",
        # Python's type check already rejects other strings; the integer range is checked here.
        holds=lambda s: s.split.stages == "auto" or 1 <= s.split.stages <= MAX_STAGES,
    ),
    SpecRule(
        name="auto-needs-gpu-budget",
        field_path="parallelism.gpuBudget",
        cel="type(self.split.stages) == int || has(self.parallelism.gpuBudget)",
        message="split.stages auto needs parallelism.gpuBudget: the total GPUs the planner may use",
        holds=lambda s: _fixed_stages(s) is not None or s.parallelism.gpu_budget is not None,
    ),
    SpecRule(
        name="task-needs-heads",
        field_path="split.heads",
        cel="self.split.strategy != 'Task' || has(self.split.heads)",
        message="split.strategy Task needs split.heads: the names of the task-head units",
        holds=lambda s: s.split.strategy != "Task" or s.split.heads is not None,
    ),
    SpecRule(
        name="heads-only-for-task",
        field_path="split.heads",
        cel="!has(self.split.heads) || self.split.strategy == 'Task'",
        message="split.heads is only used by split.strategy Task: remove it or set strategy Task",
        holds=lambda s: s.split.heads is None or s.split.strategy == "Task",
    ),
    SpecRule(
        name="heads-are-the-profile-heads",
        field_path="split.heads",
        cel="!has(self.split.heads) || !has(self.model.profile)"
        " || (self.split.heads.all(h, self.model.profile.exists(u, u.name == h && u.head))"
        " && self.model.profile.all(u, !u.head || u.name in self.split.heads))",
        message="split.heads must name exactly the units of model.profile that have head: true",
        holds=lambda s: (
            s.split.heads is None
            or s.model.profile is None
            or set(s.split.heads) == {unit.name for unit in s.model.profile if unit.head}
        ),
    ),
    _replica_bound("min-le-max-replicas", "minReplicas", "maxReplicas", field="minReplicas"),
    _replica_bound("min-le-replicas", "minReplicas", "replicas", field="replicas"),
    _replica_bound("replicas-le-max", "replicas", "maxReplicas", field="replicas"),
    SpecRule(
        name="interleaved-needs-virtual-stages",
        field_path="parallelism.stagesPerWorker",
        cel="(self.parallelism.schedule == 'Interleaved1F1B') == (self.parallelism.stagesPerWorker >= 2)",
        message="parallelism.stagesPerWorker >= 2 goes with schedule Interleaved1F1B and only with it",
        holds=lambda s: (
            (s.parallelism.schedule == "Interleaved1F1B") == (s.parallelism.stages_per_worker >= 2)
        ),
    ),
    SpecRule(
        name="stages-multiple-of-stages-per-worker",
        field_path="split.stages",
        # The guard keeps CEL from a modulus by zero when stagesPerWorker is already out of range.
        cel="type(self.split.stages) != int || self.parallelism.stagesPerWorker < 1"
        " || self.split.stages % self.parallelism.stagesPerWorker == 0",
        message="split.stages must be a multiple of parallelism.stagesPerWorker (each worker runs that many)",
        holds=lambda s: (
            _fixed_stages(s) is None
            or s.parallelism.stages_per_worker < 1
            or (_fixed_stages(s) or 0) % s.parallelism.stages_per_worker == 0
        ),
    ),
    SpecRule(
        name="interleaved-microbatches-per-round",
        field_path="parallelism.microbatches",
        # Fewer stages than stagesPerWorker is the rule above's error; the guard keeps CEL from a modulus
        # by zero there.
        cel="self.parallelism.schedule != 'Interleaved1F1B' || !has(self.parallelism.microbatches)"
        " || type(self.split.stages) != int || self.parallelism.stagesPerWorker < 1"
        " || self.split.stages < self.parallelism.stagesPerWorker"
        " || self.parallelism.microbatches % (self.split.stages / self.parallelism.stagesPerWorker) == 0",
        message="Interleaved1F1B runs microbatches in rounds of one per worker: parallelism.microbatches must be"
        " a multiple of split.stages / parallelism.stagesPerWorker",
        holds=lambda s: (
            s.parallelism.schedule != "Interleaved1F1B"
            or s.parallelism.microbatches is None
            or _fixed_stages(s) is None
            or s.parallelism.stages_per_worker < 1
            or (_fixed_stages(s) or 0) < s.parallelism.stages_per_worker
            or s.parallelism.microbatches % ((_fixed_stages(s) or 0) // s.parallelism.stages_per_worker) == 0
        ),
    ),
    SpecRule(
        name="1f1b-microbatches-ge-stages",
        field_path="parallelism.microbatches",
        cel="self.parallelism.schedule == 'GPipe' || !has(self.parallelism.microbatches)"
        " || type(self.split.stages) != int || self.parallelism.microbatches >= self.split.stages",
        message="1F1B schedules need parallelism.microbatches >= split.stages: raise microbatches or use GPipe",
        holds=lambda s: (
            s.parallelism.schedule == "GPipe"
            or s.parallelism.microbatches is None
            or _fixed_stages(s) is None
            or s.parallelism.microbatches >= (_fixed_stages(s) or 0)
        ),
    ),
    SpecRule(
        name="batch-divisible-by-gpus",
        field_path="training.batchSize",
        cel=f"self.mode == 'Serve' || {_CEL_TRAIN_BATCH} % {_CEL_PROCESSES} == 0",
        message="training.batchSize (samples per step of one replica) must be divisible by resources.gpus:"
        " each GPU runs an equal share of its replica's batch",
        holds=lambda s: s.mode == "Serve" or replica_batch(s) % _processes(s) == 0,
    ),
    SpecRule(
        name="batch-divisible-by-microbatches",
        field_path="parallelism.microbatches",
        # A batch that does not split over the GPUs is batch-divisible-by-gpus' error alone.
        cel=f"self.mode == 'Serve' || !has(self.parallelism.microbatches) || self.parallelism.microbatches < 1"
        f" || {_CEL_TRAIN_BATCH} % {_CEL_PROCESSES} != 0"
        f" || {_CEL_TRAIN_BATCH} % ({_CEL_PROCESSES} * self.parallelism.microbatches) == 0",
        message="training.batchSize / resources.gpus (the samples of one GPU per step) must be divisible by"
        " parallelism.microbatches",
        holds=lambda s: (
            s.mode == "Serve"
            or s.parallelism.microbatches is None
            or replica_batch(s) % _processes(s) != 0
            or replica_batch(s) % (_processes(s) * s.parallelism.microbatches) == 0
        ),
    ),
    SpecRule(
        name="serve-batch-divisible-by-microbatches",
        field_path="parallelism.microbatches",
        cel=f"self.mode != 'Serve' || !has(self.parallelism.microbatches) || self.parallelism.microbatches < 1"
        f" || {_CEL_SERVE_BATCH} % self.parallelism.microbatches == 0",
        message="serving.maxBatchSize must be divisible by parallelism.microbatches (a full batch runs as that"
        " many microbatches)",
        holds=lambda s: (
            s.mode != "Serve"
            or s.parallelism.microbatches is None
            or replica_batch(s) % s.parallelism.microbatches == 0
        ),
    ),
    SpecRule(
        name="serve-needs-serving",
        field_path="serving",
        cel="self.mode != 'Serve' || has(self.serving)",
        message="mode Serve needs serving (at least `serving: {}` for the defaults)",
        holds=lambda s: s.mode != "Serve" or s.serving is not None,
    ),
    SpecRule(
        name="rollout-can-progress",
        field_path="serving.rollout.maxSurge",
        cel="!has(self.serving) || !has(self.serving.rollout)"
        " || self.serving.rollout.maxSurge + self.serving.rollout.maxUnavailable > 0",
        message="serving.rollout.maxSurge and serving.rollout.maxUnavailable cannot both be 0: a rollout could"
        " then replace no replica (set maxSurge 1 to roll with one extra replica, or maxUnavailable 1)",
        holds=lambda s: (
            s.serving is None or s.serving.rollout.max_surge + s.serving.rollout.max_unavailable > 0
        ),
    ),
    _only_in_mode("serving", "Serve"),
    _only_in_mode("training", "Train"),
    _only_in_mode("checkpoint", "Train"),
    SpecRule(
        name="data-one-source",
        field_path="data",
        cel="!(has(self.data.synthetic) && has(self.data.path))",
        message="set either data.synthetic or data.path, not both",
        holds=lambda s: s.data.synthetic is None or s.data.path is None,
    ),
    SpecRule(
        name="data-path-needs-volume",
        field_path="data.volume",
        cel="!has(self.data.path) || has(self.data.volume)",
        message="data.path needs data.volume: the PersistentVolumeClaim that holds the file",
        holds=lambda s: s.data.path is None or s.data.volume is not None,
    ),
    SpecRule(
        name="backoff-initial-le-max",
        field_path="failurePolicy.backoff.initialSeconds",
        cel="self.failurePolicy.backoff.initialSeconds <= self.failurePolicy.backoff.maxSeconds",
        message="failurePolicy.backoff.initialSeconds must be <= failurePolicy.backoff.maxSeconds",
        holds=lambda s: s.failure_policy.backoff.initial_seconds <= s.failure_policy.backoff.max_seconds,
    ),
)

# Rules on metadata.name (CEL at the schema root, Python in maas_api.job.ObjectMeta). Worker pods are named
# `<job>-r<replica>-s<stage>` and the job's headless Service is named after it, so the name must be a short
# DNS-1035 label even though Kubernetes would accept longer names with dots for a custom resource.
MAX_JOB_NAME_LENGTH = 45
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
JOB_NAME_LENGTH_MESSAGE = (
    f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters: worker names add a suffix to it"
)
JOB_NAME_PATTERN_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter):"
    " it names the job's Service"
)
JOB_NAME_CEL_RULES: tuple[tuple[str, str], ...] = (
    (f"size(self.metadata.name) <= {MAX_JOB_NAME_LENGTH}", JOB_NAME_LENGTH_MESSAGE),
    (f"self.metadata.name.matches('{JOB_NAME_PATTERN}')", JOB_NAME_PATTERN_MESSAGE),
)
