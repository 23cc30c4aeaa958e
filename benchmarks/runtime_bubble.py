"""Measured pipeline bubble of maas_runtime vs the formula (p-1)/(m+p-1).

An MLP of equal layers (so stages are balanced) runs with a fixed microbatch size and m microbatches,
once as one stage on one process (time T1) and once split into p stages on p processes (time Tp), one
thread per process on CPU/gloo, with microbatches large enough that compute outweighs the framework's
per-op and gloo's per-message latency. Without a bubble the p stages would each be busy for T1/p, so the measured
bubble is 1 - T1 / (p * Tp): idle time plus communication, which the formula leaves out. Prints a table
and writes benchmarks/results/runtime_bubble.json.

    python benchmarks/runtime_bubble.py [--stages 2] [--microbatches 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from maas_api.spec import ModelSpec, Optimizer, PipelineSchedule, TrainingSpec
from maas_runtime.launch import local_plan, run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "runtime_bubble.json"


def step_seconds(
    args: argparse.Namespace, stages: int, microbatches: int, schedule: str, workdir: Path
) -> float:
    model = ModelSpec(
        catalog="MLP",
        args={"input": args.width, "hidden": args.width, "layers": args.layers, "output": args.width},
    )
    plan = local_plan(
        "bubble",
        model,
        stages=stages,
        microbatches=microbatches,
        schedule=PipelineSchedule(schedule),
        training=TrainingSpec(
            steps=args.steps,
            batch_size=args.microbatch_size * microbatches,
            optimizer=Optimizer.SGD,
            learning_rate=1e-4,
        ),
    )
    result = run(plan, workdir, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    if not result.ok:
        raise SystemExit(result.describe())
    times = [event["time"] for event in result.events("step", rank=0)]
    return (times[-1] - times[args.warmup - 1]) / (len(times) - args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", type=int, default=2, help="pipeline stages p (one process each)")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--microbatch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()

    p, rows = args.stages, []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.microbatches:
            single = step_seconds(args, 1, m, "GPipe", Path(tmp) / f"single-{m}")
            for schedule in ("GPipe", "1F1B"):
                if schedule == "1F1B" and m < p:
                    continue  # 1F1B needs at least as many microbatches as stages
                pipelined = step_seconds(args, p, m, schedule, Path(tmp) / f"{schedule}-{m}")
                rows.append(
                    {
                        "schedule": schedule,
                        "microbatches": m,
                        "singleStageStepMs": single * 1000,
                        "pipelineStepMs": pipelined * 1000,
                        "measuredBubble": 1 - single / (p * pipelined),
                        "formulaBubble": (p - 1) / (m + p - 1),
                    }
                )
    print(
        f"MLP {args.layers} x {args.width}, {p} stages, microbatch {args.microbatch_size}, CPU/gloo, 1 thread/process"
    )
    print(f"{'schedule':<9} {'m':>3} {'T1 ms':>9} {'Tp ms':>9} {'measured':>9} {'(p-1)/(m+p-1)':>14}")
    for r in rows:
        print(
            f"{r['schedule']:<9} {r['microbatches']:>3} {r['singleStageStepMs']:>9.2f} {r['pipelineStepMs']:>9.2f}"
            f" {r['measuredBubble']:>9.3f} {r['formulaBubble']:>14.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"config": vars(args), "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
