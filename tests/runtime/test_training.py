"""Distributed training equals a single-process reference: splits, schedules, data parallel, resume.

Every run saves a checkpoint at its last step; the final weights are read back from it into the whole model
and compared with the reference's, within support.TOLERANCE (1e-5, float32).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from maas_api.plan import Plan
from maas_api.spec import (
    CheckpointSpec,
    DataDistribution,
    DataSpec,
    Loss,
    Optimizer,
    PipelineSchedule,
    SplitStrategy,
    SyntheticData,
    TrainingSpec,
    VolumeSource,
)
from maas_runtime.checkpoint import complete_steps
from maas_runtime.launch import LaunchResult, local_plan, run, start

from tests.runtime.factories import UNEVEN_UNITS
from tests.runtime.reference import load_checkpoint_model, max_difference, reference_training
from tests.runtime.support import (
    TINY_MLP,
    TINY_MULTITASK,
    TINY_TRANSFORMER,
    TOLERANCE,
    WORKER_ENV,
    factory_model,
    free_port,
    http,
    wait_until,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]


def _checkpoints(tmp_path: Path) -> CheckpointSpec:
    return CheckpointSpec(
        claim_name="checkpoints", mount_path=str(tmp_path / "checkpoints"), interval_steps=1000
    )


def _losses(result: LaunchResult) -> list[float]:
    return [event["loss"] for event in result.events("step", rank=0)]


def _assert_matches_reference(plan: Plan, result: LaunchResult, tmp_path: Path) -> None:
    assert result.ok, result.describe()
    reference = reference_training(plan)
    assert _losses(result) == pytest.approx(reference.losses, abs=TOLERANCE)
    assert plan.training is not None
    trained = load_checkpoint_model(plan, tmp_path / "checkpoints" / plan.job / f"step-{plan.training.steps}")
    assert max_difference(trained, reference.units) < TOLERANCE


def test_gpipe_pipeline_2_by_data_2_on_a_data_file(tmp_path: Path) -> None:
    """Layer split, GPipe, FSDP2 over 2 replicas, samples from a torch.save file on a volume."""
    generator = torch.Generator().manual_seed(3)
    (tmp_path / "volume").mkdir()
    torch.save(
        {
            "inputs": torch.randn(40, 8, generator=generator),
            "targets": torch.randn(40, 4, generator=generator),
        },
        tmp_path / "volume" / "train.pt",
    )
    plan = local_plan(
        "gpipe",
        TINY_MLP,
        stages=2,
        replicas=2,
        schedule=PipelineSchedule.GPIPE,
        microbatches=2,
        training=TrainingSpec(steps=4, batch_size=8, optimizer=Optimizer.SGD, learning_rate=0.1),
        checkpoint=_checkpoints(tmp_path),
        data=DataSpec(
            path="train.pt", volume=VolumeSource(claim_name="data", mount_path=str(tmp_path / "volume"))
        ),
    )
    _assert_matches_reference(plan, run(plan, tmp_path / "run"), tmp_path)


def test_1f1b_submodel_split_of_a_transformer(tmp_path: Path) -> None:
    """SubModel split (embedding + decoder | lm_head), 1F1B, 2 replicas with Replicate data, AdamW, CrossEntropy."""
    plan = local_plan(
        "submodel",
        TINY_TRANSFORMER,
        stages=[["embed", "block_0", "block_1"], ["head"]],
        strategy=SplitStrategy.SUB_MODEL,
        replicas=2,
        schedule=PipelineSchedule.ONE_F_ONE_B,
        microbatches=2,
        training=TrainingSpec(
            steps=3, batch_size=4, optimizer=Optimizer.ADAMW, learning_rate=0.01, loss=Loss.CROSS_ENTROPY
        ),
        checkpoint=_checkpoints(tmp_path),
        data=DataSpec(distribution=DataDistribution.REPLICATE, synthetic=SyntheticData(seed=5, samples=64)),
    )
    _assert_matches_reference(plan, run(plan, tmp_path / "run"), tmp_path)


def test_interleaved_1f1b_task_split(tmp_path: Path) -> None:
    """Task split with each head a stage of its own, Interleaved1F1B with 2 stages per process, FSDP2 over
    2 replicas of each stage module, Adam."""
    plan = local_plan(
        "task",
        TINY_MULTITASK,
        stages=[["trunk_0", "trunk_1"], ["trunk_2"], ["head_classify"], ["head_regress"]],
        heads=["head_classify", "head_regress"],
        stages_per_worker=2,
        replicas=2,
        schedule=PipelineSchedule.INTERLEAVED_1F1B,
        microbatches=4,
        training=TrainingSpec(steps=3, batch_size=8, optimizer=Optimizer.ADAM, learning_rate=0.01),
        checkpoint=_checkpoints(tmp_path),
    )
    assert plan.world_size == 4
    _assert_matches_reference(plan, run(plan, tmp_path / "run"), tmp_path)


def test_several_processes_per_worker_run_hsdp(tmp_path: Path) -> None:
    """2 replicas x 2 processes per worker (as with 2 GPUs per pod): HSDP replicates across replicas and
    shards across a worker's processes; a single-stage pipeline."""
    plan = local_plan(
        "hsdp",
        TINY_MLP,
        replicas=2,
        gpus_per_worker=2,
        schedule=PipelineSchedule.GPIPE,
        microbatches=2,
        training=TrainingSpec(steps=3, batch_size=4, optimizer=Optimizer.ADAMW, learning_rate=0.01),
        checkpoint=_checkpoints(tmp_path),
    )
    assert plan.world_size == 4
    _assert_matches_reference(plan, run(plan, tmp_path / "run"), tmp_path)


