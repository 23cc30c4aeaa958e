"""Wrapping stage modules in `torch.distributed.pipelining` stages and picking the schedule by name.

Stage metadata is static (shapes from a meta-device trace), so no shape-inference traffic or extra forward
runs before the first step. Training uses the plan's schedule; serving is forward-only, where every
schedule degenerates to GPipe's order, so it uses ScheduleGPipe (one stage per rank) or ScheduleLoopedBFS
(several), which take any number of microbatches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from maas_api.spec import PipelineSchedule
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleLoopedBFS,
)
from torch.distributed.pipelining.schedules import _PipelineSchedule
from torch.distributed.pipelining.stage import _PipelineStageBase
from torch.nn import Module

from maas_runtime.errors import PermanentError
from maas_runtime.losses import LossFn
from maas_runtime.stages import StageShapes


def pipeline_stages(
    modules: Mapping[int, Module],
    shapes: Sequence[StageShapes],
    device: torch.device,
    group: dist.ProcessGroup,
) -> list[PipelineStage]:
    """One PipelineStage per local stage module (keys: stage indexes), in stage order."""
    return [
        PipelineStage(
            module,
            stage_index=index,
            num_stages=len(shapes),
            device=device,
            input_args=shapes[index].inputs,
            output_args=shapes[index].outputs,
            group=group,
        )
        for index, module in sorted(modules.items())
    ]


def training_schedule(
    name: PipelineSchedule, stages: list[PipelineStage], microbatches: int, loss_fn: LossFn
) -> _PipelineSchedule:
    try:
        if name == PipelineSchedule.INTERLEAVED_1F1B:
            return ScheduleInterleaved1F1B(_base(stages), microbatches, loss_fn=loss_fn)
        if len(stages) != 1:
            raise PermanentError(
                "plan.stagesPerWorker",
                f"schedule {name.value} runs one stage per worker; use Interleaved1F1B",
            )
        single = ScheduleGPipe if name == PipelineSchedule.GPIPE else Schedule1F1B
        return single(stages[0], microbatches, loss_fn=loss_fn)
    except ValueError as error:
        raise PermanentError("plan.microbatches", f"{error} (schedule {name.value})") from error


def inference_schedule(stages: list[PipelineStage], microbatches: int) -> _PipelineSchedule:
    if len(stages) == 1:
        return ScheduleGPipe(stages[0], microbatches)
    return ScheduleLoopedBFS(_base(stages), microbatches)


def _base(stages: list[PipelineStage]) -> list[_PipelineStageBase]:
    return list(stages)
