"""MaaSJob spec + model profile + nodes -> Plan: the one entry point the operator and `maas plan` call."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from maas_api.batch import replica_batch
from maas_api.catalog import DTYPE_BYTES, CatalogArgsError, model_profile
from maas_api.contract import stages_of_pipeline_rank, worker_index
from maas_api.job import MaaSJob
from maas_api.plan import ModelProfile, Plan, StagePlan, WorkerPlan, bubble_fraction
from maas_api.spec import MaaSJobSpec, Mode, TrainingSpec

from maas_operator.planner.auto import DEFAULT_GPUS_PER_NODE, choose_auto
from maas_operator.planner.cluster import MAX_PODS_PER_CLUSTER, Node, parse_node, used_gpus_from_annotations
from maas_operator.planner.memory import (
    build_memory_model,
    microbatch_pool,
    microbatch_pool_field,
    parse_quantity,
    unmeasured_activations_note,
)
from maas_operator.planner.microbatches import choose_microbatches
from maas_operator.planner.placement import GangRequest, filter_nodes, place_gang, require_capacity
from maas_operator.planner.reasons import PlanError, format_bytes, plural
from maas_operator.planner.split import SplitRequest, SplitResult, check_stage_count, split_items, split_model

LARGEST_INT64 = 2**63 - 1
"""The API server stores whole numbers as int64, so a larger one cannot come from a stored object."""


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
    worker (what counts as a fragment, see placement). Raises PlanError (bad input) or Unschedulable (no room),
    and nothing else, in bounded time, for any spec that parse_maasjob accepts: the operator calls it in its
    reconcile loop (tests/planner/test_robustness.py checks this on mutations of every example).
    """
    if isinstance(job, MaaSJob):
        spec = job.spec
        name = name or job.metadata.name
        namespace = namespace or job.metadata.namespace
    else:
        spec = job
    if not name:
        raise PlanError("metadata.name: the plan needs the job's name (workers are named after it)")
    check_numbers(spec.model_dump(by_alias=True), "spec")
    if profile is not None:
        profile_field = "profile"
        check_numbers([unit.model_dump(by_alias=True) for unit in profile.units], profile_field)
    else:
        profile_field = "spec.model.profile" if spec.model.profile is not None else "spec.model.args"
        try:
            profile = model_profile(spec.model)
        except CatalogArgsError as error:
            raise PlanError(str(error)) from error
    if isinstance(spec.split.stages, int):
        # Before anything is sized by the stage count (stages: 1e8 would allocate first, then refuse).
        check_stage_count(
            spec.split.stages, *split_items(profile.units, spec.split.strategy), "spec.split.stages"
        )
    parsed_nodes = (
        None
        if nodes is None
        else [n if isinstance(n, Node) else parse_node(n, f"nodes[{i}]") for i, n in enumerate(nodes)]
    )
    used = dict(used_gpus) if used_gpus is not None else used_gpus_from_annotations(parsed_nodes or [])
    notes: list[str] = []

    filter_request = _gang_request(spec, name, (), 1)
    filtered = None if parsed_nodes is None else filter_nodes(parsed_nodes, filter_request, used)
    gpu_product = spec.resources.gpu_product
    gpu_memory = None
    gpus_per_node = DEFAULT_GPUS_PER_NODE
    cluster_gpus = None if filtered is None else sum(node.gpus for node in filtered.nodes)
    if spec.resources.gpu_memory is not None:
        gpu_memory = parse_quantity(spec.resources.gpu_memory, "spec.resources.gpuMemory")
        if not (0 < gpu_memory < math.inf):
            raise PlanError(
                f"spec.resources.gpuMemory: {spec.resources.gpu_memory} is not a positive, finite memory"
                " size (example: 80Gi)"
            )
    if filtered is not None:
        eligible = filtered.nodes
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
            profile_field=profile_field,
        )
        return split_model(profile, request)

    stages_per_worker = spec.parallelism.stages_per_worker
    if spec.split.stages == "auto":
        max_stages = len(split_items(profile.units, spec.split.strategy)[0])
        choice = choose_auto(spec, profile, max_stages, split_for, gpu_product, gpus_per_node, cluster_gpus)
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
    # Cheap checks before the worker list is built: replicas: 1e8 would otherwise build every worker first.
    worker_count = replicas * pipeline_degree
    if worker_count > MAX_PODS_PER_CLUSTER:
        raise PlanError(
            f"spec.parallelism.replicas: {plural(replicas, 'replica')} x {plural(pipeline_degree, 'worker')}"
            f" = {worker_count} worker pods, more than a Kubernetes cluster runs ({MAX_PODS_PER_CLUSTER} pods);"
            f" use at most {MAX_PODS_PER_CLUSTER // pipeline_degree} replicas"
        )
    if filtered is not None and gpus > 0:
        require_capacity(filtered, filter_request, worker_count)
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
        estimated_bubble=bubble_fraction(
            pipeline_degree, microbatches, stages_per_worker, microbatch_pool(spec) / microbatches
        ),
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
            pipeline_weights[rank] += float(stage.output_bytes_per_sample) * batch * (2 if train else 1)
        if train:
            replica_weights[rank] += 2.0 * float(stage.params) * value_bytes
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


def check_numbers(document: object, path: str) -> None:
    """PlanError naming the first number that the API server could not have stored: a whole number beyond
    int64, or a float that is not finite (JSON has neither). Every product the planner forms from the rest
    (bytes x samples x microbatches) then stays a finite float."""
    pending: list[tuple[str, object]] = [(path, document)]
    while pending:  # a loop, not recursion: free-form args may nest deeper than Python's stack
        where, value = pending.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and abs(value) > LARGEST_INT64:
            raise PlanError(
                f"{where}: a {value.bit_length()}-bit number is beyond int64, the largest whole number"
                " the API server stores"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanError(f"{where}: {value} is not a finite number")
        if isinstance(value, Mapping):
            pending += [(f"{where}.{key}", item) for key, item in reversed(list(value.items()))]
        elif isinstance(value, list | tuple):
            pending += [(f"{where}[{index}]", item) for index, item in reversed(list(enumerate(value)))]
