"""Train mode: the step loop, loss and progress reporting, checkpoints and SIGTERM.

Steps are reported in windows: at the end of a window every process joins one small all-reduce over the
whole job of [stop requested, step time, and each step's loss sum and count]. It averages the last stages'
losses over replicas for rank 0's progress endpoint and makes every process agree to stop (and checkpoint)
at the same step when any of them got SIGTERM. It runs asynchronously and is read one step later, so it
never holds up the pipeline. A window lasts about STATS_PERIOD_SECONDS (one step when steps are slower): a
collective per step would cost fast steps a millisecond or more on gloo, while a SIGTERM must still stop
training within about that period. Every process computes the next window's length from the same reduced
numbers, so they all agree on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from maas_api.batch import BatchError, first_sample, process_batch, samples_per_step
from maas_api.contract import DEFAULT_PROGRESS_PORT, PROGRESS_FINISHED, PROGRESS_PORT_ENV, ExitCode
from maas_api.spec import DataDistribution, Optimizer, TrainingSpec
from torch import nn

from maas_runtime import data
from maas_runtime.checkpoint import Checkpointer, TrainerState
from maas_runtime.data_parallel import apply_data_parallel
from maas_runtime.errors import PermanentError, RetryableError
from maas_runtime.losses import loss_function
from maas_runtime.pipeline import pipeline_stages, training_schedule
from maas_runtime.progress import TrainProgress, linger_seconds, serve_progress
from maas_runtime.worker import Worker


def build_optimizer(training: TrainingSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    kinds: dict[Optimizer, Callable[..., torch.optim.Optimizer]] = {
        Optimizer.SGD: torch.optim.SGD,
        Optimizer.ADAM: torch.optim.Adam,
        Optimizer.ADAMW: torch.optim.AdamW,
    }
    return kinds[training.optimizer](
        list(params), lr=training.learning_rate, weight_decay=training.weight_decay
    )


def progress_port() -> int:
    raw = os.environ.get(PROGRESS_PORT_ENV) or str(DEFAULT_PROGRESS_PORT)
    if not raw.isdigit():
        raise PermanentError(PROGRESS_PORT_ENV, f"{raw!r} is not a port number")
    return int(raw)


STATS_PERIOD_SECONDS = 0.5
"""Target time between two job-wide stats all-reduces (and the latency of a SIGTERM's stop)."""
MAX_STATS_WINDOW = 100
"""Most steps in one stats window."""


@dataclass(frozen=True)
class StepRecord:
    """What this process saw of one step."""

    step: int
    samples_seen: int
    seconds: float
    ended: float
    cpu_time: float
    loss: torch.Tensor | None
    """Mean loss of the step's microbatches (last stages only)."""


@dataclass
class StatsWindow:
    """Steps being summed over the job in the background: [stop, step microseconds, (loss sum, count) each]."""

    records: list[StepRecord]
    values: torch.Tensor
    work: dist.Work

    @classmethod
    def reduce(cls, records: list[StepRecord], stop: bool, device: torch.device) -> StatsWindow:
        values = torch.zeros(2 + 2 * len(records), dtype=torch.float64)
        values[0] = float(stop)
        # Whole microseconds: their sum is exact, so every process computes the same next window.
        values[1] = sum(round(record.seconds * 1e6) for record in records)
        for i, record in enumerate(records):
            if record.loss is not None:
                values[2 + 2 * i] = record.loss
                values[3 + 2 * i] = 1.0
        values = values.to(device)
        return cls(records, values, dist.all_reduce(values, async_op=True))

    def result(self) -> tuple[bool, list[float | None], int]:
        """(stop requested anywhere, each step's loss averaged over replicas, steps in the next window)."""
        self.work.wait()
        values = self.values.tolist()
        losses = [s / n if n else None for s, n in zip(values[2::2], values[3::2], strict=True)]
        mean_step_seconds = values[1] / 1e6 / len(self.records) / dist.get_world_size()
        period_steps = int(STATS_PERIOD_SECONDS / mean_step_seconds) if mean_step_seconds > 0 else 1
        return values[0] > 0, losses, max(1, min(MAX_STATS_WINDOW, period_steps))


def train(worker: Worker) -> ExitCode:
    plan, training = worker.plan, worker.training
    progress = TrainProgress(plan.job, plan.namespace, training.steps)
    linger = linger_seconds()
    server = serve_progress(progress, progress_port()) if worker.rank == 0 else None
    try:
        code = _train(worker, progress)
        if server is not None:
            progress.final_state_served.wait(linger)
        return code
    finally:
        if server is not None:
            server.close()


def _train(worker: Worker, progress: TrainProgress) -> ExitCode:
    plan, training = worker.plan, worker.training
    try:
        batch = process_batch(False, training.batch_size, worker.dims.procs_per_worker, plan.microbatches)
    except BatchError as error:
        raise PermanentError("plan.training.batchSize", str(error)) from error
    shard = plan.data.distribution == DataDistribution.SHARD
    local, modules = worker.local_units, worker.stage_modules
    if worker.dp_mesh is not None:
        apply_data_parallel(modules.values(), worker.dp_mesh)
    shapes = worker.shapes(batch.microbatch_size, training=True)
    stages = pipeline_stages(modules, shapes, worker.device, worker.pp_group)
    schedule = training_schedule(plan.schedule, stages, plan.microbatches, loss_function(training.loss))
    params = list(local.parameters())
    # Stages of parameter-free units (activations, reshapes) have nothing to optimise.
    optimizer = build_optimizer(training, params) if params else None

    samples: data.Samples | None = None
    if worker.has_first_stage or worker.has_last_stage:
        samples = data.open_samples(plan, worker.model.input_spec, worker.target_spec())
    data_seed = plan.data.synthetic.seed if plan.data.synthetic else 0
    order = data.SampleOrder(samples.size if samples else 1, data_seed)
    per_step = samples_per_step(training.batch_size, worker.dims.replicas, shard)

    checkpointer = Checkpointer(plan.checkpoint, plan.job, local, optimizer) if plan.checkpoint else None
    state = TrainerState(step=0, samples_seen=0)
    if checkpointer is not None and (latest := checkpointer.latest_step()) is not None:
        state = checkpointer.load(latest)
        worker.log(
            "resumed",
            step=state.step,
            samplesSeen=state.samples_seen,
            checkpoint=str(checkpointer.path(latest)),
        )
    worker.log(
        "batch", samples=batch.samples, microbatches=batch.microbatches, microbatchSize=batch.microbatch_size
    )
    saved_step = state.step if checkpointer is not None and state.step > 0 else None
    progress.update(
        phase="Training", step=state.step, samples_seen=state.samples_seen, last_checkpoint_step=saved_step
    )

    def report(window: StatsWindow) -> tuple[bool, int]:
        """Wait for a window's job-wide stats and publish them (rank 0); (stop the job, next window size)."""
        stop, losses, next_window = window.result()
        if worker.rank == 0:
            for record, loss in zip(window.records, losses, strict=True):
                rate = per_step / record.seconds
                worker.log(
                    "step",
                    step=record.step,
                    loss=loss,
                    samplesPerSecond=rate,
                    stepSeconds=record.seconds,
                    time=record.ended,
                    cpuTime=record.cpu_time,
                )
            last = window.records[-1]
            progress.update(
                step=last.step, loss=losses[-1], samples_per_second=rate, samples_seen=last.samples_seen
            )
        return stop, next_window

    records: list[StepRecord] = []
    pending: StatsWindow | None = None
    window_end = state.step + 1
    while state.step < training.steps:
        started = time.perf_counter()
        losses: list[torch.Tensor] = []
        args: list[torch.Tensor] = []
        target = None
        if samples is not None:
            coords = worker.coords
            start = first_sample(state.samples_seen, batch.samples, coords.dp_rank, coords.local_rank, shard)
            indices = order.indices(start, batch.samples)
            if worker.has_first_stage:
                args = [samples.inputs(indices).to(worker.device, worker.model.input_spec.dtype)]
            if worker.has_last_stage:
                target = samples.targets(indices).to(worker.device)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        schedule.step(*args, target=target, losses=losses if worker.has_last_stage else None)
        if optimizer is not None:
            optimizer.step()
        state = TrainerState(step=state.step + 1, samples_seen=state.samples_seen + per_step)
        records.append(
            StepRecord(
                step=state.step,
                samples_seen=state.samples_seen,
                seconds=time.perf_counter() - started,
                ended=time.time(),
                cpu_time=time.process_time(),
                loss=torch.stack([loss.detach().double() for loss in losses]).mean() if losses else None,
            )
        )

        # Every process takes the same branches at the same steps: they depend on reduced values only.
        stop = False
        if pending is not None:
            stop, window = report(pending)
            window_end, pending = pending.records[-1].step + window, None
        if state.step >= window_end or state.step == training.steps or stop:
            pending = StatsWindow.reduce(records, worker.terminate.is_set(), worker.device)
            records = []

        interval_due = checkpointer is not None and state.step % checkpointer.interval == 0
        if checkpointer is not None and (interval_due or stop or state.step == training.steps):
            progress.update(phase="Checkpointing")
            path = checkpointer.save(state)
            saved_step = state.step
            progress.update(phase="Training", last_checkpoint_step=saved_step)
            if worker.rank == 0:
                worker.log("checkpoint", step=state.step, path=str(path))
        if stop:
            assert pending is not None
            report(pending)
            kept = (
                f"checkpoint step-{saved_step} saved"
                if saved_step == state.step
                else "no checkpoint configured"
            )
            raise RetryableError(f"terminated by SIGTERM after step {state.step} ({kept})")
    if pending is not None:
        report(pending)
    progress.update(phase=PROGRESS_FINISHED)
    if worker.rank == 0:
        worker.log("finished", step=state.step, loss=progress.loss)
    return ExitCode.SUCCESS
