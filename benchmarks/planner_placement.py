"""Measures gang placement against kube-scheduler and a fair Kueue TAS baseline, on synthetic and real clusters.

Usage: python benchmarks/planner_placement.py [--jobs 1200] [--loads 0.5 0.7 0.9 0.95] [--quick]
The default (3 clusters x 4 loads x 1,200 arrivals, 600 on the 10,000-node cluster, plus the trace replay)
takes about a minute of CPU (1.5-3.5 minutes wall on 2 shared cores); --quick (300 arrivals, 2 loads) is a
smoke run.

Clusters
- synthetic: 8 GPUs per node, 32 nodes per rack, 16 racks per block, one GPU product; 1,000 and 10,000
  nodes;
- Alibaba GPU trace v2023 (/work/shared/data/alibaba-gpu-v2023, Weng et al., ATC'23): the 1,213 real nodes
  with their GPU counts (1, 2, 4 or 8) and GPU models (7 products: G2 549 x 8 GPUs, T4, P100, V100M16, ...).
  The trace has no topology, so racks are synthesized as 32 consecutive nodes of the node list (which is
  ordered by GPU model, so a rack is mostly one model) and blocks as 16 consecutive racks. Jobs name no
  product (spec.resources.gpuProduct unset), as the trace's pods name none.

Simulated jobs (fixed seed): a pipeline of p stages x d replicas, each worker needing g GPUs on one node. g
follows the real per-pod GPU counts of the trace's multi-GPU pod list (`openb_pod_list_multigpu50.csv`, pods
with GPUs: 1: 87%, 2: 3%, 4: 3%, 8: 7%); p is drawn from {1, 2, 4, 8} and d from {1, 2, 4, 8} (up to 64 on the
10,000-node cluster), resampled above 256 (2,048) GPUs per job. Traffic weights come from the planner's own
split of the catalog Transformer (vocab 32000, dim 512, 12 layers, seq 256, bfloat16, batch 64): pipeline
pairs carry activations and their gradients per step, data-parallel pairs twice the stage's parameter bytes.

Simulation: Poisson arrivals, exponential durations (mean 1), offered load = arrival rate x mean GPUs per job x
mean duration / cluster GPUs. A job that does not fit is rejected (no queue), so every placer sees the same
arrivals. The cluster starts at its steady occupancy: the expected number of running jobs (arrival rate x mean
duration) start at time 0 with exponential remaining times; they and the next fifth of the arrivals are not
counted.

Trace replay (the job stream itself, FGD's method): the tasks that use GPUs, each one worker of `num_gpu` whole
GPUs (a task sharing a fraction of a GPU counts as one whole GPU: the planner places whole GPUs), arriving
until the demand reaches 1.1x the cluster's GPUs, none leaving (as in Weng et al.'s evaluation). Two streams:
`openb_pod_list_default.csv` (7,064 tasks, 94% of them 1-GPU) in the trace's creation order, and
`openb_pod_list_multigpu50.csv` (the same plus 909 tasks of 2, 4 and 8 GPUs) in a seeded random order. At
each tenth of the capacity arrived: the share of the arrived GPU demand that found no room, the fragmented
share of free GPUs, and the room left for the next jobs' large workers (free 8- and 4-GPU worker slots).

Placers
- planner: maas_operator.planner.placement (one GPU product when one has room; block/rack/node best fit with
  fewest-then-tightest domains and FGD's single-node alternative; replica/stage orientation by the traffic
  model), given the workload's GPU demand by worker size as FGD is (it decides what counts as a fragment);
- least-allocated: per pod, kube-scheduler's default NodeResourcesFit LeastAllocated (most free share first),
  gang by rolling back when a pod does not fit;
- most-allocated: per pod, NodeResourcesFit MostAllocated (bin packing), same gang rule;
- kueue-tas: Kueue topology-aware scheduling with its BestFit algorithm over levels block, rack and hostname,
  as with `kueue.x-k8s.io/podset-preferred-topology: kubernetes.io/hostname`: the lowest level where one
  domain holds the whole job, the domain there with the least free capacity that does; below it, children
  largest first and the last one the best fit for the remainder. Made fair in two ways Kueue alone is not:
  it orients ranks (replica-major or stage-major, whichever the same traffic model scores cheaper, as a user
  would by ordering ranks), and there is one ResourceFlavor for all GPU nodes, so products may mix;
- kueue-tas-flavors (multi-product clusters): the same with one ResourceFlavor per GPU product, tried in the
  ClusterQueue's order (largest pool first: the order is the admin's, fixed) until one has room, so a gang
  never mixes products (Kueue's default flavor fungibility).

Metrics (over the counted jobs)
- gang success rate: placed / arrived;
- replicas on one node: share of replicas (whole pipelines) entirely on one node (every placer keeps a worker
  on one node; the planner splits pipelines on purpose when gradients dominate, see placement.py);
- adjacent stages in one rack: share of pipeline pairs (stage k, k+1 of one replica) on one node or one rack;
- communication cost: sum over pipeline pairs and data-parallel pairs (rank k of replicas r and r+1) of
  traffic x distance (0 same node, 1 same rack, 2 same block, 3 otherwise), divided by the cost of the same job
  placed alone on the empty cluster (the cheapest of the planner's and the Kueue TAS placements there; 1.0 =
  as good as on an idle cluster), as a ratio of sums over jobs;
- mixed products: share of placed multi-worker jobs whose workers span more than one GPU product (a
  pipeline runs at the pace of its slowest GPU);
- GPU fragmentation (FGD-style, Weng et al.): the share of free GPUs that sit on nodes with fewer free GPUs
  than a worker of the job mix needs, weighted by each worker size's share of the GPU demand; sampled every
  10 events;
- planning latency: `place_gang` (filters included) for a 4,096-GPU job on the 10,000-node cluster at about 50%
  random occupancy, p50/p99 over repeated runs.

Prints a table and writes benchmarks/results/planner_placement.{json,txt} and one PNG per cluster.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import os
import platform
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from maas_api.catalog import DTYPE_BYTES, catalog_profile
from maas_api.spec import BalanceBy, ModelSpec, SplitStrategy
from maas_operator.planner.cluster import Node
from maas_operator.planner.memory import MemoryModel
from maas_operator.planner.placement import ClusterView, GangRequest, place_gang, place_on_view
from maas_operator.planner.reasons import Unschedulable
from maas_operator.planner.split import SplitRequest, split_model

RESULTS = Path(__file__).resolve().parent / "results"
TRACE = Path("/work/shared/data/alibaba-gpu-v2023")
SEED = 7
PLACERS = ("planner", "least-allocated", "most-allocated", "kueue-tas", "kueue-tas-flavors")
FAIR_BASELINE = "kueue-tas"
TRACE_FILL = 1.1
"""The trace replay stops when the arrived GPU demand reaches this multiple of the cluster's GPUs (the
default list holds 1.2x)."""
NODES_PER_RACK, RACKS_PER_BLOCK = 32, 16


# -- clusters ------------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    name: str
    names: list[str]
    capacity: np.ndarray
    rack_of: np.ndarray
    block_of: np.ndarray
    products: list[str]

    @property
    def gpus(self) -> int:
        return int(self.capacity.sum())

    @property
    def product_count(self) -> int:
        return len(set(self.products))

    def view(self) -> ClusterView:
        racks = [f"rack-{r}" for r in self.rack_of]
        blocks = [f"block-{b}" for b in self.block_of]
        capacity = [int(c) for c in self.capacity]
        return ClusterView.from_labels(list(self.names), capacity, racks, blocks, list(self.products))


def synthetic_cluster(nodes: int) -> Cluster:
    index = np.arange(nodes)
    rack_of = index // NODES_PER_RACK
    return Cluster(
        f"synthetic-{nodes}",
        [f"node-{i:05d}" for i in range(nodes)],
        np.full(nodes, 8),
        rack_of,
        rack_of // RACKS_PER_BLOCK,
        ["H100"] * nodes,
    )


def alibaba_cluster() -> Cluster:
    with (TRACE / "openb_node_list_gpu_node.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    index = np.arange(len(rows))
    rack_of = index // NODES_PER_RACK
    return Cluster(
        "alibaba-1213",
        [row["sn"] for row in rows],
        np.array([int(row["gpu"]) for row in rows]),
        rack_of,
        rack_of // RACKS_PER_BLOCK,
        [row["model"] for row in rows],
    )


def trace_streams() -> dict[str, list[int]]:
    """GPUs of every task that uses GPUs, in arrival order: the default list in the trace's creation order
    (ties: the task name), and the multi-GPU variant (no times; the default list with 909 multi-GPU tasks
    appended) in a seeded random order, as FGD's evaluation samples tasks from it."""
    with (TRACE / "openb_pod_list_default.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["num_gpu"]) > 0]
    rows.sort(key=lambda row: (int(row["creation_time"]), row["name"]))
    with (TRACE / "openb_pod_list_multigpu50.csv").open() as handle:
        multi = [int(row["num_gpu"]) for row in csv.DictReader(handle) if int(row["num_gpu"]) > 0]
    random.Random(SEED).shuffle(multi)
    return {"default": [int(row["num_gpu"]) for row in rows], "multigpu50": multi}


def trace_worker_sizes() -> dict[int, int]:
    with (TRACE / "openb_pod_list_multigpu50.csv").open() as handle:
        sizes = Counter(int(row["num_gpu"]) for row in csv.DictReader(handle))
    return {size: count for size, count in sorted(sizes.items()) if size > 0}


# -- jobs ----------------------------------------------------------------------------------------------------
@dataclass
class Job:
    ident: int
    gpus: int
    stages: int
    replicas: int
    arrival: float
    duration: float

    @property
    def workers(self) -> int:
        return self.stages * self.replicas

    @property
    def total_gpus(self) -> int:
        return self.workers * self.gpus


def traffic_weights(stages: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-step bytes between pipeline ranks and between data-parallel peers, from the planner's split."""
    profile = catalog_profile(
        ModelSpec(
            catalog="Transformer",
            args={"vocab": 32000, "dim": 512, "layers": 12, "heads": 8, "seqLen": 256},
            dtype="bfloat16",
        )
    )
    memory = MemoryModel(4.0, 1, (1,) * stages, math.inf, None)
    plan = split_model(profile, SplitRequest(SplitStrategy.LAYER, stages, BalanceBy.FLOPS, memory))
    batch, value_bytes = 64, DTYPE_BYTES["bfloat16"]
    pipeline = tuple(s.output_bytes_per_sample * batch * 2.0 for s in plan.stages[:-1])
    replica = tuple(2.0 * s.params * value_bytes for s in plan.stages)
    return pipeline, replica


@dataclass
class Workload:
    jobs: list[Job]
    warm_up: int
    """Jobs not counted: the prefill and the first arrivals after it."""


def make_jobs(
    count: int,
    load: float,
    cluster: Cluster,
    sizes: dict[int, int],
    replica_choices: list[int],
    max_gpus: int,
    rng: random.Random,
) -> Workload:
    """`count` counted arrivals after a prefill of the steady-state number of running jobs.

    Durations are exponential, so jobs running in the steady state have exponential remaining times too: the
    prefill starts that many jobs at time 0, and the cluster is at its steady occupancy from the start.
    """
    size_values, size_weights = list(sizes), list(sizes.values())

    def shape() -> tuple[int, int, int]:
        while True:
            g = rng.choices(size_values, size_weights)[0]
            p = rng.choice([1, 2, 4, 8])
            d = rng.choice(replica_choices)
            if g * p * d <= max_gpus:
                return g, p, d

    sample = [shape() for _ in range(2000)]
    mean_gpus = statistics.fmean(g * p * d for g, p, d in sample)
    rate = load * cluster.gpus / mean_gpus  # arrivals per mean duration (1)
    prefill = round(rate)
    settle = count // 5
    jobs = []
    clock = 0.0
    for ident in range(prefill + settle + count):
        g, p, d = shape()
        if ident < prefill:
            arrival = ident * 1e-9
        else:
            clock += rng.expovariate(rate)
            arrival = clock
        jobs.append(Job(ident, g, p, d, arrival, rng.expovariate(1.0)))
    return Workload(jobs, prefill + settle)


# -- placers -------------------------------------------------------------------------------------------------
class PlannerPlacer:
    def __init__(
        self,
        cluster: Cluster,
        weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]],
        demand_share: dict[int, float] | None = None,
    ) -> None:
        self.view = cluster.view()
        if demand_share:
            self.view.worker_size_mix = demand_share  # FGD's input: the workload's worker sizes
        self.weights = weights

    def request(self, job: Job) -> GangRequest:
        pipeline, replica = self.weights[job.stages]
        return GangRequest(
            job=f"j{job.ident}",
            workers=tuple(f"j{job.ident}-r{r}-s{s}" for r in range(job.replicas) for s in range(job.stages)),
            pipeline_degree=job.stages,
            gpus_per_worker=job.gpus,
            pipeline_weights=pipeline,
            replica_weights=replica,
        )

    def place(self, job: Job) -> list[int] | None:
        request = self.request(job)
        try:
            placement = place_on_view(self.view, request)
        except Unschedulable:
            return None
        index = self.view.index
        return [index[placement.nodes[w]] for w in request.workers]

    def release(self, job: Job, nodes: list[int]) -> None:
        for node in nodes:
            self.view.free[node] += job.gpus

    def free(self) -> np.ndarray:
        return np.array(self.view.free)


