"""The plan: the planner's output, the operator's input for child objects, and the runtime's input.

The operator writes it as JSON into a ConfigMap mounted at `contract.PLAN_PATH`; `maas plan -o json`
prints the same document. Workers are numbered replica-major (`contract.worker_index`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, computed_field, model_validator

from maas_api.base import ApiModel
from maas_api.spec import (
    BalanceBy,
    CheckpointSpec,
    DataSpec,
    Mode,
    ModelSpec,
    PipelineSchedule,
    ServingSpec,
    SplitStrategy,
    TrainingSpec,
    UnitProfile,
)

PLAN_FORMAT_VERSION = 1


MICROBATCH_FIXED_COST_SAMPLES = 1.0
"""What one microbatch costs every pipeline stage beyond its compute (the p2p messages of its activations
and gradients, the schedule's actions), in samples' worth of that stage's compute. Measured with
benchmarks/runtime_bubble.py (CPU/gloo, MLP 8 x 1024, microbatches of 64) where the stages never compute at
the same time (one microbatch): 0.4 ms, about 1.4 samples, for a hand-written torch.distributed.pipelining
schedule, and none measurable for maas_runtime. With more microbatches that machine measured far larger
bubbles (0.33-0.64 at 4 where the formula says 0.20), for the runtime and the hand-written schedule alike,
because its two stage processes then share two busy vCPUs (the hand-written one waited 10-70 ms per step
for a CPU): a cost of that machine, not of the pipeline, so the model leaves it out."""


def bubble_fraction(
    pipeline_degree: int,
    microbatches: int,
    stages_per_worker: int = 1,
    microbatch_samples: float | None = None,
) -> float:
    """Share of a pipeline step that is not useful compute.

    Without `microbatch_samples`: the schedule's idle share, (p-1)/(v*m+p-1) with v interleaved stages per
    worker. With it (b samples per microbatch), each microbatch also costs every stage a fixed
    MICROBATCH_FIXED_COST_SAMPLES = k samples' worth of compute (p2p messages, schedule actions): a step
    takes (v*m+p-1) * (b/v + k) of which m*b is compute, so the bubble is 1 - v*m*b / ((v*m+p-1) * (b+v*k)).
    A single stage (p = 1) has neither.
    """
    idle = pipeline_degree - 1
    slots = stages_per_worker * microbatches + idle
    if microbatch_samples is None or idle == 0:
        return idle / slots
    compute = stages_per_worker * microbatches * microbatch_samples
    return 1 - compute / (slots * (microbatch_samples + stages_per_worker * MICROBATCH_FIXED_COST_SAMPLES))


class ModelProfile(ApiModel):
    """A model as the planner sees it: units in execution order with their costs."""

    units: list[UnitProfile] = Field(min_length=1)
    """Units in execution order; task heads (if any) come after the trunk."""

    def unit(self, name: str) -> UnitProfile:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)


class StagePlan(ApiModel):
    """One pipeline stage: contiguous units and what they cost."""

    index: int = Field(ge=0)
    """Position in the pipeline."""
    units: list[str] = Field(min_length=1)
    """Unit names in execution order."""
    heads: list[str] = Field(default_factory=list)
    """The task heads among `units` (Task split)."""
    params: int = Field(ge=0)
    """Parameters of the stage."""
    cost: float = Field(ge=0)
    """Stage cost in the split's balanceBy measure; the largest is the bottleneck."""
    flops_per_sample: float = Field(ge=0)
    """Forward FLOPs per sample."""
    memory_bytes: int = Field(ge=0)
    """Estimated peak memory on one GPU of a worker of this stage: model state as FSDP holds it at the step's
    peak (unsharded weights and gradients next to the shards) plus the activations training keeps for the
    microbatches in flight (see maas_operator.planner.memory)."""
    output_bytes_per_sample: int = Field(ge=0)
    """Activation bytes per sample sent to the next stage."""


class WorkerPlan(ApiModel):
    """One worker pod: its pipeline position, replica, node and GPUs."""

    name: str
    """Pod name (also its hostname under the job's headless Service)."""
    index: int = Field(ge=0)
    """Worker index = torchrun node rank = replica * pipelineDegree + pipelineRank."""
    replica: int = Field(ge=0)
    """Data-parallel replica."""
    pipeline_rank: int = Field(ge=0)
    """Position in the replica's pipeline."""
    stages: list[int] = Field(min_length=1)
    """Model stages this worker runs (several with Interleaved1F1B)."""
    node: str | None = None
    """Node chosen by the planner (None when placement was not asked for)."""
    gpus: int = Field(ge=0)
    """GPUs of this worker (all on `node`)."""


class PlacementEntry(ApiModel):
    """One row of the placement view: which worker runs which stage of which replica on which node."""

    worker: str
    """Worker (pod) name."""
    stage: int
    """The worker's first model stage (see WorkerPlan.stages for all of them)."""
    replica: int
    """Data-parallel replica."""
    node: str | None
    """Node, or None when the plan was made without nodes."""
    gpus: int
    """GPUs of the worker on that node."""


class Plan(ApiModel):
    """Everything a worker needs to build its part of the job, and everything the operator places."""

    format_version: int = PLAN_FORMAT_VERSION
    """Plan format version; the runtime refuses versions it does not know."""
    job: str
    """MaaSJob name."""
    namespace: str = "default"
    """MaaSJob namespace."""
    mode: Mode
    """Train or Serve."""
    model: ModelSpec
    """The model to build (catalog entry or factory, with args)."""
    profile: ModelProfile
    """The unit profile the split was computed from."""
    strategy: SplitStrategy
    """Split strategy."""
    balance_by: BalanceBy
    """What the split balanced (flops when balanceBy time was asked for but a unit has no measured time)."""
    stages: list[StagePlan] = Field(min_length=1)
    """Model stages in pipeline order."""
    pipeline_degree: int = Field(ge=1)
    """Workers per replica (= len(stages) / stagesPerWorker)."""
    stages_per_worker: int = Field(default=1, ge=1)
    """Model stages per worker (Interleaved1F1B)."""
    replicas: int = Field(ge=1)
    """Data-parallel replicas of the pipeline."""
    gpus_per_worker: int = Field(ge=0)
    """GPUs (= processes, at least one) per worker."""
    schedule: PipelineSchedule
    """Pipeline schedule."""
    microbatches: int = Field(ge=1)
    """Microbatches per step."""
    workers: list[WorkerPlan] = Field(min_length=1)
    """Workers, ordered by index."""
    bottleneck: float = Field(ge=0)
    """Cost of the most expensive stage."""
    estimated_bubble: float = Field(ge=0, le=1)
    """Share of a step that is not compute: the schedule's idle share (p-1)/(v*m+p-1), v = stagesPerWorker,
    plus each microbatch's fixed cost (`bubble_fraction` with the microbatch size)."""
    notes: list[str] = Field(default_factory=list)
    """Why the planner chose what it chose (auto stages, microbatches, placement)."""
    data: DataSpec = Field(default_factory=DataSpec)
    """Data source and distribution."""
    training: TrainingSpec | None = None
    """Training settings (mode Train)."""
    checkpoint: CheckpointSpec | None = None
    """Checkpointing (mode Train)."""
    serving: ServingSpec | None = None
    """Serving settings (mode Serve)."""

    @model_validator(mode="before")
    @classmethod
    def _drop_derived_placement(cls, data: Any) -> Any:
        # `placement` is computed from `workers` when the plan is written; reading a written plan back
        # must not trip over it.
        if isinstance(data, dict) and "placement" in data:
            data = {key: value for key, value in data.items() if key != "placement"}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def placement(self) -> list[PlacementEntry]:
        """The placement as a flat table (derived from `workers`): worker, stage, replica, node, GPUs."""
        return [
            PlacementEntry(worker=w.name, stage=w.stages[0], replica=w.replica, node=w.node, gpus=w.gpus)
            for w in self.workers
        ]

    @property
    def world_size(self) -> int:
        return len(self.workers) * max(1, self.gpus_per_worker)
