"""One real node beside the kwok fleet: kubelet + containerd + runc + CNI bridge + CoreDNS as local processes.

`start_real_node` checks that the host can run it, records the host's state, and starts the node; its pods
really run (images imported from OCI tars, no registry). `stop_real_node` undoes everything in the order that
leaves the host clean: pods deleted and their tasks gone -> kubelet -> CoreDNS -> containerd -> mounts ->
host paths -> bridge -> sysctls -> cgroups (the control plane is stopped after it). One real node per machine:
it owns the bridge and the kubelet's hard-coded host paths.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from maas_devcluster import host_state
from maas_devcluster import pki as cluster_pki
from maas_devcluster.apiclient import ApiClient, ApiError
from maas_devcluster.binaries import ControlPlaneBinaries, find_binaries, repository_root
from maas_devcluster.layout import StateLayout
from maas_devcluster.node_config import (
    BRIDGE_NAME,
    CNI_PLUGINS,
    CONTAINERD_DROP_INS,
    NODE_BINARIES,
    NODE_NAME,
    POD_SUBNET,
    REAL_NODE_LABEL,
    NodeLayout,
    cni_config,
    containerd_command,
    containerd_config,
    coredns_command,
    corefile,
    gateway_address,
    kubelet_command,
    kubelet_config,
    kubelet_config_yaml,
    socket_path_problem,
)
from maas_devcluster.node_images import (
    Image,
    PythonInstallation,
    operator_image,
    pause_image,
    runtime_image,
    worker_pod_patch,
)
from maas_devcluster.processes import command_line, is_running, recorded_pids, start_detached, stop_processes

NODE_COMPONENTS = ("containerd", "coredns", "kubelet")
CRI_NAMESPACE = "k8s.io"
KUBELET = cluster_pki.ClientIdentity("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",))
COREDNS = cluster_pki.ClientIdentity("coredns", "maas-dev:coredns")
KUBELET_SERVING_STEM = "kubelet-serving"
# RBAC objects the node needs, created (idempotently) when it starts.
RBAC_OBJECTS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "maas-dev:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": cluster_pki.APISERVER_KUBELET_CLIENT.user,
                }
            ],
        },
    ),
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": COREDNS.user},
            "rules": [
                # What CoreDNS's kubernetes plugin watches with `pods insecure` (no pod informer).
                {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
    ),
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": COREDNS.user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COREDNS.user},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS.user}],
        },
    ),
)


class RealNodeUnavailableError(RuntimeError):
    """The host cannot run a real node; the message says what is missing and how to get it."""


# -- can this host run it? -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostFacts:
    """What the prerequisite check looks at, gathered by `probe_host` (tests pass their own)."""

    euid: int
    filesystems: str
    """The text of /proc/filesystems."""
    cgroup_hierarchies: tuple[str, ...]
    has_ip_command: bool
    bridge_in_use: bool
    host_networks: tuple[str, ...] = ()
    """Networks of the host's addresses (CIDR), to find a clash with the pod subnet."""
    containerd_drop_ins: tuple[str, ...] = ()


def probe_host() -> HostFacts:
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    try:
        hierarchies = tuple(host_state.cgroup_hierarchies(host_state.live_mounts()))
    except OSError:
        hierarchies = ()
    has_ip = shutil.which("ip") is not None
    networks: tuple[str, ...] = ()
    if has_ip:
        listing = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
        networks = tuple(line.split()[3] for line in listing.stdout.splitlines() if len(line.split()) > 3)
    return HostFacts(
        containerd_drop_ins=tuple(sorted(str(path) for path in Path(CONTAINERD_DROP_INS).glob("*.toml"))),
        euid=os.geteuid(),
        filesystems=filesystems,
        cgroup_hierarchies=hierarchies,
        has_ip_command=has_ip,
        bridge_in_use=host_state.link_exists(BRIDGE_NAME),
        host_networks=networks,
    )