class PerPodPlacer:
    """kube-scheduler's NodeResourcesFit scoring, one pod at a time, with a gang rollback."""

    def __init__(self, cluster: Cluster, most_allocated: bool) -> None:
        self.capacity = cluster.capacity.astype(float)
        self.free_gpus = cluster.capacity.copy()
        self.most_allocated = most_allocated

    def place(self, job: Job) -> list[int] | None:
        chosen: list[int] = []
        for _ in range(job.workers):
            fits = self.free_gpus >= job.gpus
            if not fits.any():
                for node in chosen:
                    self.free_gpus[node] += job.gpus
                return None
            used_share = (self.capacity - self.free_gpus) / self.capacity
            score = used_share if self.most_allocated else 1.0 - used_share
            node = int(np.argmax(np.where(fits, score, -1.0)))  # ties: the first node (sorted by name)
            self.free_gpus[node] -= job.gpus
            chosen.append(node)
        return chosen

    def release(self, job: Job, nodes: list[int]) -> None:
        for node in nodes:
            self.free_gpus[node] += job.gpus

    def free(self) -> np.ndarray:
        return self.free_gpus


def best_fit_domains(need: int, capacity: np.ndarray, ids: np.ndarray) -> list[tuple[int, int]]:
    """Kueue TAS BestFit among sibling domains: the smallest that holds everything, else largest first and
    the smallest that holds the remainder."""
    usable = capacity > 0
    capacity, ids = capacity[usable], ids[usable]
    holding = capacity >= need
    if holding.any():
        candidates = np.flatnonzero(holding)
        return [(int(ids[candidates[np.argmin(capacity[candidates])]]), need)]
    order = np.lexsort((ids, -capacity))
    taken = []
    for position, k in enumerate(order):
        if capacity[k] >= need:
            rest = order[position:]
            fitting = rest[capacity[rest] >= need]
            best = fitting[np.argmin(capacity[fitting])]
            taken.append((int(ids[best]), need))
            return taken
        taken.append((int(ids[k]), int(capacity[k])))
        need -= int(capacity[k])
    raise AssertionError("capacity was checked")