def test_sigterm_checkpoints_and_resume_at_another_data_parallel_degree(tmp_path: Path) -> None:
    """SIGTERM mid-run: checkpoint, exit 75; resume with 1 replica instead of 2 and another split; then
    the losses and weights equal a reference that changed its global batch at the same step."""
    training = TrainingSpec(steps=100_000, batch_size=8, optimizer=Optimizer.ADAMW, learning_rate=0.01)
    first = local_plan(
        "resume",
        TINY_MLP,
        stages=2,
        replicas=2,
        microbatches=2,
        training=training,
        checkpoint=_checkpoints(tmp_path),
    )
    port = free_port()
    job = start(first, tmp_path / "first", env={"MAAS_PROGRESS_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http("GET", f"{url}/progress", timeout=2)[1]["step"] >= 3, 120, "step 3 on /progress")
    status, progress = http("GET", f"{url}/progress")
    assert status == 200 and progress["phase"] == "Training" and progress["totalSteps"] == 100_000
    status, metrics = http("GET", f"{url}/metrics")
    assert status == 200 and "maas_train_step{" in metrics and "maas_train_loss{" in metrics
    job.signal_workers(signal.SIGTERM)
    stopped = job.wait(120)

    assert set(stopped.exit_codes.values()) == {75}, stopped.describe()
    steps = complete_steps(tmp_path / "checkpoints" / "resume")
    assert len(steps) == 1 and steps[0] >= 3
    stop_step = steps[0]
    assert (
        f"terminated by SIGTERM after step {stop_step} (checkpoint step-{stop_step} saved)"
        in stopped.stderr[0]
    )

    second = local_plan(
        "resume",
        TINY_MLP,
        stages=[["layer_0"], ["layer_1", "layer_2", "layer_3"]],
        replicas=1,
        microbatches=2,
        training=training.model_copy(update={"steps": stop_step + 3}),
        checkpoint=_checkpoints(tmp_path),
    )
    resumed = run(second, tmp_path / "second")
    assert resumed.ok, resumed.describe()
    assert resumed.events("resumed", rank=0)[0]["step"] == stop_step
    reference = reference_training(second, replicas=[2] * stop_step + [1] * 3)
    assert _losses(resumed) == pytest.approx(reference.losses[stop_step:], abs=TOLERANCE)
    trained = load_checkpoint_model(second, tmp_path / "checkpoints" / "resume" / f"step-{stop_step + 3}")
    assert max_difference(trained, reference.units) < TOLERANCE


def _uneven(tmp_path: Path, job: str, stages: list[list[str]], **plan: Any) -> Plan:
    model = factory_model("tests.runtime.factories:uneven", UNEVEN_UNITS)
    return local_plan(job, model, stages=stages, checkpoint=_checkpoints(tmp_path), **plan)


def test_stages_without_parameters_under_data_parallel(tmp_path: Path) -> None:
    """Units of every kind (Tanh, Linear, residual, GELU, LayerNorm, a bare parameter, a buffer-only unit):
    pipeline rank 0 owns stages 0 and 2, which have no parameter at all, in Interleaved1F1B with FSDP2 over
    2 replicas; /progress then reports the end of training before the endpoint closes."""
    plan = _uneven(
        tmp_path,
        "paramfree",
        [["squash"], ["linear", "residual"], ["activation"], ["norm", "scale", "shift", "output"]],
        stages_per_worker=2,
        replicas=2,
        schedule=PipelineSchedule.INTERLEAVED_1F1B,
        microbatches=4,
        training=TrainingSpec(steps=3, batch_size=8, optimizer=Optimizer.ADAMW, learning_rate=0.01),
    )
    port = free_port()
    env = {**WORKER_ENV, "MAAS_PROGRESS_PORT": str(port), "MAAS_PROGRESS_LINGER_SECONDS": "120"}
    job = start(plan, tmp_path / "run", env=env)
    url = f"http://127.0.0.1:{port}/progress"

    seen: list[dict[str, Any]] = []

    def finished() -> bool:
        assert job.process.poll() is None, job.wait(0).describe()
        seen.append(http("GET", url, timeout=2)[1])
        return bool(seen[-1]["phase"] == "Finished")

    wait_until(finished, 120, "phase Finished")
    assert (seen[-1]["step"], seen[-1]["lastCheckpointStep"]) == (3, 3)
    started = time.monotonic()
    result = job.wait(60)
    # Once the final state was read, the endpoint closes and the job ends without waiting out the 120 s.
    assert time.monotonic() - started < 30
    _assert_matches_reference(plan, result, tmp_path)


def test_resume_takes_state_from_the_checkpoint_and_settings_from_the_job(tmp_path: Path) -> None:
    """3 steps with a parameter-free stage alone (pipeline of 3); resumed as one stage with another learning
    rate and weight decay, which apply from the first resumed step on."""
    before = TrainingSpec(steps=3, batch_size=6, learning_rate=0.01, weight_decay=0.01)
    first = _uneven(
        tmp_path,
        "settings",
        [["squash", "linear", "residual"], ["activation"], ["norm", "scale", "shift", "output"]],
        microbatches=3,
        training=before,
    )
    assert run(first, tmp_path / "first", env=WORKER_ENV).ok
    after = before.model_copy(update={"steps": 5, "learning_rate": 0.05, "weight_decay": 0.1})
    second = _uneven(tmp_path, "settings", [UNEVEN_UNITS], microbatches=3, training=after)
    resumed = run(second, tmp_path / "second", env=WORKER_ENV)
    assert resumed.ok, resumed.describe()
    reference = reference_training(second, earlier=(3, before))
    assert _losses(resumed) == pytest.approx(reference.losses[3:], abs=TOLERANCE)
    trained = load_checkpoint_model(second, tmp_path / "checkpoints" / "settings" / "step-5")
    assert max_difference(trained, reference.units) < TOLERANCE
    # The same steps with the first run's settings throughout end elsewhere: the new settings mattered.
    unchanged = reference_training(second, earlier=(5, before))
    assert max_difference(unchanged.units, reference.units) > 100 * TOLERANCE
