"""Run a plan on this machine: every worker's processes under one torchrun agent (`elastic_launch`).

    maas plan -f job.yaml -o json > plan.json
    python -m maas_runtime.launch --plan plan.json [--workdir DIR]

runs one process per worker and GPU (CPU/gloo when no GPU is visible), each worker's output shown with
its rank and kept under DIR/logs, and exits with the workers' exit code, as a pod would
(`maas_runtime.agent.pod_exit_code`: 0 when all succeeded, 78 when any failed permanently, else the first
failure's code). Serve jobs: replica r listens on serving.port + r (and the progress port + r).

Tests and benchmarks use `run(plan, workdir)` (writes the plan, starts the launcher as a subprocess and
returns each rank's exit code, stdout and stderr) and `start()` (a handle to signal workers while they run).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas_api import contract
from maas_api.catalog import model_profile
from maas_api.contract import PLAN_PATH_ENV, PROGRESS_PORT_ENV, ExitCode
from maas_api.plan import ModelProfile, Plan, StagePlan, WorkerPlan, bubble_fraction
from maas_api.spec import (
    BalanceBy,
    CheckpointSpec,
    DataSpec,
    Mode,
    ModelSpec,
    PipelineSchedule,
    ServingSpec,
    SplitStrategy,
    TrainingSpec,
)

from maas_runtime.agent import pod_exit_code
from maas_runtime.errors import PermanentError
from maas_runtime.parallel_dims import LOCAL_LAUNCH_ENV
from maas_runtime.plan_file import load_plan
from maas_runtime.progress import LINGER_ENV

EXIT_LINE = re.compile(r"^maas_runtime: exit (-?\d+)", re.MULTILINE)


@dataclass
class LaunchResult:
    exit_codes: dict[int, int | None]
    """Rank -> exit code (negative: killed by that signal; None: stopped by the agent, code unknown)."""
    stdout: dict[int, str]
    stderr: dict[int, str]
    launcher_output: str
    exit_code: int | None = None
    """The launcher's own exit code: the workers' code as a pod reports it (None: it was killed)."""

    @property
    def ok(self) -> bool:
        workers_ok = bool(self.exit_codes) and all(code == 0 for code in self.exit_codes.values())
        return workers_ok and self.exit_code == 0

    def events(self, name: str, rank: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines with `"event": name` (of one rank, or of all ranks in rank order)."""
        found = []
        for r, text in sorted(self.stdout.items()):
            if rank is not None and r != rank:
                continue
            for line in text.splitlines():
                if line.startswith("{") and f'"event": "{name}"' in line:
                    found.append(json.loads(line))
        return found

    def describe(self) -> str:
        """Everything, for assertion messages."""
        parts = [
            f"exit codes: {self.exit_codes}, launcher {self.exit_code}",
            f"launcher:\n{self.launcher_output[-3000:]}",
        ]
        for rank in sorted(self.stderr):
            parts.append(f"--- rank {rank} stderr:\n{self.stderr[rank][-3000:]}")
        return "\n".join(parts)


def _even_split(names: list[str], count: int) -> list[list[str]]:
    size, extra = divmod(len(names), count)
    cuts = [0]
    for i in range(count):
        cuts.append(cuts[-1] + size + (1 if i < extra else 0))
    return [names[a:b] for a, b in itertools.pairwise(cuts)]


