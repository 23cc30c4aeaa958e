"""A minimal hand-written torch.distributed.pipelining training script: the baseline of runtime_overhead.py.

Run with torchrun (`--nproc-per-node P * R`). It builds the same MLP as the catalog's (Linear + ReLU layers,
contiguous even split), one PipelineStage per pipeline rank, the named schedule and SGD; with R > 1 replicas
it shards each layer over the replicas with FSDP2 (`fully_shard`, as the runtime does), and with
`--checkpoint-every N` it saves model and optimizer state with torch.distributed.checkpoint every N steps.
Prints one JSON line on rank 0: {"stepSeconds": [...], "ended": [...], "cpuTime": [...]} (per step, warm-up
included; `ended` is time.time(), `cpuTime` the process's CPU time and `runqueueSeconds` its time waiting
for a CPU, at the end of each step). One stage (`--stages 1`) runs the whole model in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe


class Layer(nn.Linear):
    def __init__(self, fan_in: int, fan_out: int, relu: bool) -> None:
        super().__init__(fan_in, fan_out)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.relu(y) if self.relu else y


def runqueue_seconds() -> float:
    """Time this process has spent runnable but waiting for a CPU (Linux schedstat): the machine's load."""
    return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True, help="samples per replica and step")
    parser.add_argument("--microbatches", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--schedule", choices=["GPipe", "1F1B"], required=True)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=0, help="0: no checkpoints")
    parser.add_argument("--checkpoint-dir", type=Path)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (args.replicas, args.stages), mesh_dim_names=("replica", "pipeline"))
    rank, size = mesh["pipeline"].get_local_rank(), args.stages
    per_stage = args.layers // size
    first = rank * per_stage
    module = nn.Sequential(
        *(Layer(args.width, args.width, relu=i < args.layers - 1) for i in range(first, first + per_stage))
    )
    if args.replicas > 1:
        for layer in module:
            fully_shard(layer, mesh=mesh["replica"], reshard_after_forward=False)
        fully_shard(module, mesh=mesh["replica"], reshard_after_forward=False)
    x, y = torch.randn(args.batch // args.microbatches, args.width), torch.randn(args.batch, args.width)
    stage = PipelineStage(
        module, rank, size, torch.device("cpu"), input_args=x, group=mesh["pipeline"].get_group()
    )
    kind = ScheduleGPipe if args.schedule == "GPipe" else Schedule1F1B
    schedule = kind(stage, args.microbatches, loss_fn=lambda out, target: F.mse_loss(out, target))
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width)

    times, ended, cpu_times, waits = [], [], [], []
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        last = {"target": y, "losses": []} if rank == size - 1 else {}
        schedule.step(*([x] if rank == 0 else []), **last)
        optimizer.step()
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            assert args.checkpoint_dir is not None
            state = {
                "model": get_model_state_dict(module),
                "optim": get_optimizer_state_dict(module, optimizer),
            }
            dist.barrier()
            dcp_save(state, checkpoint_id=args.checkpoint_dir / f"step-{step}")
        times.append(time.perf_counter() - started)
        ended.append(time.time())
        cpu_times.append(time.process_time())
        waits.append(runqueue_seconds())
    if dist.get_rank() == 0:
        report = {"stepSeconds": times, "ended": ended, "cpuTime": cpu_times, "runqueueSeconds": waits}
        print(json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