class KueueTasPlacer:
    """Kueue TAS BestFit over block, rack and hostname, with rank orientation; flavors: node sets tried in
    order (one for all nodes, or one per GPU product)."""

    def __init__(
        self,
        cluster: Cluster,
        weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]],
        per_product_flavors: bool,
    ) -> None:
        self.cluster = cluster
        self.weights = weights
        self.free_gpus = cluster.capacity.copy()
        everything = np.arange(len(cluster.names))
        if per_product_flavors:
            products = np.array(cluster.products)
            pools = [np.flatnonzero(products == product) for product in dict.fromkeys(cluster.products)]
            pools.sort(key=lambda nodes: -int(cluster.capacity[nodes].sum()))  # the admin's order
            self.flavors = pools
        else:
            self.flavors = [everything]

    def _levels(self, nodes: np.ndarray) -> list[np.ndarray]:
        """Each node's domain at each level, top first: block, rack, node."""
        return [self.cluster.block_of[nodes], self.cluster.rack_of[nodes], nodes]

    def _slots(self, need: int, nodes: np.ndarray, slots: np.ndarray) -> list[int]:
        """Nodes in rank order (one entry per worker)."""
        levels = self._levels(nodes)
        # The lowest level where one domain holds the whole job (else the top level, spanning blocks):
        # BestFit chooses among all the domains of that level.
        start = 0
        for depth in range(len(levels) - 1, -1, -1):
            _, inverse = np.unique(levels[depth], return_inverse=True)
            if np.bincount(inverse, weights=slots).max() >= need:
                start = depth
                break

        def descend(depth: int, members: np.ndarray, take: int) -> list[int]:
            if depth == len(levels) - 1:
                chosen = best_fit_domains(take, slots[members], members)
                return [int(nodes[m]) for m, count in chosen for _ in range(count)]
            keys = levels[depth][members]
            domains, inverse = np.unique(keys, return_inverse=True)
            capacity = np.bincount(inverse, weights=slots[members]).astype(int)
            result: list[int] = []
            for domain, count in best_fit_domains(take, capacity, np.arange(len(domains))):
                result += descend(depth + 1, members[inverse == domain], count)
            return result

        return descend(start, np.arange(len(nodes)), need)

    def place(self, job: Job) -> list[int] | None:
        for pool in self.flavors:
            slots = self.free_gpus[pool] // job.gpus
            if slots.sum() >= job.workers:
                sequence = self._slots(job.workers, pool, slots)
                break
        else:
            return None
        for node in sequence:
            self.free_gpus[node] -= job.gpus
        assert len(sequence) == job.workers and self.free_gpus.min() >= 0, "the baseline over-committed"
        return orient(self.cluster, job, sequence, self.weights[job.stages])

    def release(self, job: Job, nodes: list[int]) -> None:
        for node in nodes:
            self.free_gpus[node] += job.gpus

    def free(self) -> np.ndarray:
        return self.free_gpus


