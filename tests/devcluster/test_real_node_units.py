"""The real node's pure parts: the host check, its configuration files, host-state bookkeeping and images."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from maas_devcluster import host_state
from maas_devcluster.node_config import (
    NODE_NAME,
    REAL_NODE_LABEL,
    NodeLayout,
    cni_config,
    containerd_config,
    corefile,
    gateway_address,
    kubelet_command,
    kubelet_config,
    socket_path_problem,
)
from maas_devcluster.node_images import (
    IMAGE_NAME_ANNOTATION,
    IMAGE_VENV,
    Entry,
    PythonInstallation,
    layer_tar,
    oci_archive,
    operator_image,
    runtime_image,
    worker_pod_patch,
)
from maas_devcluster.real_node import HostFacts, missing_prerequisites
from maas_operator.pod_patch import merge_pod_patch

from tests.operator.test_children import train_pods

REPO = Path(__file__).resolve().parents[2]
GOOD_HOST = HostFacts(
    euid=0,
    filesystems="nodev\tcgroup\nnodev\toverlay\n",
    cgroup_hierarchies=("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory"),
    has_ip_command=True,
    bridge_in_use=False,
    host_networks=("127.0.0.1/8", "192.0.2.2/24"),
)


# -- the host check ---------------------------------------------------------------------------------------------
def test_a_host_with_everything_can_run_the_node() -> None:
    assert missing_prerequisites(GOOD_HOST) == []


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"euid": 1000}, "root: the kubelet, containerd and the pod network need it"),
        ({"filesystems": "nodev\tcgroup\n\text4\n"}, "overlayfs: the kernel has no `overlay` file system"),
        ({"cgroup_hierarchies": ()}, "cgroups: no cgroup file system is mounted"),
        ({"has_ip_command": False}, "the `ip` command (iproute2"),
        ({"bridge_in_use": True}, "a free bridge: maasbr0 exists, so another real node runs on this machine"),
        (
            {"containerd_drop_ins": ("/etc/containerd/conf.d/gpu.toml",)},
            "no containerd drop-ins: containerd would merge /etc/containerd/conf.d/gpu.toml",
        ),
        (
            {"host_networks": ("10.244.0.7/16",)},
            "a free pod subnet: 10.244.0.0/24 overlaps the host's 10.244.0.7/16",
        ),
    ],
)
def test_each_missing_prerequisite_is_named_with_its_remedy(change: dict[str, Any], says: str) -> None:
    facts = HostFacts(**{**GOOD_HOST.__dict__, **change})
    [message] = missing_prerequisites(facts)
    assert message.startswith(says)


def test_every_missing_prerequisite_is_reported_at_once() -> None:
    facts = HostFacts(
        euid=1, filesystems="", cgroup_hierarchies=(), has_ip_command=False, bridge_in_use=False
    )
    assert len(missing_prerequisites(facts)) == 4


def test_a_state_folder_too_deep_for_the_node_sockets_is_refused_with_the_length_that_fits() -> None:
    assert socket_path_problem(NodeLayout(Path("/tmp/pytest-of-root/pytest-3/real-node0/node"))) is None
    deep = NodeLayout(Path("/tmp/pytest-of-root/pytest-30/test_up_real_node_runs_pods_an0/cluster/node"))
    problem = socket_path_problem(deep)
    assert problem is not None and problem.startswith("a shorter state folder: the node's socket ")
    assert problem.endswith("(use a --state-dir of at most 64 characters)")
    assert socket_path_problem(NodeLayout(Path("/" + "x" * 63) / "node")) is None
    assert socket_path_problem(NodeLayout(Path("/" + "x" * 64) / "node")) is not None


# -- configuration files ----------------------------------------------------------------------------------------
LAYOUT = NodeLayout(Path("/state/node"))


def test_containerd_keeps_everything_under_the_node_folder_with_the_settings_our_machines_need() -> None:
    config = tomllib.loads(containerd_config(LAYOUT, Path("/bin-dir"), "docker.io/library/maas-pause:abc"))
    assert config["version"] == 4
    assert (
        config["root"] == "/state/node/containerd/root" and config["state"] == "/state/node/containerd/state"
    )
    plugins = config["plugins"]
    assert plugins["io.containerd.server.v1.grpc"]["address"] == "/state/node/containerd.sock"
    assert plugins["io.containerd.server.v1.ttrpc"]["address"] == "/state/node/containerd.sock.ttrpc"
    assert (
        plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
        == "docker.io/library/maas-pause:abc"
    )
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True and runtime["disable_apparmor"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"BinaryName": "/bin-dir/runc", "SystemdCgroup": False}
    assert runtime["cni"] == {"bin_dirs": ["/state/node/cni/bin"], "conf_dir": "/state/node/cni/net.d"}
    assert plugins["io.containerd.nri.v1.nri"]["disable"] is True


def test_the_pod_network_is_one_bridge_without_nat_or_port_mapping() -> None:
    config = cni_config(LAYOUT)
    [bridge] = config["plugins"]
    assert bridge["type"] == "bridge" and bridge["isGateway"] is True and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]]
    assert bridge["ipam"]["dataDir"] == "/state/node/cni/leases"


def test_the_kubelet_authenticates_by_certificate_and_authorizes_by_webhook() -> None:
    ca, cert, key = Path("/pki/ca.crt"), Path("/pki/k.crt"), Path("/pki/k.key")
    config = kubelet_config(LAYOUT, ca, cert, key, port=40000, healthz_port=40001)
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"] == {"clientCAFile": "/pki/ca.crt"}
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["readOnlyPort"] == 0 and config["address"] == gateway_address() == "10.244.0.1"
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["clusterDNS"] == ["10.244.0.1"]
    assert config["containerRuntimeEndpoint"] == "unix:///state/node/containerd.sock"
    assert config["registerWithTaints"] == [{"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}]
    command = kubelet_command(Path("/bin/kubelet"), LAYOUT)
    assert (
        f"--hostname-override={NODE_NAME}" in command and f"--node-labels={REAL_NODE_LABEL}=true" in command
    )


def test_coredns_serves_the_cluster_domain_on_the_bridge() -> None:
    text = corefile(Path("/state/node/coredns.kubeconfig"))
    assert "bind 10.244.0.1" in text and "kubernetes cluster.local in-addr.arpa ip6.arpa {" in text
    assert "kubeconfig /state/node/coredns.kubeconfig" in text and "forward . /etc/resolv.conf" in text


# -- host state -------------------------------------------------------------------------------------------------
MOUNTINFO = """\
22 1 0:21 / / rw - overlay overlay rw
30 22 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
31 22 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
40 22 0:30 / /state/node/kubelet rw - ext4 /dev/vda rw
41 40 0:31 / /state/node/kubelet/pods/a\\040b/volumes rw shared:5 - tmpfs tmpfs rw
42 22 0:32 / /run/containerd/io.containerd/rootfs rw - overlay overlay rw
43 40 0:33 / /state/node/kubelet rw - ext4 /dev/vda rw
"""


def test_mountinfo_is_parsed_with_escapes_and_optional_fields() -> None:
    mounts = host_state.parse_mountinfo(MOUNTINFO)
    assert mounts[4] == host_state.Mount(41, "/state/node/kubelet/pods/a b/volumes", "tmpfs")
    assert host_state.cgroup_hierarchies(mounts) == ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]


def test_mounts_are_unmounted_innermost_and_newest_first() -> None:
    mounts = host_state.parse_mountinfo(MOUNTINFO)
    order = [m.mount_id for m in host_state.mounts_under(mounts, ["/state/node", "/run/containerd"])]
    assert order == [41, 42, 43, 40]
    assert host_state.mounts_under(mounts, ["/state/no"]) == []


def test_sysctls_are_recorded_and_only_changed_ones_written_back(tmp_path: Path) -> None:
    for name, value in {
        "kernel.panic": "0",
        "vm.overcommit_memory": "0",
        "kernel.keys.root_maxbytes": "200",
    }.items():
        path = host_state.sysctl_path(name, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    recorded = host_state.read_sysctls(root=tmp_path)
    assert recorded == {"kernel.panic": "0", "vm.overcommit_memory": "0", "kernel.keys.root_maxbytes": "200"}
    host_state.sysctl_path("kernel.panic", tmp_path).write_text("10\n")
    assert host_state.restore_sysctls(recorded, tmp_path) == ["kernel.panic"]
    assert host_state.read_sysctls(root=tmp_path) == recorded


def test_changes_since_lists_only_what_is_new_or_different() -> None:
    before = host_state.HostSnapshot({"kernel.panic": "0"}, ["/run/netns"], [], ["/a"], ["eth0", "lo"])
    after = host_state.HostSnapshot(
        {"kernel.panic": "10"},
        ["/run/netns", "/var/lib/cni"],
        ["/sys/fs/cgroup/cpu/kubepods"],
        ["/a", "/state/node/kubelet"],
        ["eth0", "lo", "maasbr0"],
    )
    changes = host_state.changes_since(before, after)
    assert changes.sysctls == {"kernel.panic": ("0", "10")}
    assert changes.paths == ["/var/lib/cni"] and changes.cgroups == ["/sys/fs/cgroup/cpu/kubepods"]
    assert changes.mounts == ["/state/node/kubelet"] and changes.links == ["maasbr0"]
    assert not host_state.changes_since(before, before)


# -- images -----------------------------------------------------------------------------------------------------
def read_archive(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_an_image_archive_is_an_oci_layout_containerd_can_name() -> None:
    layer = layer_tar([Entry("pause", b"\x7fELF", 0o755)])
    image = oci_archive("maas-pause", layer, {"Entrypoint": ["/pause"]})
    files = read_archive(image.archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    [descriptor] = json.loads(files["index.json"])["manifests"]
    assert descriptor["annotations"][IMAGE_NAME_ANNOTATION] == image.reference
    assert image.reference.startswith("docker.io/library/maas-pause:") and not image.reference.endswith(
        ":latest"
    )
    assert image.short_reference == image.reference.removeprefix("docker.io/library/")
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files[f"blobs/sha256/{descriptor['digest'][7:]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert oci_archive("maas-pause", layer, {"Entrypoint": ["/pause"]}) == image  # same content, same bytes


def image_contents(archive: bytes) -> tuple[dict[str, tarfile.TarInfo], dict[str, Any]]:
    """The single layer's members and the container config of an image archive."""
    files = read_archive(archive)
    [descriptor] = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(files[f"blobs/sha256/{descriptor['digest'][7:]}"])
    layer = files[f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    config: dict[str, Any] = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])["config"]
    return members, config


