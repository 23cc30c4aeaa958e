"""The MaaSJob spec: what a user asks for. Field docstrings are the CRD's descriptions."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from maas_api.base import ApiModel
from maas_api.batch import DEFAULT_BATCH_SIZE
from maas_api.limits import (
    MAX_BACKOFF_SECONDS,
    MAX_BATCH_SIZE,
    MAX_CLUSTER_PODS,
    MAX_EXIT_CODE,
    MAX_GPU_BUDGET,
    MAX_GPUS_PER_WORKER,
    MAX_PROFILE_UNITS,
    MAX_RESTARTS,
    MAX_SAFE_INTEGER,
    MAX_SECONDS,
    MAX_STAGES,
    MAX_STEPS,
    MAX_SYNTHETIC_SAMPLES,
    MAX_TASK_HEADS,
    MAX_UNIT_ACTIVATION_BYTES,
    MAX_UNIT_FLOPS_PER_SAMPLE,
    MAX_UNIT_NAME_LENGTH,
    MAX_UNIT_PARAMS,
    MAX_UNIT_TIME_MS,
)
from maas_api.rules import SPEC_RULES

# Kubernetes' resource.Quantity grammar (k8s.io/apimachinery/pkg/api/resource).
QUANTITY_PATTERN = re.compile(
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

SafeInteger = Annotated[int, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]


def _quantity(value: object) -> object:
    """Accept `4` as well as `"4"`, as the CRD's int-or-string does, and check the quantity grammar."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f'{value!r} is not a quantity: write a whole number (4) or a string ("0.5", 500m, 16Gi)'
        )
    value = str(value)
    if not QUANTITY_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 4, 500m, 16Gi)")
    return value


def _stages(value: object) -> object:
    """One clear message for `stages` instead of one per member of the `int | "auto"` union."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(
        f"{value!r} is not a stage count: use a whole number from 1 to {MAX_STAGES} or the string auto"
    )


# The range 1..MAX_STAGES is the rule stages-positive-or-auto (an int-or-string field carries no `maximum`).
StageCount = Annotated[int | Literal["auto"], BeforeValidator(_stages)]


UnitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]*$", max_length=MAX_UNIT_NAME_LENGTH)]


def _unique(values: list[Any], key: str | None = None) -> list[Any]:
    """Like the API server's check of a list of type set or map: each value (or key) at most once."""
    seen: set[Any] = set()
    for index, value in enumerate(values):
        name = getattr(value, key) if key else value
        if name in seen:
            described = f"{key} {name!r}" if key else repr(name)
            # `index` lets error formatting name the item, as the API server does (`profile[3]`).
            message = f"Duplicate value: {described} appears twice"
            raise PydanticCustomError("duplicate_item", "{message}", {"index": index, "message": message})
        seen.add(name)
    return values


def _unique_units(units: list[UnitProfile] | None) -> list[UnitProfile] | None:
    return None if units is None else _unique(units, key="name")


def _unique_names(names: list[str] | None) -> list[str] | None:
    return None if names is None else _unique(names)


# Unit names are `nn.ModuleDict` keys and head names pick units: duplicates are errors on both sides (the
# API server checks `x-kubernetes-list-type`, the models the validator).
UNIQUE_UNIT_LIST: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
UNIQUE_NAME_LIST: JsonDict = {"x-kubernetes-list-type": "set"}

Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    # Kubernetes accepts `cpu: 4` as well as `cpu: "4"`: int-or-string, checked with CEL's quantity library.
    # A JSON number with a fraction (`cpu: 0.5`) is neither, and the API server refuses it: so do the models.
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || isQuantity(self)",
                    "message": "must be a quantity such as 4, 500m or 16Gi",
                }
            ],
        }
    ),
]


class Mode(StrEnum):
    TRAIN = "Train"
    SERVE = "Serve"


class CatalogModel(StrEnum):
    LARGE_MODEL = "LargeModel"
    MLP = "MLP"
    TRANSFORMER = "Transformer"
    MULTI_TASK_MLP = "MultiTaskMLP"


