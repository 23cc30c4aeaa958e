"""Cuts a model profile into pipeline stages: Layer, SubModel and Task strategies over one optimal solver.

Each strategy turns the profile into split items (a unit, or a whole group of units) and hands them to
`partition.Partitioner`, which finds the smallest bottleneck that fits in GPU memory (see there for the
tie-breaks). This module adds what the strategies mean, the costs by balanceBy, and the error messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from maas_api.plan import ModelProfile, StagePlan
from maas_api.spec import BalanceBy, SplitStrategy, UnitProfile

from maas_operator.planner.memory import USABLE_GPU_FRACTION, MemoryModel
from maas_operator.planner.partition import Partition, Partitioner
from maas_operator.planner.reasons import PlanError, format_bytes, list_some, plural


@dataclass(frozen=True, slots=True)
class SplitItem:
    """The smallest piece a split moves as a whole: one unit, or one group of units (SubModel)."""

    name: str
    units: tuple[UnitProfile, ...]
    params: int
    flops_per_sample: float
    time_ms_per_sample: float | None
    """None when a unit of the item has no measured time."""
    output_bytes_per_sample: int
    """What the item sends on: its last unit's output."""

    @classmethod
    def of(cls, name: str, units: tuple[UnitProfile, ...]) -> SplitItem:
        times = [unit.time_ms_per_sample for unit in units]
        return cls(
            name=name,
            units=units,
            params=sum(unit.params for unit in units),
            flops_per_sample=sum(unit.flops_per_sample for unit in units),
            time_ms_per_sample=None if None in times else sum(t for t in times if t is not None),
            output_bytes_per_sample=units[-1].activation_bytes_per_sample,
        )


@dataclass(frozen=True)
class SplitRequest:
    """What the split needs from the spec, already resolved (stages is a number here)."""

    strategy: SplitStrategy
    stages: int
    balance_by: BalanceBy
    memory: MemoryModel
    heads: tuple[str, ...] = ()
    stages_field: str = "spec.split.stages"
    profile_field: str = "spec.model.profile"
    """Where the profile's numbers came from, for messages (spec.model.args for a catalog model)."""


@dataclass(frozen=True)
class SplitResult:
    stages: list[StagePlan]
    balance_by: BalanceBy
    """What was balanced (time falls back to flops when a unit has no measured time)."""
    notes: list[str]

    @property
    def bottleneck(self) -> float:
        return max(stage.cost for stage in self.stages)


def layer_items(units: Sequence[UnitProfile]) -> list[SplitItem]:
    return [SplitItem.of(unit.name, (unit,)) for unit in units]


def group_items(units: Sequence[UnitProfile]) -> list[SplitItem]:
    """Consecutive units of one group become one item; a group that reappears later is an error."""
    items: list[SplitItem] = []
    closed: dict[str, str] = {}  # group -> the unit after which it ended
    for unit in units:
        last = items[-1] if items else None
        if unit.group is not None and last is not None and last.units[0].group == unit.group:
            items[-1] = SplitItem.of(unit.group, (*last.units, unit))
            continue
        if last is not None and last.units[0].group is not None:
            closed[last.units[0].group] = last.units[-1].name
        if unit.group is not None and unit.group in closed:
            members = [u.name for u in units if u.group == unit.group]
            raise PlanError(
                f"spec.split.strategy SubModel: group {unit.group!r} is not contiguous: its units"
                f" {list_some(members)} are separated by other units after {closed[unit.group]!r};"
                " SubModel keeps each group whole and in order, so reorder model.profile or use strategy Layer"
            )
        items.append(SplitItem.of(unit.group or unit.name, (unit,)))
    return items


def split_items(units: Sequence[UnitProfile], strategy: SplitStrategy) -> tuple[list[SplitItem], str]:
    """What a stage holds at least one of under `strategy`, and their name (Task splits units)."""
    if strategy == SplitStrategy.SUB_MODEL:
        return group_items(units), "groups"
    return layer_items(units), "units"


def check_stage_count(stages: int, items: Sequence[SplitItem], what: str, field: str) -> None:
    """PlanError unless every stage can get one item; cheap, so callers check it before sizing anything by
    the stage count."""
    if stages > len(items):
        raise PlanError(
            f"{field}: {stages} stages but the model has only {len(items)} {what}"
            f" ({list_some(item.name for item in items)}); every stage needs at least one,"
            f" so use at most {len(items)} stages"
        )


PROFILE_NUMBERS: tuple[tuple[str, str], ...] = (
    ("params", "params"),
    ("flops_per_sample", "flopsPerSample"),
    ("activation_bytes_per_sample", "activationBytesPerSample"),
    ("time_ms_per_sample", "timeMsPerSample"),
)
"""The profile's numbers that the split adds up: attribute and wire name."""


