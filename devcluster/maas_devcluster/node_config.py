"""The real node's configuration files and command lines: containerd, CNI, kubelet and CoreDNS (pure).

Everything lives under `<state dir>/node`; only what the components hard-code is elsewhere (see
`host_state.HOST_PATHS`). The values that were required on our machines are explained where they are set.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "maas-real-node"
REAL_NODE_LABEL = "maas.dev/real-node"
"""Label (value "true") and NoSchedule taint of the real node: only pods that ask for it run there."""
BRIDGE_NAME = "maasbr0"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
POD_INTERFACE = "eth0"
"""The pod's network interface (CNI's default name); gloo must be told to use it."""
CNI_PLUGINS = {"bridge": "cni-bridge", "host-local": "cni-host-local", "loopback": "cni-loopback"}
"""CNI plugin name -> our binary's name: containerd looks a plugin up by its name in bin_dirs."""
CONTAINERD_DROP_INS = "/etc/containerd/conf.d"
"""containerd always merges the *.toml files here into any config (imports only add to it): the host check
refuses to start the node when there are some."""
NODE_BINARIES = (
    "kubelet",
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "runc",
    *CNI_PLUGINS.values(),
    "coredns",
    "pause",
)


MAX_SOCKET_PATH = 104
"""Longest unix socket path containerd accepts (the kernel's limit is 107 bytes)."""


def socket_path_problem(layout: NodeLayout) -> str | None:
    """Pure: why the node folder is too deep for its sockets, or None."""
    longest = max(layout.sockets, key=lambda path: len(str(path)))
    if len(str(longest)) <= MAX_SOCKET_PATH:
        return None
    room = MAX_SOCKET_PATH - (len(str(longest)) - len(str(layout.root.parent)))
    return (
        f"a shorter state folder: the node's socket {longest} is {len(str(longest))} characters long, over "
        f"the {MAX_SOCKET_PATH} a unix socket allows (use a --state-dir of at most {room} characters)"
    )


def gateway_address(subnet: str = POD_SUBNET) -> str:
    """The bridge's own address: the node's InternalIP, where the kubelet and CoreDNS listen."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


@dataclass(frozen=True)
class NodeLayout:
    """Where the real node's files live under a cluster's state folder."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def sockets(self) -> tuple[Path, ...]:
        """The unix sockets made under the node folder, whose paths must fit MAX_SOCKET_PATH."""
        return (
            Path(f"{self.containerd_socket}.ttrpc"),
            self.kubelet_root / "pod-resources" / "kubelet.sock",
        )

    @property
    def cni_bin(self) -> Path:
        return self.root / "cni" / "bin"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_leases(self) -> Path:
        return self.root / "cni" / "leases"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def corefile(self) -> Path:
        return self.root / "Corefile"

    @property
    def coredns_kubeconfig(self) -> Path:
        return self.root / "coredns.kubeconfig"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def host_state(self) -> Path:
        """What the host looked like before the node started (sysctls, paths, cgroups): `down` restores it."""
        return self.root / "host-state.json"

    @property
    def node_state(self) -> Path:
        return self.root / "real-node.json"


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string for the paths and names used here.
    return json.dumps(value)


