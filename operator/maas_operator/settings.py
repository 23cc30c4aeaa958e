"""Operator settings, read once at start-up from the environment (the Helm chart sets them).

Pure data: the builders take an OperatorSettings, so tests pass their own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maas_operator.pod_patch import PodPatchError, merge_pod_patch

DEFAULT_RUNTIME_IMAGE = "maas-runtime:0.1.0"
"""The runtime image built by the Dockerfile's `runtime` target (a job's spec.image overrides it)."""


@dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    """Worker image when a job sets no spec.image."""
    image_pull_policy: str = "IfNotPresent"
    worker_pod_patch: Mapping[str, Any] = field(default_factory=dict)
    """A partial Pod merged into every worker pod last, as a strategic merge patch (maas_operator.pod_patch:
    containers, volumes, mounts and env merged by key, tolerations appended), e.g. a cluster-wide
    toleration, runtimeClassName, sidecar or shared volume, without a new operator release."""
    workers: int = 4
    """Concurrent reconciles (different jobs; one job is never reconciled twice at once)."""
    resync_seconds: float = 60.0
    """Every job is reconciled at least this often, as a safety net for missed events."""
    metrics_port: int = 8000
    """Prometheus metrics on http://0.0.0.0:PORT/metrics (0: off)."""
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    """kopf's liveness endpoint ('' to disable)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        patch = env.get("MAAS_WORKER_POD_PATCH")
        try:
            parsed_patch = json.loads(patch) if patch else {}
        except json.JSONDecodeError as error:
            raise SystemExit(f"MAAS_WORKER_POD_PATCH: not JSON ({error})") from error
        if not isinstance(parsed_patch, dict):
            raise SystemExit("MAAS_WORKER_POD_PATCH: must be a JSON object (a partial Pod)")
        try:
            merge_pod_patch({}, parsed_patch)  # every keyed item has its key: merging never fails later
        except PodPatchError as error:
            raise SystemExit(f"MAAS_WORKER_POD_PATCH: {error}") from error
        return cls(
            runtime_image=env.get("MAAS_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
            image_pull_policy=env.get("MAAS_IMAGE_PULL_POLICY", "IfNotPresent"),
            worker_pod_patch=parsed_patch,
            workers=_positive_int(env, "MAAS_RECONCILE_WORKERS", 4),
            resync_seconds=float(env.get("MAAS_RESYNC_SECONDS", "60")),
            metrics_port=int(env.get("MAAS_METRICS_PORT", "8000")),
            liveness_endpoint=env.get("MAAS_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{name}: {raw!r} is not a whole number >= 1")
    return int(raw)
