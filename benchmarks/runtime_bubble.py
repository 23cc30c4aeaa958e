"""Measured pipeline bubble of maas_runtime and of a hand-written schedule vs the formula (p-1)/(m+p-1).

An MLP of equal layers (so stages are balanced) runs with a fixed microbatch size and m microbatches,
once as one stage on one process (time T1) and once split into p stages on p processes (time Tp), one
thread per process on CPU/gloo. Without a bubble the p stages would each be busy for T1/p, so the measured
bubble is 1 - T1 / (p * Tp): idle time plus communication, which the formula leaves out. Each case runs
with maas_runtime and with the hand-written torch.distributed.pipelining script of runtime_overhead.py
(benchmarks/runtime_baseline_pipeline.py), alternating, so the runtime's share of the gap is told apart
from torch's and gloo's.

The gap is fitted with a fixed cost c per microbatch and stage (p2p send/receive, schedule actions):
Tp = (m + p - 1) * (t + c), t = T1 / (p * m) the compute of one microbatch on one stage. c is reported in
milliseconds and in samples' worth of compute (c / (t / microbatch size)), the unit of
maas_api.plan.MICROBATCH_FIXED_COST_SAMPLES. The hand-written script also reports how long its first
process waited for a CPU (Linux schedstat): on a loaded machine p processes may not get p cores.
Prints a table and writes benchmarks/results/runtime_bubble.json.

    python benchmarks/runtime_bubble.py [--stages 2] [--microbatches 1 2 4 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from maas_api.plan import MICROBATCH_FIXED_COST_SAMPLES, bubble_fraction
from maas_api.spec import ModelSpec, Optimizer, PipelineSchedule, TrainingSpec
from maas_runtime.launch import local_plan, run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "runtime_bubble.json"
ENV = {"OMP_NUM_THREADS": "1"}
VARIANTS = ("runtime", "handwritten")


def runtime_seconds(
    args: argparse.Namespace, stages: int, m: int, schedule: str, size: int, workdir: Path
) -> float:
    model = ModelSpec(
        catalog="MLP",
        args={"input": args.width, "hidden": args.width, "layers": args.layers, "output": args.width},
    )
    plan = local_plan(
        "bubble",
        model,
        stages=stages,
        microbatches=m,
        schedule=PipelineSchedule(schedule),
        training=TrainingSpec(
            steps=args.steps,
            batch_size=size * m,
            optimizer=Optimizer.SGD,
            learning_rate=1e-4,
        ),
    )
    result = run(plan, workdir, env=ENV, timeout=600)
    if not result.ok:
        raise SystemExit(result.describe())
    times = [event["time"] for event in result.events("step", rank=0)]
    return (times[-1] - times[args.warmup - 1]) / (len(times) - args.warmup)


def handwritten_seconds(
    args: argparse.Namespace, stages: int, m: int, schedule: str, size: int
) -> tuple[float, float, float]:
    """Per step: (seconds, CPU seconds of the first process, seconds it waited for a CPU)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(stages),
        str(HERE / "runtime_baseline_pipeline.py"),
        *("--width", str(args.width), "--layers", str(args.layers), "--stages", str(stages)),
        *("--batch", str(size * m), "--microbatches", str(m)),
        *("--steps", str(args.steps), "--schedule", schedule),
    ]
    out = subprocess.run(
        command, env={**os.environ, **ENV}, capture_output=True, text=True, check=True, timeout=600
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith('{"stepSeconds"'))
    report = json.loads(line)
    steps = args.steps - args.warmup
    ended, cpu, waits = report["ended"], report["cpuTime"], report["runqueueSeconds"]
    return tuple((s[-1] - s[args.warmup - 1]) / steps for s in (ended, cpu, waits))  # type: ignore[return-value]


