"""Layer, SubModel and Task splits, balanceBy costs, and the split's error messages."""

from __future__ import annotations

import math

import pytest
from maas_api.catalog import catalog_profile
from maas_api.plan import ModelProfile
from maas_api.spec import BalanceBy, Mode, ModelSpec, PipelineSchedule, SplitStrategy, UnitProfile
from maas_operator.planner.memory import MemoryModel
from maas_operator.planner.reasons import PlanError
from maas_operator.planner.split import SplitRequest, group_items, split_model

from .helpers import profile


def unchecked(stages: int, in_flight: int = 1) -> MemoryModel:
    return MemoryModel(
        state_bytes_per_param=4.0,
        samples_per_gpu=1,
        in_flight=(in_flight,) * stages,
        usable_bytes_per_stage=math.inf,
        gpu_memory_bytes=None,
    )


def request(stages: int, strategy: SplitStrategy = SplitStrategy.LAYER, **kwargs: object) -> SplitRequest:
    memory = kwargs.pop("memory", unchecked(stages))
    return SplitRequest(
        strategy=strategy,
        stages=stages,
        balance_by=kwargs.pop("balance_by", BalanceBy.FLOPS),
        memory=memory,
        **kwargs,
    )  # type: ignore[arg-type]


def units_of(result: object) -> list[list[str]]:
    return [stage.units for stage in result.stages]  # type: ignore[attr-defined]


def test_layer_split_balances_flops_optimally() -> None:
    result = split_model(profile(4, 1, 1, 1, 1, 4), request(3))
    assert result.bottleneck == 4
    assert units_of(result) == [["u0"], ["u1", "u2", "u3", "u4"], ["u5"]]
    assert [s.index for s in result.stages] == [0, 1, 2]
    assert result.stages[0].output_bytes_per_sample == 4


def test_large_model_three_stages_is_one_layer_each() -> None:
    result = split_model(catalog_profile(ModelSpec(catalog="LargeModel")), request(3))
    assert units_of(result) == [["layer_0"], ["layer_1"], ["layer_2"]]
    assert result.bottleneck == 2400  # layer_2: 2 * 30 * 40 flops


def test_balance_by_params_and_memory_change_the_cut() -> None:
    units = ModelProfile(
        units=[
            UnitProfile(name="a", params=100, flops_per_sample=1, activation_bytes_per_sample=0),
            UnitProfile(name="b", params=1, flops_per_sample=100, activation_bytes_per_sample=0),
            UnitProfile(name="c", params=1, flops_per_sample=100, activation_bytes_per_sample=0),
        ]
    )
    assert units_of(split_model(units, request(2, balance_by=BalanceBy.FLOPS))) == [["a", "b"], ["c"]]
    assert units_of(split_model(units, request(2, balance_by=BalanceBy.PARAMS))) == [["a"], ["b", "c"]]
    by_memory = split_model(units, request(2, balance_by=BalanceBy.MEMORY))
    assert units_of(by_memory) == [["a"], ["b", "c"]]
    assert by_memory.stages[0].cost == by_memory.stages[0].memory_bytes == 400


def test_balance_by_time_falls_back_to_flops_with_a_note() -> None:
    timed = ModelProfile(
        units=[
            UnitProfile(
                name="a", params=1, flops_per_sample=1, activation_bytes_per_sample=0, time_ms_per_sample=5
            ),
            UnitProfile(
                name="b", params=1, flops_per_sample=1, activation_bytes_per_sample=0, time_ms_per_sample=1
            ),
            UnitProfile(
                name="c", params=1, flops_per_sample=1, activation_bytes_per_sample=0, time_ms_per_sample=4
            ),
        ]
    )
    result = split_model(timed, request(2, balance_by=BalanceBy.TIME))
    assert result.balance_by == BalanceBy.TIME and result.bottleneck == 5 and not result.notes
    untimed = ModelProfile(
        units=[*timed.units[:2], timed.units[2].model_copy(update={"time_ms_per_sample": None})]
    )
    fallback = split_model(untimed, request(2, balance_by=BalanceBy.TIME))
    assert fallback.balance_by == BalanceBy.FLOPS
    assert "1 unit (c) have no timeMsPerSample" in fallback.notes[0]
    assert "balances flops instead" in fallback.notes[0]