def check_profile_totals(units: Sequence[UnitProfile], field: str) -> None:
    """PlanError when a profile number, or the sum of one over the units, is not a finite float: the split
    adds and compares them as floats, and infinities would end in NaN costs or `Infinity` in the plan."""
    for attribute, wire in PROFILE_NUMBERS:
        try:  # summed in order, as the partitioner's prefix sums are
            total = sum(float(getattr(unit, attribute) or 0) for unit in units)
        except OverflowError:  # an integer beyond a float
            total = math.inf
        if not math.isfinite(total):
            raise PlanError(
                f"{field}: {wire} must be finite numbers whose sum over the units fits a float (about 1.8e308);"
                " a unit's value is infinite or too large"
            )


def item_costs(items: Sequence[SplitItem], balance_by: BalanceBy) -> tuple[list[float], BalanceBy, list[str]]:
    """Per-item cost in the balanceBy measure, the measure actually used, and a note when it changed."""
    if balance_by == BalanceBy.PARAMS:
        return [float(item.params) for item in items], balance_by, []
    if balance_by == BalanceBy.TIME:
        times = [item.time_ms_per_sample for item in items]
        if all(t is not None for t in times):
            return [t for t in times if t is not None], balance_by, []
        missing = [u.name for item in items for u in item.units if u.time_ms_per_sample is None]
        note = (
            f"balanceBy time: {plural(len(missing), 'unit')} ({list_some(missing)}) have no timeMsPerSample"
            " in the profile, so the split balances flops instead (measure them with `maas profile`)"
        )
        return [item.flops_per_sample for item in items], BalanceBy.FLOPS, [note]
    # flops, and memory (whose per-stage cost the partitioner computes itself)
    return [item.flops_per_sample for item in items], balance_by, []


class _Part:
    """One partition problem: a run of items over a run of stage indices."""

    def __init__(
        self, items: list[SplitItem], first_stage: int, stages: int, request: SplitRequest, costs: list[float]
    ) -> None:
        memory = request.memory
        self.items = items
        self.first_stage = first_stage
        self.stages = stages
        self.partitioner = Partitioner(
            costs,
            [item.params * memory.state_bytes_per_param for item in items],
            [float(sum(memory.activation_bytes(unit) for unit in item.units)) for item in items],
            [memory.activation_factor(first_stage + s) for s in range(stages)],
            memory.usable_bytes_per_stage,
            balance_memory=request.balance_by == BalanceBy.MEMORY,
        )


def split_model(profile: ModelProfile, request: SplitRequest) -> SplitResult:
    """The optimal split of `profile` by `request`; PlanError names the field when it cannot be done."""
    check_profile_totals(profile.units, request.profile_field)
    if request.strategy == SplitStrategy.TASK:
        return _split_task(profile, request)
    items, what = split_items(profile.units, request.strategy)
    check_stage_count(request.stages, items, what, request.stages_field)
    costs, balanced, notes = item_costs(items, request.balance_by)
    part = _Part(items, 0, request.stages, request, costs)
    partition = part.partitioner.solve()
    if partition is None:
        raise _memory_error(part, request)
    return SplitResult(_stage_plans([(part, partition)], request, ()), balanced, notes)


