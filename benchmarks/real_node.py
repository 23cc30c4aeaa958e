"""Measures the real node: `up --real-node`, the reference train job on it, and the runtime in pods against local.

Usage (root): python benchmarks/real_node.py [--steps 100] [--build-log /tmp/realnode-build.log]
1. `up --real-node` on a fresh state folder (binaries already built): seconds to a ready control plane and to a
   Ready node, with the node's milestones (certificates, containerd, images imported, CoreDNS, node Ready).
2. The operator as a process with the node's settings; examples/large-model-train.yaml with `gpus: 0` on the
   real node (3 stages x 2 replicas): apply -> all 6 pods Running -> Ready -> first step -> Succeeded.
3. The same plan launched on this machine with `python -m maas_runtime.launch`: steps/s in pods / locally.
With --build-log, the per-binary cold build times of the node's components from a hack/build-control-plane.sh
log (the `built NAME in N s` lines) are recorded beside them. Prints a table; writes results/real_node.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the operator-as-a-process helper lives with the cluster tests

from maas_api.plan import Plan  # noqa: E402
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
    times = [event["time"] for event in steps]
    return (len(times) - 1) / (times[-1] - times[0])


def train_on_the_real_node(
    cluster: LocalCluster, scratch: Path, environment: dict[str, str], steps: int
) -> dict[str, Any]:
    install_crd(cluster)
    operator = OperatorProcess(cluster, scratch, environment=environment)
    operator.start()
    try:
        jobs = Jobs(cluster, "default")
        job = reference_train_job(JOB)
        job["spec"]["training"]["steps"] = steps
        applied_wall, applied = time.time(), time.monotonic()
        jobs.apply(job)
        marks: dict[str, float] = {}
        while time.monotonic() < applied + 1800:
            status = jobs.status(JOB)
            pods = jobs.pods(JOB)
            if (
                "pods-running" not in marks
                and len(pods) == 6
                and all(p["status"].get("phase") == "Running" for p in pods)
            ):
                marks["pods-running"] = time.monotonic() - applied
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
            if ready and "ready" not in marks:
                marks["ready"] = time.monotonic() - applied
            if status.get("phase") in ("Succeeded", "Failed"):
                marks[status["phase"].lower()] = time.monotonic() - applied
                break
            time.sleep(0.2)
        if "succeeded" not in marks:
            raise RuntimeError(f"the job did not succeed: {jobs.status(JOB)}")
        events = step_events(jobs.kubectl("logs", f"{JOB}-r0-s0").stdout)
        step_lines = [e for e in events if e["event"] == "step"]
        marks["first-step"] = step_lines[0]["time"] - applied_wall
        configmap = json.loads(
            jobs.kubectl("get", "configmap", names.plan_configmap_name(JOB), "-o", "json").stdout
        )
        plan = Plan.model_validate_json(configmap["data"][names.PLAN_KEY])
        return {
            "seconds_after_apply": {k: round(v, 2) for k, v in sorted(marks.items(), key=lambda kv: kv[1])},
            "steps_per_second": round(steps_per_second(step_lines), 2),
            "final_loss": step_lines[-1]["loss"],
            "plan": plan,
        }
    finally:
        operator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--build-log", type=Path, default=None)
    arguments = parser.parse_args()

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "steps": arguments.steps,
    }
    if arguments.build_log is not None:
        results["cold_build_seconds"] = node_build_seconds(arguments.build_log)
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
            pods = train_on_the_real_node(
                LocalCluster(running), Path(scratch), node.operator_environment(), arguments.steps
            )
        finally:
            down(state_dir)
        plan: Plan = pods.pop("plan")
        local = run(plan, Path(scratch) / "local", timeout=1800)
        if not local.ok:
            raise RuntimeError(local.describe())
        local_steps = local.events("step", rank=0)
    results["train_job_in_pods"] = pods
    results["train_job_local"] = {
        "steps_per_second": round(steps_per_second(local_steps), 2),
        "final_loss": local_steps[-1]["loss"],
    }
    results["pods_over_local_steps_per_second"] = round(
        pods["steps_per_second"] / results["train_job_local"]["steps_per_second"], 3
    )

    print(f"{'measure':<46}{'value':>12}")
    for name, seconds in results.get("cold_build_seconds", {}).items():
        print(f"{'cold build ' + name + ' (s)':<46}{seconds:>12}")
    print(f"{'up --real-node: control plane + node (s)':<46}{results['up_real_node_seconds']:>12}")
    print(f"{'  of which the node (s)':<46}{results['node_seconds']:>12}")
    for mark, seconds in pods["seconds_after_apply"].items():
        print(f"{'train job: apply -> ' + mark + ' (s)':<46}{seconds:>12}")
    print(f"{'steps/s in pods':<46}{pods['steps_per_second']:>12}")
    print(f"{'steps/s launched locally':<46}{results['train_job_local']['steps_per_second']:>12}")
    print(f"{'ratio pods / local':<46}{results['pods_over_local_steps_per_second']:>12}")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