def fixed_cost(single: float, pipelined: float, p: int, m: int) -> float:
    """c in Tp = (m + p - 1) * (t + c), t = T1 / (p m): seconds per microbatch and stage."""
    return pipelined / (m + p - 1) - single / (p * m)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", type=int, default=2, help="pipeline stages p (one process each)")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--one-f-one-b", type=int, nargs="*", default=[4], help="m to also run with 1F1B")
    parser.add_argument("--microbatch-size", type=int, default=64)
    parser.add_argument(
        "--small-microbatch", type=int, default=16, help="also run m=4 with this microbatch size (0: not)"
    )
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    p, size = args.stages, args.microbatch_size
    pipelined = [(m, "GPipe", size) for m in args.microbatches]
    pipelined += [(m, "1F1B", size) for m in args.one_f_one_b if m >= p]
    if args.small_microbatch:
        pipelined.append((4, "GPipe", args.small_microbatch))
    singles = sorted({(m, "GPipe", b) for m, _, b in pipelined})
    runs = [(1, *run) for run in singles] + [(p, *run) for run in pipelined]
    seconds: dict[tuple[str, int, int, str, int], list[float]] = {}
    usage: dict[tuple[int, int, str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (stages, m, schedule, b) in enumerate(runs):
                order = VARIANTS if (round_ + i) % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    if variant == "runtime":
                        workdir = Path(tmp) / f"{stages}-{m}-{schedule}-{b}-{round_}"
                        took = runtime_seconds(args, stages, m, schedule, b, workdir)
                    else:
                        took, cpu, waited = handwritten_seconds(args, stages, m, schedule, b)
                        usage.setdefault((stages, m, schedule, b), []).append((cpu, waited))
                    seconds.setdefault((variant, stages, m, schedule, b), []).append(took)
                    print(
                        f"round {round_} {variant} p={stages} m={m} {schedule} b={b}: {took * 1000:.1f} ms",
                        flush=True,
                    )

    rows: list[dict[str, Any]] = []
    for m, schedule, b in pipelined:
        row: dict[str, Any] = {
            "schedule": schedule,
            "microbatches": m,
            "microbatchSize": b,
            "formulaBubble": bubble_fraction(p, m),
            "modelBubble": bubble_fraction(p, m, microbatch_samples=b),
        }
        for variant in VARIANTS:
            singles_s, pipelined_s = (
                seconds[(variant, 1, m, "GPipe", b)],
                seconds[(variant, p, m, schedule, b)],
            )
            single, piped = statistics.median(singles_s), statistics.median(pipelined_s)
            cost = fixed_cost(single, piped, p, m)
            row[variant] = {
                "singleStageStepMs": [s * 1000 for s in singles_s],
                "pipelineStepMs": [s * 1000 for s in pipelined_s],
                "measuredBubble": 1 - single / (p * piped),
                "measuredBubblePerRound": [
                    1 - s / (p * t) for s, t in zip(singles_s, pipelined_s, strict=True)
                ],
                "fixedCostMsPerMicrobatch": cost * 1000,
                "fixedCostSamples": cost / (single / (p * m * b)),
            }
        # Where the hand-written pipeline's first process spends a step: CPU, waiting for a CPU, idle.
        cpu, waited = (statistics.median(u) for u in zip(*usage[(p, m, schedule, b)], strict=True))
        single_cpu = statistics.median(c for c, _ in usage[(1, m, "GPipe", b)])
        row["handwritten"] |= {
            "rank0CpuMsPerStep": cpu * 1000,
            "rank0RunqueueMsPerStep": waited * 1000,
            "singleStageCpuMsPerStep": single_cpu * 1000,
        }
        rows.append(row)

    costs = {v: statistics.median(r[v]["fixedCostSamples"] for r in rows) for v in VARIANTS}
    lines = [
        f"MLP {args.layers} x {args.width}, {p} stages, CPU/gloo, 1 thread/process, {args.rounds} alternating"
        " rounds (medians; bubble range over rounds); c: fixed cost per microbatch and stage",
        f"{'schedule':<9}{'m':>3}{'b':>4}{'formula':>8}{'model':>7}"
        + "".join(f"{v + ' T1/Tp ms':>24}{'bubble':>7}{'range':>11}{'c ms':>6}" for v in VARIANTS)
        + f"{'hw cpu/wait ms':>16}",
    ]
    for r in rows:
        cells = ""
        for v in VARIANTS:
            t1 = statistics.median(r[v]["singleStageStepMs"])
            tp = statistics.median(r[v]["pipelineStepMs"])
            span = f"{min(r[v]['measuredBubblePerRound']):.2f}-{max(r[v]['measuredBubblePerRound']):.2f}"
            cells += f"{f'{t1:.1f}/{tp:.1f}':>24}{r[v]['measuredBubble']:>7.3f}{span:>11}"
            cells += f"{r[v]['fixedCostMsPerMicrobatch']:>6.2f}"
        hw = r["handwritten"]
        usage_cell = f"{hw['rank0CpuMsPerStep']:.1f}/{hw['rank0RunqueueMsPerStep']:.1f}"
        cells += f"{usage_cell:>16}"
        head = f"{r['schedule']:<9}{r['microbatches']:>3}{r['microbatchSize']:>4}"
        lines.append(f"{head}{r['formulaBubble']:>8.3f}{r['modelBubble']:>7.3f}{cells}")
    lines.append(
        "c in samples of one stage's compute, median over rows: "
        + ", ".join(f"{v} {c:.1f}" for v, c in costs.items())
        + f" (maas_api.plan.MICROBATCH_FIXED_COST_SAMPLES = {MICROBATCH_FIXED_COST_SAMPLES})"
    )
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": vars(args), "fixedCostSamples": costs, "results": rows}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    RESULTS.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS.relative_to(HERE.parent)} and .txt")


if __name__ == "__main__":
    main()