def _split_task(profile: ModelProfile, request: SplitRequest) -> SplitResult:
    """Trunk stages first, then head stages; the number of head stages is chosen for the best bottleneck."""
    heads = request.heads
    head_units = {unit.name: unit for unit in profile.units if unit.head}
    names = {unit.name for unit in profile.units}
    for head_name in heads:
        if head_name not in names:
            raise PlanError(
                f"spec.split.heads: {head_name!r} is not a unit of the model (units: {list_some(sorted(names), 8)})"
            )
        if head_name not in head_units:
            raise PlanError(
                f"spec.split.heads: unit {head_name!r} is not a task head (its profile entry has head: false);"
                f" the model's heads are: {', '.join(head_units) or 'none'}"
            )
    if len(set(heads)) != len(heads):
        raise PlanError(f"spec.split.heads: {list(heads)} names a head more than once")
    unlisted = [name for name in head_units if name not in heads]
    if unlisted:
        raise PlanError(
            f"spec.split.heads: the model's head units {unlisted} are missing; list every head"
            " (the runtime runs all of them)"
        )
    first_head = next(i for i, unit in enumerate(profile.units) if unit.head)
    trunk_units = profile.units[:first_head]
    if any(not unit.head for unit in profile.units[first_head:]) or not trunk_units:
        raise PlanError(
            "spec.split.strategy Task: the profile must list the trunk units first and the head units after"
            " them (and have at least one trunk unit)"
        )
    trunk_items = layer_items(trunk_units)
    head_items = layer_items(profile.units[first_head:])
    if request.stages < 2:
        raise PlanError(
            f"{request.stages_field}: strategy Task needs at least 2 stages (the trunk, then the heads),"
            f" got {request.stages}"
        )
    check_stage_count(request.stages, [*trunk_items, *head_items], "units", request.stages_field)
    trunk_costs, balanced, notes = item_costs(trunk_items, request.balance_by)
    head_costs, _, head_notes = item_costs(head_items, request.balance_by)
    notes = notes or head_notes

    # (bottleneck, peak memory, head stages): fewer head stages win ties, leaving the trunk more stages.
    best: tuple[float, float, int, _Part, _Part] | None = None
    failed: _Part | None = None
    for head_stages in range(1, min(len(head_items), request.stages - 1) + 1):
        trunk_stages = request.stages - head_stages
        if trunk_stages > len(trunk_items):
            continue
        trunk = _Part(trunk_items, 0, trunk_stages, request, trunk_costs)
        head = _Part(head_items, trunk_stages, head_stages, request, head_costs)
        trunk_split, head_split = trunk.partitioner.solve(), head.partitioner.solve()
        if trunk_split is None or head_split is None:
            failed = failed or (trunk if trunk_split is None else head)
            continue
        key = (
            max(trunk_split.bottleneck, head_split.bottleneck),
            max(trunk_split.peak_memory, head_split.peak_memory),
        )
        if best is None or key < best[:2]:
            best = (*key, head_stages, trunk, head)
    if best is None:
        assert failed is not None
        raise _memory_error(failed, request)
    bottleneck, _, head_stages, trunk, head = best
    # The faster part may use the slack up to the overall bottleneck to lower its memory.
    trunk_split = trunk.partitioner.solve(cost_limit=bottleneck)
    head_split = head.partitioner.solve(cost_limit=bottleneck)
    assert trunk_split is not None and head_split is not None
    trunk_output = trunk_items[-1].output_bytes_per_sample
    notes.append(
        f"task split: trunk in {plural(request.stages - head_stages, 'stage')},"
        f" {plural(len(head_items), 'head')} in {plural(head_stages, 'stage')} after it"
    )
    stages = _stage_plans([(trunk, trunk_split), (head, head_split)], request, heads, trunk_output)
    return SplitResult(stages, balanced, notes)


def _stage_plans(
    parts: list[tuple[_Part, Partition]],
    request: SplitRequest,
    heads: Sequence[str],
    head_passthrough_bytes: int = 0,
) -> list[StagePlan]:
    plans: list[StagePlan] = []
    head_outputs = 0
    for part, partition in parts:
        for offset, item_range in enumerate(partition.ranges(len(part.items))):
            items = [part.items[i] for i in item_range]
            units = [unit for item in items for unit in item.units]
            stage_heads = [unit.name for unit in units if unit.name in heads]
            output = items[-1].output_bytes_per_sample
            if stage_heads:
                # Head stages forward the trunk's output with every head output so far.
                head_outputs += sum(unit.activation_bytes_per_sample for unit in units)
                output = head_passthrough_bytes + head_outputs
            plans.append(
                StagePlan(
                    index=part.first_stage + offset,
                    units=[unit.name for unit in units],
                    heads=stage_heads,
                    params=sum(item.params for item in items),
                    cost=partition.stage_costs[offset],
                    flops_per_sample=sum(item.flops_per_sample for item in items),
                    memory_bytes=math.ceil(partition.stage_memory[offset]),
                    output_bytes_per_sample=output,
                )
            )
    return plans


def _memory_error(part: _Part, request: SplitRequest) -> PlanError:
    """Which stage or unit is too big, and what GPU memory would hold it."""
    memory = request.memory
    gpu = format_bytes(memory.gpu_memory_bytes or 0)
    usable = format_bytes(memory.usable_bytes_per_stage)
    share = f"{USABLE_GPU_FRACTION:.0%} of {gpu}"
    if memory.stages_per_worker > 1:
        share += f" / {memory.stages_per_worker} stages per worker"
    relaxed = part.partitioner.min_peak_memory()
    assert relaxed is not None  # stage count was checked, and without a limit a split always exists
    worst = max(range(part.stages), key=lambda s: (relaxed.stage_memory[s], -s))
    item_range = relaxed.ranges(len(part.items))[worst]
    names = [unit.name for i in item_range for unit in part.items[i].units]
    stage = part.first_stage + worst
    needed = relaxed.stage_memory[worst]
    fits = format_bytes(memory.gpu_memory_that_fits(needed))
    if len(names) == 1:
        what = f"unit {names[0]!r} alone needs {format_bytes(needed)} in stage {stage}"
    else:
        what = f"the best split still needs {format_bytes(needed)} in stage {stage} ({list_some(names)})"
    return PlanError(
        f"no split into {plural(request.stages, 'stage')} fits in GPU memory: {what}, but a stage may use {usable}"
        f" ({share}); a GPU with at least {fits} (spec.resources.gpuMemory) would fit it, or use more"
        " stages, more GPUs per worker (they shard the model state), SGD instead of Adam, or bfloat16"
    )
