"""Places a job's workers on nodes: all or nothing, topology-aware, best-fit, deterministic.

What it aims at: a small traffic-weighted distance between the job's workers (below) and few GPUs left
stranded for the next jobs, by the greedy rules below (not an exact optimum), rather than a fixed layout such
as "a replica on one node". Every worker needs `gpus` GPUs on one node. The gang is placed in four steps:

1. Filter: cordoned or not-Ready nodes, untolerated NoSchedule/NoExecute taints, nodeSelector, GPU product
   and free GPUs (allocatable minus used; never over-committed). A node offers free // gpus worker slots.
2. One GPU product: with spec.resources.gpuProduct unset, the gang stays on one product whenever a single
   product has room for it (a pipeline runs at the pace of its slowest stage); among several, the one where
   it lands at the lowest level of step 3 (one node, rack, block), then strands the fewest GPUs, then
   communicates least. It mixes products only when none has room, and the plan notes say so.
3. Choose slots in the best-fitting rack that holds the whole job (else block, else several blocks):
   best fit means the domain with the fewest free slots that suffices, so used domains fill up and empty
   ones stay whole. Inside a domain the job takes the fewest children that hold it and, among those, the
   set with the least spare room (partly used nodes are filled before empty ones are broken into). A job
   that fits on one node may take the cluster's best-fitting node instead, when that strands fewer GPUs
   (FGD's fragmentation measure over the workload's worker sizes). Ties go to the smaller name. This keeps
   a job in as few nodes, racks and blocks as possible and leaves the fewest fragments behind.
4. Assign workers to the chosen slots. Workers form lines, either replicas (a pipeline, replica-major) or
   stages (one stage of every replica, stage-major); whole lines go to nodes that can hold them, the rest
   fill the remaining slots in order (consecutive nodes share a rack). Both orientations are scored with
   the communication model below and the cheaper one wins (replica-major on ties). So a replica's pipeline
   stays on one node only when activations dominate (small models, Serve); when gradients dominate, as for
   a transformer in training (2x a stage's parameter bytes between replicas per step against a few MB of
   activations between stages), the same stages of every replica share a node and the data-parallel
   all-reduce stays on the node's NVLink (Megatron-LM's default rank order, pipeline outermost, does the
   same). Only these two orientations are compared, not every layout.

Communication cost of a placement: sum over communicating pairs of weight x distance, where distance is 0
on one node, 1 in one rack, 2 in one block, 3 otherwise; pairs are adjacent pipeline ranks of a replica
(weight: activation traffic) and the same rank of consecutive replicas (weight: gradient traffic).

Re-planning keeps every worker whose previous node still passes the filters and still has room, and only
places the displaced ones, on the product of most kept workers when it has room, preferring the rack (then
the block) that holds most of the kept workers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from maas_api.spec import Toleration, TopologyKeys

from maas_operator.planner.cluster import BLOCKING_TAINT_EFFECTS, GPU_PRODUCT_LABEL, Node, Taint
from maas_operator.planner.reasons import PlanError, Unschedulable, list_some, plural

SAME_NODE, SAME_RACK, SAME_BLOCK, FAR = 0, 1, 2, 3

DEFAULT_WORKER_SIZE_MIX: Mapping[int, float] = {1: 0.25, 2: 0.25, 4: 0.25, 8: 0.25}
"""Share of the GPU demand by GPUs per worker, for the fragmentation measure when the caller knows none."""


@dataclass(frozen=True)
class GangRequest:
    """One job's workers, what every worker needs, and the traffic between them."""

    job: str
    workers: tuple[str, ...]
    """Worker names in worker-index order (replica-major: replica r's pipeline is r*p .. r*p+p-1)."""
    pipeline_degree: int
    gpus_per_worker: int
    gpu_product: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    topology: TopologyKeys = field(default_factory=TopologyKeys)
    pipeline_weights: tuple[float, ...] = ()
    """Traffic between pipeline ranks k and k+1 (p-1 values); empty: 1 each."""
    replica_weights: tuple[float, ...] = ()
    """Traffic between rank k of replica r and of replica r+1 (p values); empty: 1 each."""

    @property
    def replicas(self) -> int:
        return len(self.workers) // self.pipeline_degree

    def pipeline_weight(self, rank: int) -> float:
        return self.pipeline_weights[rank] if self.pipeline_weights else 1.0

    def replica_weight(self, rank: int) -> float:
        return self.replica_weights[rank] if self.replica_weights else 1.0


