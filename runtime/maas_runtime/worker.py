"""Start-up of one worker process: plan, checks, process group, mesh and the model as this process sees it.

Everything a restart cannot fix (plan, model reference and arguments, data path) is checked before the
process group starts, so every process exits 78 at once instead of leaving its peers waiting.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from maas_api.plan import Plan
from maas_api.spec import Loss, Mode, TrainingSpec
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from maas_runtime import data
from maas_runtime.errors import PermanentError, communication
from maas_runtime.model import (
    InputSpec,
    ModelInfo,
    build_meta_model,
    check_against_plan,
    materialize,
    parse_dtype,
    plan_heads,
    run_model,
)
from maas_runtime.parallel_dims import (
    ParallelDims,
    RankCoords,
    TorchrunEnv,
    build_mesh,
    check_world,
    data_parallel_mesh,
    init_distributed,
    select_device,
)
from maas_runtime.stages import (
    StageLayout,
    StageModule,
    StageShapes,
    stage_layouts,
    stage_shapes,
    trunk_width,
)


@dataclass
class ModelSetup:
    """The model as the plan cuts it, still on the meta device (the same on every process)."""

    info: ModelInfo
    dtype: torch.dtype
    heads: list[str]
    layouts: list[StageLayout]
    input_spec: InputSpec
    """Per-sample input, floats already in the model's dtype."""
    output_shape: tuple[int, ...]
    trunk_width: int
    base_shapes: list[StageShapes]
    """Stage inputs and outputs for a microbatch of one sample (float32 trace)."""


def prepare_model(plan: Plan) -> ModelSetup:
    info = build_meta_model(plan.model)
    check_against_plan(info, plan)
    dtype = parse_dtype(plan.model.dtype, "plan.model.dtype")
    spec = info.input
    path = data.data_file(plan) if plan.mode == Mode.TRAIN else None
    if path is not None:
        file_spec = data.FileSamples(path).input_spec
        if spec is None:
            spec = file_spec
        elif file_spec.shape != spec.shape:
            raise PermanentError(
                "plan.data.path",
                f"{path} holds inputs of shape {list(file_spec.shape)}, the model takes {list(spec.shape)}",
            )
    if spec is None:
        raise PermanentError(
            "plan.model.factory",
            "cannot tell the model's input shape: set `maas_input` on the returned ModuleDict (see maas_runtime.model)",
        )
    if spec.dtype.is_floating_point:
        spec = dataclasses.replace(spec, dtype=dtype)
    heads = plan_heads(plan)
    layouts = stage_layouts(plan, heads)
    trace_spec = dataclasses.replace(spec, dtype=torch.float32) if spec.dtype.is_floating_point else spec
    width = trunk_width(info.units, heads, trace_spec)
    with torch.no_grad():
        output = run_model(info.units, heads, trace_spec.empty(1))
    shapes = stage_shapes(layouts, info.units, trace_spec, width, microbatch=1, training=False)
    return ModelSetup(
        info=info,
        dtype=dtype,
        heads=heads,
        layouts=layouts,
        input_spec=spec,
        output_shape=tuple(output.shape[1:]),
        trunk_width=width,
        base_shapes=shapes,
    )


def _resized(t: torch.Tensor, microbatch: int, dtype: torch.dtype, training: bool) -> torch.Tensor:
    out_dtype = dtype if t.is_floating_point() else t.dtype
    grads = training and t.is_floating_point()
    return torch.empty((microbatch, *t.shape[1:]), dtype=out_dtype, device="meta").requires_grad_(grads)


@dataclass
class Worker:
    """One process of the job, after the process group and mesh are up."""

    plan: Plan
    dims: ParallelDims
    coords: RankCoords
    rank: int
    device: torch.device
    mesh: DeviceMesh
    model: ModelSetup
    local_units: nn.ModuleDict
    """This process's units, materialised (keys: unit names, as in the whole model)."""
    stage_modules: dict[int, StageModule]
    """This process's stages (keys: stage indexes), sharing `local_units`."""
    terminate: threading.Event

    @property
    def num_stages(self) -> int:
        return len(self.plan.stages)

    @property
    def has_first_stage(self) -> bool:
        return 0 in self.coords.stages

    @property
    def has_last_stage(self) -> bool:
        return self.num_stages - 1 in self.coords.stages

    @property
    def pp_group(self) -> dist.ProcessGroup:
        return self.mesh["pp"].get_group()

    @property
    def dp_mesh(self) -> DeviceMesh | None:
        return data_parallel_mesh(self.dims, self.mesh)

    @property
    def training(self) -> TrainingSpec:
        return self.plan.training or TrainingSpec()

    def shapes(self, microbatch: int, training: bool) -> list[StageShapes]:
        """Static stage metadata for a microbatch size (first stage input excepted, all in model dtype)."""
        result = []
        for index, base in enumerate(self.model.base_shapes):
            inputs = _resized(base.inputs, microbatch, self.model.dtype, training and index > 0)
            result.append(StageShapes(inputs, _resized(base.outputs, microbatch, self.model.dtype, training)))
        return result

    def target_spec(self) -> data.TargetSpec:
        loss = self.training.loss if self.plan.mode == Mode.TRAIN else Loss.MSE
        return data.target_spec(loss, self.model.input_spec, self.model.output_shape)

    def log(self, event: str, **fields: object) -> None:
        """One JSON line on stdout (the operator and tests read these)."""
        print(json.dumps({"event": event, "rank": self.rank, **fields}), flush=True)


def build_local_model(
    plan: Plan, setup: ModelSetup, coords: RankCoords, device: torch.device
) -> tuple[nn.ModuleDict, dict[int, StageModule]]:
    """Materialise the units of this process's stages and wrap each stage (memory grows with the stage)."""
    names = [name for stage in coords.stages for name in plan.stages[stage].units]
    local = nn.ModuleDict({name: setup.info.units[name] for name in names})
    materialize(local, device, setup.dtype)
    modules = {stage: StageModule(setup.layouts[stage], local, setup.trunk_width) for stage in coords.stages}
    return local, modules


def start_worker(plan: Plan, terminate: threading.Event) -> Worker:
    env = TorchrunEnv.read()
    dims = ParallelDims.from_plan(plan)
    worker_index, local_rank = check_world(dims, env)
    coords = dims.coords(worker_index, local_rank)
    setup = prepare_model(plan)
    device, backend = select_device(env.local_rank)
    # Stage shapes are traced on meta first: materialising replaces the owned units' meta tensors.
    local_units, stage_modules = build_local_model(plan, setup, coords, device)
    with communication("rendezvous"):
        rank = init_distributed(dims, env, worker_index, local_rank, backend, device)
        mesh = build_mesh(dims, device)
    worker = Worker(
        plan=plan,
        dims=dims,
        coords=coords,
        rank=rank,
        device=device,
        mesh=mesh,
        model=setup,
        local_units=local_units,
        stage_modules=stage_modules,
        terminate=terminate,
    )
    worker.log(
        "started",
        torchrunRank=env.rank,
        worker=coords.worker,
        localRank=coords.local_rank,
        replica=coords.replica,
        pipelineRank=coords.pipeline_rank,
        stages=list(coords.stages),
        device=str(device),
        backend=backend,
        torch=torch.__version__,
        python=sys.version.split()[0],
    )
    return worker
