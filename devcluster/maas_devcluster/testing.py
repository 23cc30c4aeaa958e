"""Helpers for tests against a running dev cluster: kubectl as the admin, and polling for a state."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from maas_devcluster.control_plane import DevCluster

Result = TypeVar("Result")


def wait_until(
    what: str, probe: Callable[[], Result | None], timeout: float = 30.0, interval: float = 0.2
) -> Result:
    """Polls until probe returns something truthy and returns it; fails naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = probe()
        if outcome:
            return outcome
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class LocalCluster:
    """A running dev cluster as tests see it: kubeconfig, binaries, CA, and kubectl as the admin."""

    dev_cluster: DevCluster

    @property
    def kubeconfig(self) -> Path:
        return self.dev_cluster.kubeconfig

    @property
    def bin_dirs(self) -> list[Path]:
        return self.dev_cluster.bin_dirs

    @property
    def server(self) -> str:
        return self.dev_cluster.server

    @property
    def ca_cert(self) -> Path:
        return self.dev_cluster.state_dir / "pki" / "ca.crt"

    def kubectl(
        self, *arguments: str | Path, stdin: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl as the cluster admin; with check, a non-zero exit raises with kubectl's stderr."""
        command = self.dev_cluster.kubectl_command(*(str(argument) for argument in arguments))
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            shown = " ".join(str(argument) for argument in arguments)
            raise AssertionError(f"kubectl {shown} exited {result.returncode}: {result.stderr.strip()}")
        return result
