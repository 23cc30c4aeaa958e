"""split.stages auto: the choice, the user-set values it keeps, and its notes."""

from __future__ import annotations

import pytest
from maas_operator.planner import PlanError, build_plan
from maas_operator.planner.auto import count_candidates

from .helpers import job, racks

TRANSFORMER = {
    "catalog": "Transformer",
    "args": {"vocab": 32000, "dim": 512, "layers": 12, "heads": 8, "seqLen": 256},
    "dtype": "bfloat16",
}


def test_auto_stays_within_the_budget_and_explains_itself() -> None:
    plan = build_plan(
        job(
            "auto",
            model=TRANSFORMER,
            split={"stages": "auto"},
            parallelism={"gpuBudget": 16},
            training={"batchSize": 64},
        )
    )
    assert len(plan.workers) * plan.gpus_per_worker <= 16
    assert plan.notes[0].startswith(f"auto: chose {len(plan.stages)} stage")
    assert "samples/s" in plan.notes[0] and "next best" in plan.notes[0]
    assert plan.notes[1].startswith("auto cost model:")


def test_auto_never_overrides_user_set_replicas_or_microbatches() -> None:
    plan = build_plan(
        job(
            "auto",
            model=TRANSFORMER,
            split={"stages": "auto"},
            parallelism={"gpuBudget": 16, "replicas": 2, "microbatches": 8, "schedule": "GPipe"},
            training={"batchSize": 64},
        )
    )
    assert plan.replicas == 2 and plan.microbatches == 8
    assert len(plan.workers) <= 16
    assert any("kept spec.parallelism.replicas 2 as set" in n for n in plan.notes)


def test_auto_pipelines_a_model_that_does_not_fit_one_gpu() -> None:
    big = {"catalog": "MLP", "args": {"input": 4096, "hidden": 4096, "layers": 8, "output": 8}}
    plan = build_plan(
        job(
            "big",
            model=big,
            split={"stages": "auto"},
            parallelism={"gpuBudget": 8},
            resources={"gpus": 1, "gpuMemory": "1Gi"},
        )
    )
    assert len(plan.stages) >= 2
    assert all(s.memory_bytes <= 0.9 * 2**30 for s in plan.stages)
    assert "auto: ruled out 1, 2 stages (the stages do not fit in GPU memory)" in plan.notes


def test_auto_errors() -> None:
    with pytest.raises(PlanError, match="cannot hold one worker of 4 GPUs"):
        build_plan(job("a", split={"stages": "auto"}, parallelism={"gpuBudget": 2}, resources={"gpus": 4}))
    with pytest.raises(PlanError, match=r"spec\.parallelism\.replicas: 4 replicas"):
        build_plan(job("a", split={"stages": "auto"}, parallelism={"gpuBudget": 2, "replicas": 4}))
    huge = {"catalog": "MLP", "args": {"input": 8192, "hidden": 8192, "layers": 2, "output": 8}}
    with pytest.raises(PlanError, match="no pipeline of up to 2 workers fits"):
        build_plan(
            job(
                "a",
                model=huge,
                split={"stages": "auto"},
                parallelism={"gpuBudget": 2},
                resources={"gpuMemory": "100Mi"},
            )
        )


def test_auto_with_nodes_places_the_chosen_shape() -> None:
    plan = build_plan(
        job("auto", model=TRANSFORMER, split={"stages": "auto"}, parallelism={"gpuBudget": 16}),
        nodes=racks(1, 4),
    )
    assert all(w.node for w in plan.workers)


def test_count_candidates() -> None:
    assert count_candidates(5) == [1, 2, 3, 4, 5]
    ladder = count_candidates(1000)
    assert ladder[:48] == list(range(1, 49)) and ladder[-1] == 1000 and len(ladder) < 80
