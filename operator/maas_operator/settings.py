"""Operator settings, read once at start-up from the environment (the Helm chart sets them).

Pure data: the builders take an OperatorSettings, so tests pass their own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from maas_operator.pod_patch import PodPatchError, merge_pod_patch

DEFAULT_RUNTIME_IMAGE = "maas-runtime:0.1.0"
"""The runtime image built by the Dockerfile's `runtime` target (a job's spec.image overrides it)."""
LOG_FORMATS = ("text", "json")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


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
    progress_interval_seconds: float = 5.0
    """How often worker 0 of each running Train job is asked for its progress (0: never). Must stay below the
    runtime's linger time (30 s by default) so the final step is read before the job ends."""
    metrics_port: int = 8000
    """Prometheus metrics on http://0.0.0.0:PORT/metrics (0: off)."""
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    """kopf's liveness endpoint ('' to disable)."""
    watch_namespaces: tuple[str, ...] = ()
    """The namespaces whose MaaSJobs, pods and ConfigMaps the operator watches; empty: every namespace.
    Exact names, no globs: a namespaced install grants the operator a Role in each of them and nothing that
    could list namespaces. Nodes are cluster-scoped and always watched."""
    log_format: str = "text"
    """'text' (one line per record) or 'json' (one JSON object per line, for log collectors)."""

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
            progress_interval_seconds=_seconds(env, "MAAS_PROGRESS_INTERVAL_SECONDS", 5.0),
            metrics_port=int(env.get("MAAS_METRICS_PORT", "8000")),
            liveness_endpoint=env.get("MAAS_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
            watch_namespaces=namespace_list(
                "MAAS_WATCH_NAMESPACES", env.get("MAAS_WATCH_NAMESPACES", "").replace(",", " ").split()
            ),
            log_format=_choice(env, "MAAS_LOG_FORMAT", LOG_FORMATS),
        )


def namespace_list(source: str, names: Sequence[str]) -> tuple[str, ...]:
    """Namespace names, checked (each a DNS-1123 label) and deduplicated in order; `source` names the
    variable or flag they came from, for the error."""
    for name in names:
        if not _NAMESPACE.fullmatch(name):
            raise SystemExit(
                f"{source}: {name!r} is not a namespace name (lowercase letters, digits and '-', at most 63;"
                " globs are not supported: list the namespaces)"
            )
    return tuple(dict.fromkeys(names))


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, choices[0])
    if raw not in choices:
        raise SystemExit(f"{name}: {raw!r} is not one of {', '.join(choices)}")
    return raw


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{name}: {raw!r} is not a whole number >= 1")
    return int(raw)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise SystemExit(f"{name}: {raw!r} is not a number of seconds >= 0")
    return value
