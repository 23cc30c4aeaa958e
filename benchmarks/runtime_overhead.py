"""Runtime overhead: maas_runtime vs a minimal hand-written torch.distributed.pipelining script.

Same model (MLP of equal Linear layers), same 2-stage split, schedule, microbatches, batch and optimizer
(SGD), on CPU/gloo with one thread per process. Cases: small (~10 ms), medium and large steps, two
data-parallel replicas (FSDP2 in both), and checkpoints every N steps (DCP in both). The runtime adds its
data pipeline (samples gathered per step), the windowed stats all-reduce (loss over replicas, SIGTERM
agreement), logging and progress reporting; the target is a ratio within 1.05.

Every round runs every case once with every variant, in an order that rotates per round, so machine load
hits all variants alike; a variant's time in one run is the mean step time after the warm-up (total time
over steps, so per-window and per-checkpoint costs count). Reported: the median over rounds and the
spread across rounds ((max - min) / median), and the ratios of each round's paired runs with their range.
`--compare NAME=PATH` adds the runtime of another source tree (e.g. a `git worktree` of an older commit),
so before and after are measured in the same run. Writes benchmarks/results/runtime_overhead.json and .txt.

    python benchmarks/runtime_overhead.py [--rounds 5] [--compare before=/tmp/before] [--cases small large]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "runtime_overhead.json"
ENV = {"OMP_NUM_THREADS": "1"}
BASELINE = "baseline"


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    batch: int
    steps: int
    layers: int = 8
    microbatches: int = 4
    schedule: str = "GPipe"
    replicas: int = 1
    checkpoint_every: int = 0
    warmup: int = 10


CASES = [
    Case("small", width=256, batch=32, steps=240),
    Case("small-1F1B", width=256, batch=32, steps=240, schedule="1F1B"),
    Case("medium", width=512, batch=64, steps=100),
    Case("large", width=1024, batch=128, steps=40, warmup=6),
    Case("small-dp2", width=256, batch=32, steps=160, replicas=2),
    Case("small-ckpt", width=256, batch=32, steps=240, checkpoint_every=40),
]


def per_step(ended: list[float], cpu: list[float], warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step after the warm-up: totals over steps, so periodic costs count."""
    steps = len(ended) - warmup
    return (ended[-1] - ended[warmup - 1]) / steps, (cpu[-1] - cpu[warmup - 1]) / steps


def one_runtime(case: Case, workdir: Path) -> tuple[float, float]:
    """Runs the runtime of whichever source tree is on PYTHONPATH (the parent picks it)."""
    from maas_api.spec import CheckpointSpec, ModelSpec, Optimizer, PipelineSchedule, TrainingSpec
    from maas_runtime.launch import local_plan, run

    model = ModelSpec(
        catalog="MLP",
        args={"input": case.width, "hidden": case.width, "layers": case.layers, "output": case.width},
    )
    checkpoint = (
        CheckpointSpec(
            claim_name="local", mount_path=str(workdir / "ckpt"), interval_steps=case.checkpoint_every
        )
        if case.checkpoint_every
        else None
    )
    plan = local_plan(
        "overhead",
        model,
        stages=2,
        replicas=case.replicas,
        microbatches=case.microbatches,
        schedule=PipelineSchedule(case.schedule),
        training=TrainingSpec(
            steps=case.steps, batch_size=case.batch, optimizer=Optimizer.SGD, learning_rate=1e-3
        ),
        checkpoint=checkpoint,
    )
    result = run(plan, workdir, env=ENV, timeout=600)
    if not result.ok:
        raise SystemExit(result.describe())
    events = result.events("step", rank=0)
    return per_step([e["time"] for e in events], [e["cpuTime"] for e in events], case.warmup)


def runtime_step(case: Case, tree: Path, workdir: Path) -> tuple[float, float]:
    paths = os.pathsep.join(str(tree / package) for package in ("api", "operator", "runtime"))
    command = [sys.executable, __file__, "--one-runtime", json.dumps(dataclasses.asdict(case))]
    out = subprocess.run(
        [*command, "--workdir", str(workdir)],
        env={**os.environ, **ENV, "PYTHONPATH": paths},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode:
        raise SystemExit(f"runtime of {tree} failed on {case.name}:\n{out.stdout}\n{out.stderr}")
    wall, cpu = json.loads(out.stdout.splitlines()[-1])
    return wall, cpu


def baseline_step(case: Case, workdir: Path) -> tuple[float, float]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(2 * case.replicas),
        str(HERE / "runtime_baseline_pipeline.py"),
        *("--width", str(case.width), "--layers", str(case.layers), "--batch", str(case.batch)),
        *("--microbatches", str(case.microbatches), "--steps", str(case.steps), "--schedule", case.schedule),
        *("--replicas", str(case.replicas), "--checkpoint-every", str(case.checkpoint_every)),
        *("--checkpoint-dir", str(workdir / "ckpt")),
    ]
    out = subprocess.run(
        command, env={**os.environ, **ENV}, capture_output=True, text=True, check=True, timeout=900
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith('{"stepSeconds"'))
    report = json.loads(line)
    return per_step(report["ended"], report["cpuTime"], case.warmup)


