"""A minimal hand-written torch.distributed.pipelining training script: the baseline of runtime_overhead.py.

Run with torchrun (`--nproc-per-node P`). It builds the same MLP as the catalog's (Linear + ReLU layers,
contiguous even split), one PipelineStage per rank, the named schedule, SGD, and times the steps on rank 0.
Prints one JSON line on rank 0: {"stepSeconds": [...], "cpuTime": [...]} (per step, warm-up included;
cpuTime is the process's CPU time at the end of each step).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe


class Layer(nn.Linear):
    def __init__(self, fan_in: int, fan_out: int, relu: bool) -> None:
        super().__init__(fan_in, fan_out)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.relu(y) if self.relu else y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--microbatches", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--schedule", choices=["GPipe", "1F1B"], required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    per_stage = args.layers // size
    first = rank * per_stage
    module = nn.Sequential(
        *(Layer(args.width, args.width, relu=i < args.layers - 1) for i in range(first, first + per_stage))
    )
    stage = PipelineStage(module, rank, size, torch.device("cpu"))
    kind = ScheduleGPipe if args.schedule == "GPipe" else Schedule1F1B
    schedule = kind(stage, args.microbatches, loss_fn=lambda out, target: F.mse_loss(out, target))
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
    x, y = torch.randn(args.batch, args.width), torch.randn(args.batch, args.width)

    times, cpu_times = [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        optimizer.zero_grad()
        if rank == 0:
            schedule.step(x)
        elif rank == size - 1:
            schedule.step(target=y, losses=[])
        else:
            schedule.step()
        optimizer.step()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time())
    if rank == 0:
        print(json.dumps({"stepSeconds": times, "cpuTime": cpu_times}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
