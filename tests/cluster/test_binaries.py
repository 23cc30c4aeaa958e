"""Binary discovery honours MAAS_CONTROL_PLANE_BIN and KUBEBUILDER_ASSETS before building anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from maas_devcluster.binaries import ENVTEST_BINARIES, build_script, find_binaries, repository_root


def fake_binaries(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        binary = folder / name
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return folder


def test_envtest_assets_supply_etcd_apiserver_and_kubectl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = fake_binaries(tmp_path / "envtest", ENVTEST_BINARIES)
    monkeypatch.delenv("MAAS_CONTROL_PLANE_BIN", raising=False)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))

    found = find_binaries(ENVTEST_BINARIES, build=False)

    assert found.paths == {name: assets / name for name in ENVTEST_BINARIES}


def test_control_plane_bin_wins_over_envtest_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = fake_binaries(tmp_path / "envtest", ENVTEST_BINARIES)
    ours = fake_binaries(tmp_path / "ours", ("etcd",))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("MAAS_CONTROL_PLANE_BIN", str(ours))

    found = find_binaries(ENVTEST_BINARIES, build=False)

    assert found["etcd"] == ours / "etcd"
    assert found["kubectl"] == assets / "kubectl"


def test_build_script_is_found_from_the_package() -> None:
    assert build_script() == repository_root() / "hack" / "build-control-plane.sh"
    assert build_script().is_file()
