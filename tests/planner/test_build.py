"""build_plan: every Plan field, worker naming, GPU memory sources, re-planning through the whole path."""

from __future__ import annotations

import pytest
from maas_api import ManifestError
from maas_api.plan import MICROBATCH_FIXED_COST_SAMPLES, Plan
from maas_api.spec import UnitProfile
from maas_operator.planner import PlanError, Unschedulable, build_plan

from .helpers import job, node, racks


def test_plan_without_nodes_fills_every_field() -> None:
    spec = {
        "split": {"stages": 3},
        "parallelism": {"replicas": 2, "microbatches": 4},
        "training": {"batchSize": 32, "optimizer": "SGD"},
    }
    plan = build_plan(job("large-model", **spec))
    assert plan.job == "large-model" and plan.namespace == "default"
    assert [s.units for s in plan.stages] == [["layer_0"], ["layer_1"], ["layer_2"]]
    assert plan.pipeline_degree == 3 and plan.replicas == 2 and plan.microbatches == 4
    assert plan.stages_per_worker == 1 and plan.gpus_per_worker == 1
    # p=3, m=4 microbatches of 32/4 = 8 samples, each with a fixed cost of MICROBATCH_FIXED_COST_SAMPLES
    assert plan.bottleneck == 2400
    assert plan.estimated_bubble == pytest.approx(1 - 4 * 8 / (6 * (8 + MICROBATCH_FIXED_COST_SAMPLES)))
    assert [(w.name, w.index, w.replica, w.pipeline_rank, w.stages, w.node) for w in plan.workers] == [
        (f"large-model-r{r}-s{s}", 3 * r + s, r, s, [s], None) for r in range(2) for s in range(3)
    ]
    assert plan.training is not None and plan.training.optimizer == "SGD"
    assert plan.serving is None and plan.checkpoint is None
    assert plan.profile.units[0].name == "layer_0"
    assert any("GPU memory unknown" in note for note in plan.notes)
    assert Plan.model_validate(plan.to_wire()) == plan  # the wire form round-trips


def test_plan_with_nodes_places_every_worker() -> None:
    plan = build_plan(job("lm", split={"stages": 3}, parallelism={"replicas": 2}), nodes=racks(1, 2))
    assert all(w.node is not None for w in plan.workers)
    assert any(note.startswith("placement: 6 workers on 1 node") for note in plan.notes)
    assert any(note.startswith("memory: peak") and "of 79.6 GiB" in note for note in plan.notes)


def test_node_objects_and_used_gpu_annotations_are_accepted() -> None:
    from .helpers import node_object

    busy = node_object("busy", 8)
    busy["metadata"]["annotations"] = {"maas.dev/used-gpus": "7"}
    plan = build_plan(job("lm", split={"stages": 2}), nodes=[busy, node_object("idle", 8)])
    # best fit would pick `busy` (1 free) for a 2-worker job if it had room; it has not
    assert {w.node for w in plan.workers} == {"idle"}


def test_interleaved_workers_run_several_stages() -> None:
    plan = build_plan(
        job(
            "il",
            model={"catalog": "MLP", "args": {"layers": 8}},
            split={"stages": 4},
            parallelism={"schedule": "Interleaved1F1B", "stagesPerWorker": 2},
            training={"batchSize": 32},
        )
    )
    assert plan.pipeline_degree == 2 and [w.stages for w in plan.workers] == [[0, 2], [1, 3]]
    assert plan.microbatches % 2 == 0 and plan.microbatches >= 4


def test_stages_must_be_a_multiple_of_stages_per_worker() -> None:
    # A spec rule (maas_api.rules), so the job is refused before the planner sees it.
    with pytest.raises(ManifestError, match=r"spec.split.stages: split.stages must be a multiple"):
        job(
            "il",
            model={"catalog": "MLP"},
            split={"stages": 3},
            parallelism={"schedule": "Interleaved1F1B", "stagesPerWorker": 2, "microbatches": 4},
        )