def orient(
    cluster: Cluster, job: Job, sequence: list[int], weights: tuple[tuple[float, ...], tuple[float, ...]]
) -> list[int]:
    """The nodes in worker-index order, from nodes in rank order: ranks replica-major (a pipeline's stages
    consecutive) or stage-major (a stage's replicas consecutive), whichever costs less (replica-major on
    ties), as a user ordering ranks by the dominant traffic would."""
    replica_major = list(sequence)
    if job.stages == 1 or job.replicas == 1:
        return replica_major
    stage_major = [0] * job.workers
    for position, node in enumerate(sequence):
        stage, replica = divmod(position, job.replicas)
        stage_major[replica * job.stages + stage] = node
    cheaper = (
        communication(cluster, job, stage_major, weights)[0]
        < communication(cluster, job, replica_major, weights)[0]
    )
    return stage_major if cheaper else replica_major


# -- metrics -------------------------------------------------------------------------------------------------
def communication(
    cluster: Cluster, job: Job, nodes: list[int], weights: tuple[tuple[float, ...], tuple[float, ...]]
) -> tuple[float, int, int, int]:
    """(cost, pipeline pairs in one rack, pipeline pairs, replicas on one node)."""
    p, d = job.stages, job.replicas
    grid = np.array(nodes).reshape(d, p)
    rack, block = cluster.rack_of[grid], cluster.block_of[grid]

    def distance(a: slice | tuple[slice, slice], b: slice | tuple[slice, slice]) -> np.ndarray:
        same_node = grid[a] == grid[b]
        same_rack = rack[a] == rack[b]
        same_block = block[a] == block[b]
        return np.where(same_node, 0, np.where(same_rack, 1, np.where(same_block, 2, 3)))

    pipeline_w, replica_w = (np.array(w) for w in weights)
    cost = 0.0
    near = pairs = 0
    if p > 1:
        hops = distance((slice(None), slice(0, p - 1)), (slice(None), slice(1, p)))
        cost += float((hops * pipeline_w[None, :]).sum())
        near, pairs = int((hops <= 1).sum()), hops.size
    if d > 1:
        hops = distance((slice(0, d - 1), slice(None)), (slice(1, d), slice(None)))
        cost += float((hops * replica_w[None, :]).sum())
    whole = int((grid == grid[:, :1]).all(axis=1).sum())
    return cost, near, pairs, whole