def missing_prerequisites(facts: HostFacts, subnet: str = POD_SUBNET) -> list[str]:
    """Pure: one message per missing prerequisite, each saying how to get it; empty when the host can run it."""
    missing = []
    if facts.euid != 0:
        missing.append(
            "root: the kubelet, containerd and the pod network need it (run `sudo -E maas dev-cluster up "
            "--real-node`, or use the kwok-only cluster without --real-node)"
        )
    if not any(line.split()[-1:] == ["overlay"] for line in facts.filesystems.splitlines()):
        missing.append("overlayfs: the kernel has no `overlay` file system (try `modprobe overlay`)")
    if not facts.cgroup_hierarchies:
        missing.append("cgroups: no cgroup file system is mounted (mount cgroup v1 hierarchies or cgroup2)")
    if not facts.has_ip_command:
        missing.append("the `ip` command (iproute2: `apt-get install -y iproute2`)")
    if facts.bridge_in_use:
        missing.append(
            f"a free bridge: {BRIDGE_NAME} exists, so another real node runs on this machine (one per machine; "
            "stop it with `maas dev-cluster down` on its state folder)"
        )
    if facts.containerd_drop_ins:
        missing.append(
            f"no containerd drop-ins: containerd would merge {', '.join(facts.containerd_drop_ins)} into the "
            "node's own config (move them aside while the real node runs)"
        )
    pods = ipaddress.ip_network(subnet)
    clashes = [net for net in facts.host_networks if ipaddress.ip_interface(net).network.overlaps(pods)]
    if clashes and not facts.bridge_in_use:
        missing.append(f"a free pod subnet: {subnet} overlaps the host's {', '.join(clashes)}")
    return missing


def check_host(node: NodeLayout) -> None:
    missing = missing_prerequisites(probe_host())
    if (problem := socket_path_problem(node)) is not None:
        missing.append(problem)
    if missing:
        raise RealNodeUnavailableError(
            "the real node cannot run on this machine; missing: " + "; ".join(missing)
        )


# -- state ------------------------------------------------------------------------------------------------------
@dataclass
class RealNode:
    """A running real node, as recorded in `<state dir>/node/real-node.json`."""

    name: str
    label: str
    pids: dict[str, int]
    images: dict[str, str]
    """pause, runtime and operator -> the image reference to put in a pod (imagePullPolicy: Never)."""
    worker_pod_patch: dict[str, Any]
    """The operator's MAAS_WORKER_POD_PATCH for runtime-image workers on this node."""
    gateway: str
    kubelet_port: int
    startup_seconds: float
    milestones: dict[str, float] = field(default_factory=dict)
    api_port: int | None = None
    """The API server's port, reached by pods at `gateway`; None when it listens on loopback only (a control
    plane started without the real node)."""

    def operator_environment(self) -> dict[str, str]:
        """What an operator needs to run workers here: the runtime image, never pulled, and the patch."""
        return {
            "MAAS_RUNTIME_IMAGE": self.images["runtime"],
            "MAAS_IMAGE_PULL_POLICY": "Never",
            "MAAS_WORKER_POD_PATCH": json.dumps(self.worker_pod_patch),
        }

    def chart_values(self) -> dict[str, Any]:
        """Values for charts/maas-operator that run the operator itself as a pod on this node: the local
        operator image with the host's Python mounted as in the workers' patch, and the API server reached at
        the gateway (no kube-proxy serves the `kubernetes` Service's ClusterIP here)."""
        if self.api_port is None:
            raise RuntimeError(
                "pods on this real node cannot reach the API server (the control plane was started without "
                "--real-node and listens on 127.0.0.1 only): run `down`, then `up --real-node`"
            )
        spec = self.worker_pod_patch["spec"]
        (worker,) = spec["containers"]

        def image(name: str) -> dict[str, str]:
            repository, tag = self.images[name].rsplit(":", 1)
            return {"repository": repository, "tag": tag, "pullPolicy": "Never"}

        return {
            "image": image("operator"),
            "runtime": {"image": image("runtime")},
            "workerPodPatch": self.worker_pod_patch,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": spec["tolerations"],
            "extraVolumes": spec["volumes"],
            "extraVolumeMounts": worker["volumeMounts"],
            # In-cluster configuration reads these two; set explicitly, they win over the kubelet's.
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": self.gateway},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_port)},
            ],
        }