def spread(values: list[float]) -> float:
    """(max - min) / median: how far apart the rounds are."""
    return (max(values) - min(values)) / statistics.median(values)


def summarise(case: Case, times: dict[str, list[tuple[float, float]]], variants: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"case": dataclasses.asdict(case), "variants": {}, "ratios": {}}
    for variant in variants:
        wall = [w * 1000 for w, _ in times[variant]]
        cpu = [c * 1000 for _, c in times[variant]]
        row["variants"][variant] = {
            "stepMs": wall,
            "medianStepMs": statistics.median(wall),
            "spread": spread(wall),
            "rank0CpuMsPerStep": cpu,
            "medianRank0CpuMs": statistics.median(cpu),
        }
    pairs = [(v, BASELINE) for v in variants if v != BASELINE]
    pairs += [(variants[0], v) for v in variants[1:] if v != BASELINE]  # this tree vs each compared tree
    for a, b in pairs:
        per_round = [x[0] / y[0] for x, y in zip(times[a], times[b], strict=True)]
        row["ratios"][f"{a}/{b}"] = {
            "perRound": per_round,
            "median": statistics.median(per_round),
            "min": min(per_round),
            "max": max(per_round),
            "extraMsPerStep": statistics.median(
                (x[0] - y[0]) * 1000 for x, y in zip(times[a], times[b], strict=True)
            ),
        }
    return row


def table(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    lines = []
    header = f"{'case':<12}" + "".join(f"{v + ' ms':>16}{'spread':>8}" for v in variants)
    lines.append(header)
    for row in rows:
        cells = "".join(
            f"{row['variants'][v]['medianStepMs']:>16.2f}{row['variants'][v]['spread']:>8.1%}"
            for v in variants
        )
        lines.append(f"{row['case']['name']:<12}{cells}")
    lines.append("")
    lines.append(f"{'case':<12}{'ratio':<22}{'median':>8}{'range (per round)':>22}{'extra ms/step':>15}")
    for row in rows:
        for name, ratio in row["ratios"].items():
            span = f"{ratio['min']:.3f} - {ratio['max']:.3f}"
            lines.append(
                f"{row['case']['name']:<12}{name:<22}{ratio['median']:>8.3f}{span:>22}"
                f"{ratio['extraMsPerStep']:>15.2f}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--cases", nargs="+", choices=[c.name for c in CASES], default=[c.name for c in CASES]
    )
    parser.add_argument(
        "--compare", action="append", default=[], metavar="NAME=PATH", help="another source tree's runtime"
    )
    parser.add_argument("--one-runtime", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_runtime:  # child mode: one run of the runtime on PYTHONPATH
        print(json.dumps(one_runtime(Case(**json.loads(args.one_runtime)), args.workdir)))
        return

    trees = {"runtime": REPO} | {
        name: Path(path).resolve() for name, path in (c.split("=", 1) for c in args.compare)
    }
    variants = [*trees, BASELINE]
    cases = [c for c in CASES if c.name in args.cases]
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        c.name: {v: [] for v in variants} for c in cases
    }
    loads, started = [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for case in cases:
                shift = round_ % len(variants)
                for variant in variants[shift:] + variants[:shift]:  # rotate who runs first
                    workdir = Path(tmp) / f"{case.name}-{variant}-{round_}"
                    if variant == BASELINE:
                        measured = baseline_step(case, workdir)
                    else:
                        measured = runtime_step(case, trees[variant], workdir)
                    times[case.name][variant].append(measured)
                    print(f"round {round_} {case.name} {variant}: {measured[0] * 1000:.2f} ms", flush=True)
    rows = [summarise(case, times[case.name], variants) for case in cases]
    lines = [
        f"MLP 8 layers, 2 stages, GPipe unless named, 4 microbatches, CPU/gloo, 1 thread/process;"
        f" {args.rounds} rotating rounds; step = mean after warm-up; spread = (max-min)/median over rounds",
        f"trees: {', '.join(f'{k}={v}' for k, v in trees.items())}",
        "",
        *table(rows, variants),
    ]
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "rounds": args.rounds,
        "trees": {k: str(v) for k, v in trees.items()},
        "loadAverages": loads,
        "minutes": (time.monotonic() - started) / 60,
        "results": rows,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    RESULTS.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)} and .txt")


if __name__ == "__main__":
    main()
