"""benchmarks/gpu_check.py reports a run without a GPU as skipped, never as passed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_without_cuda_the_gpu_check_exits_as_skipped_not_passed(tmp_path: Path) -> None:
    output = tmp_path / "gpu_check.json"
    packages = os.pathsep.join(str(REPO / folder) for folder in ("api", "operator", "runtime"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": packages}

    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert result.returncode == 77, result.stdout + result.stderr
    assert "SKIPPED, not a pass" in result.stderr
    assert json.loads(output.read_text())["status"] == "skipped"
