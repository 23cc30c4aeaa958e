"""Per-GPU memory estimates of a pipeline stage: model state plus the activations held in flight.

The model, stated once so every number in a plan can be checked by hand:

- model state per parameter, in the model dtype's bytes: weights (1x), gradients (1x, Train only) and
  optimizer states (SGD 0, Adam/AdamW 2 per parameter, Train only). A worker's GPUs shard this state
  (the runtime runs HSDP: shard across a worker's GPUs), so one GPU holds 1/gpus of it.
- activations: every unit's output for each sample of a microbatch, kept until its backward pass. One GPU
  sees ceil(microbatch / gpus) samples. Microbatches in flight per stage depend on the schedule: GPipe keeps
  all m; 1F1B keeps min(m, S - s) on stage s of S (the warm-up depth); Interleaved1F1B is taken as
  min(m, S - s) per model stage too, an upper bound of torch's interleaved warm-up; Serve keeps one.
- usable memory: USABLE_GPU_FRACTION of the GPU, the rest left for the CUDA context, NCCL buffers and the
  allocator's fragmentation. With Interleaved1F1B a worker holds `stagesPerWorker` model stages, so each
  model stage gets that share of the usable memory (keeps the stage-by-stage fit check separable).

Every stage's in-flight count is non-increasing in the stage index, which the split's optimality proof uses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from maas_api.catalog import DTYPE_BYTES
from maas_api.spec import MaaSJobSpec, Mode, Optimizer, PipelineSchedule

from maas_operator.planner.reasons import PlanError

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
    """Weights (+ gradients + optimizer states in Train) per parameter on one GPU (already / gpus)."""
    samples_per_gpu: int
    """Samples of one microbatch on one GPU."""
    in_flight: tuple[int, ...]
    """Microbatches in flight per stage index."""
    usable_bytes_per_stage: float
    """Memory one model stage may fill on a GPU; math.inf when the GPU memory is unknown (no check)."""
    gpu_memory_bytes: float | None
    """The GPU's memory as given (spec or node label), for messages."""
    stages_per_worker: int = 1

    @property
    def checked(self) -> bool:
        return math.isfinite(self.usable_bytes_per_stage)

    def activation_factor(self, stage: int) -> float:
        """Bytes on one GPU per activation byte per sample, at stage index `stage`."""
        return float(self.samples_per_gpu * self.in_flight[stage])

    def gpu_memory_that_fits(self, stage_bytes: float) -> float:
        """The GPU memory on which a stage of `stage_bytes` would fit (inverse of the usable share)."""
        return stage_bytes * self.stages_per_worker / USABLE_GPU_FRACTION

    def with_stages(self, in_flight: tuple[int, ...]) -> MemoryModel:
        return MemoryModel(
            state_bytes_per_param=self.state_bytes_per_param,
            samples_per_gpu=self.samples_per_gpu,
            in_flight=in_flight,
            usable_bytes_per_stage=self.usable_bytes_per_stage,
            gpu_memory_bytes=self.gpu_memory_bytes,
            stages_per_worker=self.stages_per_worker,
        )


def batch_size(spec: MaaSJobSpec) -> int:
    """Samples per step of one replica: training.batchSize, or serving.maxBatchSize when serving."""
    if spec.mode == Mode.SERVE:
        return spec.serving.max_batch_size if spec.serving else 32
    return spec.training.batch_size if spec.training else 32


def state_bytes_per_param(spec: MaaSJobSpec) -> int:
    """Bytes per parameter of weights, gradients and optimizer states (whole worker, before sharding)."""
    value_bytes = DTYPE_BYTES[spec.model.dtype]
    if spec.mode == Mode.SERVE:
        return value_bytes
    optimizer = spec.training.optimizer if spec.training else Optimizer.ADAMW
    return value_bytes * (2 + OPTIMIZER_STATES_PER_PARAM[optimizer])


def build_memory_model(
    spec: MaaSJobSpec, stages: int, microbatches: int, gpu_memory_bytes: float | None
) -> MemoryModel:
    """The memory factors for a split of `stages` model stages with `microbatches` per step."""
    gpus = max(1, spec.resources.gpus)
    samples_per_microbatch = max(1, batch_size(spec) // microbatches)
    stages_per_worker = spec.parallelism.stages_per_worker
    # CPU workers (gpus: 0) are not checked: host memory is the pod's memory request, not the planner's.
    usable = math.inf
    if gpu_memory_bytes is not None and spec.resources.gpus > 0:
        usable = gpu_memory_bytes * USABLE_GPU_FRACTION / stages_per_worker
    return MemoryModel(
        state_bytes_per_param=state_bytes_per_param(spec) / gpus,
        samples_per_gpu=math.ceil(samples_per_microbatch / gpus),
        in_flight=in_flight_microbatches(spec.parallelism.schedule, spec.mode, microbatches, stages),
        usable_bytes_per_stage=usable,
        gpu_memory_bytes=gpu_memory_bytes,
        stages_per_worker=stages_per_worker,
    )
