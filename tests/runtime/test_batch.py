"""One meaning of the batch: training.batchSize per replica, split over a worker's GPUs, planner = runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from maas_api.batch import BatchError, first_sample, process_batch, samples_per_step, serving_buckets
from maas_api.job import ManifestError
from maas_operator.planner import build_plan
from maas_operator.planner.memory import build_memory_model, microbatch_pool
from maas_operator.planner.reasons import PlanError
from maas_runtime import data
from maas_runtime.launch import run

from tests.planner.helpers import job
from tests.runtime.reference import reference_training
from tests.runtime.support import TINY_MLP, TOLERANCE


def test_a_replica_batch_is_split_over_the_worker_processes_then_into_microbatches() -> None:
    batch = process_batch(False, replica_batch=32, processes_per_worker=4, microbatches=2)
    assert (batch.samples, batch.microbatches, batch.microbatch_size) == (8, 2, 4)
    with pytest.raises(BatchError, match=r"training.batchSize 30 .* 4 process\(es\).* multiple of 8"):
        process_batch(False, replica_batch=30, processes_per_worker=4, microbatches=2)


@pytest.mark.parametrize(("shard", "per_step"), [(True, 24), (False, 12)])
def test_processes_read_their_share_of_their_replica_batch(shard: bool, per_step: int) -> None:
    """2 replicas x 3 processes per worker, batchSize 12: each process reads 4 samples a step."""
    replicas, processes, replica_batch = 2, 3, 12
    order = data.SampleOrder(size=48, seed=2)
    share = process_batch(False, replica_batch, processes, microbatches=1).samples
    assert samples_per_step(replica_batch, replicas, shard) == per_step
    read: dict[int, list[int]] = {}
    for replica in range(replicas):
        samples: list[int] = []
        for local_rank in range(processes):
            start = first_sample(96, share, replica * processes + local_rank, local_rank, shard)
            samples += order.indices(start, share).tolist()
        assert len(set(samples)) == replica_batch  # a replica's processes never read the same sample
        read[replica] = samples
    expected = order.indices(96, per_step).tolist()
    assert sorted(read[0] + read[1] if shard else read[0]) == sorted(expected)
    assert (read[0] == read[1]) is not shard


def test_serving_buckets_end_at_max_batch_size_with_the_plan_microbatches() -> None:
    assert serving_buckets(6, 3) == [(1, 1), (2, 2), (4, 2), (6, 3)]
    assert serving_buckets(8, 4) == [(1, 1), (2, 2), (4, 4), (8, 4)]
    assert serving_buckets(1, 4) == [(1, 1)]
    # The planner sizes activations for the largest microbatch of any bucket: 8 -> 2 x 4 beats 9 -> 3 x 3.
    largest = process_batch(True, replica_batch=9, processes_per_worker=1, microbatches=3)
    assert (largest.samples, largest.microbatches, largest.microbatch_size) == (9, 2, 4)


def test_the_batch_rule_reads_the_batch_of_the_jobs_mode() -> None:
    # Serve: maxBatchSize is what microbatches cut; the training default (32) does not matter.
    serve = job("srv", mode="Serve", serving={"maxBatchSize": 6}, parallelism={"microbatches": 3})
    assert serve.spec.parallelism.microbatches == 3
    with pytest.raises(ManifestError, match=r"serving.maxBatchSize must be divisible"):
        job("srv", mode="Serve", serving={"maxBatchSize": 6}, parallelism={"microbatches": 4})
    # Train: the samples of one GPU (batchSize / gpus) must split into the microbatches.
    with pytest.raises(ManifestError, match=r"spec.parallelism.microbatches: training.batchSize / resources"):
        job("t", resources={"gpus": 4}, training={"batchSize": 8}, parallelism={"microbatches": 4})
    with pytest.raises(
        ManifestError, match=r"spec.training.batchSize: .* divisible by resources.gpus"
    ) as raised:
        job("t", resources={"gpus": 3}, training={"batchSize": 8}, parallelism={"microbatches": 4})
    assert len(raised.value.problems) == 1  # the microbatch rule leaves an uneven GPU split to this one


def test_planner_chooses_microbatches_that_divide_one_gpus_share() -> None:
    spec = job("t", resources={"gpus": 4}, training={"batchSize": 8}, split={"stages": 2}).spec
    assert microbatch_pool(spec) == 2
    plan = build_plan(job("t", resources={"gpus": 4}, training={"batchSize": 8}, split={"stages": 2}))
    assert plan.microbatches == 2  # 1F1B needs one per stage; 2 samples per GPU allow no more
    assert build_memory_model(spec, 2, plan.microbatches, None).samples_per_gpu == 1
    with pytest.raises(
        PlanError, match=r"spec.training.batchSize / spec.resources.gpus: 1 samples cannot feed"
    ):
        build_plan(job("t", resources={"gpus": 4}, training={"batchSize": 4}, split={"stages": 2}))


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_runtime_runs_the_batch_the_planner_estimated(tmp_path: Path) -> None:
    """A planned job with 2 GPUs (processes) per worker and 2 stages: every process runs half the replica's
    batch, in the microbatches the planner sized memory for, and the job trains on batchSize per step."""
    manifest = job(
        "split",
        model=TINY_MLP.to_wire(),
        resources={"gpus": 2},
        split={"stages": 2},
        # Set, not chosen: the planner's choice follows its bubble model, and this test is about the batch.
        parallelism={"schedule": "GPipe", "microbatches": 4},
        training={"steps": 3, "batchSize": 8, "optimizer": "SGD", "learningRate": 0.05},
    )
    plan = build_plan(manifest)
    assert plan.microbatches == 4 and plan.world_size == 4
    result = run(plan, tmp_path / "run")
    assert result.ok, result.describe()
    memory = build_memory_model(manifest.spec, len(plan.stages), plan.microbatches, None)
    batches = result.events("batch")
    assert len(batches) == 4
    assert {(b["samples"], b["microbatches"], b["microbatchSize"]) for b in batches} == {
        (4, plan.microbatches, memory.samples_per_gpu)
    }
    reference = reference_training(plan)  # one process on batchSize samples per step
    losses = [event["loss"] for event in result.events("step", rank=0)]
    assert losses == pytest.approx(reference.losses, abs=TOLERANCE)