def fragmentation(free: np.ndarray, demand_share: dict[int, float]) -> float:
    total = free.sum()
    if total == 0:
        return 0.0
    stranded = sum(share * free[free < size].sum() for size, share in demand_share.items())
    return float(stranded / total)


@dataclass
class Outcome:
    arrived: int = 0
    placed: int = 0
    cost: float = 0.0
    reference: float = 0.0
    near_pairs: int = 0
    pairs: int = 0
    whole_replicas: int = 0
    replicas: int = 0
    gangs: int = 0
    """Placed jobs of more than one worker."""
    mixed_gangs: int = 0
    """Of those, the ones on more than one GPU product."""
    fragmentation: list[float] | None = None
    utilization: list[float] | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        return {
            "success_rate": self.placed / self.arrived if self.arrived else 1.0,
            "workers_on_one_node": 1.0,
            "replicas_on_one_node": self.whole_replicas / self.replicas if self.replicas else 1.0,
            "adjacent_stages_same_rack": self.near_pairs / self.pairs if self.pairs else 1.0,
            "comm_cost_over_reference": self.cost / self.reference if self.reference else 1.0,
            "mixed_products": self.mixed_gangs / self.gangs if self.gangs else 0.0,
            "fragmentation": statistics.fmean(self.fragmentation or [0.0]),
            "gpu_utilization": statistics.fmean(self.utilization or [0.0]),
            "placer_seconds": self.seconds,
        }


def simulate(
    cluster: Cluster,
    workload: Workload,
    placer: Any,
    weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]],
    reference: Callable[[Job], float],
    demand_share: dict[int, float],
) -> Outcome:
    outcome = Outcome(fragmentation=[], utilization=[])
    jobs, warm_up = workload.jobs, workload.warm_up
    running: list[tuple[float, int, list[int]]] = []
    for event, job in enumerate(jobs):
        while running and running[0][0] <= job.arrival:
            _, ident, nodes = heapq.heappop(running)
            placer.release(jobs[ident], nodes)
        started = time.perf_counter()
        nodes = placer.place(job)
        outcome.seconds += time.perf_counter() - started
        counted = event >= warm_up
        if nodes is not None:
            heapq.heappush(running, (job.arrival + job.duration, job.ident, nodes))
        if not counted:
            continue
        outcome.arrived += 1
        if nodes is not None:
            outcome.placed += 1
            cost, near, pairs, whole = communication(cluster, job, nodes, weights[job.stages])
            outcome.cost += cost
            outcome.reference += reference(job)
            outcome.near_pairs += near
            outcome.pairs += pairs
            outcome.whole_replicas += whole
            outcome.replicas += job.replicas
            if job.workers > 1:
                outcome.gangs += 1
                outcome.mixed_gangs += len({cluster.products[node] for node in nodes}) > 1
        if event % 10 == 0:
            free = placer.free()
            outcome.fragmentation.append(fragmentation(free, demand_share))  # type: ignore[union-attr]
            outcome.utilization.append(1.0 - free.sum() / cluster.gpus)  # type: ignore[union-attr]
    return outcome


