"""What the real node changes on the host, recorded before it starts and undone after it stops.

The kubelet writes kernel sysctls, the CNI bridge plugin turns on IP forwarding, containerd and the kubelet use
a few hard-coded host paths, mount overlays, shm and namespaces, and make cgroups in every v1 hierarchy.
`snapshot_host` records the state before; `HostChanges` lists what differs afterwards (the test of `down`
asserts it is empty). Parsers are pure and take the file's text; the I/O functions read the live host.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROC_SYS = Path("/proc/sys")
MOUNTINFO = Path("/proc/self/mountinfo")

SYSCTLS = (
    # The kubelet's kernel tunables (it writes them unless protectKernelDefaults).
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    # The bridge plugin's gateway mode.
    "net.ipv4.ip_forward",
)
HOST_PATHS = (
    # Used by containerd, its shims and the kubelet whatever their configured folders: parents first.
    "/run/containerd",
    "/run/nri",
    "/run/netns",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
)
CGROUP_NAMES = ("kubepods", "k8s.io")
"""Top-level cgroups the kubelet (pods) and containerd make in each hierarchy."""

MNT_DETACH = 2


def sysctl_path(name: str, root: Path = PROC_SYS) -> Path:
    return root / name.replace(".", "/")


def read_sysctls(names: Iterable[str] = SYSCTLS, root: Path = PROC_SYS) -> dict[str, str]:
    """Current values, whitespace-normalised (some hold several numbers); absent ones are left out."""
    values = {}
    for name in names:
        try:
            values[name] = " ".join(sysctl_path(name, root).read_text().split())
        except OSError:
            continue
    return values


def restore_sysctls(recorded: dict[str, str], root: Path = PROC_SYS) -> list[str]:
    """Writes back every recorded value that changed; returns the names written."""
    changed = []
    for name, value in read_sysctls(recorded, root).items():
        if value != recorded[name]:
            sysctl_path(name, root).write_text(recorded[name] + "\n")
            changed.append(name)
    return changed


@dataclass(frozen=True)
class Mount:
    mount_id: int
    mount_point: str
    fs_type: str


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, index = [], 0
    while index < len(field_text):
        if field_text[index] == "\\" and field_text[index + 1 : index + 4].isdigit():
            out.append(chr(int(field_text[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field_text[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/<pid>/mountinfo: `id parent major:minor root mount-point options [optional...] - type source ...`."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        before, _, after = line.partition(" - ")
        fields = before.split()
        mounts.append(Mount(int(fields[0]), _unescape(fields[4]), after.split()[0] if after else ""))
    return mounts


def _is_under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def mounts_under(mounts: Sequence[Mount], prefixes: Sequence[str]) -> list[Mount]:
    """Mounts at or below any prefix, in the order to unmount them: newest (innermost) first."""
    return sorted(
        (mount for mount in mounts if _is_under(mount.mount_point, prefixes)),
        key=lambda mount: (-len(Path(mount.mount_point).parts), -mount.mount_id),
    )


def cgroup_hierarchies(mounts: Sequence[Mount]) -> list[str]:
    """Mount points of the cgroup v1 hierarchies and of the unified (v2) one."""
    return sorted({mount.mount_point for mount in mounts if mount.fs_type in ("cgroup", "cgroup2")})


def live_mounts() -> list[Mount]:
    return parse_mountinfo(MOUNTINFO.read_text())


def existing_cgroups(hierarchies: Iterable[str], names: Iterable[str] = CGROUP_NAMES) -> list[str]:
    return sorted(
        str(Path(hierarchy) / name)
        for hierarchy in hierarchies
        for name in names
        if (Path(hierarchy) / name).is_dir()
    )


@dataclass
class HostSnapshot:
    """The host before the real node started: what `down` must leave as it found."""

    sysctls: dict[str, str]
    existing_paths: list[str]
    cgroups: list[str]
    mount_points: list[str]
    links: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostSnapshot:
        return cls(**data)


def network_links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def snapshot_host(node_root: Path) -> HostSnapshot:
    """The host as the real node sees it: mounts only under its folder and the host paths it uses."""
    mounts = live_mounts()
    return HostSnapshot(
        sysctls=read_sysctls(),
        existing_paths=[path for path in HOST_PATHS if os.path.lexists(path)],
        cgroups=existing_cgroups(cgroup_hierarchies(mounts)),
        mount_points=sorted(
            {mount.mount_point for mount in mounts_under(mounts, [str(node_root), *HOST_PATHS])}
        ),
        links=network_links(),
    )


@dataclass
class HostChanges:
    """What differs from a snapshot; empty when the host is as it was."""

    sysctls: dict[str, tuple[str, str]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sysctls or self.paths or self.cgroups or self.mounts or self.links)


def changes_since(before: HostSnapshot, after: HostSnapshot) -> HostChanges:
    """Pure: what `after` has that `before` did not (new paths, cgroups, mounts, links; changed sysctls)."""
    return HostChanges(
        sysctls={
            name: (value, after.sysctls.get(name, ""))
            for name, value in before.sysctls.items()
            if after.sysctls.get(name) != value
        },
        paths=sorted(set(after.existing_paths) - set(before.existing_paths)),
        cgroups=sorted(set(after.cgroups) - set(before.cgroups)),
        mounts=sorted(set(after.mount_points) - set(before.mount_points)),
        links=sorted(set(after.links) - set(before.links)),
    )


# -- undoing --------------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def unmount(path: str) -> None:
    """Unmounts one mount; a busy one is detached (lazily unmounted) instead."""
    for flags in (0, MNT_DETACH):
        if _libc.umount2(path.encode(), flags) == 0:
            return
        error = ctypes.get_errno()
        if error in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point
            return
        if error != errno.EBUSY:
            raise OSError(error, f"umount {path}: {os.strerror(error)}")
    raise OSError(errno.EBUSY, f"umount {path}: still busy")


def unmount_under(prefixes: Sequence[str], keep: Iterable[str] = ()) -> list[str]:
    """Unmounts everything at or below the prefixes except the mount points in `keep`, innermost first,
    until none is left (mounts can be stacked on one point)."""
    kept = set(keep)
    done: list[str] = []
    for _ in range(100):
        pending = [mount for mount in mounts_under(live_mounts(), prefixes) if mount.mount_point not in kept]
        if not pending:
            return done
        for mount in pending:
            unmount(mount.mount_point)
            done.append(mount.mount_point)
    raise RuntimeError(f"mounts under {list(prefixes)} keep coming back: {done[-5:]}")


def remove_cgroup_tree(path: Path) -> None:
    """rmdir bottom-up (a cgroup folder only holds kernel files, which go with it)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        child.rmdir()
    path.rmdir()


def cgroup_processes(path: Path) -> list[int]:
    """Every process in a cgroup tree."""
    pids: set[int] = set()
    for procs in [path / "cgroup.procs", *path.rglob("cgroup.procs")]:
        try:
            pids.update(int(line) for line in procs.read_text().split())
        except OSError:
            continue
    return sorted(pids)


def remove_paths(paths: Iterable[str]) -> None:
    """Deletes the given host paths, deepest first."""
    for path in sorted(paths, key=lambda p: -len(Path(p).parts)):
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def create_bridge(name: str, address_with_prefix: str) -> None:
    for command in (
        ["ip", "link", "add", name, "type", "bridge"],
        ["ip", "addr", "add", address_with_prefix, "dev", name],
        ["ip", "link", "set", name, "up"],
    ):
        subprocess.run(command, check=True, capture_output=True, text=True)


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run(["ip", "link", "delete", name], check=True, capture_output=True, text=True)
