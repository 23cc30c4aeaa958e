"""The Dockerfile: lint, pinned base, non-root shipped stages, and each target's entry point started from a
clean install of exactly what that target installs (hack/install-target.sh, the script the build runs).

We have no Docker engine, so the images themselves are not built here. What stands in for a build:
- the same install script and lock into a fresh virtual environment on this machine's Python 3.11 (the
  images' minor version);
- the runtime target's torch (a few GB) comes from uv's wheel cache, filled when the dev venv was built from
  the same lock: the packages, versions and hashes are the lock's, only the download is skipped (uv links
  the cached files into the new venv), so a clean install costs seconds, not gigabytes of traffic;
- the entry point runs with a clean environment from outside the checkout, so nothing of the checkout or
  of the dev venv can stand in for what the target lacks.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.packaging.support import (
    REPO,
    TOOLS,
    base_python,
    clean_environment,
    parse_dockerfile,
    uv,
)

pytestmark = pytest.mark.packaging

SHIPPED = ("operator", "runtime")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS / "hadolint"), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
    )


def test_hadolint_finds_nothing() -> None:
    result = hadolint(REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_does_find_what_it_is_there_for(tmp_path: Path) -> None:
    # The check above means something only if this hadolint reports the usual mistakes.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nRUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013"):
        assert rule in result.stdout


def test_every_stage_builds_on_one_pinned_base() -> None:
    dockerfile = parse_dockerfile()
    base = dockerfile.args["PYTHON_IMAGE"]
    # An exact patch version and the image's digest: a rebuild gets the same bytes.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    for stage in dockerfile.stages.values():
        assert stage.base == "${PYTHON_IMAGE}" or stage.base in dockerfile.stages, stage


def test_shipped_stages_run_as_non_root_and_hold_only_the_target_venv() -> None:
    dockerfile = parse_dockerfile()
    for name in SHIPPED:
        stage = dockerfile.stages[name]
        assert stage.base == "${PYTHON_IMAGE}", "a shipped stage starts from the bare base, not a build stage"
        user = stage.last("USER")
        assert user is not None and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
        # What the stage copies: only the venv of its own target, built in its own stage.
        copies = [arguments for instruction, arguments in stage.instructions if instruction == "COPY"]
        assert copies == [f"--from={name}-venv /opt/maas /opt/maas"]
        venv_stage = dockerfile.stages[f"{name}-venv"]
        runs = [arguments for instruction, arguments in venv_stage.instructions if instruction == "RUN"]
        assert runs == [
            f"--mount=type=cache,target=/root/.cache/uv bash hack/install-target.sh {name} /opt/maas"
        ]
        # The venv's console scripts and python come first on PATH, so `python` is the venv's.
        assert "PATH=/opt/maas/bin:$PATH" in (stage.last("ENV") or "")


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    dockerfile = parse_dockerfile()
    copied: set[str] = set()
    for stage in dockerfile.stages.values():
        for instruction, arguments in stage.instructions:
            if instruction == "COPY" and not arguments.startswith("--from"):
                *sources, _ = arguments.split()
                copied.update(source.rstrip("/") for source in sources)
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*", "everything is left out unless named"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == copied


def test_the_runtime_image_is_what_the_worker_pods_expect() -> None:
    from maas_operator import children

    runtime = parse_dockerfile().stages["runtime"]
    assert runtime.entrypoint == list(children.WORKER_COMMAND)
    assert runtime.last("USER") == f"{children.RUN_AS_USER}:{children.RUN_AS_USER}"


def install_target(target: str, destination: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "install-target.sh"), target, str(destination)],
        env=clean_environment(PYTHON=base_python()),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr


def run_in(venv: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command with only the target venv on PATH (as in the image), from outside the checkout."""
    env = {"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(list(command), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def installed(venv: Path, cwd: Path) -> dict[str, str]:
    """Distribution name (normalised) -> version, as the venv's own interpreter sees them."""
    code = (
        "import importlib.metadata as m, json, re;"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
        " for d in m.distributions()}))"
    )
    result = run_in(venv, "python", "-c", code, cwd=cwd)
    assert result.returncode == 0, result.stderr
    versions: dict[str, str] = json.loads(result.stdout)
    return versions


def locked_closure(target: str) -> dict[str, str]:
    """What uv.lock resolves the target's extra to on this machine (markers evaluated by uv pip compile)."""
    exported = subprocess.run(
        [
            uv(),
            "export",
            "--frozen",
            "--extra",
            target,
            "--no-hashes",
            "--no-annotate",
            "--no-header",
            "--no-emit-project",
            "--project",
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    from packaging.requirements import Requirement

    environment = {"python_full_version": "3.11.0", "python_version": "3.11", "extra": target}
    closure: dict[str, str] = {}
    for line in exported.splitlines():
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (specifier,) = requirement.specifier
            closure[requirement.name.lower()] = specifier.version
    return closure


@pytest.fixture(scope="module")
def operator_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("image-operator") / "venv"
    install_target("operator", venv)
    return venv


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("image-runtime") / "venv"
    install_target("runtime", venv)
    return venv


def test_the_operator_target_installs_its_locked_closure_and_no_torch(
    operator_venv: Path, tmp_path: Path
) -> None:
    versions = installed(operator_venv, tmp_path)
    assert versions.pop("maas-operator") == "0.1.0"
    assert versions == locked_closure("operator")
    assert "kopf" in versions
    assert not {name for name in versions if name == "torch" or name.startswith("nvidia-")}
    # And Python agrees: there is no torch to import.
    probe = run_in(operator_venv, "python", "-c", "import torch", cwd=tmp_path)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr


def test_the_operator_entry_point_starts_and_every_module_imports_without_torch(
    operator_venv: Path, tmp_path: Path
) -> None:
    entrypoint = parse_dockerfile().stages["operator"].entrypoint
    result = run_in(operator_venv, *entrypoint, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: maas operator")
    # Every module but __main__ (which would start the operator).
    code = (
        "import importlib, pkgutil, sys, maas_operator;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(maas_operator.__path__, 'maas_operator.')"
        " if not m.name.endswith('__main__')];"
        "assert maas_operator.__file__.startswith(sys.prefix), maas_operator.__file__;"
        "print(len([m for m in sys.modules if m.startswith('maas_operator')]), 'torch' in sys.modules)"
    )
    imported = run_in(operator_venv, "python", "-c", code, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    count, torch_loaded = imported.stdout.split()
    assert int(count) > 10 and torch_loaded == "False"
    # The `maas` console script (the operator's CLI) is there as well.
    cli = run_in(operator_venv, "maas", "--help", cwd=tmp_path)
    assert cli.returncode == 0 and "plan" in cli.stdout


def test_the_runtime_target_installs_its_locked_closure_and_no_kopf(
    runtime_venv: Path, tmp_path: Path
) -> None:
    versions = installed(runtime_venv, tmp_path)
    versions.pop("maas-operator")
    assert versions == locked_closure("runtime")
    assert "kopf" not in versions and "kubernetes-asyncio" not in versions
    assert versions["torch"] == locked_closure("runtime")["torch"]
    assert any(name.startswith("nvidia-nccl") for name in versions), "the CUDA build of torch brings NCCL"


def test_the_runtime_entry_point_starts(runtime_venv: Path, tmp_path: Path) -> None:
    entrypoint = parse_dockerfile().stages["runtime"].entrypoint
    result = run_in(runtime_venv, *entrypoint, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # torchrun's own flags, which the operator sets through PET_* variables.
    assert "--rdzv-endpoint" in result.stdout and "--nproc-per-node" in result.stdout
    probe = run_in(runtime_venv, "python", "-c", "import torch, sys; print(torch.__file__)", cwd=tmp_path)
    assert probe.stdout.startswith(str(runtime_venv))
