"""Starts, reuses, inspects and stops the local control plane (etcd, API server, controllers, kwok)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from maas_devcluster import pki as cluster_pki
from maas_devcluster.apiclient import ApiClient
from maas_devcluster.binaries import ControlPlaneBinaries, find_binaries
from maas_devcluster.components import (
    apiserver_command,
    controller_manager_command,
    etcd_command,
    kwok_command,
    scheduler_command,
)
from maas_devcluster.fake_nodes import create_fake_nodes, list_fake_nodes, node_is_schedulable
from maas_devcluster.layout import StateLayout
from maas_devcluster.node_config import gateway_address
from maas_devcluster.processes import (
    is_running,
    recorded_pids,
    resident_memory_bytes,
    start_detached,
    stop_processes,
)
from maas_devcluster.real_node import (
    NODE_COMPONENTS,
    RealNode,
    read_real_node,
    recorded_node_pids,
    running_real_node,
    start_real_node,
    stop_real_node,
)
from maas_devcluster.topology import ClusterDescription, build_node_manifests, load_cluster_description

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Clients first, then the API server, then etcd: an API server whose etcd is gone hangs in shutdown.
SHUTDOWN_ORDER = (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",))
# Marks a folder as ours, so `down` and a fresh `up` never delete a folder someone pointed us at by mistake.
MARKER_FILE = ".maas-dev-cluster"


def default_state_dir() -> Path:
    configured = os.environ.get("MAAS_DEV_CLUSTER_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "maas-operator" / "dev-cluster"


def _say(message: str) -> None:
    # Progress goes to stderr: stdout's last line is reserved for `export KUBECONFIG=...`.
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


@dataclass
class ClusterState:
    """What state.json records about a running cluster."""

    name: str
    server: str
    ports: dict[str, int]
    pids: dict[str, int]
    binaries: dict[str, str]
    node_count: int
    started_at: float
    startup_seconds: float
    # Seconds from the start of `up` to each milestone (pki, etcd, kube-apiserver, nodes-created, ...).
    milestones: dict[str, float] = field(default_factory=dict)
    pods_reach_api_server: bool = False
    """The API server listens on every interface (started for a real node), so pods reach it at the pod
    network's gateway; otherwise it listens on loopback only."""


@dataclass
class DevCluster:
    """A running local cluster: where its kubeconfig is and how to reach it."""

    state_dir: Path
    state: ClusterState
    reused: bool = False

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.state_dir)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def server(self) -> str:
        return self.state.server

    @property
    def logs_dir(self) -> Path:
        return self.layout.logs

    @property
    def bin_dirs(self) -> list[Path]:
        return list(dict.fromkeys(Path(path).parent for path in self.state.binaries.values()))

    @property
    def kubectl(self) -> Path:
        return Path(self.state.binaries["kubectl"])

    def kubectl_command(self, *arguments: str) -> list[str]:
        return [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *arguments]

    def admin_client(self) -> ApiClient:
        return admin_client_for(self.layout, self.state.server)

    def export_line(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig}"

    def real_node(self) -> RealNode | None:
        """The real node started on this cluster (`up --real-node`), if any."""
        return read_real_node(self.layout)


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    rss_bytes: int


@dataclass
class ClusterStatus:
    """What `status` reports; `healthy` means every component runs and the API server is ready."""

    state_dir: Path
    exists: bool
    components: list[ComponentStatus] = field(default_factory=list)
    api_ready: bool = False
    nodes_ready: int = 0
    nodes_total: int = 0
    server: str | None = None

    @property
    def healthy(self) -> bool:
        return self.exists and self.api_ready and all(component.running for component in self.components)

    @property
    def total_rss_bytes(self) -> int:
        return sum(component.rss_bytes for component in self.components)


def admin_client_for(layout: StateLayout, server: str) -> ApiClient:
    certificates = cluster_pki.ClusterPki(layout.pki)
    return ApiClient(
        server,
        certificates.ca_cert,
        certificates.client_cert(cluster_pki.ADMIN),
        certificates.client_key(cluster_pki.ADMIN),
    )


