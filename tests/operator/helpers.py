"""Small builders for the operator's unit tests: worker pods and failure policies as the decisions see them."""

from __future__ import annotations

from typing import Any

from maas_api.spec import FailurePolicySpec
from maas_operator.world import WorkerPod


def pod(name: str, phase: str = "Running", **fields: Any) -> WorkerPod:
    """A worker pod of gang `g1`, bound, ready when Running; override any field."""
    values: dict[str, Any] = {
        "name": name,
        "replica": 0,
        "pipeline_rank": 0,
        "gang": "g1",
        "phase": phase,
        "ready": phase == "Running",
        "gated": False,
        "terminating": False,
        "node": "node-0",
        "bound": True,
        "exit_code": None,
        "disrupted": False,
        "reason": "",
        "created": None,
    }
    values.update(fields)
    return WorkerPod(**values)


def exited(name: str, code: int, **fields: Any) -> WorkerPod:
    """A worker whose container exited with `code` (Succeeded for 0, else Failed)."""
    phase = "Succeeded" if code == 0 else "Failed"
    return pod(
        name, phase, exit_code=code, ready=False, reason="Completed" if code == 0 else "Error", **fields
    )


def policy(**fields: Any) -> FailurePolicySpec:
    """A failure policy from its camelCase fields, as a user writes them."""
    return FailurePolicySpec.model_validate(fields)
