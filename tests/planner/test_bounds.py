"""Inputs the API server accepts that once hung the planner, exhausted its memory or ended in a traceback:
each now plans in bounded time or is refused with a PlanError (or Unschedulable) that names the field."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from maas_api.job import ManifestError
from maas_api.limits import MAX_BATCH_SIZE, MAX_CLUSTER_PODS, MAX_GPU_BUDGET, MAX_STAGES
from maas_api.plan import ModelProfile
from maas_api.spec import BalanceBy, UnitProfile
from maas_operator.planner import PlanError, Unschedulable, build_plan
from maas_operator.planner.cli import main
from maas_operator.planner.cluster import MAX_PODS_PER_CLUSTER, YAML_LOADER, load_nodes
from maas_operator.planner.split import split_model

from .helpers import job, node, profile, racks, time_bound
from .test_split import request

TIME_BOUND_S = 5.0
"""Every case here runs in well under a second (measured); the old code hung or ran for minutes."""


def units(*flops: float, time_ms: float | None = None) -> list[dict[str, Any]]:
    """A factory profile in wire form."""
    return [
        {"name": f"u{i}", "params": 10, "flopsPerSample": cost, "activationBytesPerSample": 4}
        | ({"timeMsPerSample": time_ms} if time_ms is not None else {})
        for i, cost in enumerate(flops)
    ]


def factory(profile_units: list[dict[str, Any]]) -> dict[str, Any]:
    return {"factory": "pkg.mod:build", "profile": profile_units}


# -- decimal costs -------------------------------------------------------------------------------------------
def test_decimal_flops_split_in_bounded_time() -> None:
    with time_bound(TIME_BOUND_S):
        result = split_model(profile(*[0.1] * 6), request(2))
    assert [stage.units for stage in result.stages] == [["u0", "u1", "u2"], ["u3", "u4", "u5"]]


def test_measured_milliseconds_split_in_bounded_time() -> None:
    measured = ModelProfile(
        units=[
            UnitProfile(
                name=f"u{i}",
                params=1,
                flops_per_sample=1,
                activation_bytes_per_sample=0,
                time_ms_per_sample=ms,
            )
            for i, ms in enumerate([0.37, 0.23, 0.58, 0.38, 0.24, 0.34, 0.4, 0.2])  # hung the old bisection
        ]
    )
    with time_bound(TIME_BOUND_S):
        result = split_model(measured, request(3, balance_by=BalanceBy.TIME))
    assert result.balance_by == BalanceBy.TIME
    assert result.bottleneck == pytest.approx(0.37 + 0.23 + 0.58)  # 1.18: no cut into 3 does better


# -- unbounded numbers ---------------------------------------------------------------------------------------
def test_more_stages_than_units_is_refused_before_anything_is_sized() -> None:
    with time_bound(TIME_BOUND_S), pytest.raises(PlanError, match=r"spec.split.stages: 1024 stages but"):
        build_plan(job(split={"stages": MAX_STAGES}, parallelism={"schedule": "GPipe"}))
    # Beyond the API's maximum the manifest itself is refused, as the API server refuses it.
    with pytest.raises(ManifestError, match=r"spec.split.stages"):
        job(split={"stages": 10**8})


def test_replicas_beyond_what_a_cluster_runs_are_refused_before_workers_are_built() -> None:
    with time_bound(TIME_BOUND_S), pytest.raises(PlanError) as error:
        build_plan(job(split={"stages": 3}, parallelism={"replicas": MAX_CLUSTER_PODS}))
    message = str(error.value)
    assert message.startswith(
        f"spec.parallelism.replicas: {MAX_CLUSTER_PODS} replicas x 3 workers = {3 * MAX_CLUSTER_PODS} worker pods"
    )
    assert f"use at most {MAX_PODS_PER_CLUSTER // 3} replicas" in message


def test_replicas_beyond_the_free_gpus_are_unschedulable_before_workers_are_built() -> None:
    nodes = racks(2, 2)  # 32 GPUs
    started = time.perf_counter()
    with time_bound(TIME_BOUND_S), pytest.raises(Unschedulable) as error:
        build_plan(job(split={"stages": 3}, parallelism={"replicas": 40_000}), nodes=nodes)
    assert time.perf_counter() - started < 1  # measured ~5 ms; building 120,000 workers first took seconds
    assert str(error.value).startswith(
        "job job needs 120000 workers with 1 GPU each (all on one node per worker)"
    )
    assert "32 fit" in str(error.value)


def test_huge_gpu_budget_is_searched_in_logarithmic_time() -> None:
    with time_bound(TIME_BOUND_S):
        plan = build_plan(
            job(
                model={"catalog": "MLP", "args": {"layers": 8}},
                split={"stages": "auto"},
                parallelism={"gpuBudget": MAX_GPU_BUDGET, "replicas": 2},
            )
        )
    assert plan.replicas == 2 and plan.notes[0].startswith("auto: chose")


def test_huge_budget_without_fixed_replicas_stays_within_a_cluster() -> None:
    with time_bound(3 * TIME_BOUND_S):  # may build up to MAX_PODS_PER_CLUSTER workers: about 2 s
        plan = build_plan(
            job(
                split={"stages": "auto"},
                parallelism={"gpuBudget": MAX_GPU_BUDGET},
                training={"batchSize": 64},
            )
        )
    assert len(plan.workers) <= MAX_PODS_PER_CLUSTER


def test_huge_budget_with_nodes_stays_within_their_gpus() -> None:
    with time_bound(TIME_BOUND_S):
        plan = build_plan(
            job(
                split={"stages": "auto"},
                parallelism={"gpuBudget": MAX_GPU_BUDGET},
                training={"batchSize": 64},
            ),
            nodes=racks(1, 2),
        )
    assert 0 < len(plan.workers) <= 16 and all(worker.node for worker in plan.workers)
    assert "auto: planned within 16 GPUs (the nodes' GPUs), less than the budget" in plan.notes


def test_huge_batch_plans_in_bounded_time() -> None:
    with time_bound(TIME_BOUND_S):
        plan = build_plan(job(split={"stages": 3}, training={"batchSize": MAX_BATCH_SIZE}))
    assert MAX_BATCH_SIZE % plan.microbatches == 0 and plan.microbatches >= 3
    json.dumps(plan.to_wire(), allow_nan=False)


# -- numbers that are not finite, or overflow ----------------------------------------------------------------
# The API refuses these now (finite numbers and maximums on every field); the planner's own checks stay as a
# second line for profiles built in Python.
def test_infinite_flops_name_the_unit_and_field() -> None:
    with pytest.raises(ManifestError, match=r"spec.model.profile\[1\].flopsPerSample"):
        job(model=factory(units(1.0, math.inf)), split={"stages": 2})


def test_flops_that_would_overflow_when_added_are_refused() -> None:
    with pytest.raises(ManifestError, match=r"spec.model.profile\[0\].flopsPerSample"):
        job(model=factory(units(1e308, 1e308, 1.0)), split={"stages": 2})


def test_integers_beyond_int64_are_refused() -> None:
    with pytest.raises(ManifestError, match=r"spec.training.batchSize"):
        job(training={"batchSize": 2**99})


def test_negative_catalog_argument_names_the_argument() -> None:
    multitask = {"catalog": "MultiTaskMLP", "args": {"heads": {"classify": 10, "regress": -1}}}
    with pytest.raises(PlanError, match=r"spec.model.args.heads.regress: Input should be greater than"):
        build_plan(job(model=multitask, split={"strategy": "Task", "stages": 2, "heads": ["head_classify"]}))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"heads": {"a.b": 2}}, "spec.model.args.heads.a.b"),  # not a unit name (no dots in ModuleDict keys)
        ({"hidden": 10**400}, "spec.model.args.hidden"),
    ],
)
def test_catalog_arguments_that_break_the_profile_are_refused(args: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError, match=f"^{field}"):
        build_plan(job(model={"catalog": "MultiTaskMLP", "args": args}, split={"stages": 2}))


def test_transformer_arguments_at_their_maximum_give_a_finite_plan() -> None:
    from maas_api.catalog import MAX_FEATURES, MAX_FFN_MULT, MAX_SEQ_LEN, MAX_VOCAB

    largest = {
        "vocab": MAX_VOCAB,
        "dim": MAX_FEATURES,
        "layers": 2,
        "heads": 1024,
        "seqLen": MAX_SEQ_LEN,
        "ffnMult": MAX_FFN_MULT,
    }
    # Each argument is within its bound, but together they make units beyond what a profile may describe.
    with pytest.raises(PlanError, match=r"^spec.model.args: the arguments make a unit too large"):
        build_plan(job(model={"catalog": "Transformer", "args": largest}, split={"stages": 2}))


@pytest.mark.parametrize("memory", ["0", "-80Gi", "1e400"])
def test_gpu_memory_must_be_positive_and_finite(memory: str) -> None:
    with pytest.raises(
        PlanError, match=r"^spec.resources.gpuMemory: .* is not a positive, finite memory size"
    ):
        build_plan(job(resources={"gpuMemory": memory}))


def test_unusable_gpu_memory_labels_are_ignored() -> None:
    nodes = [node(f"n{i}") for i in range(2)]
    for bad, good in zip(("nan", "inf"), nodes, strict=True):
        good.labels["nvidia.com/gpu.memory"] = bad  # type: ignore[index]
    plan = build_plan(job(split={"stages": 2}), nodes=nodes)
    assert any("GPU memory unknown" in note for note in plan.notes)


# -- maas plan: exit 2 and the field, never a traceback ------------------------------------------------------
def manifest(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "job.yaml"
    body = {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": "j"}, "spec": spec}
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"model": factory(units(1.0, math.inf)), "split": {"stages": 2}},
            "spec.model.profile[1].flopsPerSample",
        ),
        (
            {"model": {"catalog": "MultiTaskMLP", "args": {"heads": {"classify": 10, "regress": -1}}}},
            "spec.model.args.heads.regress",
        ),
        ({"model": {"catalog": "LargeModel"}, "split": {"stages": 10**8}}, "spec.split.stages"),
        (
            {"model": {"catalog": "LargeModel"}, "parallelism": {"replicas": 10**8}},
            "spec.parallelism.replicas",
        ),
    ],
)
def test_maas_plan_exits_2_naming_the_field(
    spec: dict[str, Any], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with time_bound(TIME_BOUND_S):
        code = main(["-f", manifest(tmp_path, {"mode": "Train", **spec}), "-o", "json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert f"{field}:" in captured.err and "Traceback" not in captured.err


# -- the YAML loader -----------------------------------------------------------------------------------------
def test_nodes_are_read_with_libyaml_when_pyyaml_has_it() -> None:
    assert YAML_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)
    text = yaml.safe_dump({"kind": "List", "items": [{"metadata": {"name": "a"}, "status": {}}]})
    assert [n.name for n in load_nodes(text)] == ["a"]


def test_nodes_as_json_are_read_by_the_json_module_with_the_same_result() -> None:
    listed = {"kind": "List", "items": [{"metadata": {"name": f"n{i}"}, "status": {}} for i in range(3)]}
    assert load_nodes(json.dumps(listed)) == load_nodes(yaml.safe_dump(listed))
    assert [n.name for n in load_nodes("[{metadata: {name: flow}}]")] == ["flow"]  # YAML flow style, not JSON


def test_an_integer_too_long_for_python_is_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: maas.dev/v1alpha1\nkind: MaaSJob\nmetadata: {name: j}\n"
        f"spec: {{mode: Train, model: {{catalog: LargeModel}}, parallelism: {{replicas: {'9' * 5000}}}}}\n"
    )
    assert main(["-f", str(path)]) == 2
    assert "spec.parallelism.replicas" in capsys.readouterr().err
