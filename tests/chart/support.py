"""The Helm chart as tests see it: helm (built with the control plane), rendering with values, the rendered
objects by kind, and the operator's effective permissions."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from maas_devcluster.binaries import built_bin_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maas-operator"
RELEASE = "maas"
RELEASE_NAMESPACE = "maas-system"
FULLNAME = "maas-maas-operator"
"""The objects' name for release `maas` (release name + chart name)."""

NAMESPACED_RESOURCES = (
    "maasjobs",
    "maasjobs/status",
    "maasjobs/finalizers",
    "pods",
    "pods/status",
    "configmaps",
    "services",
    "events",
)


@functools.cache
def helm() -> Path:
    """helm from the folder the control plane's binaries come from (MAAS_CONTROL_PLANE_BIN, else the build)."""
    folders = [Path(os.environ["MAAS_CONTROL_PLANE_BIN"])] if os.environ.get("MAAS_CONTROL_PLANE_BIN") else []
    for folder in [*folders, built_bin_dir()]:
        if (folder / "helm").is_file():
            return folder / "helm"
    raise AssertionError("no helm binary: run hack/build-control-plane.sh (it builds helm with the cluster)")


@functools.cache
def kubernetes_version() -> str:
    """The version the local cluster runs (hack/tools/versions.env), for `helm template --kube-version`."""
    for line in (REPO / "hack" / "tools" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.partition("=")[2].strip()
    raise AssertionError("KUBERNETES_VERSION is not in hack/tools/versions.env")


def run_helm(*arguments: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm()), *map(str, arguments)], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(map(str, arguments))} exited {result.returncode}: {result.stderr}"
        )
    return result


def values_arguments(values: dict[str, Any] | None) -> list[str]:
    """`--values -` is not portable across helm commands; a JSON string per key path is (`--set-json`)."""
    return [
        argument
        for key, value in (values or {}).items()
        for argument in ("--set-json", f"{key}={json.dumps(value)}")
    ]


def render(values: dict[str, Any] | None = None, check: bool = True) -> list[dict[str, Any]]:
    """`helm template` of the chart as release `maas` in `maas-system`: the objects, in helm's order."""
    result = run_helm(
        "template",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        kubernetes_version(),
        *values_arguments(values),
        check=check,
    )
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def render_error(values: dict[str, Any]) -> str:
    """helm's message when it refuses these values."""
    result = run_helm(
        "template",
        RELEASE,
        CHART,
        "--kube-version",
        kubernetes_version(),
        *values_arguments(values),
        check=False,
    )
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def of_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == kind]


def one(objects: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = of_kind(objects, kind)
    return found


def container_env(objects: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The operator container's environment as the Deployment sets it."""
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable["value"] for variable in container["env"]}


def permissions(rules: Sequence[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination the rules grant."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
