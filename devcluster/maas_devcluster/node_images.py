"""Builds the real node's images without a registry: OCI image-layout tars that `ctr images import` reads.

Two images: the pause image (our own `pause` binary, built with the node's components) and a runtime image for
local runs. The runtime image is a tiny root filesystem holding this checkout's `maas_api` and `maas_runtime`
sources; Python itself, torch and the other packages come from the host by read-only hostPath mounts that the
operator adds through its worker pod patch (`worker_pod_patch`), so the multi-GB virtual environment is never
copied. Tags are content hashes: an image changes its reference exactly when its content changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas_devcluster.node_config import POD_INTERFACE, REAL_NODE_LABEL

WORKER_CONTAINER = "worker"
"""The operator's worker container (maas_operator.world.WORKER_CONTAINER; not imported: no kopf here)."""
RUN_AS_USER = 65532
"""The operator's worker user (maas_operator.children.RUN_AS_USER); named in the image's passwd."""
IMAGE_VENV = "/opt/maas/venv"
"""Where the host's virtual environment is mounted in a runtime pod (a venv runs from any path with
`python -m`: its interpreter link is absolute and pyvenv.cfg sits beside bin/)."""
IMAGE_SOURCES = "/opt/maas/src"
RUNTIME_PACKAGES = (("api", "maas_api"), ("runtime", "maas_runtime"))
"""(folder, package) copied into the runtime image: all a worker imports (the runtime never imports kopf)."""
OPERATOR_PACKAGES = (("api", "maas_api"), ("operator", "maas_operator"))
"""(folder, package) copied into the operator image (the operator never imports torch)."""

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"


@dataclass(frozen=True)
class Entry:
    """One file system entry of a layer: a folder (data None, no target), a file or a symbolic link."""

    path: str
    data: bytes | None = None
    mode: int = 0o755
    link_target: str | None = None


@dataclass(frozen=True)
class Image:
    reference: str
    """Full reference, e.g. docker.io/library/maas-pause:0123abcd; pods may name it without docker.io/library/."""
    archive: bytes

    @property
    def short_reference(self) -> str:
        return self.reference.removeprefix("docker.io/library/")


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    # Fixed owner and time: the same content gives the same bytes, hence the same digest and tag.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer (its digest is its diff id), entries sorted by path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            name = entry.path.strip("/")
            if entry.link_target is not None:
                info = _tar_info(name, tarfile.SYMTYPE, 0o777)
                info.linkname = entry.link_target
                tar.addfile(info)
            elif entry.data is None:
                tar.addfile(_tar_info(name, tarfile.DIRTYPE, entry.mode))
            else:
                tar.addfile(
                    _tar_info(name, tarfile.REGTYPE, entry.mode, len(entry.data)), io.BytesIO(entry.data)
                )
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(name: str, layer: bytes, container_config: dict[str, Any]) -> Image:
    """An OCI image layout as a tar, for one single-layer linux/amd64 image tagged with its content hash."""
    config = _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    )
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    # Never `latest`: the kubelet would try to pull it. The tag is the manifest's own hash.
    tag = hashlib.sha256(manifest).hexdigest()[:16]
    reference = f"docker.io/library/{name}:{tag}"
    index = _canonical_json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        IMAGE_NAME_ANNOTATION: reference,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    )
    files = {
        "oci-layout": _canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        **{f"blobs/sha256/{_digest(blob)[7:]}": blob for blob in (layer, config, manifest)},
    }
    entries = [Entry("blobs", mode=0o755), Entry("blobs/sha256", mode=0o755)]
    entries += [Entry(path, data, 0o644) for path, data in files.items()]
    return Image(reference, layer_tar(entries))


def pause_image(pause_binary: Path) -> Image:
    """The pod sandbox image: our pause binary (waits for SIGTERM, reaps orphans) as its only file."""
    layer = layer_tar([Entry("pause", pause_binary.read_bytes(), 0o755)])
    return oci_archive("maas-pause", layer, {"Entrypoint": ["/pause"], "User": "65535:65535"})


def _source_entries(repository: Path, packages: tuple[tuple[str, str], ...]) -> list[Entry]:
    entries = [Entry("opt"), Entry("opt/maas"), Entry(IMAGE_SOURCES)]
    for folder, package in packages:
        root = repository / folder / package
        for path in sorted(root.rglob("*")):
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            target = f"{IMAGE_SOURCES}/{path.relative_to(repository / folder)}"
            entries.append(Entry(target) if path.is_dir() else Entry(target, path.read_bytes(), 0o644))
        entries.append(Entry(f"{IMAGE_SOURCES}/{package}"))
    return entries


