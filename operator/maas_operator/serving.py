"""Serve mode: which replicas serve, which leave, which are made, replica by replica. Pure.

A Serve job's replicas live in numbered slots: slot N holds the pods `<job>-rN-s*`, one gang (one
torch.distributed world) at a time. A slot is *current* when its pods carry the gang hash the plan wants now
and *stale* otherwise (an old revision of a rollout, a failed attempt, or a slot the plan no longer has); only
the hash decides. A gang *serves* when every stage is up and its first-stage worker is Ready, which that pod
is only while the operator holds its PIPELINE_READY readiness gate True: so the endpoint Service's endpoints
are exactly the serving gangs.

Rules, one reconcile at a time:
- A current gang's gate follows its pipeline: True once every stage is up, False as soon as one is not.
- A stale gang that does not serve is deleted at once (taking it away costs no availability).
- A stale serving gang leaves gracefully: its gate turns False (reason Draining), so it leaves the endpoint;
  its pods are deleted serving.drainSeconds later. Slots the plan no longer has (scale-down, the end of a
  surge) leave at once; an old replica of a rollout leaves only while at least the minimum (replicas -
  maxUnavailable) others serve, and not at all once the rollout stopped.
- A slot's new gang is made only once its old pods are gone (names are per slot). Surge slots beyond
  spec replicas, which the plan holds during a rollout, give the extra room of maxSurge.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from maas_api.spec import MaaSJobSpec, RolloutSpec

from maas_operator import children, names
from maas_operator.children import Gang, Manifest
from maas_operator.world import WorkerPod

TIME_RESOLUTION_SECONDS = 1
"""Kubernetes keeps condition times in whole seconds."""


def revision(spec: MaaSJobSpec) -> str:
    """Hash of what a replica runs: the spec without the replica counts (a scale is no rollout)."""
    dump = spec.model_dump(mode="json", by_alias=True)
    dump["parallelism"] = {
        key: value
        for key, value in dump["parallelism"].items()
        if key not in {"replicas", "minReplicas", "maxReplicas"}
    }
    return children.content_hash(dump)


def rollout_of(spec: MaaSJobSpec) -> RolloutSpec:
    return spec.serving.rollout if spec.serving is not None else RolloutSpec()


def minimum_serving(replicas: int, spec: MaaSJobSpec) -> int:
    """Replicas that must keep serving during a rollout, and for Ready: replicas - maxUnavailable, at least 1."""
    return max(1, replicas - rollout_of(spec).max_unavailable)


def entry_of(pods: Sequence[WorkerPod]) -> WorkerPod | None:
    """The gang's first-stage worker: the one behind the endpoint."""
    return next((p for p in pods if p.pipeline_rank == 0), None)


def worker_up(pod: WorkerPod, lost_nodes: Collection[str]) -> bool:
    """Runs and is ready, is not leaving, and its node is not lost (whose pods no kubelet reports on)."""
    return (
        pod.phase == "Running"
        and pod.containers_ready
        and not pod.gated
        and not pod.terminating
        and pod.node not in lost_nodes
    )


def pipeline_up(pods: Sequence[WorkerPod], size: int | None, lost_nodes: Collection[str] = ()) -> bool:
    """Every one of the gang's `size` workers exists and is up, all of one gang."""
    return (
        size is not None
        and size > 0
        and len(pods) == size
        and len({p.gang for p in pods}) == 1
        and all(worker_up(p, lost_nodes) for p in pods)
    )


def in_service(pods: Sequence[WorkerPod], up: bool) -> bool:
    """The gang is up and its entry worker is Ready with the gate still open (Ready is what the endpoint
    reads; a gate just closed may not have reached Ready yet)."""
    entry = entry_of(pods)
    return up and entry is not None and entry.ready and entry.pipeline_gate is not False


def draining(pods: Sequence[WorkerPod]) -> bool:
    entry = entry_of(pods)
    return entry is not None and entry.pipeline_gate is False and entry.gate_reason == names.DRAINING


@dataclass(frozen=True)
class Slot:
    index: int
    gang: Gang | None
    """The gang the plan wants in this slot (None: the plan has no such replica)."""
    desired: tuple[Manifest, ...]
    current: tuple[WorkerPod, ...]
    """Pods of the wanted gang."""
    stale: tuple[WorkerPod, ...]
    """Every other pod in the slot."""
    lost_nodes: frozenset[str] = frozenset()

    @property
    def live_stale(self) -> list[WorkerPod]:
        return [p for p in self.stale if not p.terminating]

    @property
    def current_up(self) -> bool:
        return not self.stale and pipeline_up(self.current, len(self.desired), self.lost_nodes)

    @property
    def current_serving(self) -> bool:
        return in_service(self.current, self.current_up)

    @property
    def stale_serving(self) -> bool:
        live = self.live_stale
        up = pipeline_up(live, live[0].gang_size, self.lost_nodes) if live else False
        return up and in_service(live, up) and not draining(live)

    @property
    def serving(self) -> bool:
        return self.current_serving or self.stale_serving


