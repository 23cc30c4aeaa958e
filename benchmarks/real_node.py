"""Measures the real node: `up --real-node`, the reference train job on it, and the runtime in pods against local.

Usage (root): python benchmarks/real_node.py [--steps 100] [--build-log /tmp/realnode-build.log]
1. `up --real-node` on a fresh state folder (binaries already built): seconds to a ready control plane and to a
   Ready node, with the node's milestones (certificates, containerd, images imported, CoreDNS, node Ready).
2. The operator as a process with the node's settings; examples/large-model-train.yaml with `gpus: 0` on the
   real node (3 stages x 2 replicas): apply -> all 6 pods Running -> Ready -> first step -> Succeeded.
3. The same plan launched on this machine with `python -m maas_runtime.launch` with the pods' one OpenMP thread
   per worker (and once with launch's default): steps/s in pods / locally, round by round (--rounds, in turn).
With --build-log, the per-binary cold build times of the node's components from a hack/build-control-plane.sh
log (the `built NAME in N s` lines) are recorded beside them. Prints a table; writes results/real_node.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the operator-as-a-process helper lives with the cluster tests

from maas_api.job import GROUP, PLURAL, VERSION  # noqa: E402
from maas_api.plan import Plan  # noqa: E402
from maas_devcluster.apiclient import ApiClient  # noqa: E402
from maas_devcluster.control_plane import down, up  # noqa: E402
from maas_devcluster.node_config import NODE_BINARIES  # noqa: E402
from maas_devcluster.testing import LocalCluster  # noqa: E402
from maas_devcluster.topology import ClusterDescription, NodePool  # noqa: E402
from maas_operator import names  # noqa: E402
from maas_runtime.launch import run  # noqa: E402

from tests.cluster.operator.support import Jobs, OperatorProcess, install_crd  # noqa: E402
from tests.cluster.realnode.test_training import reference_train_job, step_events  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "real_node.json"
JOB = "large-model"


def node_build_seconds(build_log: Path) -> dict[str, int]:
    text = build_log.read_text()
    built = {name: int(seconds) for name, seconds in re.findall(r"built (\S+) in (\d+) s", text)}
    return {name: built[name] for name in NODE_BINARIES if name in built}


def steps_per_second(steps: list[dict[str, Any]]) -> float:
    """Steady rate: steps after the first (which includes warm-up) over their wall time."""
    times = [float(event["time"]) for event in steps]
    return (len(times) - 1) / (times[-1] - times[0])


def train_in_pods(jobs: Jobs, api: ApiClient, name: str, steps: int) -> dict[str, Any]:
    """Applies the job and times its milestones; returns them, the steps/s, the final loss and the plan.

    Polls over one HTTPS connection every 0.5 s: kubectl processes several times a second would take a
    good part of the 2 cores the workers run on.
    """
    job = reference_train_job(name)
    job["spec"]["training"]["steps"] = steps
    applied_wall, applied = time.time(), time.monotonic()
    jobs.apply(job)
    job_path = f"/apis/{GROUP}/{VERSION}/namespaces/{jobs.namespace}/{PLURAL}/{name}"
    pods_path = f"/api/v1/namespaces/{jobs.namespace}/pods?labelSelector={names.JOB_LABEL}%3D{name}"
    marks: dict[str, float] = {}
    while time.monotonic() < applied + 1800:
        status = api.get_json(job_path).get("status") or {}
        if "pods-running" not in marks:
            pods = api.get_json(pods_path)["items"]
            if len(pods) == 6 and all(p["status"].get("phase") == "Running" for p in pods):
                marks["pods-running"] = time.monotonic() - applied
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        if ready and "ready" not in marks:
            marks["ready"] = time.monotonic() - applied
        if status.get("phase") in ("Succeeded", "Failed"):
            marks[status["phase"].lower()] = time.monotonic() - applied
            break
        time.sleep(0.5)
    if "succeeded" not in marks:
        raise RuntimeError(f"the job did not succeed: {jobs.status(name)}")
    step_lines = [
        e for e in step_events(jobs.kubectl("logs", f"{name}-r0-s0").stdout) if e["event"] == "step"
    ]
    marks["first-step"] = step_lines[0]["time"] - applied_wall
    configmap = json.loads(
        jobs.kubectl("get", "configmap", names.plan_configmap_name(name), "-o", "json").stdout
    )
    jobs.kubectl("delete", "maasjob", name, "--wait=true")
    return {
        "seconds_after_apply": {k: round(v, 2) for k, v in sorted(marks.items(), key=lambda kv: kv[1])},
        "steps_per_second": steps_per_second(step_lines),
        "final_loss": step_lines[-1]["loss"],
        "plan": Plan.model_validate_json(configmap["data"][names.PLAN_KEY]),
    }


def train_locally(plan: Plan, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run(plan, workdir, env=env, timeout=1800)
    if not result.ok:
        raise RuntimeError(result.describe())
    steps = result.events("step", rank=0)
    return {"steps_per_second": steps_per_second(steps), "final_loss": steps[-1]["loss"]}


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="pods, then locally, this many times in turn")
    parser.add_argument("--build-log", type=Path, default=None)
    arguments = parser.parse_args()

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average_at_start": os.getloadavg()[0],
        "steps": arguments.steps,
        "rounds": arguments.rounds,
    }
    if arguments.build_log is not None:
        results["cold_build_seconds"] = node_build_seconds(arguments.build_log)
    pods: list[dict[str, Any]] = []
    local: dict[str, list[dict[str, Any]]] = {"same_threads": [], "default": []}
    # A short folder: the node's unix sockets live in it.
    with tempfile.TemporaryDirectory(prefix="rn-", dir="/tmp") as scratch:
        state_dir = Path(scratch) / "c"
        started = time.monotonic()
        running = up(state_dir, ClusterDescription(name="bench", pools=(NodePool(count=1),)), real_node=True)
        up_seconds = time.monotonic() - started
        try:
            node = running.real_node()
            assert node is not None
            results["up_real_node_seconds"] = round(up_seconds, 2)
            results["control_plane_seconds"] = running.state.startup_seconds
            results["node_seconds"] = node.startup_seconds
            results["node_milestones"] = node.milestones
            cluster = LocalCluster(running)
            install_crd(cluster)
            operator = OperatorProcess(cluster, Path(scratch), environment=node.operator_environment())
            operator.start()
            try:
                jobs = Jobs(cluster, "default")
                api = running.admin_client()
                for round_ in range(arguments.rounds):
                    pods.append(train_in_pods(jobs, api, f"{JOB}-{round_}", arguments.steps))
                    # Locally with the pods' thread setting (one OpenMP thread per worker).
                    work = Path(scratch) / f"local-{round_}"
                    local["same_threads"].append(
                        train_locally(pods[-1]["plan"], work, {"OMP_NUM_THREADS": "1"})
                    )
                # As `launch` runs by default: it calls the elastic agent directly, so unlike torchrun it sets
                # no OMP_NUM_THREADS, and torch keeps one thread per core in every worker.
                local["default"].append(train_locally(pods[-1]["plan"], Path(scratch) / "local-default", {}))
            finally:
                operator.stop()
        finally:
            down(state_dir)
    marks = pods[0]["seconds_after_apply"].keys()
    results["train_job_in_pods"] = {
        "seconds_after_apply": {
            mark: spread([p["seconds_after_apply"][mark] for p in pods]) for mark in marks
        },
        "steps_per_second": spread([p["steps_per_second"] for p in pods]),
        "final_losses": sorted({p["final_loss"] for p in pods}),
    }
    results["train_job_local"] = {
        name: {
            "steps_per_second": spread([r["steps_per_second"] for r in runs]),
            "final_losses": sorted({r["final_loss"] for r in runs}),
        }
        for name, runs in local.items()
    }
    ratios = [
        p["steps_per_second"] / r["steps_per_second"]
        for p, r in zip(pods, local["same_threads"], strict=True)
    ]
    results["pods_over_local_steps_per_second"] = spread(ratios)

    def row(label: str, value: object) -> None:
        print(f"{label:<50}{value!s:>28}")

    def span(values: dict[str, float]) -> str:
        return f"{values['median']} ({values['min']}-{values['max']})"

    row("measure", "median (min-max)")
    for name, seconds in results.get("cold_build_seconds", {}).items():
        row(f"cold build {name} (s)", seconds)
    row("up --real-node: control plane + node (s)", results["up_real_node_seconds"])
    row("  of which the node (s)", results["node_seconds"])
    for mark, values in results["train_job_in_pods"]["seconds_after_apply"].items():
        row(f"train job: apply -> {mark} (s)", span(values))
    row("steps/s in pods", span(results["train_job_in_pods"]["steps_per_second"]))
    row(
        "steps/s locally, 1 thread per worker",
        span(results["train_job_local"]["same_threads"]["steps_per_second"]),
    )
    row(
        "steps/s locally, launch's default threads",
        span(results["train_job_local"]["default"]["steps_per_second"]),
    )
    row("ratio pods / local (1 thread), per round", span(results["pods_over_local_steps_per_second"]))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
