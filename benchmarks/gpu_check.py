"""A short check for a machine with one GPU (a couple of minutes); without CUDA it skips, and says so.

1. NCCL with world size 1: init_process_group, one all-reduce, teardown.
2. The runtime itself on the GPU: a 1-worker plan training the small Transformer in bf16 through
   `python -m maas_runtime` (cuda:0 + NCCL chosen by the runtime), reporting samples/s and model FLOPs
   utilisation: 3 x forward FLOPs per sample (maas_api.catalog's profile) x samples/s over the H200's
   dense bf16 peak of 989 TFLOP/s.

Prints a table and writes benchmarks/results/runtime_gpu_check.json (or --output). Exit codes: 0 every
check passed, 1 a check failed, 77 skipped (no CUDA device: nothing was checked, which is not a pass; 77 is
the code automake and meson read as "skipped").

    python benchmarks/gpu_check.py [--steps 30] [--batch 16] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from maas_api.catalog import catalog_profile
from maas_api.spec import Loss, ModelSpec, Optimizer, TrainingSpec
from maas_runtime.launch import local_plan, run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "runtime_gpu_check.json"
EXIT_SKIPPED = 77
"""Exit code of a run that checked nothing (no CUDA device)."""
PEAK_BF16_FLOPS = 989e12
"""H200 SXM dense bf16 tensor-core peak."""
MODEL = ModelSpec(
    catalog="Transformer",
    args={"vocab": 32000, "dim": 1024, "layers": 8, "heads": 16, "seqLen": 1024, "ffnMult": 4},
    dtype="bfloat16",
)


def nccl_world_of_one() -> dict[str, Any]:
    started = time.perf_counter()
    device = torch.device("cuda", 0)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    value = torch.full((4,), 2.0, device=device)
    dist.all_reduce(value)
    torch.cuda.synchronize()
    ok = bool(torch.all(value == 2.0))
    dist.destroy_process_group()
    return {"ok": ok, "seconds": time.perf_counter() - started}


def runtime_training(steps: int, batch: int, workdir: Path) -> dict[str, Any]:
    plan = local_plan(
        "gpu-check",
        MODEL,
        gpus_per_worker=1,
        training=TrainingSpec(
            steps=steps,
            batch_size=batch,
            optimizer=Optimizer.ADAMW,
            learning_rate=1e-4,
            loss=Loss.CROSS_ENTROPY,
        ),
    )
    started = time.perf_counter()
    result = run(plan, workdir, timeout=600)
    if not result.ok:
        return {"ok": False, "error": result.describe()[-4000:]}
    device = result.events("started", rank=0)[0]["device"]
    steady = [event["samplesPerSecond"] for event in result.events("step", rank=0)][steps // 3 :]
    samples_per_second = statistics.median(steady)
    forward_flops = sum(unit.flops_per_sample for unit in catalog_profile(MODEL).units)
    achieved = 3 * forward_flops * samples_per_second
    return {
        "ok": device.startswith("cuda"),
        "device": device,
        "seconds": time.perf_counter() - started,
        "samplesPerSecond": samples_per_second,
        "trainFlopsPerSample": 3 * forward_flops,
        "achievedTflops": achieved / 1e12,
        "mfu": achieved / PEAK_BF16_FLOPS,
        "losses": [event["loss"] for event in result.events("step", rank=0)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON report goes")
    args = parser.parse_args()
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        reason = f"no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda})"
        report: dict[str, Any] = {"status": "skipped", "reason": reason, "checked": []}
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"gpu_check: SKIPPED, not a pass: {reason}; NCCL and GPU training were not checked"
            f" (exit {EXIT_SKIPPED})",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": MODEL.to_wire()}
    report["nccl"] = nccl_world_of_one()
    with tempfile.TemporaryDirectory() as tmp:
        report["training"] = runtime_training(args.steps, args.batch, Path(tmp))
    ok = report["nccl"]["ok"] and report["training"]["ok"]
    report["status"] = "ok" if ok else "failed"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check on {report['gpu']} (torch {report['torch']}): {report['status']}")
    print(
        f"  NCCL world of 1: {'ok' if report['nccl']['ok'] else 'FAILED'} ({report['nccl']['seconds']:.1f} s)"
    )
    training = report["training"]
    if training["ok"]:
        print(
            f"  runtime train step, Transformer bf16, batch {args.batch}: {training['samplesPerSecond']:.1f} samples/s"
        )
        print(
            f"  {training['achievedTflops']:.1f} TFLOP/s = MFU {training['mfu']:.1%} of {PEAK_BF16_FLOPS / 1e12:.0f}"
        )
    else:
        print(f"  runtime training FAILED:\n{training.get('error', training)}")
    print(f"wrote {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