def runtime_image(repository: Path, ld_cache: Path = Path("/etc/ld.so.cache")) -> Image:
    """The runtime image for local runs: maas_api and maas_runtime, and a skeleton that the host's /usr,
    Python and venv are mounted into (see `worker_pod_patch`). The operator gives workers their command."""
    return _host_python_image("maas-runtime", repository, RUNTIME_PACKAGES, ld_cache)


def operator_image(repository: Path, ld_cache: Path = Path("/etc/ld.so.cache")) -> Image:
    """The operator image for local runs (the Dockerfile's `operator` target's entry point): maas_api and
    maas_operator on the same skeleton; its pod mounts the host's Python like a worker (`host_python_mounts`)."""
    return _host_python_image(
        "maas-operator", repository, OPERATOR_PACKAGES, ld_cache, entrypoint=["python", "-m", "maas_operator"]
    )


def _host_python_image(
    name: str,
    repository: Path,
    packages: tuple[tuple[str, str], ...],
    ld_cache: Path,
    entrypoint: list[str] | None = None,
) -> Image:
    entries = [
        # The merged-/usr layout: /bin, /lib, /lib64 and /sbin point into the mounted /usr.
        *(Entry(name, link_target=f"usr/{name}") for name in ("bin", "lib", "lib64", "sbin")),
        Entry("usr"),
        Entry("etc"),
        Entry("etc/ld.so.cache", ld_cache.read_bytes(), 0o644),
        Entry(
            "etc/passwd",
            f"root:x:0:0:root:/root:/bin/sh\nmaas:x:{RUN_AS_USER}:{RUN_AS_USER}::/tmp:/bin/sh\n".encode(),
            0o644,
        ),
        Entry("etc/group", f"root:x:0:\nmaas:x:{RUN_AS_USER}:\n".encode(), 0o644),
        Entry("tmp", mode=0o1777),
        Entry("dev"),
        Entry("proc"),
        Entry("sys"),
        Entry(IMAGE_VENV),
        *_source_entries(repository, packages),
    ]
    config: dict[str, Any] = {
        "Env": [
            f"PATH={IMAGE_VENV}/bin:/usr/local/bin:/usr/bin:/bin",
            f"PYTHONPATH={IMAGE_SOURCES}",
            "PYTHONDONTWRITEBYTECODE=1",
            "HOME=/tmp",
        ],
        "WorkingDir": "/tmp",
        "User": f"{RUN_AS_USER}:{RUN_AS_USER}",
    }
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    return oci_archive(name, layer_tar(entries), config)


@dataclass(frozen=True)
class PythonInstallation:
    """The host's virtual environment and the Python installation its interpreter link points into."""

    venv: Path
    base_prefix: Path

    @classmethod
    def current(cls) -> PythonInstallation:
        # Resolved: a venv reached through a link (a checkout's .venv) is mounted from its real folder.
        return cls(Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve())


def host_python_mounts(python: PythonInstallation) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) that give a pod of our local images the host's Python, read-only: /usr (the C
    library and the system's shared libraries), the Python installation at its own path (the venv's
    interpreter link and pyvenv.cfg name it) unless /usr holds it, and the venv at IMAGE_VENV."""
    mounts = [("host-usr", Path("/usr"), Path("/usr"))]
    if not python.base_prefix.is_relative_to("/usr"):
        mounts.append(("host-python", python.base_prefix, python.base_prefix))
    mounts.append(("host-venv", python.venv, Path(IMAGE_VENV)))
    volumes = [
        {"name": name, "hostPath": {"path": str(host), "type": "Directory"}} for name, host, _ in mounts
    ]
    volume_mounts = [{"name": name, "mountPath": str(inside), "readOnly": True} for name, _, inside in mounts]
    return volumes, volume_mounts


def worker_pod_patch(python: PythonInstallation) -> dict[str, Any]:
    """The operator's worker pod patch (MAAS_WORKER_POD_PATCH) for runtime-image pods on the real node.

    The host's Python, read-only (`host_python_mounts`). Inside the container the mount points' parents are
    created world-readable,
    so the non-root worker reads them even when the host folder above (/root, mode 700) is private. Plus the
    pod network's interface for gloo, one OpenMP thread per worker, and the toleration of the real node's taint.
    """
    volumes, volume_mounts = host_python_mounts(python)
    return {
        "spec": {
            "volumes": volumes,
            "containers": [
                {
                    "name": WORKER_CONTAINER,
                    "volumeMounts": volume_mounts,
                    "env": [
                        {"name": "GLOO_SOCKET_IFNAME", "value": POD_INTERFACE},
                        # Every worker of a job shares this machine's few cores, as torchrun's processes
                        # do on one machine (torchrun sets 1 then): torch's default of one thread per core
                        # in each of them ran the reference job's steps ~6x slower.
                        {"name": "OMP_NUM_THREADS", "value": "1"},
                    ],
                }
            ],
            "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        }
    }
