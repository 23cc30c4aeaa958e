"""What the operator observes, as plain data: worker pods, nodes and the GPUs other pods hold.

Pure: functions here turn Kubernetes objects (dicts, as watches deliver them) into small frozen views that the
decisions (`reconcile`, `healing`, `status`) read. Nothing here talks to the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from maas_operator import names
from maas_operator.planner.cluster import GPU_RESOURCE, Node, NodeFileError, parse_node

WORKER_CONTAINER = "worker"
"""Name of the worker container in every pod (its exit code is the worker's)."""
GANG_SIZE_ENV = "PET_NNODES"
"""The worker container's variable that holds its gang's worker count (torchrun's --nnodes)."""

# Pod status reasons and conditions that mean "not the job's fault": the node or the cluster took the pod away.
DISRUPTION_REASONS = frozenset(
    {"Evicted", "Preempting", "NodeLost", "NodeShutdown", "Terminated", "UnexpectedAdmissionError"}
)
DISRUPTION_CONDITION = "DisruptionTarget"


def parse_time(raw: object) -> datetime | None:
    """An RFC 3339 timestamp from the API server (kopf bodies hold strings), or None."""
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs a pod asks for: the sum over its containers' `nvidia.com/gpu` limits (or requests)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(
            GPU_RESOURCE
        )
        try:
            total += int(str(amount)) if amount is not None else 0
        except ValueError:
            continue
    return total


def pinned_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod runs on, or the one its required node affinity pins it to before it is bound."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in affinity.get("nodeSelectorTerms") or []:
        for expression in term.get("matchFields") or []:
            values = expression.get("values") or []
            if expression.get("key") == "metadata.name" and expression.get("operator") == "In" and values:
                return str(values[0])
    return None


@dataclass(frozen=True)
class WorkerPod:
    """One worker pod of a job, as the decisions need it."""

    name: str
    replica: int | None
    pipeline_rank: int | None
    gang: str | None
    """The gang hash label: pods of one gang attempt share it; a pod with another hash is stale."""
    phase: str
    """Pending, Running, Succeeded, Failed or Unknown."""
    ready: bool
    gated: bool
    """Still held by our scheduling gate (the gang is not complete yet)."""
    terminating: bool
    """Has a deletionTimestamp."""
    node: str | None
    """Bound node, or the node its affinity pins it to."""
    bound: bool
    """The scheduler (or kubelet) has bound it to `node`."""
    exit_code: int | None
    """The worker container's exit code once it terminated."""
    disrupted: bool
    """Taken away by the cluster (eviction, preemption, node loss), not failed by the job's own code."""
    reason: str
    """Pod status reason or the container's termination reason, for messages."""
    created: datetime | None
    message: str = ""
    """What the worker wrote as its termination message (the runtime's one-line reason), shortened."""
    deletion_deadline: datetime | None = None
    """When a terminating pod's grace period ends (its deletionTimestamp); it should be gone soon after."""
    containers_ready: bool = False
    """Its ContainersReady condition: the worker itself is up (Ready also waits for readiness gates)."""
    gpus: int = 0
    """GPUs it asks for."""
    gang_size: int | None = None
    """Workers in its gang (its PET_NNODES), so a gang can be judged whole without the plan it came from."""
    pipeline_gate: bool | None = None
    """Status of its PIPELINE_READY condition (None while unset)."""
    gate_reason: str = ""
    gate_since: datetime | None = None
    """When PIPELINE_READY last changed status."""

    @property
    def finished(self) -> bool:
        return self.phase in {"Succeeded", "Failed"}

    @property
    def active(self) -> bool:
        """Holds (or will hold) its GPUs: not finished and not being deleted."""
        return not self.finished and not self.terminating


MESSAGE_QUOTED_CHARS = 512
"""How much of a worker's termination message a condition quotes (the kubelet keeps up to 4 KiB)."""


@dataclass(frozen=True)
class Termination:
    exit_code: int | None
    reason: str
    message: str


def _container_termination(pod: Mapping[str, Any]) -> Termination:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    chosen = next(
        (s for s in statuses if s.get("name") == WORKER_CONTAINER), statuses[0] if statuses else None
    )
    terminated = (chosen.get("state") or {}).get("terminated") if chosen else None
    if not terminated:
        return Termination(None, "", "")
    code = terminated.get("exitCode")
    lines = [line.strip() for line in str(terminated.get("message") or "").splitlines() if line.strip()]
    message = "; ".join(dict.fromkeys(lines))  # several processes of one pod often fail alike
    if len(message) > MESSAGE_QUOTED_CHARS:
        message = message[: MESSAGE_QUOTED_CHARS - 3] + "..."
    return Termination(
        int(code) if isinstance(code, int) else None, str(terminated.get("reason") or ""), message
    )


