"""`up --real-node` and `down` from the command line: the node runs pods, and `down` leaves the host as it was.

Sorts before the other real-node modules: one real node per machine, and the session's comes up after this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from maas_devcluster import host_state
from maas_devcluster.control_plane import attach
from maas_devcluster.layout import StateLayout
from maas_devcluster.node_config import NODE_NAME
from maas_devcluster.processes import command_line
from maas_devcluster.real_node import NODE_COMPONENTS, node_layout, read_real_node
from maas_devcluster.testing import LocalCluster

from tests.cluster.realnode.support import ON_REAL_NODE, apply, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def run_cli(state_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maas_devcluster", *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "MAAS_DEV_CLUSTER_DIR": str(state_dir)},
        timeout=400,
    )


def processes_started_from(state_dir: Path) -> list[tuple[int, list[str]]]:
    """Every process whose command line names the state folder (our daemons, shims, pods' processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            arguments = command_line(int(entry.name))
            if any(str(state_dir) in argument for argument in arguments):
                found.append((int(entry.name), arguments))
    return found


def test_up_real_node_runs_pods_and_down_leaves_the_host_as_it_found_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A short folder: the node's unix sockets live in it (a test's own tmp_path is too deep for them).
    state_dir = tmp_path_factory.mktemp("real-node") / "cluster"
    node_root = node_layout(StateLayout(state_dir)).root
    before = host_state.snapshot_host(node_root)
    started = run_cli(state_dir, "up", "--nodes", "1", "--real-node")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert started.stdout.splitlines()[-1] == f"export KUBECONFIG={state_dir / 'kubeconfig'}"
        node = read_real_node(StateLayout(state_dir))
        assert node is not None and set(node.pids) == set(NODE_COMPONENTS)
        # Changes that `down` must undo: a pod with a memory volume (tmpfs), its network namespace and veth.
        running_cluster = attach(state_dir)
        assert running_cluster is not None
        cluster = LocalCluster(running_cluster)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "nodeSelector": ON_REAL_NODE,
                "tolerations": node.worker_pod_patch["spec"]["tolerations"],
                "containers": [
                    {
                        "name": "sleeper",
                        "image": node.images["pause"],
                        "imagePullPolicy": "Never",
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
            },
        }
        apply(cluster, "default", pod)
        running = wait_phase(cluster, "default", "sleeper", "Running")
        assert running["spec"]["nodeName"] == NODE_NAME and running["status"]["podIP"].startswith("10.244.0.")
        during = host_state.snapshot_host(node_root)
        assert host_state.changes_since(before, during), "the node should have changed the host"
        again = run_cli(state_dir, "up", "--nodes", "1", "--real-node")
        assert again.returncode == 0 and "reusing the real node already running" in again.stderr, again.stderr
        assert read_real_node(StateLayout(state_dir)) == node
        settings = run_cli(state_dir, "operator-env").stdout.splitlines()
        assert "export MAAS_IMAGE_PULL_POLICY=Never" in settings
        assert f"export MAAS_RUNTIME_IMAGE={node.images['runtime']}" in settings
        report = run_cli(state_dir, "status")
        assert report.returncode == 0 and "kubelet" in report.stdout, report.stdout
    finally:
        stopped = run_cli(state_dir, "down")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    after = host_state.snapshot_host(node_root)
    assert not host_state.changes_since(before, after), json.dumps(
        host_state.changes_since(before, after).__dict__
    )
    assert not state_dir.exists()
    assert processes_started_from(state_dir) == []


def test_up_real_node_that_cannot_start_says_why_and_leaves_nothing_running(tmp_path: Path) -> None:
    # A test's own tmp_path is too deep for the node's unix sockets: the host check refuses it.
    state_dir = tmp_path / "a-state-folder-deep-enough-for-the-sockets"
    started = run_cli(state_dir, "up", "--nodes", "1", "--real-node")
    assert started.returncode == 1
    assert "the real node cannot run on this machine; missing: a shorter state folder" in started.stderr
    assert "stopping the control plane this `up` started" in started.stderr
    assert processes_started_from(state_dir) == []
    assert run_cli(state_dir, "status").returncode == 1
    assert run_cli(state_dir, "down").returncode == 0
