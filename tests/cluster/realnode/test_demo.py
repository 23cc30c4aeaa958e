"""`make demo` (hack/demo.sh) on a machine that can run the real node: the training example really trains
there to Succeeded with steps and loss in `kubectl get mj -w`, and the same model answers one prediction.

Sorts before the other real-node modules: one real node per machine, and the session's comes up after this.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from maas_api.status import Phase

from tests.cluster.operator.support import load_example

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
PHASES = {phase.value for phase in Phase}


def test_the_demo_trains_on_the_real_node_and_serves_a_prediction(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A short folder: the node's unix sockets live in it.
    state_dir = tmp_path_factory.mktemp("demo") / "cluster"
    environment = {
        **os.environ,
        "MAAS_DEV_CLUSTER_DIR": str(state_dir),
        "MAAS_VENV": sys.prefix,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    try:
        demo = subprocess.run(
            ["bash", "hack/demo.sh"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=840
        )
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    finally:
        for command in (
            ["bash", "hack/local-operator.sh", "stop"],
            [sys.executable, "-m", "maas_devcluster", "down"],
        ):
            subprocess.run(command, cwd=REPO, env=environment, capture_output=True, timeout=300)
    printed = demo.stdout
    assert "kwok-only" not in printed
    job = load_example("large-model-train.yaml")["metadata"]["name"]
    # `kubectl get mj -w`: the job's rows (empty cells leave no token: STEP and LOSS follow STATUS when set),
    # the last one Succeeded at the final step with a loss.
    rows = [line.split() for line in printed.splitlines() if line.startswith(f"{job} ")]
    progress = []
    for row in rows:
        phase = next(index for index, cell in enumerate(row) if cell in PHASES)
        if row[phase + 1].isdigit():
            progress.append((row[phase], int(row[phase + 1]), float(row[phase + 2])))
    final = re.search(r"final progress \(read from the workers\): step (\d+)/(\d+), loss [0-9.e-]+", printed)
    assert final and final[1] == final[2], printed[-3000:]
    assert progress and progress[-1][:2] == ("Succeeded", int(final[2])), rows
    # Progress shown while the workers train is not asserted: the operator's start-up backoff can miss the whole
    # training window (issue 11 stays open for it; README, planned).
    assert all(step <= int(final[2]) for _, step, _ in progress), rows
    # One prediction of the served model (its last stage gives 40 numbers per input).
    answer = json.loads(printed.split("  -> ", 1)[1].splitlines()[0])
    (outputs,) = answer["outputs"]
    assert len(outputs) == 40
