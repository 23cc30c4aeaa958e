"""The planner's memory model follows what the runtime does: FSDP2 state, serving, saved activations."""

from __future__ import annotations

from typing import Any

import pytest
from maas_api.batch import process_batch
from maas_api.catalog import catalog_profile
from maas_api.plan import ModelProfile
from maas_api.spec import UnitProfile
from maas_operator.planner import build_plan
from maas_operator.planner.memory import build_memory_model, fsdp_shard_degrees, state_bytes_per_param

from tests.planner.helpers import job

BF16 = {"catalog": "LargeModel", "dtype": "bfloat16"}


def _spec(**fields: Any) -> Any:
    return job("m", model=BF16, **fields).spec


@pytest.mark.parametrize(
    ("fields", "per_param"),
    [
        # No data parallelism: nothing is wrapped; weights, gradients and AdamW's two states.
        ({}, 2 * 4),
        ({"training": {"optimizer": "SGD"}, "parallelism": {"replicas": 1}}, 2 * 2),
        # One GPU per worker, 4 replicas: FSDP over the replicas keeps unsharded weights and gradients (2)
        # next to a quarter of weights, gradients and states.
        ({"parallelism": {"replicas": 4}}, 2 * (2 + 4 / 4)),
        # 4 GPUs per worker: HSDP shards over them, whatever the replica count.
        ({"resources": {"gpus": 4}, "parallelism": {"replicas": 3}}, 2 * (2 + 4 / 4)),
        # Replicas still to be chosen (auto), SGD: the worse of no FSDP (2) and FSDP over 2 (2 + 2/2).
        (
            {"training": {"optimizer": "SGD"}, "split": {"stages": "auto"}, "parallelism": {"gpuBudget": 4}},
            2 * 3,
        ),
        # Serving never shards and keeps no gradients or optimizer states, on any number of GPUs.
        ({"mode": "Serve", "serving": {}, "resources": {"gpus": 4}, "training": None}, 2 * 1),
    ],
)
def test_state_bytes_per_parameter_follow_fsdp2_without_resharding(
    fields: dict[str, Any], per_param: float
) -> None:
    fields = {k: v for k, v in fields.items() if v is not None}
    assert state_bytes_per_param(_spec(**fields)) == per_param


def test_shard_degrees() -> None:
    assert fsdp_shard_degrees(_spec()) == {1}
    assert fsdp_shard_degrees(_spec(parallelism={"replicas": 2, "maxReplicas": 8})) == {2}
    assert fsdp_shard_degrees(_spec(resources={"gpus": 8}, parallelism={"replicas": 3})) == {8}
    # split.stages auto sizes the split before it picks the replicas: the worse of none and 2 bounds all.
    auto = _spec(split={"stages": "auto"}, parallelism={"gpuBudget": 8})
    assert fsdp_shard_degrees(auto) == {1, 2}


def test_training_counts_saved_tensors_and_serving_only_outputs() -> None:
    unit = UnitProfile(
        name="u", params=1, flops_per_sample=1, activation_bytes_per_sample=10, saved_bytes_per_sample=160
    )
    unmeasured = unit.model_copy(update={"saved_bytes_per_sample": None})
    train = build_memory_model(_spec(), 1, 1, None)
    serve = build_memory_model(_spec(mode="Serve", serving={}), 1, 1, None)
    assert (train.activation_bytes(unit), train.activation_bytes(unmeasured)) == (160, 10)
    assert serve.activation_bytes(unit) == 10


def test_microbatch_samples_on_one_gpu_come_from_the_shared_batch_rule() -> None:
    train = _spec(resources={"gpus": 4}, training={"batchSize": 64})
    assert build_memory_model(train, 2, 4, None).samples_per_gpu == 64 // 4 // 4
    serve = _spec(mode="Serve", serving={"maxBatchSize": 12})
    # Serving: one process takes all requests; buckets 1, 2, 4, 8, 12; with 3 microbatches 8 runs as 2 x 4.
    assert build_memory_model(serve, 2, 3, None).samples_per_gpu == 4
    assert process_batch(True, 12, 1, 3).microbatch_size == 4


def test_transformer_blocks_keep_about_16x_their_output_for_backward() -> None:
    """The example transformer (examples/transformer-auto.yaml) as it plans, 4 stages x 4 replicas: counting
    outputs only, the peak per GPU was 22 GiB; with what autograd keeps it is 67 GiB."""
    args = {"vocab": 32000, "dim": 4096, "layers": 48, "heads": 32, "seqLen": 2048}
    model = {"catalog": "Transformer", "args": args, "dtype": "bfloat16"}
    block = catalog_profile(job("t", model=model).spec.model).unit("block_0")
    assert block.saved_bytes_per_sample is not None
    assert block.saved_bytes_per_sample / block.activation_bytes_per_sample == pytest.approx(16, rel=0.01)
    manifest = job(
        "t",
        model=model,
        split={"stages": 4},
        parallelism={"replicas": 4, "microbatches": 16},
        training={"batchSize": 64},
        resources={"gpus": 1, "gpuMemory": "80Gi"},
    )
    peak = max(stage.memory_bytes for stage in build_plan(manifest).stages)
    outputs_only = ModelProfile(
        units=[
            u.model_copy(update={"saved_bytes_per_sample": None})
            for u in catalog_profile(manifest.spec.model).units
        ]
    )
    optimistic = max(stage.memory_bytes for stage in build_plan(manifest, profile=outputs_only).stages)
    assert 60 * 2**30 < peak < 72 * 2**30 and peak - optimistic > 40 * 2**30


def test_profiles_without_saved_bytes_get_a_note() -> None:
    profile = [{"name": "a", "params": 10, "flopsPerSample": 5, "activationBytesPerSample": 4}]
    plan = build_plan(job("f", model={"factory": "pkg.mod:build", "profile": profile}))
    assert any("gives no savedBytesPerSample for 1 unit (a)" in note for note in plan.notes)
    serve = job("f", mode="Serve", serving={}, model={"factory": "pkg.mod:build", "profile": profile})
    assert not any("savedBytesPerSample" in note for note in build_plan(serve).notes)
