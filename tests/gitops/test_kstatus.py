"""Flux's kstatus (sigs.k8s.io/cli-utils, our hack/tools/kstatus command built with the control plane) on the
statuses recorded from the operator: Current when Ready or Succeeded, InProgress while starting or restarting,
Failed when Failed."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
from maas_devcluster.binaries import find_binaries

from tests.gitops.support import EXPECTED, REPO, kstatus, recorded

# The Go build comes with the control plane's, so these run with the cluster tests.
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def kstatus_binary() -> Path:
    return find_binaries(("kstatus",))["kstatus"]


def test_each_recorded_phase_reads_as_expected(kstatus_binary: Path) -> None:
    readings = kstatus(kstatus_binary, [recorded(phase) for phase in EXPECTED])
    assert {r["name"]: r["status"] for r in readings} == {
        recorded(phase)["metadata"]["name"]: flux for phase, (_, flux) in EXPECTED.items()
    }


def test_kstatus_says_why(kstatus_binary: Path) -> None:
    failed, unseen, restarting = kstatus(
        kstatus_binary, [recorded("failed"), recorded("not-observed"), recorded("restarting")]
    )
    assert "exited 78" in failed["message"]
    assert unseen["message"] == "MaaSJob generation is 1, but latest observed generation is 0"
    assert "restarting the gang" in restarting["message"]


def test_a_spec_edit_the_operator_has_not_seen_is_in_progress(kstatus_binary: Path) -> None:
    job = copy.deepcopy(recorded("running"))
    job["metadata"]["generation"] += 1
    assert kstatus(kstatus_binary, [job])[0]["status"] == "InProgress"


def test_the_kstatus_command_is_built_from_the_pinned_cli_utils(kstatus_binary: Path) -> None:
    pinned = re.search(r"^CLI_UTILS_VERSION=(\S+)$", (REPO / "hack/tools/versions.env").read_text(), re.M)
    assert pinned is not None
    required = re.search(r"sigs\.k8s\.io/cli-utils (\S+)", (REPO / "hack/tools/kstatus/go.mod").read_text())
    assert required is not None and required.group(1) == pinned.group(1), (
        "bump go.mod and versions.env together"
    )
    version = subprocess.run([str(kstatus_binary), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.split() == ["sigs.k8s.io/cli-utils", pinned.group(1)]