def reference_costs(
    cluster: Cluster, weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]]
) -> Callable[[Job], float]:
    """The cost of a job placed alone on the empty cluster, by whichever gang placer (the planner or a Kueue
    TAS variant) does that best (cached by shape): what an idle cluster allows, so ratios stay >= 1 in
    practice whichever placer's rules are being measured."""
    cache: dict[tuple[int, int, int], float] = {}
    idle_placers = [name for name in placers_for(cluster) if name == "planner" or name.startswith("kueue")]

    def cost(job: Job) -> float:
        key = (job.gpus, job.stages, job.replicas)
        if key not in cache:
            costs = []
            for name in idle_placers:
                nodes = make_placer(name, cluster, weights, {}).place(job)
                if nodes is not None:
                    costs.append(communication(cluster, job, nodes, weights[job.stages])[0])
            cache[key] = min(costs, default=0.0)
        return cache[key]

    return cost


def placers_for(cluster: Cluster) -> list[str]:
    """Per-product flavors differ from one flavor only where there are several products."""
    return [name for name in PLACERS if name != "kueue-tas-flavors" or cluster.product_count > 1]


def make_placer(
    name: str,
    cluster: Cluster,
    weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]],
    demand_share: dict[int, float],
) -> Any:
    if name == "planner":
        return PlannerPlacer(cluster, weights, demand_share)
    if name.startswith("kueue-tas"):
        return KueueTasPlacer(cluster, weights, per_product_flavors=name == "kueue-tas-flavors")
    return PerPodPlacer(cluster, most_allocated=name == "most-allocated")


def run_cluster(
    cluster: Cluster,
    loads: list[float],
    job_count: int,
    replica_choices: list[int],
    max_gpus: int,
    sizes: dict[int, int],
    weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]],
) -> list[dict[str, Any]]:
    reference = reference_costs(cluster, weights)
    rows = []
    for load in loads:
        rng = random.Random(f"{SEED}-{cluster.name}-{load}")
        workload = make_jobs(job_count, load, cluster, sizes, replica_choices, max_gpus, rng)
        demand: Counter[int] = Counter()
        for job in workload.jobs:
            demand[job.gpus] += job.total_gpus
        demand_share = {size: gpus / sum(demand.values()) for size, gpus in demand.items()}
        for name in placers_for(cluster):
            placer = make_placer(name, cluster, weights, demand_share)
            outcome = simulate(cluster, workload, placer, weights, reference, demand_share)
            rows.append({"cluster": cluster.name, "load": load, "placer": name, **outcome.summary()})
            print(format_row(rows[-1]), flush=True)
    return rows