def slots(
    gangs: Sequence[tuple[Gang, Sequence[Manifest]]],
    pods: Sequence[WorkerPod],
    lost_nodes: Collection[str] = (),
) -> list[Slot]:
    """Every slot that the plan has or that holds pods, by index (pods without a replica label: slot -1)."""
    by_index: dict[int, list[WorkerPod]] = {}
    for pod in pods:
        by_index.setdefault(pod.replica if pod.replica is not None else -1, []).append(pod)
    wanted = {int(gang.key.removeprefix("r")): (gang, desired) for gang, desired in gangs}
    result = []
    for index in sorted(set(wanted) | set(by_index)):
        gang, desired = wanted.get(index, (None, ()))
        gang_hash = children.gang_hash_of(desired)
        names_ = {m["metadata"]["name"] for m in desired}
        members = by_index.get(index, [])
        current = tuple(p for p in members if gang is not None and p.name in names_ and p.gang == gang_hash)
        stale = tuple(p for p in members if p not in current)
        result.append(Slot(index, gang, tuple(desired), current, stale, frozenset(lost_nodes)))
    return result


@dataclass(frozen=True)
class GateChange:
    """Set the PIPELINE_READY condition of one entry pod."""

    pod: str
    ready: bool
    reason: str
    message: str


@dataclass
class Choice:
    """What the Serve rules decide for one reconcile."""

    delete: list[WorkerPod] = field(default_factory=list)
    gates: list[GateChange] = field(default_factory=list)
    create: list[Slot] = field(default_factory=list)
    """In-plan slots free of old pods: their missing pods are made and their gates lifted."""
    recheck_at: datetime | None = None
    """When a drain ends (its pods are then deleted)."""
    waiting_for_stale: bool = False
    """Old pods are terminating: their slots wait for them."""
    serving: int = 0
    """Slots that serve after this decision."""
    updated: int = 0
    """Slots below spec replicas whose pods are all of the wanted gang."""
    updated_serving: int = 0
    """Serving slots of the wanted gang (surge slots included)."""
    to_roll: int = 0
    """Old replicas of a rollout still serving or draining in slots below spec replicas."""
    core_serving: bool = False
    """Every slot below spec replicas is current and serves."""
    settled: bool = False
    """core_serving, and no other slot holds pods."""

    def later(self, when: datetime) -> None:
        self.recheck_at = when if self.recheck_at is None else min(self.recheck_at, when)


def _stage_down_message(slot: Slot) -> str:
    missing = len(slot.desired) - len(slot.current)
    down = sorted(p.name for p in slot.current if not worker_up(p, slot.lost_nodes))
    parts = ([f"{missing} worker(s) missing"] if missing else []) + (
        [f"not ready: {', '.join(down)}"] if down else []
    )
    return f"replica {slot.index}: " + ("; ".join(parts) or "stages of several gangs")


def choose(
    layout: Sequence[Slot],
    replicas: int,
    minimum: int,
    stopped: bool,
    drain_seconds: float,
    now: datetime,
) -> Choice:
    """The Serve rules (module docstring) over `layout`; `replicas` is spec replicas (slots below it are the
    service, the plan's slots at or above it are a rollout's surge), `minimum` the replicas that must keep
    serving, `stopped` whether the rollout stopped (no more old replicas leave)."""
    choice = Choice()
    serving = {slot.index for slot in layout if slot.serving}
    # The drain counts from the gate's lastTransitionTime, which the API server keeps in whole seconds:
    # one second more makes sure the replica had at least drainSeconds out of the endpoint.
    drain = timedelta(seconds=drain_seconds + TIME_RESOLUTION_SECONDS)

    def start_drain(slot: Slot, live: list[WorkerPod], why: str) -> None:
        entry = entry_of(live)
        assert entry is not None  # it serves, so it has an entry
        serving.discard(slot.index)
        choice.gates.append(GateChange(entry.name, False, names.DRAINING, why))
        choice.later(now + drain)

    candidates: list[Slot] = []
    for slot in layout:
        if any(p.terminating for p in slot.stale):
            choice.waiting_for_stale = True
        live = slot.live_stale
        if not live:
            continue
        if draining(live):
            entry = entry_of(live)
            assert entry is not None
            due = (entry.gate_since or now) + drain
            if now >= due:
                choice.delete += live
            else:
                choice.later(due)
            continue
        if not slot.stale_serving:
            choice.delete += live
        elif slot.gang is None:
            start_drain(
                slot, live, f"replica {slot.index} is removed: leaving the endpoint before its workers stop"
            )
        else:
            candidates.append(slot)
    for slot in candidates:
        if not stopped and len(serving) - 1 >= minimum:
            start_drain(
                slot,
                slot.live_stale,
                f"replica {slot.index} is replaced by the new revision: leaving the endpoint first",
            )
    choice.to_roll = sum(
        1
        for slot in layout
        if 0 <= slot.index < replicas
        and slot.gang is not None
        and (slot.stale_serving or draining(slot.live_stale))
    )

    for slot in layout:
        if slot.gang is None:
            continue
        if not slot.stale:
            choice.create.append(slot)
            entry = entry_of(slot.current)
            if entry is not None and not entry.gated:
                up = slot.current_up
                if up and entry.pipeline_gate is not True:
                    message = f"replica {slot.index}: all {len(slot.desired)} stage(s) ready"
                    choice.gates.append(GateChange(entry.name, True, "PipelineReady", message))
                elif not up and entry.pipeline_gate is True:
                    choice.gates.append(
                        GateChange(entry.name, False, "StageNotReady", _stage_down_message(slot))
                    )
            if 0 <= slot.index < replicas and len(slot.current) == len(slot.desired):
                choice.updated += 1
            if slot.current_serving:
                choice.updated_serving += 1
    choice.serving = len(serving)
    core = [slot for slot in layout if 0 <= slot.index < replicas]
    choice.core_serving = len(core) == replicas and all(slot.current_serving for slot in core)
    choice.settled = choice.core_serving and not any(
        slot.current or slot.stale for slot in layout if not 0 <= slot.index < replicas
    )
    return choice
