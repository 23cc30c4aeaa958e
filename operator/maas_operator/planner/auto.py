"""`split.stages: auto`: choose stages, replicas and microbatches for a GPU budget by estimated throughput.

The cost model is deliberately simple, so a person can redo the arithmetic from the plan's notes:

- compute: a stage's time per sample is its forward FLOPs x passes (3 in Train: forward and a backward of
  twice the cost; 1 in Serve) / (peak FLOP/s of the GPU product x MFU x GPUs per worker), or its measured
  `timeMsPerSample` x passes / GPUs when every unit has one;
- fixed costs: every microbatch a stage runs pays MICROBATCH_OVERHEAD_S per pass (kernel launches, the
  schedule's bookkeeping), and every message the link's latency; without them tiny models would look
  fastest cut into the most stages;
- pipeline transfer: a stage's output bytes per sample (x2 in Train: activations forward, gradients back)
  over NVLink when a whole replica fits on one node, else over the network, plus one latency per message;
- step time: (v*m + p - 1) slots of the slowest stage's compute + overhead + transfer per microbatch
  (GPipe and 1F1B have the same bubble), plus in Train a ring all-reduce of the largest worker's
  gradients: 2(n-1) latencies + 2(n-1)/n x bytes / bandwidth, over NVLink when all data-parallel peers
  share a node, else over the network;
- throughput: replicas x batch / step time.

The search tries every pipeline depth and replica count up to AUTO_PIPELINE_CANDIDATES, then a geometric
ladder, and never more workers than the nodes' GPUs hold (when known) or MAX_PODS_PER_CLUSTER: its time
grows with the logarithm of gpuBudget, whatever budget the API server accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from maas_api.batch import replica_batch
from maas_api.catalog import DTYPE_BYTES
from maas_api.plan import ModelProfile, bubble_fraction
from maas_api.spec import MaaSJobSpec, Mode

from maas_operator.planner.cluster import MAX_PODS_PER_CLUSTER
from maas_operator.planner.memory import microbatch_pool
from maas_operator.planner.microbatches import choose_microbatches
from maas_operator.planner.reasons import PlanError, format_count, list_some, plural
from maas_operator.planner.split import SplitResult

# Dense 16-bit tensor-core peak per GPU (FLOP/s), matched as a substring of the nvidia.com/gpu.product label.
PEAK_FLOPS_16BIT: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40", 181e12),
    ("A10", 125e12),
    ("V100", 125e12),
    ("T4", 65e12),
    ("P100", 19e12),
)
DEFAULT_PEAK_FLOPS = 100e12
"""Used when the GPU product is unknown or not in the table."""
FLOAT32_SPEED = 0.5
"""float32 runs on TF32 tensor cores at about half the 16-bit rate."""
MODEL_FLOPS_UTILIZATION = 0.5
NVLINK_BYTES_PER_S = 300e9
"""Inside a node (NVLink / NVSwitch, per direction, effective)."""
NETWORK_BYTES_PER_S = 25e9
"""Across nodes (a 200 Gb/s NIC per GPU, effective)."""
NVLINK_LATENCY_S = 5e-6
NETWORK_LATENCY_S = 20e-6
MICROBATCH_OVERHEAD_S = 30e-6
"""Fixed time per microbatch and pass on a stage (kernel launches, Python and schedule bookkeeping)."""
DEFAULT_GPUS_PER_NODE = 8
AUTO_PIPELINE_CANDIDATES = 48
"""Above this many feasible pipeline depths (or replica counts), auto tries a geometric subset, so planning
time grows with the logarithm of gpuBudget, not with the budget (gpuBudget 1e12 looped 1e12 times)."""
THROUGHPUT_TIE = 0.005
"""Estimates within 0.5% are a tie: fewer GPUs win, then fewer stages."""


def peak_flops(product: str | None, dtype: str) -> float:
    peak = next(
        (flops for name, flops in PEAK_FLOPS_16BIT if product and name in product), DEFAULT_PEAK_FLOPS
    )
    return peak * (FLOAT32_SPEED if dtype == "float32" else 1.0)


@dataclass(frozen=True)
class Estimate:
    pipeline_degree: int
    replicas: int
    microbatches: int
    samples_per_s: float
    step_s: float
    bubble: float

    @property
    def shape(self) -> str:
        return f"{self.pipeline_degree}x{self.replicas}"


def estimate_throughput(
    spec: MaaSJobSpec,
    profile: ModelProfile,
    split: SplitResult,
    replicas: int,
    microbatches: int,
    gpu_product: str | None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
) -> Estimate:
    """Samples per second of `replicas` copies of the pipeline `split` (see the module's cost model)."""
    train = spec.mode == Mode.TRAIN
    passes = 3.0 if train else 1.0
    gpus = max(1, spec.resources.gpus)
    stages_per_worker = spec.parallelism.stages_per_worker
    pipeline_degree = len(split.stages) // stages_per_worker
    samples = replica_batch(spec) / microbatches
    flops_rate = peak_flops(gpu_product, spec.model.dtype) * MODEL_FLOPS_UTILIZATION * gpus
    measured = all(unit.time_ms_per_sample is not None for unit in profile.units)
    replica_on_one_node = pipeline_degree * gpus <= gpus_per_node
    link = NVLINK_BYTES_PER_S if replica_on_one_node else NETWORK_BYTES_PER_S
    latency = NVLINK_LATENCY_S if replica_on_one_node else NETWORK_LATENCY_S
    messages = 2 if train else 1  # activations forward, their gradients back
    slowest = 0.0
    for stage in split.stages:
        if measured:
            per_sample = sum(profile.unit(u).time_ms_per_sample or 0.0 for u in stage.units) / 1000 / gpus
        else:
            per_sample = stage.flops_per_sample / flops_rate
        transfer = 0.0
        if stage.index + 1 < len(split.stages):
            transfer = messages * (latency + stage.output_bytes_per_sample * samples / link)
        slowest = max(slowest, (per_sample * passes * samples) + passes * MICROBATCH_OVERHEAD_S + transfer)
    step = (stages_per_worker * microbatches + pipeline_degree - 1) * slowest
    peers = replicas * gpus
    if train and peers > 1:
        value_bytes = DTYPE_BYTES[spec.model.dtype]
        worker_params = max(
            sum(s.params for s in split.stages if s.index % pipeline_degree == rank)
            for rank in range(pipeline_degree)
        )
        all_on_one_node = replicas * pipeline_degree * gpus <= gpus_per_node
        bandwidth = NVLINK_BYTES_PER_S if all_on_one_node else NETWORK_BYTES_PER_S
        hop = NVLINK_LATENCY_S if all_on_one_node else NETWORK_LATENCY_S
        step += 2 * (peers - 1) * hop + 2 * (peers - 1) / peers * worker_params * value_bytes / bandwidth
    return Estimate(
        pipeline_degree=pipeline_degree,
        replicas=replicas,
        microbatches=microbatches,
        samples_per_s=replicas * replica_batch(spec) / step if step > 0 else float("inf"),
        step_s=step,
        bubble=bubble_fraction(pipeline_degree, microbatches, stages_per_worker),
    )


@dataclass(frozen=True)
class AutoChoice:
    estimate: Estimate
    split: SplitResult
    notes: list[str]
    microbatch_note: str | None


def count_candidates(largest: int) -> list[int]:
    """Every count up to AUTO_PIPELINE_CANDIDATES, then a geometric ladder (x1.25) up to `largest`."""
    if largest <= AUTO_PIPELINE_CANDIDATES:
        return list(range(1, largest + 1))
    depths = set(range(1, AUTO_PIPELINE_CANDIDATES + 1))
    depth = float(AUTO_PIPELINE_CANDIDATES)
    while depth < largest:
        depth *= 1.25
        depths.add(min(largest, round(depth)))
    depths.add(largest)
    return sorted(depths)


def choose_auto(
    spec: MaaSJobSpec,
    profile: ModelProfile,
    max_stages: int,
    split_for: Callable[[int, int], SplitResult],
    gpu_product: str | None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    cluster_gpus: int | None = None,
) -> AutoChoice:
    """The (stages, replicas, microbatches) with the best estimated throughput within parallelism.gpuBudget.

    `split_for(model_stages, microbatches)` splits the model (PlanError when it does not fit); a user-set
    replicas or microbatches is never changed. `cluster_gpus`, the GPUs of the nodes the job may use when
    they are known, also bounds the choice: a plan larger than the cluster could never be placed.
    """
    budget = spec.parallelism.gpu_budget
    if budget is None:
        raise PlanError(
            "spec.parallelism.gpuBudget: split.stages auto needs the total GPUs the planner may use"
        )
    gpus = max(1, spec.resources.gpus)
    workers = budget // gpus
    if workers < 1:
        raise PlanError(
            f"spec.parallelism.gpuBudget: {budget} GPUs cannot hold one worker of {gpus} GPUs"
            " (spec.resources.gpus); raise the budget"
        )
    fixed_replicas = spec.parallelism.replicas
    fixed_microbatches = spec.parallelism.microbatches
    stages_per_worker = spec.parallelism.stages_per_worker
    most_workers = workers // fixed_replicas if fixed_replicas else workers
    if most_workers < 1:
        raise PlanError(
            f"spec.parallelism.replicas: {fixed_replicas} replicas of {gpus} GPUs need more than the"
            f" gpuBudget of {budget} GPUs"
        )
    # No cluster runs more worker pods than MAX_PODS_PER_CLUSTER, nor more workers than its GPUs hold,
    # whatever the budget says.
    cluster_workers = MAX_PODS_PER_CLUSTER
    if cluster_gpus is not None and spec.resources.gpus > 0 and cluster_gpus >= gpus:
        cluster_workers = min(cluster_workers, cluster_gpus // gpus)
    if fixed_replicas:
        most_workers = min(most_workers, max(1, cluster_workers // fixed_replicas))
    largest_depth = min(most_workers, max_stages // stages_per_worker)
    batch = microbatch_pool(spec)
    estimates: list[tuple[Estimate, SplitResult, str | None]] = []
    skipped: dict[str, list[int]] = {}  # reason -> stage counts it ruled out
    for depth in count_candidates(largest_depth):
        model_stages = depth * stages_per_worker
        note: str | None = None
        try:
            if fixed_microbatches is not None:
                microbatches = fixed_microbatches
                if spec.parallelism.schedule != "GPipe" and microbatches < model_stages:
                    raise PlanError(f"{microbatches} microbatches < {model_stages} stages")
            else:
                microbatches, note = choose_microbatches(
                    batch, model_stages, depth, spec.parallelism.schedule, stages_per_worker
                )
            split = split_for(model_stages, microbatches)
        except PlanError as error:
            skipped.setdefault(_skip_reason(str(error)), []).append(model_stages)
            continue
        most_replicas = max(1, min(workers, cluster_workers) // depth)
        replica_options = [fixed_replicas] if fixed_replicas else count_candidates(most_replicas)
        for replicas in replica_options:
            estimate = estimate_throughput(
                spec, profile, split, replicas, microbatches, gpu_product, gpus_per_node
            )
            estimates.append((estimate, split, note))
    if not estimates:
        raise PlanError(
            f"spec.split.stages auto: no pipeline of up to {largest_depth} workers fits the budget of {budget}"
            f" GPUs: {_skipped_text(skipped)}"
        )
    best_rate = max(e.samples_per_s for e, _, _ in estimates)
    close = [item for item in estimates if item[0].samples_per_s >= best_rate * (1 - THROUGHPUT_TIE)]
    chosen, split, microbatch_note = min(
        close, key=lambda item: (item[0].replicas * item[0].pipeline_degree, item[0].pipeline_degree)
    )
    ranked = sorted(estimates, key=lambda item: -item[0].samples_per_s)
    runners_up = [e for e, _, _ in ranked if e is not chosen][:3]
    used = chosen.replicas * chosen.pipeline_degree * gpus
    notes = [
        f"auto: chose {plural(chosen.pipeline_degree * stages_per_worker, 'stage')} x"
        f" {plural(chosen.replicas, 'replica')} ({used} of {budget} GPUs),"
        f" {plural(chosen.microbatches, 'microbatch', 'microbatches')}:"
        f" estimated {format_count(chosen.samples_per_s)} samples/s (step {chosen.step_s * 1e3:.3g} ms,"
        f" bubble {chosen.bubble:.0%})"
        + (
            "; next best (stages x replicas): "
            + ", ".join(f"{e.shape} {format_count(e.samples_per_s)}/s" for e in runners_up)
            if runners_up
            else ""
        ),
        f"auto cost model: {gpu_product or 'unknown GPU'} at {format_count(peak_flops(gpu_product, spec.model.dtype))}"
        f"FLOP/s x {MODEL_FLOPS_UTILIZATION:.0%} MFU, NVLink {format_count(NVLINK_BYTES_PER_S)}B/s inside a node,"
        f" network {format_count(NETWORK_BYTES_PER_S)}B/s across nodes",
    ]
    if fixed_replicas:
        notes.append(f"auto: kept spec.parallelism.replicas {fixed_replicas} as set")
    if cluster_workers * gpus < budget:
        why = "the nodes' GPUs" if cluster_workers < MAX_PODS_PER_CLUSTER else "the pods a cluster runs"
        notes.append(f"auto: planned within {cluster_workers * gpus} GPUs ({why}), less than the budget")
    if skipped:
        notes.append(f"auto: ruled out {_skipped_text(skipped)}")
    return AutoChoice(chosen, split, notes, microbatch_note)


def _skip_reason(message: str) -> str:
    if "fits in GPU memory" in message:
        return "the stages do not fit in GPU memory"
    if "cannot feed" in message:
        return "the batch has fewer samples than stages"
    if "microbatches <" in message:
        return "spec.parallelism.microbatches is below the stage count"
    if "needs at least 2 stages" in message:
        return "strategy Task needs a trunk stage and a head stage"
    return message


def _skipped_text(skipped: dict[str, list[int]]) -> str:
    return "; ".join(
        f"{list_some((str(count) for count in counts), 6)} stages ({reason})"
        for reason, counts in skipped.items()
    )