def test_more_stages_than_units_names_the_field_and_the_count() -> None:
    with pytest.raises(
        PlanError, match=r"spec.split.stages: 4 stages but the model has only 3 units \(u0, u1, u2\)"
    ):
        split_model(profile(1, 1, 1), request(4))


def test_submodel_keeps_groups_whole() -> None:
    grouped = profile(1, 1, 1, 5, 1, 1, groups=["enc", "enc", "enc", "mid", "dec", "dec"])
    result = split_model(grouped, request(3, SplitStrategy.SUB_MODEL))
    assert units_of(result) == [["u0", "u1", "u2"], ["u3"], ["u4", "u5"]]
    assert result.bottleneck == 5


def test_submodel_units_without_group_are_their_own_group() -> None:
    items = group_items(profile(1, 1, 1, groups=["a", None, "a"]).units[:2])
    assert [item.name for item in items] == ["a", "u1"]


def test_submodel_rejects_a_group_that_is_not_contiguous() -> None:
    scattered = profile(1, 1, 1, groups=["enc", "dec", "enc"])
    with pytest.raises(PlanError, match=r"group 'enc' is not contiguous: its units u0, u2 .* after 'u0'"):
        split_model(scattered, request(2, SplitStrategy.SUB_MODEL))
    with pytest.raises(PlanError, match="group 'enc' is not contiguous"):
        split_model(profile(1, 1, 1, groups=["enc", None, "enc"]), request(2, SplitStrategy.SUB_MODEL))


def test_submodel_more_stages_than_groups() -> None:
    with pytest.raises(PlanError, match="only 2 groups"):
        split_model(profile(1, 1, 1, groups=["a", "a", "b"]), request(3, SplitStrategy.SUB_MODEL))


def multitask(trunk_layers: int = 4) -> ModelProfile:
    return catalog_profile(
        ModelSpec(
            catalog="MultiTaskMLP",
            args={"trunkLayers": trunk_layers, "heads": {"classify": 10, "regress": 1}},
        )
    )


def test_task_split_puts_heads_after_the_trunk() -> None:
    heads = ("head_classify", "head_regress")
    result = split_model(multitask(), request(3, SplitStrategy.TASK, heads=heads))
    assert units_of(result)[-1] == ["head_classify", "head_regress"]
    assert result.stages[-1].heads == ["head_classify", "head_regress"]
    assert all(not stage.heads for stage in result.stages[:-1])
    # trunk output (64 floats) passes through with both heads' outputs (10 + 1 floats)
    assert result.stages[-1].output_bytes_per_sample == (64 + 10 + 1) * 4
    assert "trunk in 2 stages, 2 heads in 1 stage" in result.notes[-1]


def test_task_split_gives_heads_more_stages_when_that_lowers_the_bottleneck() -> None:
    heavy_heads = ModelProfile(
        units=[
            UnitProfile(name="t0", params=1, flops_per_sample=10, activation_bytes_per_sample=4),
            UnitProfile(name="h0", params=1, flops_per_sample=10, activation_bytes_per_sample=4, head=True),
            UnitProfile(name="h1", params=1, flops_per_sample=10, activation_bytes_per_sample=4, head=True),
        ]
    )
    result = split_model(heavy_heads, request(3, SplitStrategy.TASK, heads=("h0", "h1")))
    assert units_of(result) == [["t0"], ["h0"], ["h1"]]
    assert [s.heads for s in result.stages] == [[], ["h0"], ["h1"]]
    assert [s.output_bytes_per_sample for s in result.stages] == [4, 8, 12]