def node_layout(layout: StateLayout) -> NodeLayout:
    return NodeLayout(layout.root / "node")


def read_real_node(layout: StateLayout) -> RealNode | None:
    try:
        return RealNode(**json.loads(node_layout(layout).node_state.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def recorded_node_pids(layout: StateLayout) -> dict[str, int]:
    """Pids of the node's daemons that still run the component we started from this state folder."""
    return recorded_pids(layout.root, layout.pid_file, NODE_COMPONENTS)


def _say(message: str) -> None:
    print(f"[real-node] {message}", file=sys.stderr, flush=True)


def _wait(
    what: str, done: Callable[[], bool], deadline: float, watched: dict[str, int], layout: StateLayout
) -> None:
    while not done():
        for component, pid in watched.items():
            if not is_running(pid):
                log = layout.log_file(component)
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.exists() else ""
                raise RuntimeError(
                    f"{component} exited while waiting for {what}; last lines of {log}:\n{tail}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; logs are in {layout.logs}")
        time.sleep(0.2)


def _ctr(binaries: ControlPlaneBinaries, layout: NodeLayout, *arguments: str) -> str:
    result = subprocess.run(
        [str(binaries["ctr"]), "--address", str(layout.containerd_socket), "-n", CRI_NAMESPACE, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(arguments)} failed: {result.stderr.strip()}")
    return result.stdout


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _node_ready(client: ApiClient) -> bool:
    response = client.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    if response.status != 200:
        return False
    conditions = response.json().get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- start ------------------------------------------------------------------------------------------------------
def start_real_node(
    layout: StateLayout,
    server: str,
    client: ApiClient,
    cluster_name: str,
    timeout_seconds: float = 180.0,
    binaries: ControlPlaneBinaries | None = None,
    api_port: int | None = None,
) -> RealNode:
    """Starts the node on a running control plane; on failure everything started is undone. `api_port`: the
    API server's port when pods can reach it at the gateway (it listens on every interface)."""
    node = node_layout(layout)
    check_host(node)
    started = time.monotonic()
    deadline = started + timeout_seconds
    milestones: dict[str, float] = {}

    def reached(milestone: str) -> None:
        milestones[milestone] = round(time.monotonic() - started, 2)

    binaries = binaries or find_binaries(NODE_BINARIES)
    if node.root.exists():
        shutil.rmtree(node.root)
    node.root.mkdir(parents=True)
    # Before anything changes: what `down` must restore.
    node.host_state.write_text(json.dumps(host_state.snapshot_host(node.root).to_json(), indent=2) + "\n")
    pids: dict[str, int] = {}
    try:
        certificates = cluster_pki.ClusterPki(layout.pki)
        gateway = gateway_address()
        _say("issuing the kubelet's and CoreDNS's certificates")
        for identity in (KUBELET, COREDNS):
            cluster_pki.issue_client_cert(certificates, identity)
        cluster_pki.issue_serving_cert(
            certificates, KUBELET_SERVING_STEM, NODE_NAME, (f"DNS:{NODE_NAME}", f"IP:{gateway}")
        )
        cluster_pki.write_kubeconfig(node.kubelet_kubeconfig, server, certificates, KUBELET, cluster_name)
        cluster_pki.write_kubeconfig(node.coredns_kubeconfig, server, certificates, COREDNS, cluster_name)
        for path, manifest in RBAC_OBJECTS:
            client.create(path, manifest)
        reached("certificates")

        # The bridge exists with its address before any pod: the kubelet and CoreDNS listen on it.
        host_state.create_bridge(BRIDGE_NAME, f"{gateway}/{ipaddress.ip_network(POD_SUBNET).prefixlen}")
        node.cni_bin.mkdir(parents=True)
        node.cni_conf.mkdir(parents=True)
        for plugin, binary in CNI_PLUGINS.items():
            (node.cni_bin / plugin).symlink_to(binaries[binary])
        (node.cni_conf / "10-maas.conflist").write_text(json.dumps(cni_config(node), indent=2) + "\n")

        images = {
            "pause": pause_image(binaries["pause"]),
            "runtime": runtime_image(repository_root()),
            "operator": operator_image(repository_root()),
        }
        node.containerd_config.parent.mkdir(parents=True, exist_ok=True)
        node.containerd_config.write_text(
            containerd_config(node, binaries["runc"].parent, images["pause"].reference)
        )
        # containerd finds its shim on PATH.
        environment = {
            **os.environ,
            "PATH": f"{binaries['containerd-shim-runc-v2'].parent}:{os.environ['PATH']}",
        }
        _start(layout, "containerd", containerd_command(binaries["containerd"], node), pids, environment)
        _wait("containerd's socket", node.containerd_socket.exists, deadline, pids, layout)
        reached("containerd")

        _import_images(binaries, node, images.values())
        reached("images")

        node.corefile.write_text(corefile(node.coredns_kubeconfig))
        _start(layout, "coredns", coredns_command(binaries["coredns"], node), pids)
        _wait("CoreDNS on the bridge", lambda: _listening(gateway, 53), deadline, pids, layout)
        reached("coredns")

        kubelet_port, healthz_port = _free_port(), _free_port()
        config = kubelet_config(
            node,
            certificates.ca_cert,
            certificates.folder / f"{KUBELET_SERVING_STEM}.crt",
            certificates.folder / f"{KUBELET_SERVING_STEM}.key",
            kubelet_port,
            healthz_port,
        )
        node.kubelet_config.write_text(kubelet_config_yaml(config))
        _start(layout, "kubelet", kubelet_command(binaries["kubelet"], node), pids)
        _wait(f"node {NODE_NAME} Ready", lambda: _node_ready(client), deadline, pids, layout)
        reached("node-ready")
    except BaseException:
        _say(f"start failed; undoing what was started (logs kept in {layout.logs})")
        stop_real_node(layout, client)
        raise

    real_node = RealNode(
        name=NODE_NAME,
        label=f"{REAL_NODE_LABEL}=true",
        pids=pids,
        images={name: image.short_reference for name, image in images.items()},
        worker_pod_patch=worker_pod_patch(PythonInstallation.current()),
        gateway=gateway,
        kubelet_port=kubelet_port,
        startup_seconds=round(time.monotonic() - started, 2),
        milestones=milestones,
        api_port=api_port,
    )
    node.node_state.write_text(json.dumps(asdict(real_node), indent=2) + "\n")
    _say(
        f"node {NODE_NAME} Ready in {real_node.startup_seconds:.1f} s (images: {', '.join(real_node.images.values())})"
    )
    return real_node


def _start(
    layout: StateLayout,
    component: str,
    command: list[str],
    pids: dict[str, int],
    environment: dict[str, str] | None = None,
) -> None:
    # A session of its own (setsid) and the daemon's own pid recorded, never a shell's.
    pid = start_detached(command, layout.log_file(component), environment)
    layout.pid_file(component).write_text(f"{pid}\n")
    pids[component] = pid


def _import_images(binaries: ControlPlaneBinaries, node: NodeLayout, images: Iterable[Image]) -> None:
    node.images.mkdir(parents=True, exist_ok=True)
    for image in images:
        archive = node.images / f"{image.short_reference.replace(':', '-')}.tar"
        archive.write_bytes(image.archive)
        _ctr(binaries, node, "images", "import", str(archive))


def running_real_node(layout: StateLayout, client: ApiClient) -> RealNode | None:
    """The recorded node if its three daemons still run and it is Ready."""
    recorded = read_real_node(layout)
    if recorded is None or recorded_node_pids(layout) != recorded.pids or not _node_ready(client):
        return None
    return recorded


# -- stop -------------------------------------------------------------------------------------------------------
def _delete_node_pods(client: ApiClient) -> None:
    pods = client.get_json(f"/api/v1/pods?fieldSelector=spec.nodeName={NODE_NAME}").get("items", [])
    for pod in pods:
        metadata = pod["metadata"]
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        response = client.request("DELETE", path, {"gracePeriodSeconds": 1})
        if response.status not in (200, 202, 404):
            raise ApiError("DELETE", path, response.status, response.body.decode(errors="replace"))


def _containerd_tasks(binaries: ControlPlaneBinaries, node: NodeLayout) -> list[str]:
    return _ctr(binaries, node, "tasks", "list", "--quiet").split()


def _shims_of(socket_path: Path) -> list[int]:
    """Shims our containerd started (they leave its session): `-address <our socket>` on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        arguments = command_line(int(entry.name))
        if (
            arguments
            and Path(arguments[0]).name == "containerd-shim-runc-v2"
            and str(socket_path) in arguments
        ):
            found.append(int(entry.name))
    return found


def stop_real_node(layout: StateLayout, client: ApiClient | None, timeout_seconds: float = 60.0) -> None:
    """Stops the node and restores the host as recorded when it started; safe to call on a half-started node."""
    node = node_layout(layout)
    if not node.host_state.exists():
        return
    before = host_state.HostSnapshot.from_json(json.loads(node.host_state.read_text()))
    pids = recorded_node_pids(layout)
    binaries: ControlPlaneBinaries | None
    try:
        binaries = find_binaries(("ctr",), build=False)
    except FileNotFoundError:
        binaries = None
    deadline = time.monotonic() + timeout_seconds

    # 1. Pods deleted through the API, so the kubelet stops them properly; wait until containerd runs none.
    if client is not None and "kubelet" in pids and "containerd" in pids and binaries is not None:
        try:
            _delete_node_pods(client)
            while time.monotonic() < deadline and _containerd_tasks(binaries, node):
                time.sleep(0.5)
        except (OSError, RuntimeError) as error:
            _say(f"could not drain the node's pods ({error}); stopping it anyway")

    # 2. kubelet, CoreDNS, then containerd; a kubelet may need a second SIGTERM (stop_processes sends SIGKILL).
    for component in NODE_COMPONENTS[::-1]:
        if component in pids:
            stop_processes([pids[component]], timeout_seconds=15.0)
    # Shims and container processes outlive containerd by design; here they must go.
    leftovers = _shims_of(node.containerd_socket)
    for cgroup in _created(before.cgroups):
        leftovers += host_state.cgroup_processes(Path(cgroup))
    for pid in sorted(set(leftovers)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(leftovers)

    # 3-5. Each undo runs even when an earlier one failed; what failed is reported together, and the record
    # is kept so that `down` can run again once it is fixed.
    created_paths = [path for path in host_state.HOST_PATHS if path not in before.existing_paths]
    failures: list[str] = []

    def undo(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            failures.append(f"{what}: {error}")

    # 3. Mounts (overlays, shm, namespaces, the kubelet's own) under our folder and the host paths we made.
    undo(
        "unmount",
        lambda: host_state.unmount_under([str(node.root), *created_paths], keep=before.mount_points),
    )
    undo("host paths", lambda: host_state.remove_paths(p for p in created_paths if os.path.lexists(p)))
    # 4. The network: pod veths still left (new since the start), then the bridge.
    for link in sorted(set(host_state.network_links()) - set(before.links)):
        if link.startswith("veth"):
            undo(f"link {link}", partial(host_state.delete_link, link))
    undo(f"bridge {BRIDGE_NAME}", partial(host_state.delete_link, BRIDGE_NAME))
    # 5. Sysctls, then cgroups bottom-up (empty now).
    changed: list[str] = []
    undo("sysctls", lambda: changed.extend(host_state.restore_sysctls(before.sysctls)))
    if changed:
        _say(f"restored sysctls: {', '.join(changed)}")
    for cgroup in _created(before.cgroups):
        undo(f"cgroup {cgroup}", partial(host_state.remove_cgroup_tree, Path(cgroup)))
    if failures:
        raise RuntimeError(
            f"the real node stopped, but the host is not fully restored ({'; '.join(failures)}); fix that and "
            f"run `down` again (the record is {node.host_state})"
        )
    shutil.rmtree(node.root)
    for component in NODE_COMPONENTS:
        layout.pid_file(component).unlink(missing_ok=True)


def _created(cgroups_before: Sequence[str]) -> list[str]:
    hierarchies = host_state.cgroup_hierarchies(host_state.live_mounts())
    return [c for c in host_state.existing_cgroups(hierarchies) if c not in cgroups_before]


def _wait_gone(pids: Sequence[int], timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
        time.sleep(0.05)
