"""Train mode: the step loop, loss and progress reporting, checkpoints and SIGTERM.

Each step ends with one small all-reduce over the whole job of [stop requested, loss sum, loss count]: it
averages the last stages' losses over replicas for rank 0's progress endpoint and makes every process
agree to stop (and checkpoint) at the same step when any of them got SIGTERM. It runs asynchronously and
is read one step later, so it never holds up the pipeline: step N's loss is reported, and a SIGTERM seen
in step N stops training with a checkpoint, at the end of step N+1 (the same step on every process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from maas_api.contract import DEFAULT_PROGRESS_PORT, PROGRESS_PORT_ENV, ExitCode
from maas_api.spec import Optimizer, TrainingSpec
from torch import nn

from maas_runtime import data
from maas_runtime.checkpoint import Checkpointer, TrainerState
from maas_runtime.data_parallel import apply_data_parallel
from maas_runtime.errors import PermanentError, RetryableError
from maas_runtime.losses import loss_function
from maas_runtime.pipeline import pipeline_stages, training_schedule
from maas_runtime.progress import FINISHED, TrainProgress, linger_seconds, serve_progress
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


@dataclass
class StepStats:
    """One step's [stop requested, loss sum, loss count], being summed over the job in the background."""

    step: int
    samples_seen: int
    seconds: float
    ended: float
    cpu_time: float
    values: torch.Tensor
    work: dist.Work | None

    def result(self) -> tuple[bool, float | None]:
        """(stop requested anywhere, loss averaged over replicas)."""
        if self.work is not None:
            self.work.wait()
        stop, loss_sum, loss_count = self.values.tolist()
        return stop > 0, (loss_sum / loss_count if loss_count else None)


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
    microbatch = training.batch_size // plan.microbatches
    local, modules = worker.local_units, worker.stage_modules
    if worker.dp_mesh is not None:
        apply_data_parallel(modules.values(), worker.dp_mesh)
    shapes = worker.shapes(microbatch, training=True)
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
    per_step = data.samples_per_step(training.batch_size, worker.dims.dp_size, plan.data.distribution)

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
    saved_step = state.step if checkpointer is not None and state.step > 0 else None
    progress.update(
        phase="Training", step=state.step, samples_seen=state.samples_seen, last_checkpoint_step=saved_step
    )

    def report(stats: StepStats) -> bool:
        """Wait for a step's job-wide stats, publish them (rank 0); True when the job must stop."""
        stop, loss = stats.result()
        if worker.rank == 0:
            rate = per_step / stats.seconds
            progress.update(
                step=stats.step, loss=loss, samples_per_second=rate, samples_seen=stats.samples_seen
            )
            worker.log(
                "step",
                step=stats.step,
                loss=loss,
                samplesPerSecond=rate,
                stepSeconds=stats.seconds,
                time=stats.ended,
                cpuTime=stats.cpu_time,
            )
        return stop

    previous: StepStats | None = None
    while state.step < training.steps:
        started = time.perf_counter()
        losses: list[torch.Tensor] = []
        args: list[torch.Tensor] = []
        target = None
        if samples is not None:
            start, count = data.rank_positions(
                state.samples_seen, training.batch_size, worker.coords.dp_rank, plan.data.distribution
            )
            indices = order.indices(start, count)
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

        values = torch.zeros(3, dtype=torch.float64, device=worker.device)
        values[0] = float(worker.terminate.is_set())
        if losses:
            values[1] = torch.stack([loss.detach().double() for loss in losses]).mean()
            values[2] = 1.0
        current = StepStats(
            step=state.step,
            samples_seen=state.samples_seen,
            seconds=time.perf_counter() - started,
            ended=time.time(),
            cpu_time=time.process_time(),
            values=values,
            work=dist.all_reduce(values, async_op=True),
        )
        stop = previous is not None and report(previous)
        previous = current

        interval_due = checkpointer is not None and state.step % checkpointer.interval == 0
        if checkpointer is not None and (interval_due or stop or state.step == training.steps):
            progress.update(phase="Checkpointing")
            path = checkpointer.save(state)
            saved_step = state.step
            progress.update(phase="Training", last_checkpoint_step=saved_step)
            if worker.rank == 0:
                worker.log("checkpoint", step=state.step, path=str(path))
        if stop:
            report(current)
            kept = (
                f"checkpoint step-{saved_step} saved"
                if saved_step == state.step
                else "no checkpoint configured"
            )
            raise RetryableError(f"terminated by SIGTERM after step {state.step} ({kept})")
    if previous is not None:
        report(previous)
    progress.update(phase=FINISHED)
    if worker.rank == 0:
        worker.log("finished", step=state.step, loss=progress.loss)
    return ExitCode.SUCCESS
