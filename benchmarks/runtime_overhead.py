"""Runtime overhead: maas_runtime vs a minimal hand-written torch.distributed.pipelining script.

Same model (MLP of equal Linear layers), same 2-stage split, schedule, microbatches, batch and optimizer
(SGD), on CPU/gloo with one thread per process, alternating runs of the two so machine load hits both
alike. The runtime adds its data pipeline, the per-step all-reduce (loss over replicas, SIGTERM agreement)
and progress reporting; the target is a ratio within 1.05. Prints a table and writes
benchmarks/results/runtime_overhead.json.

    python benchmarks/runtime_overhead.py [--rounds 4] [--steps 40]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maas_api.spec import ModelSpec, Optimizer, PipelineSchedule, TrainingSpec
from maas_runtime.launch import local_plan, run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "runtime_overhead.json"
ENV = {"OMP_NUM_THREADS": "1"}


def wait_for_quiet(limit: float, patience_s: float = 120) -> float:
    """Wait (a while) until the 1-minute load average drops below `limit`; returns the load seen."""
    deadline = time.monotonic() + patience_s
    load = os.getloadavg()[0]
    while load > limit and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def runtime_step_seconds(args: argparse.Namespace, schedule: str, workdir: Path) -> tuple[float, float]:
    """(wall, rank-0 CPU) seconds per step after the warm-up."""
    model = ModelSpec(
        catalog="MLP",
        args={"input": args.width, "hidden": args.width, "layers": args.layers, "output": args.width},
    )
    plan = local_plan(
        "overhead",
        model,
        stages=2,
        microbatches=args.microbatches,
        schedule=PipelineSchedule(schedule),
        training=TrainingSpec(
            steps=args.steps, batch_size=args.batch, optimizer=Optimizer.SGD, learning_rate=1e-3
        ),
    )
    result = run(plan, workdir, env=ENV, timeout=600)
    if not result.ok:
        raise SystemExit(result.describe())
    events = result.events("step", rank=0)[args.warmup - 1 :]
    # Wall and CPU time between consecutive step ends (everything the runtime does per step); the median
    # step shrugs off bursts of other load on the machine.
    wall = statistics.median(b["time"] - a["time"] for a, b in itertools.pairwise(events))
    cpu = statistics.median(b["cpuTime"] - a["cpuTime"] for a, b in itertools.pairwise(events))
    return wall, cpu


def baseline_step_seconds(args: argparse.Namespace, schedule: str) -> tuple[float, float]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(HERE / "runtime_baseline_pipeline.py"),
        *("--width", str(args.width), "--layers", str(args.layers), "--batch", str(args.batch)),
        *("--microbatches", str(args.microbatches), "--steps", str(args.steps), "--schedule", schedule),
    ]
    out = subprocess.run(
        command, env={**os.environ, **ENV}, capture_output=True, text=True, check=True, timeout=600
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith('{"stepSeconds"'))
    report = json.loads(line)
    cpu = report["cpuTime"][args.warmup - 1 :]
    wall = statistics.median(report["stepSeconds"][args.warmup :])
    return wall, statistics.median(b - a for a, b in itertools.pairwise(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quiet-load", type=float, default=1.0, help="wait for a load average below this")
    args = parser.parse_args()

    rows, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for schedule in ("GPipe", "1F1B"):
            runtime, baseline = [], []
            for round_ in range(args.rounds):
                loads.append(wait_for_quiet(args.quiet_load))
                runtime.append(runtime_step_seconds(args, schedule, Path(tmp) / f"{schedule}-{round_}"))
                baseline.append(baseline_step_seconds(args, schedule))
            wall = [t for t, _ in runtime], [t for t, _ in baseline]
            cpu = [c for _, c in runtime], [c for _, c in baseline]
            rows.append(
                {
                    "schedule": schedule,
                    "runtimeStepMs": [t * 1000 for t in wall[0]],
                    "baselineStepMs": [t * 1000 for t in wall[1]],
                    "ratio": statistics.median(wall[0]) / statistics.median(wall[1]),
                    # The fastest round of each is the least disturbed by other load on the machine.
                    "ratioOfFastest": min(wall[0]) / min(wall[1]),
                    # CPU time of the first stage's process: its work per step, whatever else the machine runs.
                    "runtimeCpuMsPerStep": [c * 1000 for c in cpu[0]],
                    "baselineCpuMsPerStep": [c * 1000 for c in cpu[1]],
                    "cpuRatio": statistics.median(cpu[0]) / statistics.median(cpu[1]),
                }
            )
    title = (
        f"MLP {args.layers} x {args.width}, 2 stages, batch {args.batch}, {args.microbatches} microbatches"
    )
    print(f"{title}, CPU/gloo, {args.rounds} alternating rounds, median step of each run")
    header = ["schedule", "runtime ms", "baseline ms", "ratio", "ratio (fastest)", "CPU ratio"]
    print(" ".join(f"{h:>16}" for h in header))
    for row in rows:
        cells = [
            row["schedule"],
            f"{statistics.median(row['runtimeStepMs']):.2f}",
            f"{statistics.median(row['baselineStepMs']):.2f}",
            f"{row['ratio']:.3f}",
            f"{row['ratioOfFastest']:.3f}",
            f"{row['cpuRatio']:.3f}",
        ]
        print(" ".join(f"{c:>16}" for c in cells))
    print("ratio: medians over rounds; fastest: best round of each; CPU: first stage's CPU seconds per step")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"config": vars(args), "loadAverages": loads, "results": rows}, indent=2) + "\n"
    )
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