def test_the_runtime_image_holds_our_packages_and_a_skeleton_for_the_host_mounts(tmp_path: Path) -> None:
    ld_cache = tmp_path / "ld.so.cache"
    ld_cache.write_bytes(b"cache")
    members, config = image_contents(runtime_image(REPO, ld_cache).archive)
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["tmp"].mode == 0o1777 and members["etc/ld.so.cache"].isfile()
    assert "opt/maas/src/maas_runtime/agent.py" in members and "opt/maas/src/maas_api/contract.py" in members
    assert not any("maas_operator" in name or "__pycache__" in name for name in members)
    assert f"PATH={IMAGE_VENV}/bin:/usr/local/bin:/usr/bin:/bin" in config["Env"]
    # The operator gives workers their command.
    assert "Entrypoint" not in config


def test_the_operator_image_holds_the_operator_without_the_runtime_and_starts_it(tmp_path: Path) -> None:
    ld_cache = tmp_path / "ld.so.cache"
    ld_cache.write_bytes(b"cache")
    image = operator_image(REPO, ld_cache)
    members, config = image_contents(image.archive)
    assert "opt/maas/src/maas_operator/__main__.py" in members and "opt/maas/src/maas_api/spec.py" in members
    assert not any("maas_runtime" in name for name in members)
    # The Dockerfile's operator target starts the same module.
    assert config["Entrypoint"] == ["python", "-m", "maas_operator"]
    assert image.short_reference.startswith("maas-operator:")


def test_the_worker_pod_patch_mounts_the_host_python_into_the_operators_worker_pod() -> None:
    patch = worker_pod_patch(
        PythonInstallation(Path("/root/.cache/venv/x"), Path("/root/.pyenv/versions/3.11"))
    )
    [pod, *_] = train_pods(worker_pod_patch=patch)
    [worker] = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts["/usr"]["readOnly"] and mounts["/root/.pyenv/versions/3.11"]["readOnly"]
    assert mounts[IMAGE_VENV]["readOnly"] and "/dev/shm" in mounts
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["host-venv"]["hostPath"]["path"] == "/root/.cache/venv/x"
    assert {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"} in worker["env"]
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in worker["env"]
    assert {"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    system_python = worker_pod_patch(PythonInstallation(Path("/venv"), Path("/usr")))
    assert [v["name"] for v in system_python["spec"]["volumes"]] == ["host-usr", "host-venv"]
    assert merge_pod_patch({}, system_python) == system_python