class UnitProfile(ApiModel):
    """Cost of one unit of a model: a layer, a named sub-module, or a task head."""

    name: UnitName
    """Unit name: a key of the model's `nn.ModuleDict` (no dots), e.g. `block_0` or `head_classify`."""
    group: str | None = None
    """Named child module this unit belongs to (e.g. `encoder`); the SubModel split keeps groups whole."""
    head: bool = False
    """True for a task head (Task split): heads run after the trunk, each on its own outputs."""
    params: int = Field(ge=0, le=MAX_UNIT_PARAMS)
    """Number of parameters."""
    flops_per_sample: float = Field(ge=0, le=MAX_UNIT_FLOPS_PER_SAMPLE)
    """Forward FLOPs for one sample (backward is taken as twice this)."""
    activation_bytes_per_sample: int = Field(ge=0, le=MAX_UNIT_ACTIVATION_BYTES)
    """Bytes of this unit's output for one sample: what crosses to the next stage."""
    saved_bytes_per_sample: int | None = Field(default=None, ge=0, le=MAX_UNIT_ACTIVATION_BYTES)
    """Bytes training keeps for one sample from this unit's forward until its backward: the tensors autograd
    saves (not parameters, not the unit's input, which the unit before counts) plus the output. `maas profile`
    measures it. Unset: activationBytesPerSample, which underestimates training memory."""
    time_ms_per_sample: float | None = Field(default=None, ge=0, le=MAX_UNIT_TIME_MS)
    """Measured forward time for one sample in milliseconds (used by balanceBy=time)."""


class ModelSpec(ApiModel):
    """Which model to run: a builtin catalog entry, or a factory in the runtime image."""

    catalog: CatalogModel | None = None
    """Builtin model: LargeModel (Linear 10->20->30->40), MLP, Transformer (decoder-only) or MultiTaskMLP."""
    factory: str | None = Field(default=None, pattern=FACTORY_PATTERN, max_length=253)
    """Import reference `package.module:function` of a factory in the runtime image that returns an
    `nn.ModuleDict` of units in execution order. The operator never imports it; give `profile` too."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the catalog model or the factory (e.g. `{layers: 8, width: 512}`)."""
    profile: Annotated[list[UnitProfile] | None, AfterValidator(_unique_units)] = Field(
        default=None, min_length=1, max_length=MAX_PROFILE_UNITS, json_schema_extra=UNIQUE_UNIT_LIST
    )
    """Per-unit costs, in execution order, each unit name once. Required for factory models (print it with
    `maas profile`); catalog models are profiled by the operator."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter and activation dtype on the workers (sets the bytes per value in memory estimates)."""


class SplitStrategy(StrEnum):
    LAYER = "Layer"
    SUB_MODEL = "SubModel"
    TASK = "Task"


class BalanceBy(StrEnum):
    PARAMS = "params"
    FLOPS = "flops"
    MEMORY = "memory"
    TIME = "time"


class SplitSpec(ApiModel):
    """How to cut the model into pipeline stages."""

    strategy: SplitStrategy = SplitStrategy.LAYER
    """Layer: balanced contiguous stages of layers. SubModel: whole named child modules per stage.
    Task: a shared trunk in stages, then the task heads as modules of their own."""
    stages: StageCount = 1
    """Number of pipeline stages (>= 1), or `auto` to let the planner choose within parallelism.gpuBudget."""
    balance_by: BalanceBy = BalanceBy.FLOPS
    """Cost that the split balances across stages: params, flops, memory or time (measured)."""
    heads: Annotated[list[UnitName] | None, AfterValidator(_unique_names)] = Field(
        default=None, min_length=1, max_length=MAX_TASK_HEADS, json_schema_extra=UNIQUE_NAME_LIST
    )
    """Task split: names of the head units, each once (with model.profile: exactly its units with head true)."""


