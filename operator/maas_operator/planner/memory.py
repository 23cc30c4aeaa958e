"""Per-GPU memory estimates of a pipeline stage: model state plus the activations held in flight.

The model, stated once so every number in a plan can be checked by hand (it follows the runtime):

- model state per parameter, in the model dtype's bytes. Serve: the weights (1x) on every GPU (serving never
  shards). Train: the runtime shards weights, gradients and optimizer states (SGD 0, Adam/AdamW 2 per
  parameter) with FSDP2 over D GPUs: a worker's GPUs (HSDP), or the replicas when a worker has one GPU.
  With `reshard_after_forward=False` under a pipeline schedule, FSDP keeps the whole stage's unsharded
  weights and its unsharded, accumulating gradients from the first microbatch's forward to the last one's
  backward, so one GPU holds 2 + (2 + optimizer states) / D at the peak; without data parallelism (D = 1)
  nothing is wrapped and it holds 2 + optimizer states. When D is the replica count and split.stages auto
  has yet to choose it, the estimate takes the worst of D = 1 and D = 2 (the most of any D >= 2). A new
  replica count is a new plan, so the estimate follows scaling.
- activations: what training keeps per sample of a microbatch from each unit's forward to its backward
  (savedBytesPerSample of the profile, which `maas profile` measures; the unit's output where unset), on
  the samples of one process's microbatch (maas_api.batch). Serve keeps no saved tensors, only outputs.
  Microbatches in flight per stage depend on the schedule: GPipe keeps all m; 1F1B keeps min(m, S - s) on
  stage s of S (the warm-up depth); Interleaved1F1B is taken as min(m, S - s) per model stage too, an upper
  bound of torch's interleaved warm-up; Serve keeps one. Not counted: a stage's received inputs (the unit
  before counts them as its output, on the GPU before), the loss's own tensors on the last stage, and the
  backward's working set (at most one microbatch of the largest unit's saved bytes on a real stage, see
  tests/runtime/test_profile.py); USABLE_GPU_FRACTION leaves room for them.
- usable memory: USABLE_GPU_FRACTION of the GPU, the rest left for the CUDA context, NCCL buffers and the
  allocator's fragmentation. With Interleaved1F1B a worker holds `stagesPerWorker` model stages, so each
  model stage gets that share of the usable memory (keeps the stage-by-stage fit check separable).

Every stage's in-flight count is non-increasing in the stage index, which the split's optimality proof uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from maas_api.batch import BatchError, process_batch, replica_batch, replica_batch_field
from maas_api.catalog import DTYPE_BYTES
from maas_api.contract import processes_per_worker
from maas_api.spec import MaaSJobSpec, Mode, Optimizer, PipelineSchedule, UnitProfile

from maas_operator.planner.reasons import PlanError, list_some, plural

USABLE_GPU_FRACTION = 0.9
"""Share of a GPU's memory the planner fills; the rest is for the CUDA context, NCCL and fragmentation."""

OPTIMIZER_STATES_PER_PARAM: dict[Optimizer, int] = {
    Optimizer.SGD: 0,  # plain SGD without momentum keeps no state
    Optimizer.ADAM: 2,  # first and second moments
    Optimizer.ADAMW: 2,
}

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX_FACTORS: dict[str, float] = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def parse_quantity(value: object, field: str) -> float:
    """A Kubernetes quantity (`80Gi`, `500m`, `8`, `1e3`) as a number; PlanError names `field` otherwise."""
    if isinstance(value, bool):
        raise PlanError(f"{field}: {value!r} is not a quantity (examples: 8, 80Gi)")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise PlanError(f"{field}: {value!r} is not a Kubernetes quantity (examples: 8, 500m, 80Gi)")
    number, suffix = match.group(1), match.group(2) or ""
    if suffix[:1] in {"e", "E"}:
        return float(number + suffix)
    return float(number) * _SUFFIX_FACTORS[suffix]


def in_flight_microbatches(
    schedule: PipelineSchedule, mode: Mode, microbatches: int, stages: int
) -> tuple[int, ...]:
    """Microbatches whose activations stage s holds at its peak, for every stage (non-increasing in s)."""
    if mode == Mode.SERVE:
        return (1,) * stages
    if schedule == PipelineSchedule.GPIPE:
        return (microbatches,) * stages
    return tuple(min(microbatches, stages - stage) for stage in range(stages))


