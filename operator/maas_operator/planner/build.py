"""MaaSJob spec + model profile + nodes -> Plan: the one entry point the operator and `maas plan` call."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from maas_api.batch import replica_batch
from maas_api.catalog import DTYPE_BYTES, CatalogArgsError, model_profile
from maas_api.contract import stages_of_pipeline_rank, worker_index
from maas_api.job import MaaSJob
from maas_api.plan import ModelProfile, Plan, StagePlan, WorkerPlan, bubble_fraction
from maas_api.spec import MaaSJobSpec, Mode, SplitStrategy, TrainingSpec

from maas_operator.planner.auto import DEFAULT_GPUS_PER_NODE, choose_auto
from maas_operator.planner.cluster import Node, parse_node, used_gpus_from_annotations
from maas_operator.planner.memory import (
    build_memory_model,
    microbatch_pool,
    microbatch_pool_field,
    parse_quantity,
    unmeasured_activations_note,
)
from maas_operator.planner.microbatches import choose_microbatches
from maas_operator.planner.placement import GangRequest, filter_nodes, place_gang
from maas_operator.planner.reasons import PlanError, format_bytes
from maas_operator.planner.split import SplitRequest, SplitResult, group_items, split_model


def worker_name(job: str, replica: int, pipeline_rank: int) -> str:
    return f"{job}-r{replica}-s{pipeline_rank}"


def build_plan(
    job: MaaSJob | MaaSJobSpec,
    profile: ModelProfile | None = None,
    nodes: Sequence[Node | Mapping[str, Any]] | None = None,
    used_gpus: Mapping[str, int] | None = None,
    previous: Mapping[str, str] | None = None,
    *,
    name: str | None = None,
    namespace: str | None = None,
    worker_size_mix: Mapping[int, float] | None = None,
) -> Plan:
    """The full plan of a job: split, replicas, microbatches, workers and (with `nodes`) their nodes.

    `profile` defaults to the catalog's (spec.model); `nodes` are Node objects or parsed `Node`s (None: no
    placement, every worker's node is None); `used_gpus` maps node -> GPUs held by other jobs' pods
    (default: the nodes' `maas.dev/used-gpus` annotation); `previous` maps worker name -> node of the last
    placement, whose still-valid workers stay put; `worker_size_mix` is the cluster's GPU demand by GPUs per
    worker (what counts as a fragment, see placement). Raises PlanError (bad input) or Unschedulable (no room).
    """
    if isinstance(job, MaaSJob):
        spec = job.spec
        name = name or job.metadata.name
        namespace = namespace or job.metadata.namespace
    else:
        spec = job
    if not name:
        raise PlanError("metadata.name: the plan needs the job's name (workers are named after it)")
    if profile is None:
        try:
            profile = model_profile(spec.model)
        except CatalogArgsError as error:
            raise PlanError(str(error)) from error
    parsed_nodes = (
        None
        if nodes is None
        else [n if isinstance(n, Node) else parse_node(n, f"nodes[{i}]") for i, n in enumerate(nodes)]
    )
    used = dict(used_gpus) if used_gpus is not None else used_gpus_from_annotations(parsed_nodes or [])
    notes: list[str] = []

    filter_request = _gang_request(spec, name, (), 1)
    gpu_product = spec.resources.gpu_product
    gpu_memory = None
    gpus_per_node = DEFAULT_GPUS_PER_NODE
    if spec.resources.gpu_memory is not None:
        gpu_memory = parse_quantity(spec.resources.gpu_memory, "spec.resources.gpuMemory")
    if parsed_nodes:
        eligible = filter_nodes(parsed_nodes, filter_request, {}).nodes
        memories = [m for m in (node.gpu_memory_bytes for node in eligible) if m is not None]
        if gpu_memory is None and memories:
            # The smallest GPU among the nodes the job may use: the split must fit wherever it lands.
            gpu_memory = min(memories)
        if gpu_product is None and eligible:
            products = Counter(node.gpu_product for node in eligible if node.gpu_product)
            gpu_product = products.most_common(1)[0][0] if products else None
        if eligible:
            gpus_per_node = max(node.gpus for node in eligible)
    memory_notes: list[str] = []
    if (unmeasured := unmeasured_activations_note(spec, profile.units)) is not None:
        memory_notes.append(unmeasured)
    if gpu_memory is None and spec.resources.gpus > 0:
        memory_notes.append(
            "memory: GPU memory unknown (set spec.resources.gpuMemory or give nodes labelled"
            " nvidia.com/gpu.memory), so the split was not checked against it"
        )

    def split_for(model_stages: int, microbatches: int) -> SplitResult:
        memory = build_memory_model(spec, model_stages, microbatches, gpu_memory)
        request = SplitRequest(
            strategy=spec.split.strategy,
            stages=model_stages,
            balance_by=spec.split.balance_by,
            memory=memory,
            heads=tuple(spec.split.heads or ()),
        )
        return split_model(profile, request)

    stages_per_worker = spec.parallelism.stages_per_worker
    if spec.split.stages == "auto":
        max_stages = (
            len(group_items(profile.units))
            if spec.split.strategy == SplitStrategy.SUB_MODEL
            else len(profile.units)
        )
        choice = choose_auto(spec, profile, max_stages, split_for, gpu_product, gpus_per_node)
        split, replicas, microbatches = choice.split, choice.estimate.replicas, choice.estimate.microbatches
        pipeline_degree = choice.estimate.pipeline_degree
        notes += choice.notes
        if choice.microbatch_note:
            notes.append(choice.microbatch_note)
    else:
        model_stages = spec.split.stages  # a multiple of stages_per_worker: a spec rule checks it
        pipeline_degree = model_stages // stages_per_worker
        replicas = spec.parallelism.replicas or 1
        if spec.parallelism.microbatches is not None:
            microbatches = spec.parallelism.microbatches
        else:
            microbatches, note = choose_microbatches(
                microbatch_pool(spec),
                model_stages,
                pipeline_degree,
                spec.parallelism.schedule,
                stages_per_worker,
                microbatch_pool_field(spec),
            )
            notes.append(note)
        split = split_for(model_stages, microbatches)
    notes = split.notes + notes + memory_notes
    if gpu_memory is not None and spec.resources.gpus > 0:
        peak = max(stage.memory_bytes for stage in split.stages)
        notes.append(
            f"memory: peak {format_bytes(peak)} per GPU (stage"
            f" {max(split.stages, key=lambda s: s.memory_bytes).index}) of {format_bytes(gpu_memory)}"
        )

    gpus = spec.resources.gpus
    workers = [
        WorkerPlan(
            name=worker_name(name, replica, rank),
            index=worker_index(replica, rank, pipeline_degree),
            replica=replica,
            pipeline_rank=rank,
            stages=stages_of_pipeline_rank(rank, pipeline_degree, stages_per_worker),
            node=None,
            gpus=gpus,
        )
        for replica in range(replicas)
        for rank in range(pipeline_degree)
    ]
    if parsed_nodes is not None and gpus > 0:
        request = _gang_request(spec, name, tuple(w.name for w in workers), pipeline_degree, split.stages)
        placement = place_gang(parsed_nodes, request, used, previous, worker_size_mix)
        workers = [w.model_copy(update={"node": placement.nodes[w.name]}) for w in workers]
        notes += placement.notes
    elif parsed_nodes is not None:
        notes.append("placement: CPU workers (spec.resources.gpus 0) are left to the kube-scheduler")

    return Plan(
        job=name,
        namespace=namespace or "default",
        mode=spec.mode,
        model=spec.model,
        profile=profile,
        strategy=spec.split.strategy,
        balance_by=split.balance_by,
        stages=split.stages,
        pipeline_degree=pipeline_degree,
        stages_per_worker=stages_per_worker,
        replicas=replicas,
        gpus_per_worker=gpus,
        schedule=spec.parallelism.schedule,
        microbatches=microbatches,
        workers=workers,
        bottleneck=split.bottleneck,
        estimated_bubble=bubble_fraction(pipeline_degree, microbatches, stages_per_worker),
        notes=notes,
        data=spec.data,
        training=(spec.training or TrainingSpec()) if spec.mode == Mode.TRAIN else None,
        checkpoint=spec.checkpoint if spec.mode == Mode.TRAIN else None,
        serving=spec.serving if spec.mode == Mode.SERVE else None,
    )


def _gang_request(
    spec: MaaSJobSpec,
    job: str,
    workers: tuple[str, ...],
    pipeline_degree: int,
    stages: Sequence[StagePlan] = (),
) -> GangRequest:
    """The placement request, with traffic weights: activations (and their gradients) between pipeline
    ranks per step, and 2x the parameters' bytes between data-parallel peers per step (Train only)."""
    train = spec.mode == Mode.TRAIN
    batch = replica_batch(spec)
    value_bytes = DTYPE_BYTES[spec.model.dtype]
    pipeline_weights = [0.0] * max(0, pipeline_degree - 1)
    replica_weights = [0.0] * pipeline_degree
    for stage in stages:
        rank = stage.index % pipeline_degree
        if rank + 1 < pipeline_degree:
            pipeline_weights[rank] += stage.output_bytes_per_sample * batch * (2 if train else 1)
        if train:
            replica_weights[rank] += 2.0 * stage.params * value_bytes
    return GangRequest(
        job=job,
        workers=workers,
        pipeline_degree=pipeline_degree,
        gpus_per_worker=spec.resources.gpus,
        gpu_product=spec.resources.gpu_product,
        node_selector=dict(spec.placement.node_selector),
        tolerations=tuple(spec.placement.tolerations),
        topology=spec.placement.topology_keys,
        pipeline_weights=tuple(pipeline_weights),
        replica_weights=tuple(replica_weights),
    )
