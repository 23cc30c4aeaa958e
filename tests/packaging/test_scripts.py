"""Every shell script under hack/ passes shellcheck (the kind scripts have no other check here: no Docker)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.support import REPO, TOOLS

pytestmark = pytest.mark.packaging


def shellcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    # -x with SCRIPTDIR: scripts that `source` a file beside them are checked together with it.
    return subprocess.run(
        [str(TOOLS / "shellcheck"), "--external-sources", "--source-path=SCRIPTDIR", *map(str, paths)],
        capture_output=True,
        text=True,
    )


def test_every_hack_script_passes_shellcheck() -> None:
    scripts = sorted((REPO / "hack").glob("*.sh"))
    assert {"kind-up.sh", "kind-e2e.sh", "ensure-venv.sh"} <= {script.name for script in scripts}
    result = shellcheck(*scripts)
    assert result.returncode == 0, result.stdout


def test_shellcheck_does_find_what_it_is_there_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\nfor f in $(ls); do echo $f; done\n")
    result = shellcheck(bad)
    assert result.returncode != 0
    assert "SC2086" in result.stdout and "SC2045" in result.stdout
