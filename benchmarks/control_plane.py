"""Measures the local control plane: start time (up -> ready), time to each milestone, and RSS per component.

Usage: python benchmarks/control_plane.py [--nodes 4 1000] [--repeats 3] [--build-log /tmp/build-cp.log]
Each run starts a fresh cluster in a temp folder (binaries already built), waits a few seconds for it to settle,
reads every component's RSS from /proc, and stops it. Prints a table and writes results/control_plane.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from maas_devcluster.binaries import find_binaries, repository_root
from maas_devcluster.control_plane import COMPONENTS, down, status, up
from maas_devcluster.topology import load_cluster_description

RESULTS = Path(__file__).resolve().parent / "results" / "control_plane.json"


def pinned_versions() -> dict[str, str]:
    versions_file = repository_root() / "hack" / "tools" / "versions.env"
    pairs = (
        line.split("=", 1) for line in versions_file.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    return {key: value for key, value in pairs}


def cold_build_seconds(build_log: Path) -> dict[str, Any] | None:
    """Per-binary and total times from a hack/build-control-plane.sh log that ended with bash's `time` output."""
    if not build_log.exists():
        return None
    text = build_log.read_text()
    per_binary = {name: int(seconds) for name, seconds in re.findall(r"built (\S+) in (\d+) s", text)}
    totals = {}
    for kind, minutes, seconds in re.findall(r"^(real|user|sys)\s+(\d+)m([\d.]+)s", text, re.MULTILINE):
        totals[kind] = round(int(minutes) * 60 + float(seconds), 1)
    return {"per_binary_seconds": per_binary, "total_seconds": totals, "log": str(build_log)}


def measure_one(node_count: int, settle_seconds: float) -> dict[str, Any]:
    cluster = load_cluster_description().with_node_count(node_count)
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as scratch:
        state_dir = Path(scratch) / "cluster"
        running = up(state_dir, cluster, timeout_seconds=600)
        try:
            time.sleep(settle_seconds)
            report = status(state_dir)
            rss_mib = {
                component.name: round(component.rss_bytes / 2**20, 1) for component in report.components
            }
            nodes_ready = report.nodes_ready
        finally:
            stop_started = time.monotonic()
            down(state_dir)
            down_seconds = round(time.monotonic() - stop_started, 2)
    return {
        "nodes": node_count,
        "nodes_ready": nodes_ready,
        "startup_seconds": running.state.startup_seconds,
        "milestones": running.state.milestones,
        "rss_mib": rss_mib,
        "rss_total_mib": round(sum(rss_mib.values()), 1),
        "down_seconds": down_seconds,
    }


def print_table(runs: list[dict[str, Any]]) -> None:
    short = {"etcd": "etcd", "kube-apiserver": "apiserver", "kube-controller-manager": "kcm"}
    short |= {"kube-scheduler": "sched", "kwok": "kwok"}
    header = f"{'nodes':>6} {'up s':>6} {'api s':>6} {'nodes s':>8} {'down s':>7}"
    header += "".join(f" {short[c]:>9}" for c in COMPONENTS) + f" {'RSS MiB':>8}"
    print(header)
    for run in runs:
        milestones = run["milestones"]
        row = f"{run['nodes']:>6} {run['startup_seconds']:>6.1f} {milestones['kube-apiserver']:>6.1f}"
        row += (
            f" {milestones['nodes-ready'] - milestones['kube-apiserver']:>8.1f} {run['down_seconds']:>7.1f}"
        )
        row += "".join(f" {run['rss_mib'][c]:>9.0f}" for c in COMPONENTS) + f" {run['rss_total_mib']:>8.0f}"
        print(row)
    print(
        "up s: `up` until ready; api s: until the API server's /readyz; nodes s: from then until all nodes Ready"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[4], help="node counts to measure")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the first node count")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to idle before reading RSS")
    parser.add_argument("--build-log", type=Path, default=Path("/tmp/build-cp.log"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()

    binaries = find_binaries()  # builds first if needed, so no run below pays for a build
    runs = []
    for index, node_count in enumerate(arguments.nodes):
        for _ in range(arguments.repeats if index == 0 else 1):
            runs.append(measure_one(node_count, arguments.settle))
    print_table(runs)

    first_size = [run for run in runs if run["nodes"] == arguments.nodes[0]]
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": pinned_versions(),
        "bin_dirs": [str(folder) for folder in binaries.folders],
        "cold_build": cold_build_seconds(arguments.build_log),
        "warm_start_seconds_median": statistics.median(run["startup_seconds"] for run in first_size),
        "rss_total_mib_median": statistics.median(run["rss_total_mib"] for run in first_size),
        "runs": runs,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