# -- trace replay --------------------------------------------------------------------------------------------
def replay_trace(
    cluster: Cluster, weights: dict[int, tuple[tuple[float, ...], tuple[float, ...]]]
) -> list[dict[str, Any]]:
    """Each stream's tasks in order, none leaving, until the demand reaches TRACE_FILL x the cluster's GPUs;
    a row per stream, placer and tenth of the capacity arrived."""
    checkpoints = [round(0.1 * k, 1) for k in range(5, round(TRACE_FILL * 10) + 1)]
    rows = []
    for stream, tasks in trace_streams().items():
        demand: Counter[int] = Counter()
        for gpus in tasks:
            demand[gpus] += gpus
        demand_share = {size: gpus / sum(demand.values()) for size, gpus in sorted(demand.items())}
        for name in placers_for(cluster):
            placer = make_placer(name, cluster, weights, demand_share)
            arrived = unplaced = 0
            pending = list(checkpoints)
            for ident, gpus in enumerate(tasks):
                if not pending:
                    break
                if placer.place(Job(ident, gpus, 1, 1, float(ident), math.inf)) is None:
                    unplaced += gpus
                arrived += gpus
                if arrived >= pending[0] * cluster.gpus:
                    free = placer.free()
                    rows.append(
                        {
                            "stream": stream,
                            "arrived_over_capacity": pending.pop(0),
                            "placer": name,
                            "tasks": ident + 1,
                            "unplaced_demand": unplaced / arrived,
                            "fragmentation": fragmentation(free, demand_share),
                            "free_gpus": int(free.sum()),
                            "free_8gpu_slots": int((free // 8).sum()),
                            "free_4gpu_slots": int((free // 4).sum()),
                        }
                    )
                    print(format_trace_row(rows[-1]), flush=True)
    return rows


# -- latency -------------------------------------------------------------------------------------------------
def latency(repeats: int) -> dict[str, Any]:
    rng = random.Random(SEED)
    nodes = [
        Node(
            name=f"node-{i:05d}",
            gpus=8,
            labels={
                "topology.maas.dev/rack": f"rack-{i // NODES_PER_RACK}",
                "topology.maas.dev/block": f"block-{i // (NODES_PER_RACK * RACKS_PER_BLOCK)}",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            },
        )
        for i in range(10_000)
    ]
    used = {node.name: rng.choice([0, 0, 2, 4, 6, 8]) for node in nodes}  # about half the GPUs in use
    results: dict[str, Any] = {"nodes": len(nodes), "gpus_in_use": sum(used.values()) / (8 * len(nodes))}
    for label, gpus, stages, replicas in (
        ("4096 workers x 1 GPU (8 stages x 512)", 1, 8, 512),
        ("512 workers x 8 GPUs (8 stages x 64)", 8, 8, 64),
    ):
        request = GangRequest(
            job="big",
            workers=tuple(f"big-r{r}-s{s}" for r in range(replicas) for s in range(stages)),
            pipeline_degree=stages,
            gpus_per_worker=gpus,
            gpu_product="NVIDIA-H100-80GB-HBM3",
        )
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            place_gang(nodes, request, used)
            samples.append((time.perf_counter() - started) * 1e3)
        samples.sort()
        results[label] = {
            "p50_ms": statistics.median(samples),
            "p99_ms": samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)],
            "max_ms": samples[-1],
            "repeats": repeats,
        }
    return results


# -- output --------------------------------------------------------------------------------------------------
HEADER = (
    f"{'cluster':<16} {'load':>4} {'placer':<17} {'success':>7} {'replica/1node':>13} {'pairs/rack':>10}"
    f" {'comm/ref':>8} {'mixed':>6} {'frag':>6} {'util':>5}"
)
TRACE_HEADER = (
    f"{'stream':<16} {'arrived':>7} {'placer':<17} {'tasks':>5} {'unplaced':>8} {'frag':>6} {'free':>5}"
    f" {'8-GPU slots':>11} {'4-GPU slots':>11}"
)


def format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['cluster']:<16} {row['load']:>4.2f} {row['placer']:<17} {row['success_rate']:>7.1%}"
        f" {row['replicas_on_one_node']:>13.1%} {row['adjacent_stages_same_rack']:>10.1%}"
        f" {row['comm_cost_over_reference']:>8.2f} {row['mixed_products']:>6.1%} {row['fragmentation']:>6.1%}"
        f" {row['gpu_utilization']:>5.1%}"
    )


def format_trace_row(row: dict[str, Any]) -> str:
    return (
        f"{row['stream']:<16} {row['arrived_over_capacity']:>7.1f} {row['placer']:<17} {row['tasks']:>5}"
        f" {row['unplaced_demand']:>8.2%} {row['fragmentation']:>6.1%} {row['free_gpus']:>5}"
        f" {row['free_8gpu_slots']:>11} {row['free_4gpu_slots']:>11}"
    )


def comparison(rows: list[dict[str, Any]]) -> list[str]:
    """Per cluster, the planner against each baseline at every load: ranges and means over the loads (every
    load counts, including those where both are equal)."""
    lines = []
    for cluster in dict.fromkeys(r["cluster"] for r in rows):
        mine = [r for r in rows if r["cluster"] == cluster and r["placer"] == "planner"]
        for baseline in PLACERS[1:]:
            theirs = [r for r in rows if r["cluster"] == cluster and r["placer"] == baseline]
            if not theirs:
                continue
            pairs = list(zip(mine, theirs, strict=True))
            comm = [m["comm_cost_over_reference"] / t["comm_cost_over_reference"] for m, t in pairs]
            success = [m["success_rate"] - t["success_rate"] for m, t in pairs]
            frag = [m["fragmentation"] - t["fragmentation"] for m, t in pairs]
            mixed = [t["mixed_products"] - m["mixed_products"] for m, t in pairs]
            lines.append(
                f"{cluster:<16} planner vs {baseline:<17} comm cost x{min(comm):.3f}..x{max(comm):.3f}"
                f" (mean x{statistics.fmean(comm):.3f}), success {statistics.fmean(success):+.2%} points,"
                f" fragmentation {statistics.fmean(frag):+.2%} points, mixed-product gangs"
                f" {statistics.fmean(m['mixed_products'] for m, _ in pairs):.1%} vs"
                f" {statistics.fmean(t['mixed_products'] for _, t in pairs):.1%}"
                + (f" ({statistics.fmean(mixed):+.1%} points fewer)" if any(mixed) else "")
                + f" over {len(pairs)} loads"
            )
    return lines