@dataclass(frozen=True)
class Placement:
    nodes: dict[str, str]
    """Worker name -> node name, for every worker."""
    kept: tuple[str, ...] = ()
    """Workers left on their previous node."""
    notes: tuple[str, ...] = ()


def tolerates(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    """Kubernetes' matching: an empty key with Exists tolerates everything; an empty effect, every effect."""
    for toleration in tolerations:
        if toleration.effect is not None and toleration.effect != taint.effect:
            continue
        if toleration.key is None:
            if toleration.operator == "Exists":
                return True
            continue
        if toleration.key != taint.key:
            continue
        if toleration.operator == "Exists" or (toleration.value or "") == (taint.value or ""):
            return True
    return False


class ClusterView:
    """The nodes that pass a request's filters, with their topology and free GPUs (`free` is updated when a
    placement succeeds). Racks and blocks are numbered; a rack belongs to the block of its first node."""

    def __init__(
        self,
        names: list[str],
        free: list[int],
        rack_of: list[int],
        rack_names: list[str],
        block_of_rack: list[int],
        block_names: list[str],
        product_of: list[str] | None = None,
    ) -> None:
        self.names = names
        self.free = free
        self.rack_of = rack_of
        self.rack_names = rack_names
        self.block_of_rack = block_of_rack
        self.block_names = block_names
        self.block_of = [block_of_rack[rack] for rack in rack_of]
        self.nodes_of_rack: list[list[int]] = [[] for _ in rack_names]
        for node, rack in enumerate(rack_of):
            self.nodes_of_rack[rack].append(node)
        self.racks_of_block: list[list[int]] = [[] for _ in block_names]
        for rack, block in enumerate(block_of_rack):
            self.racks_of_block[block].append(rack)
        self.product_of = product_of if product_of is not None else [""] * len(names)
        """Each node's GPU product label ("": unlabelled, a product of its own)."""
        self._index: dict[str, int] | None = None
        self._products: dict[str, list[int]] | None = None
        self._product_views: dict[str, ClusterView] = {}
        self.worker_size_mix: Mapping[int, float] = DEFAULT_WORKER_SIZE_MIX
        """GPU demand by worker size (FGD's workload): what counts as a fragment."""

    @classmethod
    def from_labels(
        cls,
        names: list[str],
        free: list[int],
        racks: list[str],
        blocks: list[str],
        products: list[str] | None = None,
    ) -> ClusterView:
        """A view from per-node rack, block and GPU product names (benchmarks and tests build clusters
        this way)."""
        rack_ids: dict[str, int] = {}
        block_ids: dict[str, int] = {}
        block_of_rack: list[int] = []
        rack_of = []
        for rack, block in zip(racks, blocks, strict=True):
            rack_id = rack_ids.get(rack)
            if rack_id is None:
                rack_id = rack_ids[rack] = len(rack_ids)
                block_of_rack.append(block_ids.setdefault(block, len(block_ids)))
            rack_of.append(rack_id)
        return cls(names, free, rack_of, list(rack_ids), block_of_rack, list(block_ids), products)

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {name: i for i, name in enumerate(self.names)}
        return self._index

    def products(self) -> dict[str, list[int]]:
        """Product -> its nodes (built once: nodes and their labels do not change, free GPUs do)."""
        if self._products is None:
            nodes_of: dict[str, list[int]] = defaultdict(list)
            for node, product in enumerate(self.product_of):
                nodes_of[product].append(node)
            self._products = dict(nodes_of)
        return self._products

    def product_view(self, product: str) -> tuple[list[int], ClusterView]:
        """The nodes of one product and a view of them with this view's current free GPUs."""
        nodes = self.products()[product]
        view = self._product_views.get(product)
        if view is None:
            view = self._product_views[product] = self._restricted(nodes)
        view.free = [self.free[node] for node in nodes]
        view.worker_size_mix = self.worker_size_mix
        return nodes, view

    def _restricted(self, nodes: Sequence[int]) -> ClusterView:
        """A view of some nodes, whose racks and blocks keep their names and membership."""
        rack_ids: dict[int, int] = {}
        block_ids: dict[int, int] = {}
        block_of_rack: list[int] = []
        rack_of: list[int] = []
        for node in nodes:
            rack = self.rack_of[node]
            rack_id = rack_ids.get(rack)
            if rack_id is None:
                rack_id = rack_ids[rack] = len(rack_ids)
                block_of_rack.append(block_ids.setdefault(self.block_of_rack[rack], len(block_ids)))
            rack_of.append(rack_id)
        return ClusterView(
            [self.names[node] for node in nodes],
            [self.free[node] for node in nodes],
            rack_of,
            [self.rack_names[rack] for rack in rack_ids],
            block_of_rack,
            [self.block_names[block] for block in block_ids],
            [self.product_of[node] for node in nodes],
        )

    def distance(self, a: int, b: int) -> int:
        if a == b:
            return SAME_NODE
        if self.rack_of[a] == self.rack_of[b]:
            return SAME_RACK
        if self.block_of[a] == self.block_of[b]:
            return SAME_BLOCK
        return FAR


@dataclass
class _Filtered:
    view: ClusterView
    nodes: list[Node]
    """The nodes of `view`, in its order."""
    excluded: dict[str, list[str]]
    """Reason -> nodes it excluded."""


def filter_nodes(nodes: Sequence[Node], request: GangRequest, used_gpus: Mapping[str, int]) -> _Filtered:
    """The nodes a worker of `request` may use (free GPUs may still be too few), and why others may not."""
    rack_key, block_key = request.topology.rack, request.topology.block
    selector = list(request.node_selector.items())
    product = request.gpu_product
    tolerations = request.tolerations
    excluded: dict[str, list[str]] = defaultdict(list)
    kept: list[Node] = []
    free: list[int] = []
    product_of: list[str] = []
    rack_of: list[int] = []
    rack_ids: dict[str, int] = {}
    block_ids: dict[str, int] = {}
    block_of_rack: list[int] = []
    used = used_gpus.get
    for node in nodes:
        if node.unschedulable:
            excluded["cordoned (spec.unschedulable)"].append(node.name)
            continue
        if not node.ready:
            excluded["not Ready"].append(node.name)
            continue
        if node.taints:
            blocking = next(
                (
                    taint
                    for taint in node.taints
                    if taint.effect in BLOCKING_TAINT_EFFECTS and not tolerates(tolerations, taint)
                ),
                None,
            )
            if blocking is not None:
                reason = f"taint {blocking} (no matching toleration in spec.placement.tolerations)"
                excluded[reason].append(node.name)
                continue
        labels = node.labels
        if selector:
            missing = next(((k, v) for k, v in selector if labels.get(k) != v), None)
            if missing is not None:
                excluded[f"spec.placement.nodeSelector {missing[0]}={missing[1]}"].append(node.name)
                continue
        node_product = labels.get(GPU_PRODUCT_LABEL) or ""
        if product is not None and node_product != product:
            found = node_product or "unlabelled"
            excluded[f"GPU product {found} (spec.resources.gpuProduct wants {product})"].append(node.name)
            continue
        if node.gpus == 0:
            excluded["no GPUs"].append(node.name)
            continue
        kept.append(node)
        free.append(max(0, node.gpus - used(node.name, 0)))
        product_of.append(node_product)
        # A node without rack (block) label is a rack (block) of its own: unknown means far.
        rack = (labels.get(rack_key) if rack_key else None) or f"node/{node.name}"
        rack_id = rack_ids.get(rack)
        if rack_id is None:
            rack_id = rack_ids[rack] = len(rack_ids)
            block = (labels.get(block_key) if block_key else None) or f"rack/{rack}"
            block_of_rack.append(block_ids.setdefault(block, len(block_ids)))
        rack_of.append(rack_id)
    view = ClusterView(
        [n.name for n in kept], free, rack_of, list(rack_ids), block_of_rack, list(block_ids), product_of
    )
    return _Filtered(view, kept, dict(excluded))


# -- choosing slots ------------------------------------------------------------------------------------------
EXACT_SPLIT_LIMIT = 4
"""Up to this many domains, the tightest set of the fewest domains is searched exactly (else greedily)."""


def _choose(need: int, domains: list[tuple[int, str, int]]) -> list[tuple[int, int]]:
    """The fewest domains that hold `need`, and among those the set with the least spare capacity.

    `domains` are (capacity, name, id) with capacity > 0; returns (id, count) pairs with counts summing to
    `need`, every domain filled completely except the last. One domain: the best fit. Several: taking the
    tightest set fills partly used domains and leaves empty ones whole, which is what keeps fragmentation
    down (a 10-slot job takes a 6 and a 4 rather than an 8 and 2 of a 3). Ties go to the smaller name.
    """
    best: tuple[int, str, int] | None = None
    for domain in domains:
        if domain[0] >= need and (best is None or domain[:2] < best[:2]):
            best = domain
    if best is not None:
        return [(best[2], need)]
    order = sorted(domains, key=lambda d: (-d[0], d[1]))
    capacities = [d[0] for d in order]
    fewest = next(k for k, total in enumerate(accumulate(capacities), start=1) if total >= need)
    exact = fewest <= EXACT_SPLIT_LIMIT
    chosen = _tightest(need, capacities, fewest) if exact else _tight_greedy(need, capacities, fewest)
    taken = [(order[i][2], capacities[i]) for i in chosen]
    spare = sum(capacities[i] for i in chosen) - need
    ident, count = taken[-1]
    taken[-1] = (ident, count - spare)
    return taken


def _tightest(need: int, capacities: list[int], picks: int) -> list[int]:
    """Indices of `picks` capacities (sorted descending) with the smallest total >= need (depth-first search
    with pruning; equal capacities are tried once per depth, so the first, smallest name, wins)."""
    prefix = list(accumulate(capacities, initial=0))
    count = len(capacities)
    best_total = prefix[picks]
    best: list[int] = list(range(picks))
    chosen: list[int] = []

    def search(start: int, left: int, total: int) -> bool:
        nonlocal best_total, best
        if left == 0:
            if need <= total < best_total:
                best_total, best = total, list(chosen)
            return best_total == need  # an exact fit cannot be beaten
        for i in range(start, count - left + 1):
            if i > start and capacities[i] == capacities[i - 1]:
                continue
            if total + prefix[i + left] - prefix[i] < need:
                break  # the rest are smaller still
            if total + capacities[i] + (prefix[count] - prefix[count - left + 1]) >= best_total:
                continue  # even the smallest completion is no tighter
            chosen.append(i)
            done = search(i + 1, left - 1, total + capacities[i])
            chosen.pop()
            if done:
                return True
        return False

    search(0, picks, 0)
    return best


def _tight_greedy(need: int, capacities: list[int], picks: int) -> list[int]:
    """Indices of `picks` capacities (sorted descending) holding `need`, for too many picks to search: each
    pick is the smallest capacity that still lets the largest remaining ones cover the rest. Partly used
    domains go first and the spare room stays small; every pick keeps the rest coverable, because `picks`
    is the fewest that can hold `need`."""
    available = list(range(len(capacities)))
    chosen: list[int] = []
    remaining = need
    for step in range(picks):
        left = picks - step - 1
        top = sum(capacities[available[i]] for i in range(left))
        threshold = remaining - top
        # Positions left.. hold the candidates (the first `left` stay for the rest); the last one whose
        # capacity reaches the threshold is the smallest such, and the first of its capacity the smallest name.
        last = left
        while last + 1 < len(available) and capacities[available[last + 1]] >= threshold:
            last += 1
        first = last
        while first > left and capacities[available[first - 1]] == capacities[available[last]]:
            first -= 1
        index = available.pop(first)
        chosen.append(index)
        remaining -= capacities[index]
    return sorted(chosen)


def stranded_gpus(free: int, mix: Mapping[int, float]) -> float:
    """Free GPUs of a node that the workload cannot use, in expectation (FGD: Weng et al., ATC'23): all of
    them for every worker size larger than what is free, weighted by that size's share of the demand."""
    return free * sum(share for size, share in mix.items() if size > free)


def fragmentation_change(view: ClusterView, slots: Iterable[tuple[int, int]], gpus: int) -> float:
    """How many more GPUs would be stranded after taking `slots` ((node, workers) pairs)."""
    mix = view.worker_size_mix
    change = 0.0
    for node, count in slots:
        before = view.free[node]
        change += stranded_gpus(before - count * gpus, mix) - stranded_gpus(before, mix)
    return change


def choose_slots(
    view: ClusterView, need: int, gpus: int, scope: tuple[str, int] | None = None
) -> list[tuple[int, int]]:
    """(node, workers) pairs for `need` workers; scope limits the search to one ("rack", id) or
    ("block", id). The caller checks that the capacity suffices.

    The job goes to the lowest level where one domain holds it all, taking the best-fitting such domain in
    the whole cluster: one rack, else one block, else several blocks (best fit keeps the most used domains
    busy and the empty ones whole, as Kueue's topology-aware BestFit does). Inside the rack it takes the
    fewest nodes, tightest first. A job that one node can hold goes to the best-fitting node of the cluster
    instead when that strands fewer GPUs (`fragmentation_change`) than the rack's choice: on a uniform
    cluster that is usually the case, while on a mixed one the rack's choice keeps small jobs on small nodes
    and the large nodes whole for the workers that need them.
    """
    slots = [f // gpus for f in view.free]
    rack_capacity = [0] * len(view.rack_names)
    for node, count in enumerate(slots):
        if count:
            rack_capacity[view.rack_of[node]] += count

    def nodes_in(nodes: Iterable[int], take: int) -> list[tuple[int, int]]:
        return _choose(take, [(slots[n], view.names[n], n) for n in nodes if slots[n]])

    def racks_in(racks: Iterable[int], take: int) -> list[tuple[int, int]]:
        chosen = _choose(take, [(rack_capacity[r], view.rack_names[r], r) for r in racks if rack_capacity[r]])
        return [pair for rack, count in chosen for pair in nodes_in(view.nodes_of_rack[rack], count)]

    if scope is not None and scope[0] == "rack":
        return nodes_in(view.nodes_of_rack[scope[1]], need)
    if scope is not None and scope[0] == "block":
        return racks_in(view.racks_of_block[scope[1]], need)
    if max(slots, default=0) >= need:
        in_rack = racks_in(range(len(rack_capacity)), need)
        single = nodes_in(range(len(slots)), need)
        if fragmentation_change(view, single, gpus) < fragmentation_change(view, in_rack, gpus):
            return single
        return in_rack
    if max(rack_capacity, default=0) >= need:
        return racks_in(range(len(rack_capacity)), need)
    block_capacity = [0] * len(view.block_names)
    for rack, capacity in enumerate(rack_capacity):
        block_capacity[view.block_of_rack[rack]] += capacity
    chosen_blocks = _choose(need, [(c, view.block_names[b], b) for b, c in enumerate(block_capacity) if c])
    return [pair for block, count in chosen_blocks for pair in racks_in(view.racks_of_block[block], count)]


# -- assigning workers to slots ------------------------------------------------------------------------------
def _assign_lines(slots: list[tuple[int, int]], lines: list[list[int]], workers: int) -> list[int]:
    """Whole lines onto nodes that hold them, then the rest of the workers into the leftover slots in order;
    returns the node of every worker."""
    length = len(lines[0])
    node_of = [-1] * workers
    next_line = 0
    leftover: list[tuple[int, int]] = []
    for node, count in slots:
        whole = min(count // length, len(lines) - next_line)
        for line in lines[next_line : next_line + whole]:
            for worker in line:
                node_of[worker] = node
        next_line += whole
        if count - whole * length:
            leftover.append((node, count - whole * length))
    rest = [worker for line in lines[next_line:] for worker in line]
    position = 0
    for node, count in leftover:
        for worker in rest[position : position + count]:
            node_of[worker] = node
        position += count
    return node_of


def communication_cost(view: ClusterView, request: GangRequest, node_of: Sequence[int]) -> float:
    """Sum of weight x distance over adjacent pipeline ranks and same-rank peers of consecutive replicas."""
    p = request.pipeline_degree
    rack_of, block_of = view.rack_of, view.block_of
    pipeline = [request.pipeline_weight(k) for k in range(p - 1)]
    replica = [request.replica_weight(k) for k in range(p)]

    def distance(a: int, b: int) -> int:
        if a == b:
            return SAME_NODE
        if rack_of[a] == rack_of[b]:
            return SAME_RACK
        return SAME_BLOCK if block_of[a] == block_of[b] else FAR

    total = 0.0
    for worker in range(len(node_of)):
        node = node_of[worker]
        rank = worker % p
        if rank + 1 < p and node != node_of[worker + 1]:
            total += pipeline[rank] * distance(node, node_of[worker + 1])
        if worker + p < len(node_of) and node != node_of[worker + p]:
            total += replica[rank] * distance(node, node_of[worker + p])
    return total


def _assign(view: ClusterView, request: GangRequest, slots: list[tuple[int, int]]) -> list[int]:
    p, d = request.pipeline_degree, request.replicas
    workers = p * d
    by_replica = [[r * p + k for k in range(p)] for r in range(d)]
    replica_major = _assign_lines(slots, by_replica, workers)
    if d == 1 or p == 1:
        return replica_major
    stage_major = _assign_lines(slots, [[r * p + k for r in range(d)] for k in range(p)], workers)
    if communication_cost(view, request, stage_major) < communication_cost(view, request, replica_major):
        return stage_major
    return replica_major


# -- the whole gang ------------------------------------------------------------------------------------------
def place_gang(
    nodes: Sequence[Node],
    request: GangRequest,
    used_gpus: Mapping[str, int] | None = None,
    previous: Mapping[str, str] | None = None,
    worker_size_mix: Mapping[int, float] | None = None,
) -> Placement:
    """Every worker of `request` on a node, or Unschedulable saying what is missing.

    `used_gpus` counts GPUs held by other jobs' pods on each node (leave this job's own pods out: workers
    kept from `previous`, worker name -> node, take their GPUs again here). `worker_size_mix` is the GPU
    demand by GPUs per worker of the cluster's workload (default DEFAULT_WORKER_SIZE_MIX), which decides
    what counts as a fragment.
    """
    if request.gpus_per_worker < 1:
        raise PlanError(
            "spec.resources.gpus: workers without GPUs are left to the kube-scheduler, not placed"
        )
    if not request.workers or len(request.workers) % request.pipeline_degree:
        raise PlanError("placement needs replicas x pipelineDegree workers")
    filtered = filter_nodes(nodes, request, used_gpus or {})
    if worker_size_mix is not None:
        filtered.view.worker_size_mix = worker_size_mix
    return place_on_view(filtered.view, request, previous, filtered.excluded)


def require_capacity(filtered: _Filtered, request: GangRequest, workers: int) -> None:
    """Unschedulable, with place_gang's reasons, when the filtered nodes' free GPUs cannot hold `workers`
    workers at all. It needs only the count, so the planner checks it before it builds the workers."""
    free = filtered.view.free
    if sum(f // request.gpus_per_worker for f in free) < workers:
        raise Unschedulable(_unschedulable_message(filtered.view, request, free, workers, filtered.excluded))


def place_on_view(
    view: ClusterView,
    request: GangRequest,
    previous: Mapping[str, str] | None = None,
    excluded: Mapping[str, list[str]] | None = None,
) -> Placement:
    """`place_gang` on already filtered nodes; takes the GPUs from `view.free` only when it succeeds."""
    gpus = request.gpus_per_worker
    free = view.free
    kept_nodes: dict[int, int] = {}
    if previous:
        free = list(free)
        for worker, name in enumerate(request.workers):
            node = view.index.get(previous.get(name, ""), -1)
            if node >= 0 and free[node] >= gpus:
                kept_nodes[worker] = node
                free[node] -= gpus
    displaced = [w for w in range(len(request.workers)) if w not in kept_nodes]
    capacity = sum(f // gpus for f in free)
    if capacity < len(displaced):
        raise Unschedulable(_unschedulable_message(view, request, free, len(displaced), excluded or {}))
    saved_free = view.free
    view.free = free
    try:
        node_of = dict(kept_nodes)
        product_note = None
        if displaced:
            placed, product_note = _place_displaced(view, request, kept_nodes, displaced)
            node_of.update(placed)
    finally:
        view.free = saved_free
    for node in node_of.values():
        view.free[node] -= gpus
    assert min(view.free, default=0) >= 0, "placement over-committed a node"
    placement = {request.workers[w]: view.names[node] for w, node in node_of.items()}
    kept = tuple(request.workers[w] for w in sorted(kept_nodes))
    notes = _placement_notes(view, request, node_of, len(kept), len(displaced))
    if product_note:
        notes.append(product_note)
    return Placement(placement, kept, tuple(notes))


def _place_in(
    view: ClusterView, request: GangRequest, kept_nodes: Mapping[int, int], displaced: list[int]
) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """Worker -> node for the displaced workers on `view`, and the (node, workers) slots taken."""
    gpus = request.gpus_per_worker
    if not kept_nodes:
        slots = choose_slots(view, len(displaced), gpus)
        return dict(enumerate(_assign(view, request, slots))), slots
    scope = _scope_near(view, kept_nodes.values(), len(displaced), gpus)
    slots = choose_slots(view, len(displaced), gpus, scope)
    sequence = [node for node, count in slots for _ in range(count)]
    return dict(zip(displaced, sequence, strict=True)), slots


def _place_displaced(
    view: ClusterView, request: GangRequest, kept_nodes: Mapping[int, int], displaced: list[int]
) -> tuple[dict[int, int], str | None]:
    """Worker -> node for the displaced workers, on one GPU product when the request names none.

    A pipeline runs at the pace of its slowest stage and data-parallel replicas wait for the slowest one, so
    a gang mixes products only when no single product has room for it. Several products with room: the same
    rule as `choose_slots` one level up: the product where the gang lands at the lowest level (one node, one
    rack, one block), then strands the fewest GPUs, then communicates least, then has the fewest free slots
    (best fit, so the large pools stay whole), then the smaller name. A re-plan stays on the product of
    most kept workers when it has room. Returns the assignment and a note when the product was chosen or
    mixed.
    """
    products = {} if request.gpu_product is not None else view.products()
    if len(products) < 2:
        return _place_in(view, request, kept_nodes, displaced)[0], None
    gpus, need = request.gpus_per_worker, len(displaced)
    room = {product: sum(view.free[n] // gpus for n in nodes) for product, nodes in products.items()}
    candidates = [product for product, slots in room.items() if slots >= need]
    if kept_nodes:
        kept_product = Counter(view.product_of[n] for n in kept_nodes.values()).most_common(1)[0][0]
        short = (
            f"the kept workers' GPU product {_product_name(kept_product)} has room for"
            f" {room[kept_product]} of the {plural(need, 'displaced worker')}"
        )
        candidates = [kept_product] if kept_product in candidates else []
    else:
        roomiest = min(room, key=lambda product: (-room[product], product))
        short = (
            f"no single GPU product has room for {plural(need, 'worker')} (the most:"
            f" {_product_name(roomiest)}, {room[roomiest]})"
        )
    if not candidates:
        placed = _place_in(view, request, kept_nodes, displaced)[0]
        mix = Counter(view.product_of[node] for node in {**kept_nodes, **placed}.values())
        return placed, (
            f"placement: {short}, so the gang mixes"
            f" {list_some(f'{_product_name(p)} ({n})' for p, n in mix.most_common())}; it runs at the pace of"
            " its slowest GPU (set spec.resources.gpuProduct to wait for one product instead)"
        )
    best: tuple[tuple[int, float, float, int, str], dict[int, int]] | None = None
    for product in candidates:
        nodes, sub = view.product_view(product)
        position = {node: i for i, node in enumerate(nodes)} if kept_nodes else {}
        sub_kept = {w: position[n] for w, n in kept_nodes.items() if n in position}
        placed_sub, slots_sub = _place_in(sub, request, sub_kept, displaced)
        placed = {worker: nodes[node] for worker, node in placed_sub.items()}
        if len(candidates) == 1:
            best = ((0, 0.0, 0.0, 0, product), placed)
            break
        slots = [(nodes[node], count) for node, count in slots_sub]
        everyone = {**kept_nodes, **placed}
        score = (
            _spread(view, slots),
            fragmentation_change(view, slots, gpus),
            communication_cost(view, request, [everyone[w] for w in range(len(request.workers))]),
            room[product],
            product,
        )
        if best is None or score < best[0]:
            best = (score, placed)
    assert best is not None
    chosen = best[0][-1]
    others = len(products) - 1
    return best[1], (
        f"placement: every worker on GPU product {_product_name(chosen)} (spec.resources.gpuProduct unset;"
        f" {plural(others, 'other product')} on the nodes, not mixed: a pipeline runs at the pace of its"
        " slowest GPU)"
    )


def _spread(view: ClusterView, slots: Iterable[tuple[int, int]]) -> int:
    """The topology level that holds all the slots: SAME_NODE, SAME_RACK, SAME_BLOCK or FAR."""
    nodes = {node for node, _ in slots}
    if len(nodes) == 1:
        return SAME_NODE
    if len({view.rack_of[node] for node in nodes}) == 1:
        return SAME_RACK
    return SAME_BLOCK if len({view.block_of[node] for node in nodes}) == 1 else FAR


def _product_name(product: str) -> str:
    return product or "unlabelled"


def _scope_near(view: ClusterView, kept: Iterable[int], need: int, gpus: int) -> tuple[str, int] | None:
    """The rack, else the block, holding most kept workers, if it has room for the displaced ones."""
    kept = list(kept)
    rack = Counter(view.rack_of[n] for n in kept).most_common(1)[0][0]
    if sum(view.free[n] // gpus for n in view.nodes_of_rack[rack]) >= need:
        return ("rack", rack)
    block = view.block_of_rack[rack]
    if sum(view.free[n] // gpus for r in view.racks_of_block[block] for n in view.nodes_of_rack[r]) >= need:
        return ("block", block)
    return None


def _placement_notes(
    view: ClusterView, request: GangRequest, node_of: Mapping[int, int], kept: int, moved: int
) -> list[str]:
    used = sorted({view.names[n] for n in node_of.values()})
    racks = {view.rack_of[n] for n in node_of.values()}
    p = request.pipeline_degree
    whole = sum(1 for r in range(request.replicas) if len({node_of[r * p + k] for k in range(p)}) == 1)
    note = (
        f"placement: {plural(len(node_of), 'worker')} on {plural(len(used), 'node')}"
        f" ({list_some(used)}) in {plural(len(racks), 'rack')};"
        f" {whole} of {plural(request.replicas, 'replica')} entirely on one node"
    )
    notes = [note]
    if kept:
        notes.append(f"re-plan: kept {plural(kept, 'worker')} on their nodes, placed {moved} displaced")
    return notes


def _unschedulable_message(
    view: ClusterView, request: GangRequest, free: Sequence[int], need: int, excluded: Mapping[str, list[str]]
) -> str:
    gpus = request.gpus_per_worker
    product = f" of product {request.gpu_product}" if request.gpu_product else ""
    fitting = sorted(
        ((f // gpus, view.names[n], f) for n, f in enumerate(free) if f >= gpus), key=lambda t: (-t[0], t[1])
    )
    fit_count = sum(slots for slots, _, _ in fitting)
    parts = [
        f"job {request.job} needs {plural(need, 'worker')} with {plural(gpus, 'GPU')}{product} each"
        f" (all on one node per worker); {fit_count} fit"
    ]
    if fitting:
        parts[-1] += ": " + list_some(f"{name} ({f} free)" for _, name, f in fitting)
    too_small = [(view.names[n], f) for n, f in enumerate(free) if 0 < f < gpus]
    if too_small:
        parts.append(
            f"{plural(len(too_small), 'node')} with fewer than {gpus} free GPUs: "
            + list_some(f"{name} ({f} free)" for name, f in too_small)
        )
    full = sum(1 for f in free if f == 0)
    if full:
        parts.append(f"{plural(full, 'node')} with no free GPU")
    for reason, names in sorted(excluded.items(), key=lambda item: (-len(item[1]), item[0])):
        parts.append(f"{plural(len(names), 'node')} excluded by {reason}: {list_some(names, 3)}")
    if not view.names and not excluded:
        parts.append("no nodes given")
    return "; ".join(parts)
