"""Finds the control-plane binaries: KUBEBUILDER_ASSETS, MAAS_CONTROL_PLANE_BIN, else builds them."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CONTROL_PLANE_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)
# The envtest convention: a folder with only these three.
ENVTEST_BINARIES = ("etcd", "kube-apiserver", "kubectl")


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Absolute paths of each binary the local cluster runs."""

    paths: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]

    @property
    def kubectl(self) -> Path:
        return self.paths["kubectl"]

    @property
    def folders(self) -> list[Path]:
        """The distinct folders the binaries came from, in discovery order."""
        return list(dict.fromkeys(path.parent for path in self.paths.values()))


def repository_root() -> Path:
    """The checkout this package lives in (it is installed editable, so hack/ sits two levels up)."""
    return Path(__file__).resolve().parent.parent.parent


def build_script() -> Path:
    return repository_root() / "hack" / "build-control-plane.sh"


def _executable(folder: Path, name: str) -> Path | None:
    candidate = folder / name
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _preferred_folders() -> list[Path]:
    # MAAS_CONTROL_PLANE_BIN first: it is the one meant to hold everything, envtest assets only three.
    folders = []
    for variable in ("MAAS_CONTROL_PLANE_BIN", "KUBEBUILDER_ASSETS"):
        value = os.environ.get(variable)
        if value:
            folders.append(Path(value).expanduser())
    return folders


def built_bin_dir() -> Path:
    """Where hack/build-control-plane.sh puts (or has put) the binaries for the pinned versions."""
    result = subprocess.run(
        ["bash", str(build_script()), "--print-bin-dir"], check=True, capture_output=True, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def build_control_plane() -> Path:
    """Runs the build script, streaming its progress to stderr (stdout stays for the KUBECONFIG line)."""
    print(f"[dev-cluster] building the control plane with {build_script()} ...", file=sys.stderr, flush=True)
    with subprocess.Popen(
        ["bash", str(build_script())], stdout=subprocess.PIPE, text=True, bufsize=1
    ) as build:
        assert build.stdout is not None
        last_line = ""
        for line in build.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                last_line = line.strip()
    if build.returncode != 0:
        raise RuntimeError(
            f"{build_script()} failed with exit status {build.returncode}; see the output above"
        )
    return Path(last_line)


def find_binaries(
    names: tuple[str, ...] = CONTROL_PLANE_BINARIES, build: bool = True
) -> ControlPlaneBinaries:
    """Each binary from the first folder that has it; anything still missing comes from the pinned build."""
    found: dict[str, Path] = {}
    for folder in _preferred_folders():
        for name in names:
            if name not in found and (path := _executable(folder, name)):
                found[name] = path
    missing = [name for name in names if name not in found]
    if missing:
        bin_dir = built_bin_dir()
        if any(_executable(bin_dir, name) is None for name in missing):
            if not build:
                raise FileNotFoundError(
                    f"missing {missing}: set MAAS_CONTROL_PLANE_BIN or run {build_script()}"
                )
            bin_dir = build_control_plane()
        for name in missing:
            path = _executable(bin_dir, name)
            if path is None:
                raise FileNotFoundError(f"{build_script()} finished but {bin_dir / name} is missing")
            found[name] = path
    return ControlPlaneBinaries({name: found[name] for name in names})
