"""benchmarks/operator_scale.py in small (10 MaaSJobs, our operator only, one round) on a cluster of its own, so
the benchmark cannot rot: its results file has every figure, each sane. Timings are not asserted (a shared
machine's load decides them); the gang property and the counts are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
JOBS = 10


def test_the_scale_benchmark_measures_our_operator_in_small(tmp_path: Path) -> None:
    output = tmp_path / "operator_scale.json"
    packages = os.pathsep.join(str(REPO / folder) for folder in ("api", "operator", "runtime", "devcluster"))
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "operator_scale.py"),
        "--controllers",
        "maas-operator",
    ]
    command += ["--jobs", str(JOBS), "--repeats", "1", "--idle-seconds", "3", "--output", str(output)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": packages},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    results = json.loads(output.read_text())
    assert results["jobs"] == JOBS and results["nodes"] * 8 >= JOBS * 4
    (ours,) = results["rows"].values()
    (one,) = ours["rounds"]
    assert ours["kind"] == "MaaSJob" and ours["median"]["jobs"] == JOBS
    # Every job's pods were created before they ran, and the round ended after the last one ran.
    for figure in ("p50", "p99"):
        assert 0 < one["created_s"][figure] <= one["running_s"][figure]
    assert one["running_s"]["p99"] <= one["first_apply_to_last_running_s"] + 1
    # Gang: no pod of any job was bound to a node before the job's last pod existed.
    assert one["gang"]["jobs_with_a_pod_bound_before_the_last_existed"] == 0
    # Each job costs some requests (4 pods created and ungated at least) and the operator spent some CPU.
    assert one["api_requests_per_job"] > 8
    assert one["cpu_s"] > 0 and one["peak_rss_mib"] > 10
    # Where the machine's CPU went: the API server served the round, the benchmark's own watch is counted.
    assert one["cpu_s_by_component"]["kube-apiserver"] > 0 and "benchmark" in one["cpu_s_by_component"]
    assert one["load"]["before"] >= 0
    text = output.with_suffix(".txt").read_text()
    assert "maas-operator" in text and "req/job" in text
    assert output.with_suffix(".png").stat().st_size > 0