class PipelineSchedule(StrEnum):
    GPIPE = "GPipe"
    ONE_F_ONE_B = "1F1B"
    INTERLEAVED_1F1B = "Interleaved1F1B"


class ParallelismSpec(ApiModel):
    """Data-parallel replicas of the pipeline, and how the pipeline is scheduled."""

    replicas: int | None = Field(default=None, ge=1, le=MAX_CLUSTER_PODS)
    """Data-parallel replicas of the whole pipeline (the scale subresource). Unset: 1, or the planner's
    choice when split.stages is auto."""
    min_replicas: int | None = Field(default=None, ge=1, le=MAX_CLUSTER_PODS)
    """Elastic lower bound: the job keeps running with at least this many replicas."""
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_CLUSTER_PODS)
    """Elastic upper bound for replicas."""
    schedule: PipelineSchedule = PipelineSchedule.ONE_F_ONE_B
    """Pipeline schedule from torch.distributed.pipelining: GPipe, 1F1B or Interleaved1F1B."""
    microbatches: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    """Microbatches per step. Unset: the planner chooses (bubble (p-1)/(m+p-1) under about 20%)."""
    stages_per_worker: int = Field(default=1, ge=1, le=8)
    """Virtual stages per worker (Interleaved1F1B only; 1 otherwise)."""
    gpu_budget: int | None = Field(default=None, ge=1, le=MAX_GPU_BUDGET)
    """Total GPUs the planner may use when split.stages is auto."""


class DataDistribution(StrEnum):
    SHARD = "Shard"
    REPLICATE = "Replicate"


class SyntheticData(ApiModel):
    """Deterministic random samples, the same on every run with the same seed."""

    seed: SafeInteger = 0
    """Random seed."""
    samples: int = Field(default=1024, ge=1, le=MAX_SYNTHETIC_SAMPLES)
    """Number of samples in one epoch."""


class VolumeSource(ApiModel):
    """A PersistentVolumeClaim mounted into every worker."""

    claim_name: str = Field(min_length=1, max_length=253)
    """Name of a PersistentVolumeClaim in the job's namespace."""
    mount_path: str = Field(default="/data", pattern=r"^/")
    """Where the claim is mounted in the worker."""
    read_only: bool = True
    """Mount read-only."""


class DataSpec(ApiModel):
    """Where samples come from and how they are spread over data-parallel replicas."""

    distribution: DataDistribution = DataDistribution.SHARD
    """Shard: each replica sees a disjoint slice (every sample once per epoch). Replicate: every replica
    sees the full set."""
    synthetic: SyntheticData | None = None
    """Synthetic samples (the default when no path is given)."""
    path: str | None = Field(default=None, min_length=1)
    """A file on `volume` holding `{inputs, targets}` tensors saved with torch.save."""
    volume: VolumeSource | None = None
    """The volume that holds `path`."""


class Optimizer(StrEnum):
    SGD = "SGD"
    ADAM = "Adam"
    ADAMW = "AdamW"


class Loss(StrEnum):
    MSE = "MSE"
    CROSS_ENTROPY = "CrossEntropy"