def local_plan(
    job: str,
    model: ModelSpec,
    *,
    stages: int | list[list[str]] = 1,
    replicas: int = 1,
    stages_per_worker: int = 1,
    schedule: PipelineSchedule = PipelineSchedule.ONE_F_ONE_B,
    microbatches: int = 1,
    mode: Mode = Mode.TRAIN,
    training: TrainingSpec | None = None,
    checkpoint: CheckpointSpec | None = None,
    serving: ServingSpec | None = None,
    data: DataSpec | None = None,
    heads: list[str] | None = None,
    strategy: SplitStrategy | None = None,
    gpus_per_worker: int = 0,
) -> Plan:
    """A plan made without the planner: units split evenly by count (or as given), for local runs."""
    profile = model_profile(model)
    names = [unit.name for unit in profile.units]
    split = _even_split(names, stages) if isinstance(stages, int) else stages
    head_set = set(heads or [])
    pipeline_degree = len(split) // stages_per_worker
    stage_plans = [
        StagePlan(
            index=i,
            units=units,
            heads=[u for u in units if u in head_set],
            params=sum(profile.unit(u).params for u in units),
            cost=sum(profile.unit(u).flops_per_sample for u in units),
            flops_per_sample=sum(profile.unit(u).flops_per_sample for u in units),
            memory_bytes=0,
            output_bytes_per_sample=profile.unit(units[-1]).activation_bytes_per_sample,
        )
        for i, units in enumerate(split)
    ]
    workers = [
        WorkerPlan(
            name=f"{job}-r{replica}-s{rank}",
            index=contract.worker_index(replica, rank, pipeline_degree),
            replica=replica,
            pipeline_rank=rank,
            stages=contract.stages_of_pipeline_rank(rank, pipeline_degree, stages_per_worker),
            gpus=gpus_per_worker,
        )
        for replica in range(replicas)
        for rank in range(pipeline_degree)
    ]
    return Plan(
        job=job,
        mode=mode,
        model=model,
        profile=ModelProfile(units=profile.units),
        strategy=strategy or (SplitStrategy.TASK if heads else SplitStrategy.LAYER),
        balance_by=BalanceBy.FLOPS,
        stages=stage_plans,
        pipeline_degree=pipeline_degree,
        stages_per_worker=stages_per_worker,
        replicas=replicas,
        gpus_per_worker=gpus_per_worker,
        schedule=schedule,
        microbatches=microbatches,
        workers=workers,
        bottleneck=max(stage.cost for stage in stage_plans),
        estimated_bubble=bubble_fraction(pipeline_degree, microbatches, stages_per_worker),
        data=data or DataSpec(),
        training=training,
        checkpoint=checkpoint,
        serving=serving,
    )


def write_plan(plan: Plan, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.model_dump_json(by_alias=True, exclude_none=True, indent=1))
    return path


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised command name) is the parent pid.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


class LocalJob:
    """A running launcher; `wait()` collects the result."""

    def __init__(self, process: subprocess.Popen[bytes], workdir: Path, world_size: int) -> None:
        self.process, self.workdir, self.world_size = process, workdir, world_size

    def worker_pids(self) -> list[int]:
        return child_pids(self.process.pid)

    def signal_workers(self, signum: int = signal.SIGTERM) -> None:
        """Signal the worker processes (as torchrun does when the pod gets SIGTERM)."""
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def wait(self, timeout: float | None = None) -> LaunchResult:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_workers(signal.SIGKILL)
            self.process.kill()
            self.process.wait()
        output = (
            (self.workdir / "launcher.log").read_text() if (self.workdir / "launcher.log").exists() else ""
        )
        code = self.process.returncode
        return collect(self.workdir, self.world_size, output, code if code >= 0 else None)


def collect(workdir: Path, world_size: int, launcher_output: str, exit_code: int | None) -> LaunchResult:
    stdout: dict[int, str] = {}
    stderr: dict[int, str] = {}
    for rank in range(world_size):
        logs = sorted((workdir / "logs").glob(f"*/attempt_*/{rank}"))
        stdout[rank] = (logs[-1] / "stdout.log").read_text() if logs else ""
        stderr[rank] = (logs[-1] / "stderr.log").read_text() if logs else ""
    reported = json.loads((workdir / "result.json").read_text()) if (workdir / "result.json").exists() else {}
    codes: dict[int, int | None] = {}
    for rank in range(world_size):
        if str(rank) in reported:
            codes[rank] = reported[str(rank)]
        else:
            lines = EXIT_LINE.findall(stderr[rank])
            codes[rank] = int(lines[-1]) if lines else None
    return LaunchResult(codes, stdout, stderr, launcher_output, exit_code)