def containerd_config(layout: NodeLayout, bin_dir: Path, sandbox_image: str) -> str:
    """containerd's config (version 4, containerd 2.x): every path of its own under the node folder."""
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return "\n".join(
        [
            "version = 4",
            f"root = {_toml_string(str(layout.containerd_root))}",
            f"state = {_toml_string(str(layout.containerd_state))}",
            "",
            # Version 4 configures each server as a plugin; one left out listens at its default under
            # /run/containerd, so both get an address of ours.
            "[plugins.'io.containerd.server.v1.grpc']",
            f"  address = {_toml_string(str(layout.containerd_socket))}",
            "[plugins.'io.containerd.server.v1.ttrpc']",
            f"  address = {_toml_string(str(layout.containerd_socket) + '.ttrpc')}",
            "",
            "[plugins.'io.containerd.cri.v1.images']",
            "  snapshotter = 'overlayfs'",
            "  [plugins.'io.containerd.cri.v1.images'.pinned_images]",
            # The pause image is ours, imported before the kubelet starts: never pulled, never collected.
            f"    sandbox = {_toml_string(sandbox_image)}",
            "",
            f"[{runtime}]",
            "  enable_selinux = false",
            "  disable_apparmor = true",
            # The sandboxes lack CAP_SYS_RESOURCE on our machines: runc could not set the pause container's
            # oom_score_adj to -998 otherwise.
            "  restrict_oom_score_adj = true",
            # Network namespaces under containerd's state folder rather than /run/netns.
            "  netns_mounts_under_state_dir = true",
            "  cdi_spec_dirs = []",
            f"  [{runtime}.containerd]",
            "    default_runtime_name = 'runc'",
            f"    [{runtime}.containerd.runtimes.runc]",
            "      runtime_type = 'io.containerd.runc.v2'",
            f"      [{runtime}.containerd.runtimes.runc.options]",
            f"        BinaryName = {_toml_string(str(bin_dir / 'runc'))}",
            "        SystemdCgroup = false",
            f"  [{runtime}.cni]",
            f"    bin_dirs = [{_toml_string(str(layout.cni_bin))}]",
            f"    conf_dir = {_toml_string(str(layout.cni_conf))}",
            "",
            # NRI would open a socket under /run/nri; nothing here uses it.
            "[plugins.'io.containerd.nri.v1.nri']",
            "  disable = true",
            "",
            # The opt plugin makes its folder at start (default /opt/containerd).
            "[plugins.'io.containerd.internal.v1.opt']",
            f"  path = {_toml_string(str(layout.root / 'containerd' / 'opt'))}",
            "",
        ]
    )


def cni_config(layout: NodeLayout, subnet: str = POD_SUBNET, bridge: str = BRIDGE_NAME) -> dict[str, Any]:
    """One bridge network, no NAT and no port mapping (our machines have no iptables binary: pod-to-pod
    and pod-to-host traffic need none, and pods get no egress)."""
    return {
        "cniVersion": "1.0.0",
        "name": "maas-real-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": gateway_address(subnet)}]],
                    # host-local's leases would live under /var/lib/cni otherwise.
                    "dataDir": str(layout.cni_leases),
                },
            }
        ],
    }


def kubelet_config(
    layout: NodeLayout,
    ca_cert: Path,
    serving_cert: Path,
    serving_key: Path,
    port: int,
    healthz_port: int,
    subnet: str = POD_SUBNET,
) -> dict[str, Any]:
    """The kubelet's KubeletConfiguration: x509 + Webhook auth, cgroupfs on cgroup v1, our runtime socket."""
    gateway = gateway_address(subnet)
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": gateway,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        # kubelet >= 1.35 refuses cgroup v1 unless told otherwise; our machines are cgroup v1.
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [gateway],
        "podLogsDir": str(layout.pod_logs),
        # The images are imported, not pulled: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # A shared dev machine is often nearly full; the kubelet must not evict our pods for it.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "registerWithTaints": [{"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "nodeStatusReportFrequency": "10s",
        "resolvConf": "/etc/resolv.conf",
        "enableDebuggingHandlers": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def kubelet_config_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_command(kubelet: Path, layout: NodeLayout, subnet: str = POD_SUBNET) -> list[str]:
    return [
        str(kubelet),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={layout.kubelet_kubeconfig}",
        f"--root-dir={layout.kubelet_root}",
        f"--cert-dir={layout.kubelet_root / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={gateway_address(subnet)}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]


def containerd_command(containerd: Path, layout: NodeLayout) -> list[str]:
    return [str(containerd), f"--config={layout.containerd_config}", "--log-level=warn"]


def corefile(kubeconfig: Path, subnet: str = POD_SUBNET) -> str:
    """CoreDNS on the bridge's address: cluster names from the API server, the rest to the host's resolver."""
    return "\n".join(
        [
            ".:53 {",
            f"    bind {gateway_address(subnet)}",
            "    errors",
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
            f"        kubeconfig {kubeconfig}",
            "        pods insecure",
            "        fallthrough in-addr.arpa ip6.arpa",
            # Short: a headless Service's records change with every pod that (re)starts.
            "        ttl 2",
            "    }",
            "    forward . /etc/resolv.conf",
            "    cache 2",
            "}",
            "",
        ]
    )


def coredns_command(coredns: Path, layout: NodeLayout) -> list[str]:
    return [str(coredns), "-conf", str(layout.corefile)]
