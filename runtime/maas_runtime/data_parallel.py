"""Data parallelism over the mesh's ("replica", "local") dims with FSDP2 (`fully_shard`), for every schedule.

Why FSDP2 and not DDP: DDP's reducer fails with ScheduleGPipe (all forwards run before the backwards and
upset its bucket rebuild; see FINDINGS.md), while FSDP2 works with GPipe, 1F1B and the interleaved
schedules, and PipelineStage drives it (no gradient sync until the last microbatch, then one
reduce-scatter). This is what torchtitan does. Each unit is its own FSDP group, and each stage module the
root of its units; parameters stay unsharded between forward and backward (`reshard_after_forward=False`),
trading memory for one all-gather per step instead of one per microbatch. With one process per worker the
dp mesh is 1-D ("replica": parameters sharded across replicas); with several GPUs per worker it is 2-D and
FSDP2 runs HSDP (replicate across replicas, shard across the worker's own GPUs). Checkpoints hold the
parameters' global shapes (DTensor), so they load at any data-parallel degree.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from maas_runtime.stages import StageModule


def apply_data_parallel(stage_modules: Iterable[StageModule], dp_mesh: DeviceMesh) -> None:
    for stage in stage_modules:
        units: Iterable[nn.Module] = stage.units.values()
        for unit in units:
            if any(True for _ in unit.parameters()):
                fully_shard(unit, mesh=dp_mesh, reshard_after_forward=False)
        fully_shard(stage, mesh=dp_mesh, reshard_after_forward=False)
