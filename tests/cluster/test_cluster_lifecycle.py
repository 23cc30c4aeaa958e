"""The CLI end to end on a cluster of its own: `up` twice reuses it, `down` leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from maas_devcluster.control_plane import COMPONENTS
from maas_devcluster.processes import is_running

# Sorts before the other cluster modules, so this small cluster is done before the session's one starts.
pytestmark = pytest.mark.cluster


def run_cli(state_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MAAS_DEV_CLUSTER_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "maas_devcluster", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def component_pids(state_dir: Path) -> dict[str, int]:
    return {component: int((state_dir / "pids" / f"{component}.pid").read_text()) for component in COMPONENTS}


def test_up_twice_reuses_the_cluster_and_down_stops_every_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    first = run_cli(state_dir, "up", "--nodes", "1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == f"export KUBECONFIG={state_dir / 'kubeconfig'}"
    pids = component_pids(state_dir)
    try:
        assert all(is_running(pid) for pid in pids.values()), pids

        started = time.monotonic()
        second = run_cli(state_dir, "up", "--nodes", "1")
        assert second.returncode == 0, second.stderr
        assert time.monotonic() - started < 10
        assert "reusing" in second.stderr
        assert second.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
        assert component_pids(state_dir) == pids

        report = run_cli(state_dir, "status")
        assert report.returncode == 0, report.stdout + report.stderr
        assert "1/1 Ready" in report.stdout
    finally:
        stopped = run_cli(state_dir, "down")

    assert stopped.returncode == 0, stopped.stderr
    assert "needed SIGKILL" not in stopped.stderr, "every component should stop on SIGTERM"
    assert [component for component, pid in pids.items() if is_running(pid)] == []
    assert not state_dir.exists()
    assert run_cli(state_dir, "status").returncode == 1
