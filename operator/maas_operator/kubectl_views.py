"""What `kubectl maas` shows, as pure functions of API objects (dicts as the API server sends them).

Tables and ages as kubectl prints them, `-o json|yaml`, a job's status view (conditions, plan, worker -> node,
pods), the workers a `logs` selection picks, and the cluster as the operator's planner sees it. Nothing here
talks to the API server (`kubectl_plugin` does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml
from maas_api.plan import Plan, WorkerPlan
from maas_api.status import ConditionType, PlanSummary, WorkerSummary
from pydantic import ValidationError

from maas_operator import names
from maas_operator.planner import Node
from maas_operator.planner.reasons import format_bytes, plural
from maas_operator.status import plan_summary
from maas_operator.world import gpu_holder, parse_time, planner_node, used_gpus, worker_pod

OUTPUTS = ("table", "json", "yaml")
TABLE_PADDING = 3
"""kubectl's tab writer pads every column with 3 spaces."""
NONE = "<none>"


class SelectionError(Exception):
    """`kubectl maas logs` picked no worker; the message says what the plan has."""


# -- kubectl's printing -----------------------------------------------------------------------------------


def human_age(age: timedelta) -> str:
    """An age as kubectl prints one (`45s`, `3m20s`, `25m`, `5h10m`, `3d4h`, `400d`, `3y10d`)."""
    seconds = int(age.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours = seconds // 60, seconds // 3600
    if minutes < 10:
        return _two_units(minutes, "m", seconds % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return _two_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return _two_units(days, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return _two_units(days // 365, "y", days % 365, "d")
    return f"{days // 365}y"


def _two_units(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    return f"{major}{major_unit}" if minor == 0 else f"{major}{major_unit}{minor}{minor_unit}"


def age_since(raw: object, now: datetime) -> str:
    """The age of an API timestamp (RFC 3339 string or datetime), `<unknown>` without one."""
    when = parse_time(raw)
    return "<unknown>" if when is None else human_age(now - when)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns as kubectl aligns them: upper-case headers, each column padded to its widest cell plus 3."""
    cells = [[str(cell) for cell in header]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) + TABLE_PADDING for i in range(len(header))]
    lines = [
        "".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def dump(document: Any, output: str) -> str:
    """`-o json` (indented by 4, as kubectl does) or `-o yaml`."""
    if output == "json":
        return json.dumps(document, indent=4) + "\n"
    if output == "yaml":
        return str(yaml.safe_dump(document, sort_keys=False))
    raise ValueError(f"unknown output format {output!r}: one of {', '.join(OUTPUTS)}")


def api_time(value: datetime | None) -> str | None:
    """A timestamp as the API server writes one."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the cluster as the planner sees it -------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterView:
    """The planner's inputs read from the live cluster, with the same functions the operator's cache uses."""

    nodes: tuple[Node, ...]
    used_gpus: Mapping[str, int]
    """GPUs held per node by pods other than the job's own."""
    unreadable: tuple[str, ...]
    """Nodes the planner cannot read (the operator ignores them too)."""

    @property
    def total_gpus(self) -> int:
        return sum(node.gpus for node in self.nodes)

    @property
    def free_gpus(self) -> int:
        """GPUs not held by other pods, on nodes that are Ready and not cordoned."""
        return sum(
            max(0, node.gpus - self.used_gpus.get(node.name, 0))
            for node in self.nodes
            if node.ready and not node.unschedulable
        )

    def describe(self) -> str:
        ready = sum(1 for node in self.nodes if node.ready)
        line = (
            f"Cluster: {plural(len(self.nodes), 'node')} ({ready} ready), {plural(self.total_gpus, 'GPU')},"
            f" {self.free_gpus} free"
        )
        if self.unreadable:
            line += f"; ignored (unreadable): {', '.join(self.unreadable)}"
        return line


def cluster_view(
    node_objects: Iterable[Mapping[str, Any]], pod_objects: Iterable[Mapping[str, Any]], job_key: str
) -> ClusterView:
    """Nodes and the GPUs that pods other than `job_key`'s (`namespace/name`) hold, as a re-plan counts them."""
    nodes, unreadable = [], []
    for body in node_objects:
        node = planner_node(body)
        if node is None:
            unreadable.append(str((body.get("metadata") or {}).get("name", "?")))
        else:
            nodes.append(node)
    holders = [holder for pod in pod_objects if (holder := gpu_holder(pod)) is not None]
    return ClusterView(tuple(nodes), used_gpus(holders, except_job=job_key), tuple(unreadable))


def stored_plan(configmap: Mapping[str, Any] | None) -> Plan | None:
    """The plan in a job's plan ConfigMap, or None (no ConfigMap, or one that does not parse)."""
    if configmap is None:
        return None
    try:
        return Plan.model_validate_json((configmap.get("data") or {}).get(names.PLAN_KEY, ""))
    except ValidationError:
        return None


# -- kubectl maas status ----------------------------------------------------------------------------------


def _pod_state(pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if pod is None:
        return None
    view = worker_pod(pod)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    state: dict[str, Any] = {
        "phase": view.phase,
        "ready": view.ready,
        "node": view.node if view.bound else None,
        "attempt": labels.get(names.ATTEMPT_LABEL),
        "gated": view.gated,
        "terminating": view.terminating,
        "created": api_time(view.created),
    }
    if view.exit_code is not None:
        state["exitCode"] = view.exit_code
    if view.reason:
        state["reason"] = view.reason
    return state


def job_status(
    job: Mapping[str, Any], plan: Plan | None, pods: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The document `kubectl maas status -o json|yaml` prints: the job's status, its whole plan (from the plan
    ConfigMap; the status lists at most 64 workers) and each worker's pod."""
    metadata = job.get("metadata") or {}
    status = dict(job.get("status") or {})
    summary = plan_summary(plan, max_workers=None) if plan is not None else _status_plan(status)
    pods_by_name = {str((pod.get("metadata") or {}).get("name")): pod for pod in pods}
    planned: list[WorkerSummary] = summary.workers if summary is not None else []
    workers = [{**worker.to_wire(), "pod": _pod_state(pods_by_name.get(worker.name))} for worker in planned]
    known = {worker.name for worker in planned}
    # Pods the plan does not name (a gang being replaced, a scale-down in progress) are shown too.
    workers += [
        {"name": name, "replica": None, "stages": [], "node": None, "pod": _pod_state(pod)}
        for name, pod in sorted(pods_by_name.items())
        if name not in known
    ]
    return {
        "name": metadata.get("name"),
        "namespace": metadata.get("namespace"),
        "mode": (job.get("spec") or {}).get("mode"),
        "generation": metadata.get("generation"),
        "created": metadata.get("creationTimestamp"),
        "status": {key: value for key, value in status.items() if key != "plan"},
        "plan": None if summary is None else {k: v for k, v in summary.to_wire().items() if k != "workers"},
        "workers": workers,
    }


def _status_plan(status: Mapping[str, Any]) -> PlanSummary | None:
    """The plan summary the operator wrote into the status (when the plan ConfigMap cannot be read)."""
    try:
        return PlanSummary.model_validate(status["plan"]) if status.get("plan") else None
    except ValidationError:
        return None


def _units(units: Sequence[str]) -> str:
    if not units:
        return NONE
    return units[0] if len(units) == 1 else f"{units[0]} .. {units[-1]} ({len(units)})"


def _pod_column(pod: Mapping[str, Any] | None) -> str:
    if pod is None:
        return NONE
    if pod.get("terminating"):
        return "Terminating"
    if pod.get("gated"):
        return "Gated"
    phase = str(pod.get("phase"))
    return f"{phase} (exit {pod['exitCode']})" if "exitCode" in pod else phase


def _progress(progress: Mapping[str, Any] | None, now: datetime) -> str:
    if not progress:
        return "not reported"
    parts = [f"step {progress.get('step', 0)}"]
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4g}")
    if progress.get("samplesPerSecond") is not None:
        parts.append(f"{progress['samplesPerSecond']:.1f} samples/s")
    if progress.get("updatedAt"):
        parts.append(f"updated {age_since(progress['updatedAt'], now)} ago")
    return ", ".join(parts)


def render_status(view: Mapping[str, Any], now: datetime) -> str:
    """`kubectl maas status NAME`: the job in brief, its conditions, its plan and where each worker runs."""
    status = view["status"]
    workers_count = status.get("workers") or {}
    observed = status.get("observedGeneration", 0)
    generation = view.get("generation")
    phase = status.get("phase", "Pending")
    if generation is not None and observed != generation:
        phase += f" (generation {generation} not observed yet; status is of generation {observed})"
    started, completed = status.get("startTime"), status.get("completionTime")
    fields = [
        ("Name", view["name"]),
        ("Namespace", view["namespace"]),
        ("Mode", view.get("mode") or NONE),
        ("Phase", phase),
        (
            "Workers",
            f"{workers_count.get('ready', 0)}/{workers_count.get('total', 0)} ready,"
            f" {workers_count.get('failed', 0)} failed",
        ),
        ("Restarts", f"{status.get('restarts', 0)} (disruptions: {status.get('disruptions', 0)})"),
        ("Age", age_since(view.get("created"), now)),
        ("Started", f"{age_since(started, now)} ago" if started else NONE),
        ("Completed", f"{age_since(completed, now)} ago" if completed else NONE),
        ("Progress", _progress(status.get("progress"), now)),
    ]
    width = max(len(label) for label, _ in fields) + 2
    out = "".join(f"{label + ':':<{width}}{value}\n" for label, value in fields)

    out += "\nConditions:\n"
    conditions = status.get("conditions") or []
    out += (
        table(
            ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            [
                [
                    c["type"],
                    c["status"],
                    c["reason"],
                    age_since(c.get("lastTransitionTime"), now),
                    c.get("message") or "",
                ]
                for c in conditions
            ],
        )
        if conditions
        else "  none yet: the operator has not seen this job\n"
    )

    plan = view.get("plan")
    if plan is None:
        out += "\nPlan: none yet\n"
    else:
        out += (
            f"\nPlan: {plural(len(plan['stages']), 'stage')} x {plural(plan['replicas'], 'replica')},"
            f" {plan['schedule']} with {plural(plan['microbatches'], 'microbatch', 'microbatches')}"
            f" (estimated bubble {plan['estimatedBubble']:.0%})\n"
        )
        out += table(
            ["STAGE", "UNITS", "GPUS", "MEMORY/GPU"],
            [
                [s["index"], _units(s["units"]), s["gpus"], format_bytes(s["memoryBytes"])]
                for s in plan["stages"]
            ],
        )
    workers = view.get("workers") or []
    if workers:
        out += "\nWorkers:\n"
        out += table(
            ["NAME", "REPLICA", "STAGES", "NODE", "POD", "READY", "ATTEMPT", "AGE"],
            [
                [
                    w["name"],
                    NONE if w.get("replica") is None else w["replica"],
                    ",".join(map(str, w.get("stages") or [])) or NONE,
                    (w.get("pod") or {}).get("node") or w.get("node") or NONE,
                    _pod_column(w.get("pod")),
                    str(bool((w.get("pod") or {}).get("ready"))).lower(),
                    (w.get("pod") or {}).get("attempt") or NONE,
                    age_since((w.get("pod") or {}).get("created"), now) if w.get("pod") else NONE,
                ]
                for w in workers
            ],
        )
    return out


# -- kubectl maas logs ------------------------------------------------------------------------------------


def _range(values: Iterable[int]) -> str:
    ordered = sorted(set(values))
    if not ordered:
        return "none"
    return f"{ordered[0]}" if len(ordered) == 1 else f"{ordered[0]}..{ordered[-1]}"


def select_workers(
    job: Mapping[str, Any], plan: Plan | None, stage: int | None, replica: int | None
) -> list[WorkerPlan]:
    """The workers that run model `stage` in `replica` (None: any), in worker order; SelectionError when the
    job has no plan yet or the plan has no such stage or replica."""
    name = (job.get("metadata") or {}).get("name")
    if plan is None:
        conditions = (job.get("status") or {}).get("conditions") or []
        planned = next((c for c in conditions if c.get("type") == ConditionType.PLANNED), None)
        why = f" ({planned['reason']}: {planned['message']})" if planned and planned.get("message") else ""
        raise SelectionError(f'maasjob "{name}" has no plan yet, so it has no workers{why}')
    if stage is not None and not any(stage in w.stages for w in plan.workers):
        stages = _range(s for w in plan.workers for s in w.stages)
        raise SelectionError(f'maasjob "{name}" has no stage {stage}: its plan has stages {stages}')
    if replica is not None and not any(w.replica == replica for w in plan.workers):
        replicas = _range(w.replica for w in plan.workers)
        raise SelectionError(f'maasjob "{name}" has no replica {replica}: its plan has replicas {replicas}')
    return [
        worker
        for worker in plan.workers
        if (stage is None or stage in worker.stages) and (replica is None or worker.replica == replica)
    ]


def log_selector(job: str, replica: int | None) -> str:
    """The label selector of the job's worker pods (of one replica), as the operator labels them."""
    selector = names.selector(job)
    return selector if replica is None else f"{selector},{names.REPLICA_LABEL}={replica}"


def log_prefix(pod: str, container: str) -> str:
    """kubectl's `--prefix` for lines of several pods."""
    return f"[pod/{pod}/{container}] "