class TrainingSpec(ApiModel):
    """Training loop settings (mode Train)."""

    steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    """Optimizer steps to run."""
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    """Samples per step per data-parallel replica, split evenly over a worker's GPUs (one process each),
    then into parallelism.microbatches on each GPU."""
    optimizer: Optimizer = Optimizer.ADAMW
    """Optimizer: SGD, Adam or AdamW."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """Learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Weight decay."""
    loss: Loss = Loss.MSE
    """Loss computed on the last stage: MSE or CrossEntropy."""


class CheckpointSpec(ApiModel):
    """Where and how often training state is saved (torch.distributed.checkpoint)."""

    claim_name: str = Field(min_length=1, max_length=253)
    """PersistentVolumeClaim (ReadWriteMany when workers span nodes) that holds checkpoints."""
    mount_path: str = Field(default="/checkpoints", pattern=r"^/")
    """Where the claim is mounted in the worker."""
    interval_steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    """Save every this many steps (and always on SIGTERM)."""


class RolloutSpec(ApiModel):
    """How a change of the workers (image, model, split, resources, env, template) rolls over a Serve job's
    replicas: one whole replica (its pipeline) at a time, never below replicas - maxUnavailable serving."""

    max_unavailable: int = Field(default=0, ge=0, le=MAX_CLUSTER_PODS)
    """Replicas that may be out of service during a rollout: at least parallelism.replicas - maxUnavailable
    replicas (and at least one) keep serving, and Ready holds while they do."""
    max_surge: int = Field(default=1, ge=0, le=MAX_CLUSTER_PODS)
    """Replicas of the new revision that may run beside all the old ones during a rollout (each needs GPUs of
    its own; when they do not fit, the rollout goes on with maxUnavailable alone)."""
    progress_deadline_seconds: int = Field(default=600, ge=1, le=MAX_SECONDS)
    """A rollout in which no new replica starts serving for this long stops (condition Progressing=False,
    reason ProgressDeadlineExceeded); the old replicas keep serving. A new spec starts a new rollout."""


class ServingSpec(ApiModel):
    """HTTP serving settings (mode Serve)."""

    port: int = Field(default=8080, ge=1, le=65535)
    """Port of the HTTP endpoint on each replica's first-stage worker."""
    max_batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    """Requests are batched up to this many samples before they enter the pipeline (a full batch runs as
    parallelism.microbatches microbatches)."""
    max_batch_delay_ms: int = Field(default=5, ge=0, le=10000)
    """How long a request waits for others to fill a batch."""
    drain_seconds: int = Field(default=5, ge=0, le=3600)
    """A replica being removed (rollout, scale-down) leaves the endpoint first; its workers get SIGTERM this
    many seconds later, and finish the requests they hold before they exit."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """Rolling updates: maxUnavailable, maxSurge, progressDeadlineSeconds."""


class ResourcesSpec(ApiModel):
    """Resources of every worker pod."""

    gpus: int = Field(default=1, ge=0, le=MAX_GPUS_PER_WORKER)
    """`nvidia.com/gpu` per worker (0 runs on CPU with gloo). A worker's GPUs are always on one node."""
    gpu_product: str | None = Field(default=None, max_length=253)
    """Required GPU product (node label `nvidia.com/gpu.product`), e.g. NVIDIA-H100-80GB-HBM3."""
    gpu_memory: Quantity | None = None
    """Memory of one GPU (e.g. 80Gi) for the planner's fit check; unset: the node label
    `nvidia.com/gpu.memory` (MiB)."""
    cpu: Quantity | None = None
    """CPU request and limit per worker."""
    memory: Quantity | None = None
    """Memory request and limit per worker."""


class TopologyKeys(ApiModel):
    """Node labels that name the topology levels, nearest first."""

    node: str = "kubernetes.io/hostname"
    """Label naming the node."""
    rack: str | None = "topology.maas.dev/rack"
    """Label naming the rack (or switch) of a node."""
    block: str | None = "topology.maas.dev/block"
    """Label naming the block (or spine) of a node."""


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = None
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: str | None = None
    """Taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty tolerates all effects."""
    toleration_seconds: SafeInteger | None = None
    """How long a NoExecute taint is tolerated."""


class PlacementSpec(ApiModel):
    """Where workers may run and how the topology is read."""

    topology_keys: TopologyKeys = Field(default_factory=TopologyKeys)
    """Node labels of the topology levels."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Nodes must carry all these labels."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the workers tolerate."""


class ExitAction(StrEnum):
    RETRY = "Retry"
    FAIL = "Fail"


class ExitCodeRule(ApiModel):
    """What a worker exit code means for the job."""

    codes: list[Annotated[int, Field(ge=0, le=MAX_EXIT_CODE)]] = Field(min_length=1)
    """Exit codes this rule matches."""
    action: ExitAction
    """Retry: restart the gang (counts toward maxRestarts). Fail: fail the job at once."""