def trace_comparison(rows: list[dict[str, Any]]) -> list[str]:
    """The planner against each baseline per stream: room left for large workers at 0.9 of the capacity
    arrived, and the demand that found no room once TRACE_FILL x the capacity has arrived."""
    lines = []
    for stream in dict.fromkeys(r["stream"] for r in rows):
        at = {
            (r["placer"], r["arrived_over_capacity"]): r
            for r in rows
            if r["stream"] == stream and r["arrived_over_capacity"] in (0.9, TRACE_FILL)
        }
        mine, mine_full = at["planner", 0.9], at["planner", TRACE_FILL]
        for placer in dict.fromkeys(p for p, _ in at):
            if placer == "planner":
                continue
            theirs, theirs_full = at[placer, 0.9], at[placer, TRACE_FILL]
            lines.append(
                f"trace {stream:<10} planner vs {placer:<17} at 0.9 arrived: 8-GPU worker slots left"
                f" {mine['free_8gpu_slots']} vs {theirs['free_8gpu_slots']}, 4-GPU {mine['free_4gpu_slots']}"
                f" vs {theirs['free_4gpu_slots']}, fragmentation {mine['fragmentation']:.1%} vs"
                f" {theirs['fragmentation']:.1%}; at {TRACE_FILL} arrived: unplaced demand"
                f" {mine_full['unplaced_demand']:.2%} vs {theirs_full['unplaced_demand']:.2%}"
            )
    return lines


def plot(rows: list[dict[str, Any]], cluster: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("success_rate", "gang success rate"),
        ("comm_cost_over_reference", "comm. cost / empty-cluster reference"),
        ("mixed_products", "multi-worker jobs on mixed GPU products"),
        ("fragmentation", "fragmented share of free GPUs"),
    ]
    figure, axes = plt.subplots(1, len(metrics), figsize=(17, 4))
    for axis, (key, title) in zip(axes, metrics, strict=True):
        for placer in PLACERS:
            points = [(r["load"], r[key]) for r in rows if r["cluster"] == cluster and r["placer"] == placer]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=placer)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("offered load")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Gang placement on {cluster}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1200, help="arrivals per load and cluster")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95])
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and loads, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.loads, args.latency_repeats = 300, [0.5, 0.9], 5
    started = time.perf_counter()
    sizes = trace_worker_sizes()
    weights = {p: traffic_weights(p) for p in (1, 2, 4, 8)}
    print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    alibaba = alibaba_cluster()
    settings = [
        (synthetic_cluster(1000), [1, 2, 4, 8], 256, args.jobs),
        (alibaba, [1, 2, 4, 8], 256, args.jobs),
        # half the arrivals on the large cluster keep the run within minutes on two cores
        (synthetic_cluster(10_000), [1, 2, 4, 8, 16, 32, 64], 2048, args.jobs // 2),
    ]
    for cluster, replica_choices, max_gpus, job_count in settings:
        rows += run_cluster(cluster, args.loads, job_count, replica_choices, max_gpus, sizes, weights)
    print(TRACE_HEADER, flush=True)
    trace_rows = replay_trace(alibaba, weights)
    timing = latency(args.latency_repeats)
    summary = [*comparison(rows), "", *trace_comparison(trace_rows), ""]
    for label, numbers in timing.items():
        if isinstance(numbers, dict):
            summary.append(
                f"latency, {label} on {timing['nodes']} nodes ({timing['gpus_in_use']:.0%} GPUs in use):"
                f" p50 {numbers['p50_ms']:.1f} ms, p99 {numbers['p99_ms']:.1f} ms (n={numbers['repeats']})"
            )
    lines = [
        "Planner placement benchmark",
        "",
        HEADER,
        *(format_row(r) for r in rows),
        "",
        TRACE_HEADER,
        *(format_trace_row(r) for r in trace_rows),
        "",
        *summary,
    ]
    print("\n".join(summary))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "planner_placement.txt").write_text("\n".join(lines) + "\n")
    document = {
        "seed": SEED,
        "worker_sizes_from_trace": sizes,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
        "settings": {
            "jobs_per_load": args.jobs,
            "jobs_per_load_10000_nodes": args.jobs // 2,
            "loads": args.loads,
            "clusters": [cluster.name for cluster, *_ in settings],
            "nodes_per_rack": NODES_PER_RACK,
            "racks_per_block": RACKS_PER_BLOCK,
            "trace_fill": TRACE_FILL,
        },
        "rows": rows,
        "trace_replay": trace_rows,
        "latency": timing,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    (RESULTS / "planner_placement.json").write_text(json.dumps(document, indent=2) + "\n")
    for cluster in dict.fromkeys(r["cluster"] for r in rows):
        plot(rows, cluster, RESULTS / f"planner_placement_{cluster}.png")


if __name__ == "__main__":
    main()
