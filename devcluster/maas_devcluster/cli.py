"""Command line for the local cluster: `python -m maas_devcluster up|down|status`."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

import yaml

from maas_devcluster.control_plane import default_state_dir, down, format_status, status, up
from maas_devcluster.layout import StateLayout
from maas_devcluster.real_node import check_host, node_layout, read_real_node, recorded_node_pids
from maas_devcluster.topology import load_cluster_description


def build_parser(program: str = "maas dev-cluster") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program,
        description="A local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler) "
        "with fake GPU nodes simulated by kwok.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"folder for certificates, etcd data, logs and the kubeconfig (default: $MAAS_DEV_CLUSTER_DIR "
        f"or {default_state_dir()})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the cluster, or reuse the one already running")
    start.add_argument(
        "--cluster", type=Path, default=None, help="cluster description YAML (default: 4 x 8 H100)"
    )
    start.add_argument("--nodes", type=int, default=None, help="override the node count (scale benchmarks)")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    start.add_argument(
        "--real-node",
        action="store_true",
        help="also start one real node (kubelet, containerd, runc, CNI bridge, CoreDNS) whose pods really run; "
        "needs root, overlayfs and cgroups",
    )
    commands.add_parser("down", help="stop every component (the real node first) and delete the state folder")
    commands.add_parser(
        "operator-env",
        help="print `export` lines of the operator settings that run workers on the real node (none without one)",
    )
    commands.add_parser(
        "chart-values",
        help="print Helm values (YAML) that run the chart's operator as a pod on the real node: "
        "`helm install maas charts/maas-operator -f <(maas dev-cluster chart-values)`",
    )
    commands.add_parser(
        "check-real-node",
        help="exit 0 when `up --real-node` can run on this machine (or its node already runs from this state "
        "folder), else print what is missing and exit 1",
    )
    commands.add_parser("status", help="show components, memory and node readiness; exit 1 unless healthy")
    return parser


def main(argv: list[str] | None = None, program: str = "maas dev-cluster") -> int:
    arguments = build_parser(program).parse_args(argv)
    try:
        if arguments.command == "up":
            # SIGTERM becomes SystemExit, so a half-started cluster is stopped on the way out, as on Ctrl-C.
            signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit(143))
            cluster = load_cluster_description(arguments.cluster)
            if arguments.nodes is not None:
                cluster = cluster.with_node_count(arguments.nodes)
            running = up(
                arguments.state_dir, cluster, timeout_seconds=arguments.timeout, real_node=arguments.real_node
            )
            # Last line of stdout, so `eval "$(python -m maas_devcluster up)"` points kubectl at it.
            print(running.export_line(), flush=True)
            return 0
        if arguments.command == "down":
            stopped = down(arguments.state_dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else "no cluster was running", file=sys.stderr)
            return 0
        if arguments.command == "check-real-node":
            layout = StateLayout((arguments.state_dir or default_state_dir()).resolve())
            if not recorded_node_pids(layout):
                check_host(node_layout(layout))
            print("the real node can run on this machine")
            return 0
        if arguments.command in ("operator-env", "chart-values"):
            node = read_real_node(StateLayout((arguments.state_dir or default_state_dir()).resolve()))
            if arguments.command == "operator-env":
                for name, value in (node.operator_environment() if node else {}).items():
                    print(f"export {name}={shlex.quote(value)}")
                return 0
            if node is None:
                raise RuntimeError(
                    "no real node runs from this state folder: start one with `up --real-node`"
                )
            print(yaml.safe_dump(node.chart_values(), sort_keys=False), end="")
            return 0
        report = status(arguments.state_dir)
        print(format_status(report))
        return 0 if report.healthy else 1
    except (RuntimeError, TimeoutError, ValueError, FileNotFoundError) as error:
        print(f"[dev-cluster] error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