def test_task_split_errors_name_the_head() -> None:
    profile_ = multitask()
    with pytest.raises(PlanError, match=r"spec.split.heads: 'head_nope' is not a unit of the model"):
        split_model(profile_, request(3, SplitStrategy.TASK, heads=("head_nope", "head_regress")))
    with pytest.raises(
        PlanError, match=r"unit 'trunk_0' is not a task head .* heads are: head_classify, head_regress"
    ):
        split_model(profile_, request(3, SplitStrategy.TASK, heads=("trunk_0",)))
    with pytest.raises(PlanError, match=r"head units \['head_regress'\] are missing"):
        split_model(profile_, request(3, SplitStrategy.TASK, heads=("head_classify",)))
    with pytest.raises(PlanError, match="needs at least 2 stages"):
        split_model(profile_, request(1, SplitStrategy.TASK, heads=("head_classify", "head_regress")))


def test_task_split_needs_the_trunk_before_the_heads() -> None:
    mixed = ModelProfile(
        units=[
            UnitProfile(name="h0", params=1, flops_per_sample=1, activation_bytes_per_sample=4, head=True),
            UnitProfile(name="t0", params=1, flops_per_sample=1, activation_bytes_per_sample=4),
        ]
    )
    with pytest.raises(PlanError, match="trunk units first"):
        split_model(mixed, request(2, SplitStrategy.TASK, heads=("h0",)))


def memory_limited(stages: int, limit: float, in_flight: tuple[int, ...] | None = None) -> MemoryModel:
    return MemoryModel(
        state_bytes_per_param=1.0,
        samples_per_gpu=1,
        in_flight=in_flight or (1,) * stages,
        usable_bytes_per_stage=limit,
        gpu_memory_bytes=limit / 0.9,
    )


def test_split_respects_memory_even_at_a_higher_bottleneck() -> None:
    # params 10 each (1 byte/param), 2 units per stage would be 20 bytes > 15
    result = split_model(
        profile(1, 1, 1, 1, params=10, activation=0), request(2, memory=memory_limited(2, 35))
    )
    assert all(stage.memory_bytes <= 35 for stage in result.stages)
    tight = split_model(
        profile(5, 1, 1, 1, params=10, activation=0), request(2, memory=memory_limited(2, 30))
    )
    assert units_of(tight) == [["u0"], ["u1", "u2", "u3"]]


def test_memory_error_names_the_unit_and_the_gpu_that_would_fit() -> None:
    huge = ModelProfile(
        units=[
            UnitProfile(name="embed", params=2**30, flops_per_sample=0, activation_bytes_per_sample=0),
            UnitProfile(name="block", params=10, flops_per_sample=1, activation_bytes_per_sample=0),
        ]
    )
    with pytest.raises(PlanError) as error:
        split_model(huge, request(2, memory=memory_limited(2, 0.9 * 2**29)))
    message = str(error.value)
    assert "no split into 2 stages fits in GPU memory: unit 'embed' alone needs 1.0 GiB in stage 0" in message
    assert "a GPU with at least 1.1 GiB (spec.resources.gpuMemory) would fit it" in message


def test_memory_error_for_a_stage_of_many_units() -> None:
    many = profile(*([1.0] * 6), params=100, activation=0)
    with pytest.raises(PlanError, match=r"the best split still needs 300 B in stage 0 \(u0, u1, u2\)"):
        split_model(many, request(2, memory=memory_limited(2, 250)))


def test_train_and_serve_memory_models_differ() -> None:
    from maas_operator.planner.memory import build_memory_model, in_flight_microbatches

    from .helpers import job

    train = job(training={"optimizer": "Adam", "batchSize": 32}).spec
    model = build_memory_model(train, 3, 4, 80 * 2**30)
    assert model.state_bytes_per_param == 4 * (1 + 1 + 2)  # float32 weights, grads, two Adam moments
    assert model.in_flight == (3, 2, 1) and model.samples_per_gpu == 8
    assert in_flight_microbatches(PipelineSchedule.GPIPE, Mode.TRAIN, 4, 3) == (4, 4, 4)
    serve = job(mode="Serve", serving={}, model={"catalog": "LargeModel", "dtype": "bfloat16"}).spec
    served = build_memory_model(serve, 2, 4, None)
    assert served.state_bytes_per_param == 2 and served.in_flight == (1, 1) and not served.checked
