"""The GitOps tools' readings of a MaaSJob, run for real: Argo CD's health check (our Lua, in Lua 5.1 as Argo
CD's gopher-lua speaks it, through lupa) and Flux's kstatus (our Go command around sigs.k8s.io/cli-utils), and
the statuses recorded from the operator on the local cluster that they read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "docs" / "gitops" / "maasjob-health.lua"
ARGOCD_PATCH = REPO / "docs" / "gitops" / "argocd-cm-patch.yaml"
ARGOCD_KEY = "resource.customizations.health.maas.dev_MaaSJob"
STATUSES = Path(__file__).resolve().parent / "statuses"
RECORD_VARIABLE = "MAAS_RECORD_GITOPS"
"""Set to 1 to (re)write the recorded statuses from the cluster test tests/cluster/operator/test_gitops.py."""

ARGOCD_STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})

# Each recorded phase of a job, and what Argo CD and kstatus must read from it.
EXPECTED: dict[str, tuple[str, str]] = {
    "not-observed": ("Progressing", "InProgress"),
    "unschedulable": ("Progressing", "InProgress"),
    "starting": ("Progressing", "InProgress"),
    "running": ("Healthy", "Current"),
    "restarting": ("Progressing", "InProgress"),
    "scale-does-not-fit": ("Progressing", "InProgress"),
    # kstatus has no Suspended: its Ready fallback reads the job as waiting, as it reads a suspended batch Job.
    "suspended": ("Suspended", "InProgress"),
    "succeeded": ("Healthy", "Current"),
    "failed": ("Degraded", "Failed"),
}


def recorded(name: str) -> dict[str, Any]:
    path = STATUSES / f"{name}.yaml"
    assert path.exists(), f"{path} is missing: record it with {RECORD_VARIABLE}=1 (see its cluster test)"
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def argocd_health(job: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of our health check on `job`, run as Argo CD runs it: `obj` a global table."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=False)
    lua.globals().obj = _to_lua(lua, job)
    result = lua.execute(HEALTH_LUA.read_text())
    status, message = str(result["status"]), str(result["message"] or "")
    assert status in ARGOCD_STATUSES, status
    return status, message


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON data as Lua values (arrays numbered from 1, nulls left out), as Argo CD converts objects."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value if v is not None])
    return value


def kstatus(kstatus_binary: Path, jobs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus's reading of each job ({kind, name, status, message}), in order."""
    stream = "".join(f"---\n{yaml.safe_dump(job)}" for job in jobs)
    result = subprocess.run(
        [str(kstatus_binary)], input=stream, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def shape(job: dict[str, Any]) -> dict[str, Any]:
    """What a recorded status stands for: whether its generation is observed, its phase, and each condition's
    type, status and reason (times, messages and counts differ from run to run)."""
    status = job.get("status") or {}
    return {
        "observed": status.get("observedGeneration") == job["metadata"].get("generation"),
        "phase": status.get("phase"),
        "conditions": sorted((c["type"], c["status"], c["reason"]) for c in status.get("conditions") or []),
    }