@dataclass(frozen=True)
class MemoryModel:
    """What one GPU of a stage holds, as factors the split multiplies with its units' sizes."""

    state_bytes_per_param: float
    """Weights (+ gradients + optimizer states in Train) per parameter on one GPU at the step's peak."""
    samples_per_gpu: int
    """Samples of one microbatch on one GPU (one process)."""
    in_flight: tuple[int, ...]
    """Microbatches in flight per stage index."""
    usable_bytes_per_stage: float
    """Memory one model stage may fill on a GPU; math.inf when the GPU memory is unknown (no check)."""
    gpu_memory_bytes: float | None
    """The GPU's memory as given (spec or node label), for messages."""
    stages_per_worker: int = 1
    training: bool = True
    """Training keeps autograd's saved tensors (savedBytesPerSample); serving only the units' outputs."""

    @property
    def checked(self) -> bool:
        return math.isfinite(self.usable_bytes_per_stage)

    def activation_factor(self, stage: int) -> float:
        """Bytes on one GPU per activation byte per sample, at stage index `stage`."""
        return float(self.samples_per_gpu * self.in_flight[stage])

    def activation_bytes(self, unit: UnitProfile) -> int:
        """Bytes per sample this unit keeps on its GPU for every microbatch in flight."""
        if self.training and unit.saved_bytes_per_sample is not None:
            return unit.saved_bytes_per_sample
        return unit.activation_bytes_per_sample

    def gpu_memory_that_fits(self, stage_bytes: float) -> float:
        """The GPU memory on which a stage of `stage_bytes` would fit (inverse of the usable share)."""
        return stage_bytes * self.stages_per_worker / USABLE_GPU_FRACTION


def unmeasured_activations_note(spec: MaaSJobSpec, units: Sequence[UnitProfile]) -> str | None:
    """A plan note when training memory rests on units whose saved bytes the profile does not give."""
    missing = [unit.name for unit in units if unit.saved_bytes_per_sample is None]
    if spec.mode == Mode.SERVE or not missing:
        return None
    return (
        f"memory: spec.model.profile gives no savedBytesPerSample for {plural(len(missing), 'unit')}"
        f" ({list_some(missing)}), so only their outputs count as activations, which underestimates what"
        " training keeps (measure it with `maas profile`)"
    )


def microbatch_pool(spec: MaaSJobSpec) -> int:
    """The samples that the microbatch count must divide: one GPU's share of a training step, or a full
    serving batch (maas_api.batch)."""
    if spec.mode == Mode.SERVE:
        return replica_batch(spec)
    return replica_batch(spec) // processes_per_worker(spec.resources.gpus)


def microbatch_pool_field(spec: MaaSJobSpec) -> str:
    """How messages name `microbatch_pool`: the batch field, per GPU when a worker has several."""
    field = f"spec.{replica_batch_field(spec)}"
    if spec.mode == Mode.SERVE or processes_per_worker(spec.resources.gpus) == 1:
        return field
    return f"{field} / spec.resources.gpus"


def fsdp_shard_degrees(spec: MaaSJobSpec) -> set[int]:
    """The data-parallel shard degrees the plan may run at (1: no data parallelism, nothing sharded)."""
    processes = processes_per_worker(spec.resources.gpus)
    if processes > 1:
        return {processes}  # HSDP: shard over the worker's GPUs, replicate over the replicas
    if spec.split.stages == "auto" and spec.parallelism.replicas is None:
        # The split is sized before the replica count is chosen: 1 and 2 bound every count (see below).
        return {1, 2}
    return {spec.parallelism.replicas or 1}


def state_bytes_per_param(spec: MaaSJobSpec) -> float:
    """Bytes per parameter on one GPU at the step's peak: weights, gradients and optimizer states."""
    value_bytes = DTYPE_BYTES[spec.model.dtype]
    if spec.mode == Mode.SERVE:
        return float(value_bytes)
    optimizer = spec.training.optimizer if spec.training else Optimizer.ADAMW
    sharded = 2 + OPTIMIZER_STATES_PER_PARAM[optimizer]  # weights, gradients, optimizer states

    def per_param(degree: int) -> float:
        # FSDP keeps unsharded weights and gradients (2) next to the shards (sharded / degree).
        return float(sharded) if degree == 1 else 2 + sharded / degree

    return value_bytes * max(per_param(degree) for degree in fsdp_shard_degrees(spec))


def build_memory_model(
    spec: MaaSJobSpec, stages: int, microbatches: int, gpu_memory_bytes: float | None
) -> MemoryModel:
    """The memory factors for a split of `stages` model stages with `microbatches` per step."""
    serving = spec.mode == Mode.SERVE
    try:
        batch = process_batch(
            serving, replica_batch(spec), processes_per_worker(spec.resources.gpus), microbatches
        )
    except BatchError as error:
        raise PlanError(f"spec.{error}") from error
    stages_per_worker = spec.parallelism.stages_per_worker
    # CPU workers (gpus: 0) are not checked: host memory is the pod's memory request, not the planner's.
    usable = math.inf
    if gpu_memory_bytes is not None and spec.resources.gpus > 0:
        usable = gpu_memory_bytes * USABLE_GPU_FRACTION / stages_per_worker
    return MemoryModel(
        state_bytes_per_param=state_bytes_per_param(spec),
        samples_per_gpu=batch.microbatch_size,
        in_flight=in_flight_microbatches(spec.parallelism.schedule, spec.mode, microbatches, stages),
        usable_bytes_per_stage=usable,
        gpu_memory_bytes=gpu_memory_bytes,
        stages_per_worker=stages_per_worker,
        training=not serving,
    )