class BackoffSpec(ApiModel):
    """Delay between restarts: initial, doubling up to max."""

    initial_seconds: int = Field(default=10, ge=0, le=MAX_BACKOFF_SECONDS)
    """Delay before the first restart."""
    max_seconds: int = Field(default=300, ge=0, le=MAX_BACKOFF_SECONDS)
    """Longest delay."""


class FailurePolicySpec(ApiModel):
    """What happens when a worker fails."""

    max_restarts: int = Field(default=3, ge=0, le=MAX_RESTARTS)
    """Gang restarts allowed before the job fails."""
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    """Delay between restarts."""
    exit_codes: list[ExitCodeRule] = Field(default_factory=list)
    """Rules checked before the defaults: the runtime's permanent error 78 and 1, 2, 126, 127, 128, 139
    fail the job (as in Kubeflow); anything else (75 retryable, 137 killed, 143 terminated) restarts it."""


class CleanPodPolicy(StrEnum):
    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class RunPolicySpec(ApiModel):
    """Lifecycle of the job, as in Kubeflow's RunPolicy."""

    suspend: bool = False
    """Suspended jobs keep their spec and status but have no pods."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=MAX_SECONDS)
    """Delete the job this long after it succeeds or fails."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_SECONDS)
    """Fail the job when it has run longer than this."""
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    """Pods to delete when the job finishes: All, Running or None."""


class EnvVar(ApiModel):
    """An environment variable of the worker container (core/v1 EnvVar)."""

    name: str = Field(min_length=1)
    """Variable name."""
    value: str | None = None
    """Literal value."""
    value_from: dict[str, Any] | None = None
    """Source of the value (secretKeyRef, configMapKeyRef, fieldRef, ...), passed to the pod as written."""


class PodTemplateOverrides(ApiModel):
    """Pod settings PyTorchJob users expect, applied to every worker pod."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Extra pod labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra pod annotations."""
    service_account_name: str | None = None
    """ServiceAccount the workers run as."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Names of Secrets used to pull the image."""
    priority_class_name: str | None = None
    """PriorityClass of the worker pods."""
    scheduler_name: str | None = None
    """Scheduler of the worker pods (e.g. a gang scheduler)."""


class MaaSJobSpec(ApiModel):
    """Serve or train one model on GPUs, split into pipeline stages and data-parallel replicas."""

    mode: Mode
    """Train or Serve."""
    model: ModelSpec
    """The model to run."""
    split: SplitSpec = Field(default_factory=SplitSpec)
    """How the model is cut into pipeline stages."""
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    """Data-parallel replicas and pipeline schedule."""
    data: DataSpec = Field(default_factory=DataSpec)
    """Training data and its distribution over replicas."""
    training: TrainingSpec | None = None
    """Training settings (mode Train; defaults apply when unset)."""
    checkpoint: CheckpointSpec | None = None
    """Checkpointing (mode Train)."""
    serving: ServingSpec | None = None
    """Serving settings (required for mode Serve)."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Resources of each worker."""
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    """Node selection and topology."""
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec)
    """Restarts and exit-code rules."""
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    """Suspend, deadlines, clean-up."""
    image: str | None = Field(default=None, min_length=1)
    """Worker image (must contain maas_runtime); unset: the operator's default runtime image."""
    env: list[EnvVar] = Field(default_factory=list)
    """Extra environment variables of the workers."""
    template: PodTemplateOverrides = Field(default_factory=PodTemplateOverrides)
    """Labels, annotations, service account, pull secrets, priority class of the worker pods."""

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> MaaSJobSpec:
        for rule in SPEC_RULES:
            if not rule.holds(self):
                # `path` lets error formatting point at the field, as the API server's fieldPath does.
                raise PydanticCustomError(
                    "cross_field_rule", "{message}", {"path": rule.field_path, "message": rule.message}
                )
        return self
