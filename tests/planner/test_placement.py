"""Gang placement: all or nothing, never over-committed, deterministic, topology-aware, re-plan stability."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from maas_api import parse_maasjob
from maas_api.spec import Toleration
from maas_operator.planner import build_plan
from maas_operator.planner.cluster import Node, Taint, load_nodes
from maas_operator.planner.placement import GangRequest, filter_nodes, place_gang
from maas_operator.planner.reasons import PlanError, Unschedulable

from .helpers import A100, H100, node, racks


def gang(replicas: int, stages: int, gpus: int = 1, **kwargs: object) -> GangRequest:
    workers = tuple(f"job-r{r}-s{s}" for r in range(replicas) for s in range(stages))
    return GangRequest(job="job", workers=workers, pipeline_degree=stages, gpus_per_worker=gpus, **kwargs)  # type: ignore[arg-type]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Node], dict[str, int], GangRequest]:
    count = draw(st.integers(1, 16))
    nodes = []
    used = {}
    for i in range(count):
        gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        rack = draw(st.integers(0, 3))
        taints = (Taint("maint", "yes", "NoSchedule"),) if draw(st.integers(0, 9)) == 0 else ()
        nodes.append(
            node(
                f"n{i:02d}",
                gpus=gpus,
                rack=f"r{rack}",
                block=f"b{rack // 2}",
                product=draw(st.sampled_from([H100, A100])),
                taints=taints,
                unschedulable=draw(st.integers(0, 9)) == 0,
            )
        )
        used[f"n{i:02d}"] = draw(st.integers(0, gpus))
    request = gang(
        draw(st.integers(1, 4)),
        draw(st.integers(1, 4)),
        draw(st.sampled_from([1, 2, 4])),
        pipeline_weights=(),
        replica_weights=(),
    )
    return nodes, used, request


def capacity(nodes: list[Node], used: dict[str, int], request: GangRequest) -> int:
    view = filter_nodes(nodes, request, used).view
    return sum(f // request.gpus_per_worker for f in view.free)


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_all_or_nothing_and_never_over_committed(
    case: tuple[list[Node], dict[str, int], GangRequest],
) -> None:
    nodes, used, request = case
    room = capacity(nodes, used, request)
    if room < len(request.workers):
        with pytest.raises(Unschedulable):
            place_gang(nodes, request, used)
        return
    placement = place_gang(nodes, request, used)
    assert set(placement.nodes) == set(request.workers)
    by_name = {n.name: n for n in nodes}
    taken = Counter(placement.nodes.values())
    for name, workers in taken.items():
        target = by_name[name]
        assert workers * request.gpus_per_worker <= target.gpus - used[name]
        assert not target.unschedulable and not target.taints
    # deterministic, and independent of the order the nodes come in
    assert place_gang(nodes, request, used) == placement
    shuffled = list(nodes)
    random.Random(7).shuffle(shuffled)
    assert place_gang(shuffled, request, used).nodes == placement.nodes


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_a_gang_mixes_gpu_products_only_when_no_single_product_has_room(
    case: tuple[list[Node], dict[str, int], GangRequest],
) -> None:
    nodes, used, request = case
    if capacity(nodes, used, request) < len(request.workers):
        return
    placement = place_gang(nodes, request, used)
    product_of = {n.name: n.gpu_product for n in nodes}
    products = {product_of[name] for name in placement.nodes.values()}
    room = {
        product: capacity([n for n in nodes if n.gpu_product == product], used, request)
        for product in (H100, A100)
    }
    if max(room.values()) >= len(request.workers):
        assert len(products) == 1
        assert room[products.pop()] >= len(request.workers)
    else:
        assert len(products) == 2
        assert any("no single GPU product has room" in note for note in placement.notes)


@settings(max_examples=100, deadline=None)
@given(clusters(), st.data())
def test_replan_keeps_every_worker_whose_node_survives(
    case: tuple[list[Node], dict[str, int], GangRequest], data: st.DataObject
) -> None:
    nodes, used, request = case
    if capacity(nodes, used, request) < len(request.workers):
        return
    first = place_gang(nodes, request, used)
    lost = data.draw(st.sampled_from(sorted(set(first.nodes.values()))))
    survivors = [n for n in nodes if n.name != lost]
    try:
        second = place_gang(survivors, request, used, previous=first.nodes)
    except Unschedulable:
        # only when the survivors lack room for the displaced workers
        assert capacity(survivors, used, request) < len(request.workers)
        return
    for worker, previous_node in first.nodes.items():
        if previous_node != lost:
            assert second.nodes[worker] == previous_node
    assert set(second.kept) == {w for w, n in first.nodes.items() if n != lost}
    taken = Counter(second.nodes.values())
    assert all(taken[n.name] * request.gpus_per_worker <= n.gpus - used[n.name] for n in survivors)


def test_replan_places_displaced_workers_near_the_kept_ones() -> None:
    nodes = racks(count=2, nodes_per_rack=3, gpus=4)  # n00-00 .. n00-02 in rack-0; n01-* in rack-1
    request = gang(replicas=2, stages=4)
    first = place_gang(nodes, request)
    lost = first.nodes["job-r0-s0"]
    rack_of_lost = lost[:3]
    survivors = [n for n in nodes if n.name != lost]
    second = place_gang(survivors, request, previous=first.nodes)
    moved = [w for w in request.workers if first.nodes[w] == lost]
    assert all(second.nodes[w] != lost for w in moved)
    assert "re-plan: kept 4 workers on their nodes, placed 4 displaced" in second.notes
    assert all(second.nodes[w].startswith(rack_of_lost) for w in moved)  # the spare node of the same rack


def test_with_equal_traffic_a_replica_stays_on_one_node_and_the_job_in_one_rack() -> None:
    nodes = racks(count=2, nodes_per_rack=4)
    placement = place_gang(nodes, gang(replicas=4, stages=4))
    for r in range(4):
        assert len({placement.nodes[f"job-r{r}-s{s}"] for s in range(4)}) == 1
    assert len({name[:3] for name in placement.nodes.values()}) == 1  # one rack


def test_best_fit_prefers_the_most_used_node_that_fits() -> None:
    nodes = [node("a", 8), node("b", 8, used=5), node("c", 8, used=3)]
    placement = place_gang(nodes, gang(replicas=1, stages=3), used_gpus={"b": 5, "c": 3})
    assert set(placement.nodes.values()) == {"b"}


def test_best_fit_rack_then_largest_nodes_first() -> None:
    nodes = [
        node("a0", 8, rack="ra"),
        node("a1", 8, rack="ra"),
        node("a2", 8, rack="ra"),
        node("b0", 8, rack="rb"),
        node("b1", 4, rack="rb"),
    ]
    placement = place_gang(nodes, gang(replicas=5, stages=2))  # 10 workers: rack rb (12) fits best
    assert Counter(placement.nodes.values()) == {"b0": 8, "b1": 2}


def test_data_parallel_peers_share_a_node_when_gradients_dominate() -> None:
    nodes = [node("a", 4), node("b", 4)]
    light_activations = gang(replicas=4, stages=2, pipeline_weights=(1.0,), replica_weights=(1e6, 1e6))
    placement = place_gang(nodes, light_activations)
    assert len({placement.nodes[f"job-r{r}-s0"] for r in range(4)}) == 1  # stage-major
    heavy_activations = gang(replicas=4, stages=2, pipeline_weights=(1e6,), replica_weights=(1.0, 1.0))
    placement = place_gang(nodes, heavy_activations)
    assert all(placement.nodes[f"job-r{r}-s0"] == placement.nodes[f"job-r{r}-s1"] for r in range(4))


def test_a_worker_needs_all_its_gpus_on_one_node() -> None:
    nodes = [node("a", 2), node("b", 2)]
    with pytest.raises(
        Unschedulable,
        match=r"needs 1 worker with 4 GPUs each .* 0 fit; "
        r"2 nodes with fewer than 4 free GPUs: a \(2 free\), b \(2 free\)",
    ):
        place_gang(nodes, gang(replicas=1, stages=1, gpus=4))


def test_unschedulable_message_lists_what_fits_and_why_others_do_not() -> None:
    broken = (Taint("gpu", "broken", "NoSchedule"),)
    nodes = [
        node("node-a", 8),
        node("node-b", 8),
        node("node-c", 8, taints=broken),
        node("node-d", 8, taints=broken),
        node("node-f", 8, product=A100),
        node("node-g", 8, unschedulable=True),
        node("node-h", 0),
        node("node-i", 8),
        node("node-j", 8),
    ]
    used = {"node-a": 6, "node-b": 4, "node-i": 8, "node-j": 7}
    with pytest.raises(Unschedulable) as error:
        place_gang(nodes, gang(replicas=3, stages=2, gpus=2, gpu_product=H100), used_gpus=used)
    assert str(error.value).split("; ") == [
        "job job needs 6 workers with 2 GPUs of product NVIDIA-H100-80GB-HBM3 each (all on one node per worker)",
        "3 fit: node-b (4 free), node-a (2 free)",
        "1 node with fewer than 2 free GPUs: node-j (1 free)",
        "1 node with no free GPU",
        "2 nodes excluded by taint gpu=broken:NoSchedule (no matching toleration in spec.placement.tolerations):"
        " node-c, node-d",
        "1 node excluded by GPU product NVIDIA-A100-SXM4-80GB (spec.resources.gpuProduct wants"
        " NVIDIA-H100-80GB-HBM3): node-f",
        "1 node excluded by cordoned (spec.unschedulable): node-g",
        "1 node excluded by no GPUs: node-h",
    ]


def test_a_gang_that_does_not_fit_takes_nothing() -> None:
    from maas_operator.planner.placement import place_on_view

    view = filter_nodes([node("a", 4), node("b", 4)], gang(1, 1), {}).view
    with pytest.raises(Unschedulable):
        place_on_view(view, gang(replicas=3, stages=3))
    assert view.free == [4, 4]
    place_on_view(view, gang(replicas=2, stages=3))
    assert sorted(view.free) == [0, 2]  # one node filled whole, the rest best-fit


def test_node_selector_and_tolerations() -> None:
    tainted = node("t", 8, taints=(Taint("gpu", "broken", "NoSchedule"),), team="ml")
    plain = node("p", 8)
    selected = gang(1, 1, node_selector={"team": "ml"})
    with pytest.raises(Unschedulable, match=r"1 node excluded by spec.placement.nodeSelector team=ml: p"):
        place_gang([tainted, plain], selected)
    tolerated = gang(
        1, 1, node_selector={"team": "ml"}, tolerations=(Toleration(key="gpu", operator="Exists"),)
    )
    assert place_gang([tainted, plain], tolerated).nodes == {"job-r0-s0": "t"}
    wrong_value = gang(1, 1, node_selector={"team": "ml"}, tolerations=(Toleration(key="gpu", value="ok"),))
    with pytest.raises(Unschedulable, match="taint gpu=broken:NoSchedule"):
        place_gang([tainted, plain], wrong_value)
    everything = gang(1, 1, node_selector={"team": "ml"}, tolerations=(Toleration(operator="Exists"),))
    assert place_gang([tainted], everything).nodes == {"job-r0-s0": "t"}
    soft = node("s", 8, taints=(Taint("x", None, "PreferNoSchedule"),))
    assert place_gang([soft], gang(1, 1)).nodes == {"job-r0-s0": "s"}


def test_not_ready_nodes_are_excluded() -> None:
    not_ready = Node(name="down", gpus=8, labels={}, ready=False)
    with pytest.raises(Unschedulable, match="excluded by not Ready: down"):
        place_gang([not_ready], gang(1, 1))


def test_nodes_without_topology_labels_are_far_apart() -> None:
    loose = [node("x", 1, rack=None, block=None), node("y", 1, rack=None, block=None)]
    placement = place_gang(loose, gang(1, 2))
    assert sorted(placement.nodes.values()) == ["x", "y"]


def test_cpu_workers_are_not_placed() -> None:
    with pytest.raises(PlanError, match="left to the kube-scheduler"):
        place_gang([node("a")], gang(1, 1, gpus=0))


def test_large_job_on_ten_thousand_nodes_is_fast() -> None:
    import time

    nodes = [node(f"n{i:05d}", 8, rack=f"r{i // 32}", block=f"b{i // 512}") for i in range(10_000)]
    request = gang(replicas=512, stages=8)
    started = time.perf_counter()
    placement = place_gang(nodes, request)
    assert time.perf_counter() - started < 1.0  # measured ~15 ms; benchmarks/planner_placement.py has p50/p99
    assert len(set(placement.nodes.values())) == 512


def test_several_nodes_are_the_tightest_set_of_the_fewest() -> None:
    from maas_operator.planner.placement import _choose

    domains = [(8, "a", 0), (8, "b", 1), (6, "c", 2), (4, "d", 3), (3, "e", 4)]
    # 10 slots need two nodes; 6 + 4 fills both exactly, where largest-first would take 8 and 2 of 3
    assert _choose(10, domains) == [(2, 6), (3, 4)]
    # one node that holds everything: the best fit, ties to the smaller name
    assert _choose(4, domains) == [(3, 4)]
    assert _choose(8, domains) == [(0, 8)]
    # more nodes than the exact search covers: largest first, remainder best fit
    many = [(2, f"n{i:02d}", i) for i in range(20)]
    assert sum(count for _, count in _choose(15, many)) == 15


def test_stranded_gpus_follow_the_worker_size_mix() -> None:
    from maas_operator.planner.placement import stranded_gpus

    mix = {1: 0.5, 8: 0.5}
    assert stranded_gpus(8, mix) == 0  # every size fits
    assert stranded_gpus(3, mix) == 1.5  # 8-GPU workers cannot use these 3
    assert stranded_gpus(0, mix) == 0


def test_small_jobs_fill_small_nodes_on_a_mixed_cluster() -> None:
    # A rack of 2-GPU nodes and a rack with an empty 8-GPU node: a 4-GPU job fits on the big node, but
    # putting it there strands GPUs that 8-GPU workers need, while two small nodes take it exactly.
    nodes = [
        node("big", 8, rack="r-big"),
        node("small-0", 2, rack="r-small"),
        node("small-1", 2, rack="r-small"),
    ]
    placement = place_gang(nodes, gang(replicas=1, stages=4), worker_size_mix={1: 0.5, 8: 0.5})
    assert set(placement.nodes.values()) == {"small-0", "small-1"}


def test_one_node_job_takes_the_best_single_node_when_that_strands_less() -> None:
    # Uniform nodes: the rack with the least room (4 + 4 free) holds a 5-GPU job only across two nodes and
    # leaves 3 GPUs that 4- and 8-GPU workers cannot use; a node elsewhere with exactly 5 free takes it whole.
    nodes = [
        node("a0", 8, rack="ra"),
        node("a1", 8, rack="ra"),
        node("b0", 8, rack="rb"),
        node("b1", 8, rack="rb"),
    ]
    used = {"a0": 4, "a1": 4, "b0": 3, "b1": 0}
    placement = place_gang(nodes, gang(replicas=1, stages=5), used_gpus=used)
    assert set(placement.nodes.values()) == {"b0"}


def test_one_node_job_fills_two_fragments_when_that_strands_less() -> None:
    # 3 + 1 free in the tightest rack take a 4-GPU job exactly: two fragments gone beats one clean node.
    nodes = [
        node("a0", 8, rack="ra"),
        node("a1", 8, rack="ra"),
        node("b0", 8, rack="rb"),
        node("b1", 8, rack="rb"),
    ]
    placement = place_gang(nodes, gang(replicas=1, stages=4), used_gpus={"a0": 5, "a1": 7, "b0": 4})
    assert set(placement.nodes.values()) == {"a0", "a1"}


def test_an_unset_gpu_product_keeps_the_gang_on_one_product() -> None:
    # Rack ra holds the 8 workers exactly, but on two products; the A100 rack holds them on one.
    nodes = [
        node("a-h100", 8, rack="ra", product=H100),
        node("a-a100", 8, rack="ra", product=A100),
        node("b0", 8, rack="rb", product=A100),
        node("b1", 8, rack="rb", product=A100),
    ]
    used = {"a-h100": 4, "a-a100": 4}
    placement = place_gang(nodes, gang(replicas=4, stages=2), used_gpus=used)
    assert {n.gpu_product for n in nodes if n.name in placement.nodes.values()} == {A100}
    assert set(placement.nodes.values()) == {"b0"}  # one whole node of the product
    assert any(f"every worker on GPU product {A100}" in note for note in placement.notes)


def test_products_mix_only_when_none_has_room_and_the_notes_say_so() -> None:
    nodes = [node("h", 4, rack="ra", product=H100), node("a", 4, rack="ra", product=A100)]
    placement = place_gang(nodes, gang(replicas=3, stages=2))
    assert set(placement.nodes.values()) == {"h", "a"}
    mixed = next(note for note in placement.notes if "no single GPU product has room" in note)
    assert "for 6 workers (the most: " in mixed and "set spec.resources.gpuProduct" in mixed


def test_the_product_where_the_gang_lands_lowest_wins_then_the_one_stranding_least() -> None:
    # H100 holds the 8 workers only on two nodes of two racks; A100 on one node.
    nodes = [
        node("h0", 4, rack="ra", product=H100),
        node("h1", 4, rack="rb", product=H100),
        node("a0", 8, rack="rc", product=A100),
        node("a1", 8, rack="rc", product=A100),
    ]
    placement = place_gang(nodes, gang(replicas=4, stages=2))
    assert set(placement.nodes.values()) == {"a0"}
    # One node either way: the product that strands fewer GPUs.
    nodes = [node("h0", 8, rack="ra", product=H100), node("a0", 8, rack="rb", product=A100)]
    placement = place_gang(nodes, gang(replicas=1, stages=2), used_gpus={"h0": 6})
    assert set(placement.nodes.values()) == {"h0"}


def test_a_named_gpu_product_is_never_mixed_or_noted() -> None:
    nodes = [node("h", 8, rack="ra", product=H100), node("a", 8, rack="ra", product=A100)]
    placement = place_gang(nodes, gang(replicas=2, stages=2, gpu_product=A100))
    assert set(placement.nodes.values()) == {"a"}
    assert not any("GPU product" in note for note in placement.notes)


def test_replan_stays_on_the_product_of_the_kept_workers() -> None:
    nodes = [
        node("a0", 2, rack="ra", product=A100),
        node("a1", 2, rack="ra", product=A100),
        node("a2", 2, rack="rb", product=A100),
        node("h0", 8, rack="ra", product=H100),
    ]
    request = gang(replicas=2, stages=2)
    first = place_gang(nodes, request, used_gpus={"h0": 6})
    assert set(first.nodes.values()) == {"a0", "a1"}
    lost = first.nodes["job-r0-s0"]
    second = place_gang([n for n in nodes if n.name != lost], request, {"h0": 6}, previous=first.nodes)
    moved = [w for w in request.workers if first.nodes[w] == lost]
    assert {second.nodes[w] for w in moved} == {"a2"}  # not the H100 node of the same rack


def test_a_gang_on_one_rack_of_small_nodes_beats_breaking_a_large_node_in_another_product() -> None:
    # Both products hold the 4 workers only on two nodes of one rack; the 2-GPU nodes take them exactly,
    # where the 8-GPU nodes (2 and 3 free) would keep a stranded GPU.
    nodes = [
        node("t0", 2, rack="rt", product=A100),
        node("t1", 2, rack="rt", product=A100),
        node("g0", 8, rack="rg", product=H100),
        node("g1", 8, rack="rg", product=H100),
    ]
    placement = place_gang(nodes, gang(replicas=2, stages=2), used_gpus={"g0": 6, "g1": 5})
    assert set(placement.nodes.values()) == {"t0", "t1"}


def test_a_128_gpu_gang_stays_on_the_product_with_room_instead_of_the_tightest_mixed_rack() -> None:
    # The case in small: the rack that fits 128 one-GPU workers most tightly mixes 8-GPU and 2-GPU
    # products, while a rack of one product has whole 8-GPU nodes free.
    mixed_rack = [node(f"m-g{i:02d}", 8, rack="r-mixed", product=H100) for i in range(12)] + [
        node(f"m-t{i:02d}", 2, rack="r-mixed", product=A100) for i in range(16)
    ]
    whole_rack = [node(f"w-g{i:02d}", 8, rack="r-whole", product=H100) for i in range(32)]
    placement = place_gang(mixed_rack + whole_rack, gang(replicas=16, stages=8))
    products = {n.gpu_product for n in mixed_rack + whole_rack if n.name in placement.nodes.values()}
    assert products == {H100}
    assert len(set(placement.nodes.values())) == 16  # 16 whole 8-GPU nodes of one rack


def test_a_replan_mixes_products_only_when_the_kept_workers_product_lacks_room() -> None:
    nodes = [
        node("a0", 2, rack="ra", product=A100),
        node("a1", 2, rack="ra", product=A100),
        node("h0", 8, rack="ra", product=H100),
    ]
    request = gang(replicas=2, stages=2)
    first = place_gang(nodes, request, used_gpus={"h0": 6})
    assert set(first.nodes.values()) == {"a0", "a1"}
    second = place_gang([n for n in nodes if n.name != "a0"], request, {"h0": 6}, previous=first.nodes)
    assert {second.nodes[w] for w in request.workers if first.nodes[w] == "a0"} == {"h0"}
    note = next(note for note in second.notes if "so the gang mixes" in note)
    assert f"the kept workers' GPU product {A100} has room for 0 of the 2 displaced workers" in note
    assert f"{A100} (2), {H100} (2)" in note


def test_the_transformer_example_shares_nodes_by_stage_and_the_small_examples_by_replica() -> None:
    # What the README says placement does: ranks go along the heavier traffic. Training the transformer
    # moves 2x a stage's parameters between replicas per step, far more than the activations between stages,
    # so each node holds the same stages of every replica; the small LargeModel keeps each pipeline whole.
    examples = Path(__file__).resolve().parents[2] / "examples"
    nodes = load_nodes((examples / "nodes.yaml").read_text())

    def plan_of(name: str) -> dict[tuple[int, int], str]:
        job = parse_maasjob(yaml.safe_load((examples / name).read_text()))
        plan = build_plan(job, nodes=nodes)
        return {(w.replica, w.pipeline_rank): str(w.node) for w in plan.workers}

    transformer = plan_of("transformer-auto.yaml")
    replicas = {replica for replica, _ in transformer}
    ranks = {rank for _, rank in transformer}
    assert len(replicas) > 1 and len(ranks) > 1
    for rank in ranks:  # every replica's copy of a stage on one node
        assert len({transformer[replica, rank] for replica in replicas}) == 1
    assert all(len({transformer[r, k] for k in ranks}) > 1 for r in replicas)  # no pipeline whole on a node
    large_model = plan_of("large-model-train.yaml")
    for replica in {replica for replica, _ in large_model}:
        assert len({node for (r, _), node in large_model.items() if r == replica}) == 1