def test_gpu_memory_from_the_spec_wins_over_node_labels() -> None:
    huge = {"catalog": "MLP", "args": {"input": 8192, "hidden": 8192, "layers": 4, "output": 8}}
    with pytest.raises(
        PlanError,
        match=r"no split into 1 stage fits in GPU memory: the best split still needs 3.0 GiB in stage 0 "
        r".*\(spec.resources.gpuMemory\)",
    ):
        build_plan(job("mlp", model=huge, resources={"gpus": 1, "gpuMemory": "1Gi"}), nodes=racks(1, 1))
    plan = build_plan(job("mlp", model=huge, resources={"gpus": 1}), nodes=racks(1, 1))
    assert plan.stages[0].memory_bytes > 2**30


def test_more_gpus_per_worker_shard_the_model_state() -> None:
    huge = {"catalog": "MLP", "args": {"input": 8192, "hidden": 8192, "layers": 4, "output": 8}}
    one = build_plan(job("mlp", model=huge, resources={"gpus": 1}))
    four = build_plan(job("mlp", model=huge, resources={"gpus": 4}))
    # AdamW: one GPU holds weights, gradients and 2 states (4 per parameter); FSDP over 4 GPUs keeps the
    # unsharded weights and gradients (2) next to a quarter of all four (1): 12/16 of one GPU's bytes.
    assert four.stages[0].memory_bytes == pytest.approx(one.stages[0].memory_bytes * 12 / 16, rel=1e-3)


def test_factory_profile_is_used_as_given() -> None:
    profile = [
        {"name": "a", "params": 10, "flopsPerSample": 5, "activationBytesPerSample": 4},
        {"name": "b", "params": 10, "flopsPerSample": 5, "activationBytesPerSample": 4},
    ]
    plan = build_plan(job("f", model={"factory": "pkg.mod:build", "profile": profile}, split={"stages": 2}))
    assert [s.units for s in plan.stages] == [["a"], ["b"]]
    explicit = build_plan(
        job("f", model={"factory": "pkg.mod:build", "profile": profile}),
        profile=plan.profile.model_copy(
            update={
                "units": [UnitProfile(name="z", params=1, flops_per_sample=1, activation_bytes_per_sample=1)]
            }
        ),
    )
    assert explicit.stages[0].units == ["z"]


def test_catalog_argument_errors_become_plan_errors() -> None:
    with pytest.raises(PlanError, match=r"spec.model.args.layers"):
        build_plan(job("t", model={"catalog": "MLP", "args": {"layers": 0}}))


def test_serve_plan() -> None:
    plan = build_plan(
        job(
            "srv",
            mode="Serve",
            serving={"maxBatchSize": 16},
            split={"stages": 2},
            model={"catalog": "Transformer", "args": {"layers": 4}},
            parallelism={"schedule": "GPipe"},
        )
    )
    assert plan.training is None and plan.serving is not None and plan.microbatches == 4


def test_unschedulable_through_build_plan() -> None:
    with pytest.raises(Unschedulable, match="needs 6 workers"):
        build_plan(job("lm", split={"stages": 3}, parallelism={"replicas": 2}), nodes=[node("small", 4)])


def test_cpu_workers_are_not_placed() -> None:
    plan = build_plan(job("cpu", resources={"gpus": 0}), nodes=[node("a")])
    assert plan.workers[0].node is None and plan.gpus_per_worker == 0
    assert any("left to the kube-scheduler" in note for note in plan.notes)


def test_replan_after_losing_a_node_moves_only_its_workers() -> None:
    nodes = racks(2, 4, gpus=2)
    spec = {"split": {"stages": 3}, "parallelism": {"replicas": 4}}
    first = build_plan(job("lm", **spec), nodes=nodes)
    before = {w.name: w.node for w in first.workers}
    lost = first.workers[0].node
    survivors = [n for n in nodes if n.name != lost]
    second = build_plan(job("lm", **spec), nodes=survivors, previous=before)
    after = {w.name: w.node for w in second.workers}
    assert {w for w in before if before[w] != after[w]} == {w for w, n in before.items() if n == lost}


def test_missing_name_is_an_error() -> None:
    with pytest.raises(PlanError, match=r"metadata\.name"):
        build_plan(job("x").spec)
    assert build_plan(job("x").spec, name="y", namespace="ns").namespace == "ns"