@contextlib.contextmanager
def _state_lock(layout: StateLayout) -> Iterator[None]:
    """Serialises up/down on one state folder, so two `up`s never start two clusters."""
    layout.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port() -> int:
    # The kernel picks an unused port; another process could take it before the component binds it,
    # which the readiness checks would then report.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _read_state(layout: StateLayout) -> ClusterState | None:
    try:
        return ClusterState(**json.loads(layout.state_file.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _recorded_pids(layout: StateLayout) -> dict[str, int]:
    """Pids from the pid files whose process still runs this cluster's component (guards pid reuse)."""
    return recorded_pids(layout.root, layout.pid_file, COMPONENTS)


def _remove_state_folder(layout: StateLayout) -> None:
    if not layout.root.exists():
        return
    if not (layout.root / MARKER_FILE).exists() and any(layout.root.iterdir()):
        raise RuntimeError(
            f"{layout.root} is not empty and was not made by maas_devcluster; "
            "refusing to delete it (set MAAS_DEV_CLUSTER_DIR to a folder of its own)"
        )
    shutil.rmtree(layout.root)


def _https_healthy(url: str) -> bool:
    """/healthz of the controller-manager or scheduler: self-signed serving certs, so no verification."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _http_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.loads(response.read())
    except (OSError, json.JSONDecodeError):
        return None


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_for(
    what: str,
    is_done: Callable[[], bool],
    deadline: float,
    watched: dict[str, int],
    layout: StateLayout,
    interval_seconds: float = 0.2,
) -> None:
    """Polls until done; fails fast, with the log's tail, when a watched component exits."""
    while True:
        if is_done():
            return
        for component, pid in watched.items():
            if not is_running(pid):
                raise RuntimeError(
                    f"{component} exited while waiting for {what}; last lines of "
                    f"{layout.log_file(component)}:\n{_log_tail(layout.log_file(component))}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; logs are in {layout.logs}")
        time.sleep(interval_seconds)


def stop_components(pids: dict[str, int], timeout_seconds: float = 15.0) -> list[str]:
    """Stops components in SHUTDOWN_ORDER; returns the names that needed SIGKILL."""
    forced: list[str] = []
    for group in SHUTDOWN_ORDER:
        group_pids = {name: pids[name] for name in group if name in pids}
        killed = stop_processes(list(group_pids.values()), timeout_seconds)
        forced.extend(name for name, pid in group_pids.items() if pid in killed)
    return forced


def _start_component(layout: StateLayout, component: str, command: list[str], pids: dict[str, int]) -> None:
    pid = start_detached(command, layout.log_file(component))
    layout.pid_file(component).write_text(f"{pid}\n")
    pids[component] = pid


def wait_for_nodes(
    client: ApiClient, expected: int, deadline: float, watched: dict[str, int], layout: StateLayout
) -> None:
    def enough_schedulable() -> bool:
        return sum(node_is_schedulable(node) for node in list_fake_nodes(client)) >= expected

    # Each check lists every node; with thousands, poll less often so the check does not starve the API server
    # of the 2 cores it shares with us.
    interval_seconds = max(0.5, expected / 1000)
    _wait_for(
        f"{expected} fake nodes to be Ready", enough_schedulable, deadline, watched, layout, interval_seconds
    )


def _start_cluster(
    layout: StateLayout,
    cluster: ClusterDescription,
    binaries: ControlPlaneBinaries,
    timeout_seconds: float,
    pods_reach_api_server: bool = False,
) -> DevCluster:
    started = time.monotonic()
    deadline = started + timeout_seconds
    milestones: dict[str, float] = {}

    def reached(milestone: str) -> None:
        milestones[milestone] = round(time.monotonic() - started, 2)

    _remove_state_folder(layout)
    for folder in (layout.root, layout.logs, layout.pids, layout.etcd_data):
        folder.mkdir(parents=True, exist_ok=True)
    (layout.root / MARKER_FILE).write_text(
        "state of a local maas-operator control plane; `down` deletes it\n"
    )
    layout.etcd_data.chmod(0o700)
    layout.kwok_stages.write_text(resources.files("maas_devcluster").joinpath("kwok/stages.yaml").read_text())

    ports = {
        name: _free_port()
        for name in ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    }
    server = f"https://127.0.0.1:{ports['kube-apiserver']}"
    _say(f"issuing certificates in {layout.pki}")
    # Pods on the real node reach the API server at the bridge's address (no kube-proxy for the `kubernetes`
    # Service); it is in the certificate either way, the listening address decides whether it is reachable.
    certificates = cluster_pki.create_pki(layout.pki, (f"IP:{gateway_address()}",))
    cluster_pki.write_kubeconfig(layout.kubeconfig, server, certificates, cluster_pki.ADMIN, cluster.name)
    for identity in (cluster_pki.CONTROLLER_MANAGER, cluster_pki.SCHEDULER, cluster_pki.KWOK):
        cluster_pki.write_kubeconfig(
            layout.component_kubeconfigs / f"{identity.file_stem}.kubeconfig",
            server, certificates, identity, cluster.name,
        )  # fmt: skip
    reached("certificates")

    pids: dict[str, int] = {}
    try:
        _say(f"starting etcd on 127.0.0.1:{ports['etcd']}")
        _start_component(layout, "etcd", etcd_command(binaries, layout, ports), pids)
        etcd_health_url = f"http://127.0.0.1:{ports['etcd']}/health"
        _wait_for(
            "etcd",
            lambda: (_http_json(etcd_health_url) or {}).get("health") == "true",
            deadline,
            pids,
            layout,
        )
        reached("etcd")

        _say(f"starting kube-apiserver on {server}")
        _start_component(
            layout,
            "kube-apiserver",
            apiserver_command(
                binaries, layout, ports, certificates, "0.0.0.0" if pods_reach_api_server else "127.0.0.1"
            ),
            pids,
        )
        client = admin_client_for(layout, server)
        _wait_for("kube-apiserver /readyz", client.is_ready, deadline, pids, layout, 0.3)
        reached("kube-apiserver")

        # The controllers retry on their own, but they give up if the API server is not up within seconds,
        # which is why they start only now.
        _say("starting kube-controller-manager, kube-scheduler and kwok")
        _start_component(
            layout, "kube-controller-manager",
            controller_manager_command(binaries, layout, ports, certificates, cluster.node_count), pids,
        )  # fmt: skip
        _start_component(layout, "kube-scheduler", scheduler_command(binaries, layout, ports), pids)
        _start_component(layout, "kwok", kwok_command(binaries, layout, cluster.node_count), pids)

        manifests = build_node_manifests(cluster)
        _say(f"creating {len(manifests)} fake GPU node{'s' if len(manifests) != 1 else ''}")
        create_fake_nodes(client, manifests)
        reached("nodes-created")
        for component in ("kube-controller-manager", "kube-scheduler"):
            health_url = f"https://127.0.0.1:{ports[component]}/healthz"
            _wait_for(f"{component} /healthz", partial(_https_healthy, health_url), deadline, pids, layout)
        reached("controllers-healthy")
        wait_for_nodes(client, len(manifests), deadline, pids, layout)
        reached("nodes-ready")
        _wait_for(
            "the default ServiceAccount",
            lambda: client.request("GET", "/api/v1/namespaces/default/serviceaccounts/default").status == 200,
            deadline, pids, layout,
        )  # fmt: skip
    except BaseException:
        _say(f"start failed; stopping what was started (logs kept in {layout.logs})")
        stop_components(pids)
        layout.state_file.unlink(missing_ok=True)
        raise

    state = ClusterState(
        name=cluster.name,
        server=server,
        ports=ports,
        pids=pids,
        binaries={name: str(path) for name, path in binaries.paths.items()},
        node_count=len(manifests),
        started_at=time.time(),
        startup_seconds=round(time.monotonic() - started, 2),
        milestones=milestones,
        pods_reach_api_server=pods_reach_api_server,
    )
    layout.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")
    _say(f"ready in {state.startup_seconds:.1f} s; component logs in {layout.logs}")
    return DevCluster(layout.root, state, reused=False)


def _running_cluster(layout: StateLayout) -> DevCluster | None:
    """The cluster recorded in this folder if every component still runs and the API server is ready."""
    state = _read_state(layout)
    if state is None:
        return None
    if _recorded_pids(layout) != state.pids:
        return None
    if not admin_client_for(layout, state.server).is_ready():
        return None
    return DevCluster(layout.root, state, reused=True)


def attach(state_dir: Path | None = None) -> DevCluster | None:
    """The cluster running from this state folder, or None."""
    return _running_cluster(StateLayout((state_dir or default_state_dir()).resolve()))


def up(
    state_dir: Path | None = None,
    cluster: ClusterDescription | None = None,
    binaries: ControlPlaneBinaries | None = None,
    timeout_seconds: float = 180.0,
    real_node: bool = False,
) -> DevCluster:
    """Starts the cluster, or reuses the one already running from this state folder; with `real_node`, also
    the real node (reused too when it runs)."""
    layout = StateLayout((state_dir or default_state_dir()).resolve())
    cluster = cluster or load_cluster_description()
    with _state_lock(layout):
        running = _running_cluster(layout)
        if running is not None:
            _say(f"reusing the cluster already running from {layout.root}")
            client = running.admin_client()
            manifests = build_node_manifests(cluster)
            created = create_fake_nodes(client, manifests)
            if created:
                _say(f"added {created} fake nodes")
                wait_for_nodes(
                    client, len(manifests), time.monotonic() + timeout_seconds, running.state.pids, layout
                )
        else:
            # A node left by a cluster that died must give the host back before its folder is deleted.
            stop_real_node(layout, None)
            leftovers = _recorded_pids(layout)
            if leftovers:
                _say(f"stopping the remains of an unhealthy cluster: {sorted(leftovers)}")
                stop_components(leftovers)
            running = _start_cluster(
                layout, cluster, binaries or find_binaries(), timeout_seconds, pods_reach_api_server=real_node
            )
        if real_node:
            client = running.admin_client()
            if running_real_node(layout, client) is not None:
                _say("reusing the real node already running")
            else:
                stop_real_node(layout, client)
                if not running.state.pods_reach_api_server:
                    _say(
                        "this control plane was started without --real-node: its API server listens on "
                        "127.0.0.1 only, so pods cannot reach it (workers run; an operator in a pod cannot). "
                        "`down`, then `up --real-node` for both"
                    )
                api_port = (
                    running.state.ports["kube-apiserver"] if running.state.pods_reach_api_server else None
                )
                try:
                    start_real_node(
                        layout, running.server, client, running.state.name, timeout_seconds, api_port=api_port
                    )
                except BaseException:
                    # A failed `up` leaves nothing running that it started (a reused cluster stays).
                    if not running.reused:
                        _say("stopping the control plane this `up` started")
                        stop_components(running.state.pids)
                        layout.state_file.unlink(missing_ok=True)
                    raise
        return running


def down(state_dir: Path | None = None, timeout_seconds: float = 15.0) -> list[str]:
    """Stops every component (SIGTERM, then SIGKILL after the timeout) and deletes the state folder."""
    layout = StateLayout((state_dir or default_state_dir()).resolve())
    with _state_lock(layout):
        state = _read_state(layout)
        pids = _recorded_pids(layout)
        node_pids = recorded_node_pids(layout)
        # The real node first, while the API server can still delete its pods.
        client = (
            admin_client_for(layout, state.server) if state is not None and "kube-apiserver" in pids else None
        )
        stop_real_node(layout, client)
        forced = stop_components(pids, timeout_seconds)
        if forced:
            _say(f"needed SIGKILL: {forced}")
        _remove_state_folder(layout)
    return sorted(pids) + sorted(node_pids)


def status(state_dir: Path | None = None) -> ClusterStatus:
    """Which components run, their memory, whether the API server is ready and how many nodes are Ready."""
    layout = StateLayout((state_dir or default_state_dir()).resolve())
    state = _read_state(layout)
    report = ClusterStatus(state_dir=layout.root, exists=state is not None)
    if state is None:
        return report
    report.server = state.server
    running = _recorded_pids(layout)
    node = read_real_node(layout)
    if node is not None:
        running.update(recorded_node_pids(layout))
    for component in COMPONENTS + (NODE_COMPONENTS if node is not None else ()):
        pid = running.get(component, state.pids.get(component, node.pids.get(component) if node else None))
        report.components.append(
            ComponentStatus(
                name=component,
                pid=pid,
                running=component in running,
                rss_bytes=resident_memory_bytes(pid) if component in running and pid else 0,
            )
        )
    client = admin_client_for(layout, state.server)
    report.api_ready = client.is_ready()
    if report.api_ready:
        nodes = list_fake_nodes(client)
        report.nodes_total = len(nodes)
        report.nodes_ready = sum(node_is_schedulable(node) for node in nodes)
    return report


def format_status(report: ClusterStatus) -> str:
    if not report.exists:
        return f"no cluster in {report.state_dir}"
    lines = [
        f"cluster state: {report.state_dir}",
        f"api server:    {report.server} (ready: {report.api_ready})",
    ]
    lines.append(f"fake nodes:    {report.nodes_ready}/{report.nodes_total} Ready")
    lines.append(f"{'component':<26}{'pid':>8}  {'running':<8}{'RSS MiB':>9}")
    for component in report.components:
        rss = f"{component.rss_bytes / 2**20:.0f}" if component.running else "-"
        lines.append(f"{component.name:<26}{component.pid or '-':>8}  {component.running!s:<8}{rss:>9}")
    lines.append(f"{'total':<26}{'':>8}  {'':<8}{report.total_rss_bytes / 2**20:>9.0f}")
    return "\n".join(lines)
