"""uv.lock: current with pyproject.toml, torch pinned to the one version we test, uv bootstrapped from it."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from tests.packaging.support import REPO, uv

pytestmark = pytest.mark.packaging


def locked_versions(name: str) -> list[str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return [package["version"] for package in lock["package"] if package["name"] == name]


def test_the_lock_matches_pyproject() -> None:
    # A dependency changed in pyproject.toml without `make lock` fails here (and in hack/ensure-venv.sh).
    result = subprocess.run(
        [uv(), "lock", "--check", "--project", str(REPO)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_torch_is_pinned_to_one_version_everywhere() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = [req for req in project["optional-dependencies"]["runtime"] if req.startswith("torch")]
    assert pin.startswith("torch=="), "the runtime uses torch's private pipelining classes: pin it exactly"
    version = pin.removeprefix("torch==")
    assert locked_versions("torch") == [version]
    import torch

    # The venv the tests run in was installed from the lock (hack/ensure-venv.sh).
    assert torch.__version__.split("+")[0] == version


def test_uv_is_the_version_the_lock_pins() -> None:
    (version,) = locked_versions("uv")
    result = subprocess.run([uv(), "--version"], check=True, capture_output=True, text=True)
    assert result.stdout.split()[:2] == ["uv", version]