def worker_pod(pod: Mapping[str, Any]) -> WorkerPod:
    """A worker pod object (dict) as a WorkerPod."""
    metadata = pod.get("metadata") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    disruption_condition = any(
        c.get("type") == DISRUPTION_CONDITION and c.get("status") == "True" for c in conditions
    )
    termination = _container_termination(pod)
    gate = next((c for c in conditions if c.get("type") == names.PIPELINE_READY), None)
    phase = str(status.get("phase") or "Pending")
    reason = str(status.get("reason") or "")
    spec = pod.get("spec") or {}
    return WorkerPod(
        name=str(metadata.get("name", "")),
        replica=_int_label(labels, names.REPLICA_LABEL),
        pipeline_rank=_int_label(labels, names.PIPELINE_RANK_LABEL),
        gang=labels.get(names.GANG_LABEL),
        phase=phase,
        ready=ready,
        gated=bool(spec.get("schedulingGates")),
        terminating=bool(metadata.get("deletionTimestamp")),
        node=pinned_node(pod),
        bound=bool(spec.get("nodeName")),
        exit_code=termination.exit_code,
        message=termination.message,
        disrupted=reason in DISRUPTION_REASONS or (disruption_condition and phase == "Failed"),
        reason=reason or termination.reason,
        created=parse_time(metadata.get("creationTimestamp")),
        deletion_deadline=parse_time(metadata.get("deletionTimestamp")),
        containers_ready=any(
            c.get("type") == "ContainersReady" and c.get("status") == "True" for c in conditions
        ),
        gpus=pod_gpus(pod),
        gang_size=_gang_size(pod),
        pipeline_gate=None if gate is None else gate.get("status") == "True",
        gate_reason=str((gate or {}).get("reason") or ""),
        gate_since=parse_time((gate or {}).get("lastTransitionTime")),
    )


def _gang_size(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != WORKER_CONTAINER:
            continue
        for variable in container.get("env") or []:
            value = variable.get("value")
            if variable.get("name") == GANG_SIZE_ENV and isinstance(value, str) and value.isdigit():
                return int(value)
    return None


@dataclass(frozen=True)
class GpuHolder:
    """A pod of any kind that holds GPUs on a node, for the free-GPU count."""

    namespace: str
    name: str
    job: str | None
    """`namespace/name` of the MaaSJob that owns it, if any."""
    node: str
    gpus: int
    uid: str = ""
    """The pod's UID: a late DELETED event of an older pod of the same name must not free this one's GPUs."""


def gpu_holder(pod: Mapping[str, Any]) -> GpuHolder | None:
    """The GPUs a live pod holds on its (bound or pinned) node; None for pods that hold none."""
    metadata = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    if phase in {"Succeeded", "Failed"}:
        return None
    gpus = pod_gpus(pod)
    node = pinned_node(pod)
    if gpus <= 0 or node is None:
        return None
    namespace = str(metadata.get("namespace") or "default")
    job = (metadata.get("labels") or {}).get(names.JOB_LABEL)
    return GpuHolder(
        namespace=namespace,
        name=str(metadata.get("name", "")),
        job=f"{namespace}/{job}" if job else None,
        node=node,
        gpus=gpus,
        uid=str(metadata.get("uid") or ""),
    )


class GpuLedger:
    """GPUs held per node, in total and per MaaSJob, kept as holders come and go, so the GPUs held by every
    job but one are known without walking every pod of the cluster (`held_by_others`)."""

    def __init__(self) -> None:
        self.total: dict[str, int] = {}
        self.by_job: dict[str, dict[str, int]] = {}

    def add(self, holder: GpuHolder, sign: int = 1) -> None:
        """Counts a holder in (sign 1) or out again (sign -1)."""
        _count(self.total, holder.node, sign * holder.gpus)
        if holder.job is not None:
            own = self.by_job.setdefault(holder.job, {})
            _count(own, holder.node, sign * holder.gpus)
            if not own:
                del self.by_job[holder.job]

    def held_by_others(self, job: str) -> HeldByOthers:
        return HeldByOthers(self.total, self.by_job.get(job, {}))


def _count(counts: dict[str, int], node: str, change: int) -> None:
    value = counts.get(node, 0) + change
    if value:
        counts[node] = value
    else:
        counts.pop(node, None)


class HeldByOthers(Mapping[str, int]):
    """node -> GPUs held by pods that are not one job's: the ledger's totals less that job's own, read when
    asked (a decision reads it at once, without awaiting anything in between). Equal to
    `used_gpus(holders, except_job=job)` at the time of reading."""

    def __init__(self, total: Mapping[str, int], own: Mapping[str, int]) -> None:
        self._total = total
        self._own = own

    def __getitem__(self, node: str) -> int:
        value = self._total.get(node, 0) - self._own.get(node, 0)
        if value <= 0:
            raise KeyError(node)
        return value

    def get(self, node: str, default: Any = None) -> Any:
        value = self._total.get(node, 0) - self._own.get(node, 0)
        return value if value > 0 else default

    def __iter__(self) -> Iterator[str]:
        return (node for node, gpus in self._total.items() if gpus - self._own.get(node, 0) > 0)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def used_gpus(holders: Iterable[GpuHolder], except_job: str | None = None) -> dict[str, int]:
    """GPUs held per node by every pod except those of `except_job` (a job re-planning keeps its own)."""
    used: dict[str, int] = {}
    for holder in holders:
        if except_job is not None and holder.job == except_job:
            continue
        used[holder.node] = used.get(holder.node, 0) + holder.gpus
    return used


def planner_node(node: Mapping[str, Any]) -> Node | None:
    """A Node object as the planner's Node; None for an object the planner cannot read (logged by the caller)."""
    try:
        return parse_node(node, f"node {(node.get('metadata') or {}).get('name', '?')}")
    except NodeFileError:
        return None