def start(plan: Plan, workdir: Path, env: dict[str, str] | None = None) -> LocalJob:
    workdir.mkdir(parents=True, exist_ok=True)
    plan_file = write_plan(plan, workdir / "plan.json")
    # Port 0: an ephemeral progress port, so several local jobs never collide on the default one.
    child_env = {PROGRESS_PORT_ENV: "0", **os.environ, **(env or {})}
    command = [
        sys.executable,
        "-m",
        "maas_runtime.launch",
        "--plan",
        str(plan_file),
        "--workdir",
        str(workdir),
    ]
    with (workdir / "launcher.log").open("wb") as log:
        process = subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    return LocalJob(process, workdir, plan.world_size)


def run(plan: Plan, workdir: Path, env: dict[str, str] | None = None, timeout: float = 300) -> LaunchResult:
    return start(plan, workdir, env).wait(timeout)


def omp_threads(world_size: int, cpu_count: int | None) -> int:
    """OpenMP threads per worker when the user set none: the machine's cores shared among the workers.

    torch's default is one thread per core in every process, so N workers on one machine oversubscribe it N
    times (the reference job ran 3.7x slower that way); torchrun guards against it by setting 1 for several
    processes per node, elastic_launch (used here) does not.
    """
    return max(1, (cpu_count or 1) // max(1, world_size))


def main(argv: list[str] | None = None) -> int:
    """The launcher process: one elastic agent running `python -m maas_runtime` once per process of the plan."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    parser = argparse.ArgumentParser(
        prog="python -m maas_runtime.launch",
        description="Run every worker of a plan on this machine; exit with the workers' exit code.",
    )
    parser.add_argument(
        "--plan",
        type=Path,
        default=os.environ.get(PLAN_PATH_ENV),
        help=f"the plan file (`maas plan -f job.yaml -o json`); default ${PLAN_PATH_ENV}",
    )
    parser.add_argument("--workdir", type=Path, help="where logs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.plan is None:
        parser.error(f"give the plan with --plan PLAN (or set {PLAN_PATH_ENV})")
    try:
        plan = load_plan(args.plan)
    except PermanentError as error:
        reason = str(error).replace(f"{PLAN_PATH_ENV}:", "--plan:", 1)  # the flag is what the user gave
        print(f"maas_runtime.launch: exit {int(ExitCode.PERMANENT)}: {reason}", file=sys.stderr)
        return int(ExitCode.PERMANENT)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix=f"maas-{plan.job}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The workers inherit these: the plan, and that their worker index comes from their rank here.
    os.environ[PLAN_PATH_ENV] = str(args.plan.resolve())
    os.environ[LOCAL_LAUNCH_ENV] = "1"
    os.environ.setdefault(LINGER_ENV, "0")  # no operator polls a local run's /progress
    os.environ.setdefault("OMP_NUM_THREADS", str(omp_threads(plan.world_size, os.cpu_count())))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=plan.world_size,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=str(workdir / "logs"), redirects=Std.ALL, tee=Std.ALL),
    )
    failures: list[tuple[float, int]] = []
    codes: dict[int, int] = {}
    started = time.monotonic()
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "maas_runtime")
        codes = dict.fromkeys(range(plan.world_size), 0)
    except ChildFailedError as error:
        codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
        failures = [(float(failure.timestamp), failure.exitcode) for failure in error.failures.values()]
    code = pod_exit_code(failures)
    (workdir / "result.json").write_text(json.dumps(codes))
    print(
        f"maas_runtime.launch: {plan.world_size} processes, {time.monotonic() - started:.1f} s, exit codes"
        f" {codes}, logs in {workdir}: exit {code}",
        file=sys.stderr,
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
