"""Optimal contiguous partition of a sequence into stages: the smallest bottleneck that fits in memory.

Problem. Items 0..n-1 (units, or whole groups of units) go into exactly p non-empty contiguous stages.
Stage s holding items [a, b) costs C(a, b) = sum of item costs, and needs
M_s(a, b) = state(a, b) + f_s * act(a, b) bytes, where f_s (activation samples in flight) is
non-increasing in s. Every stage must satisfy M_s <= limit. Objective, lexicographic:

1. minimise the bottleneck max_s C(stage s) (or max_s M_s when balancing memory itself);
2. among those, minimise the peak memory max_s M_s (the "more even memory split" tie-break);
3. among those, the stages nearest the end take as many items as they can (the right-greedy partition at
   the optimal limits). Early stages hold the most microbatches in flight under 1F1B, so leaving them the
   lighter share is the memory-friendly way to break the remaining ties. It is also deterministic.

Method: parametric search with an exact feasibility probe. `probe(B, M)` walks from the last stage to the
first; each stage takes the longest suffix with cost <= B and memory <= min(limit, M), leaving at least one
item for every earlier stage. It succeeds iff some partition meets (B, M) (exchange argument: by induction
from the right, the probe's stage starts are never later than any feasible partition's, because a shorter
interval costs less, and a single item placed at a later index needs no more memory than at an earlier one
since f_s is non-increasing). Each probe also returns the smallest limit above B (or M) at which its run
would change: when it fails, the optimum is at least that value. Bisection between a feasible achieved
value (upper) and such a value (lower) therefore ends exactly on the optimum, after about log2 of the
number of distinct interval costs probes of O(p log n) each.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise


def _smallest_feasible_limit(
    probe_at: Callable[[float], _ProbeResult],
    best: _ProbeResult,
    lower: float,
    achieved: Callable[[_ProbeResult], float],
    next_limit: Callable[[_ProbeResult], float],
) -> _ProbeResult:
    """Bisect one limit (cost or memory) down to the optimum, from a feasible probe `best` and a `lower`
    bound below which no limit is feasible. A feasible probe lowers the upper end to what it achieved; a
    failed one raises the lower end to the smallest limit at which its run would change, so the search ends
    exactly on an achieved value.

    It terminates with any floats: every round at least halves [lower, upper), and once the two are
    neighbouring floats (the midpoint rounds to one of them) it probes `lower` itself, after which a
    feasible probe achieves at most `lower` and a failed one reports a next limit above it."""
    upper = achieved(best)
    while lower < upper:
        middle = lower + (upper - lower) / 2
        if middle >= upper:
            middle = lower
        result = probe_at(middle)
        if result.feasible:
            best, upper = result, achieved(result)
        else:
            lower = max(next_limit(result), middle) if next_limit(result) < math.inf else upper
    return probe_at(upper) if achieved(best) != upper else best


@dataclass(frozen=True)
class Partition:
    """Stage s holds items starts[s] .. starts[s+1]-1 (the last stage runs to the end)."""

    starts: tuple[int, ...]
    stage_costs: tuple[float, ...]
    stage_memory: tuple[float, ...]

    @property
    def bottleneck(self) -> float:
        return max(self.stage_costs)

    @property
    def peak_memory(self) -> float:
        return max(self.stage_memory)

    def ranges(self, items: int) -> list[range]:
        ends = [*self.starts[1:], items]
        return [range(start, end) for start, end in zip(self.starts, ends, strict=True)]


@dataclass(frozen=True)
class _ProbeResult:
    feasible: bool
    starts: tuple[int, ...]
    max_cost: float
    max_memory: float
    next_cost: float
    """Smallest cost limit above the probed one that lets some stage take one more item."""
    next_memory: float
    """Same for the memory limit."""


class Partitioner:
    """Solves one partition problem; build once, then `solve(stages)`.

    `costs`, `state_bytes` and `activation_bytes` are per item; `activation_factors[s]` multiplies the
    activation bytes of stage s (must be non-increasing); `memory_limit` bounds every stage (math.inf: no
    check). With `balance_memory` the objective is the stage memory itself (balanceBy=memory).
    """

    def __init__(
        self,
        costs: Sequence[float],
        state_bytes: Sequence[float],
        activation_bytes: Sequence[float],
        activation_factors: Sequence[float],
        memory_limit: float = math.inf,
        *,
        balance_memory: bool = False,
    ) -> None:
        if not (len(costs) == len(state_bytes) == len(activation_bytes)):
            raise ValueError("costs, state_bytes and activation_bytes need one entry per item")
        if any(later > earlier for earlier, later in pairwise(activation_factors)):
            raise ValueError("activation_factors must be non-increasing (in-flight microbatches per stage)")
        self.items = len(costs)
        self.stages = len(activation_factors)
        self.factors = [float(f) for f in activation_factors]
        self.memory_limit = float(memory_limit)
        self.balance_memory = balance_memory
        # Prefix sums make every interval's cost and memory O(1); item i is [prefix[i], prefix[i+1]).
        self.cost_prefix = list(accumulate((float(c) for c in costs), initial=0.0))
        self.state_prefix = list(accumulate((float(b) for b in state_bytes), initial=0.0))
        self.act_prefix = list(accumulate((float(b) for b in activation_bytes), initial=0.0))

    # -- interval measures -------------------------------------------------------------------------------
    def cost(self, start: int, end: int) -> float:
        return self.cost_prefix[end] - self.cost_prefix[start]

    def memory(self, stage: int, start: int, end: int) -> float:
        factor = self.factors[stage]
        return (self.state_prefix[end] - self.state_prefix[start]) + factor * (
            self.act_prefix[end] - self.act_prefix[start]
        )

    def objective(self, stage: int, start: int, end: int) -> float:
        return self.memory(stage, start, end) if self.balance_memory else self.cost(start, end)

    # -- the probe ---------------------------------------------------------------------------------------
    def probe(self, cost_limit: float, memory_limit: float) -> _ProbeResult:
        """Right-greedy: can every stage meet cost <= cost_limit and memory <= min(limit, memory_limit)?"""
        cost_prefix, state_prefix, act_prefix = self.cost_prefix, self.state_prefix, self.act_prefix
        limit = min(self.memory_limit, memory_limit)
        starts = [0] * self.stages
        end = self.items
        next_cost = math.inf
        next_memory = math.inf
        max_cost = 0.0
        max_memory = 0.0
        for stage in range(self.stages - 1, -1, -1):
            factor = self.factors[stage]
            cost_end = cost_prefix[end]
            # Smallest start whose interval cost fits; the bisect is on prefix sums, then the exact
            # difference (the same expression every reported cost uses) settles rounding at the edge.
            start = bisect_left(cost_prefix, cost_end - cost_limit, 0, end) if cost_limit < math.inf else 0
            while start < end and cost_end - cost_prefix[start] > cost_limit:
                start += 1
            while start > 0 and cost_end - cost_prefix[start - 1] <= cost_limit:
                start -= 1
            cost_start = start
            start = max(start, stage)  # leave one item for each earlier stage
            memory_end = state_prefix[end] + factor * act_prefix[end]
            if start < end and memory_end - (state_prefix[start] + factor * act_prefix[start]) > limit:
                # Memory binds: the smallest start in (start, end] that fits (memory(end, end) is 0).
                low, high = start + 1, end
                while low < high:
                    middle = (low + high) // 2
                    if memory_end - (state_prefix[middle] + factor * act_prefix[middle]) <= limit:
                        high = middle
                    else:
                        low = middle + 1
                # One item more would meet the cost and the leave-one rule, so only memory stops it.
                extended = memory_end - (state_prefix[low - 1] + factor * act_prefix[low - 1])
                next_memory = min(next_memory, extended)
                start = low
            elif start == cost_start and start > stage:
                # Cost binds (start > 0 follows): one item more fits in memory? then cost alone stops it.
                extended_memory = memory_end - (state_prefix[start - 1] + factor * act_prefix[start - 1])
                if extended_memory <= limit:
                    next_cost = min(next_cost, cost_end - cost_prefix[start - 1])
            if start >= end or (stage == 0 and start > 0):
                return _ProbeResult(False, (), math.inf, math.inf, next_cost, next_memory)
            starts[stage] = start
            max_cost = max(max_cost, cost_end - cost_prefix[start])
            max_memory = max(max_memory, memory_end - (state_prefix[start] + factor * act_prefix[start]))
            end = start
        return _ProbeResult(True, tuple(starts), max_cost, max_memory, next_cost, next_memory)

    # -- the search --------------------------------------------------------------------------------------
    def _min_cost(self, memory_limit: float) -> _ProbeResult | None:
        """The smallest feasible cost limit (exact), with the probe at that limit."""
        best = self.probe(math.inf, memory_limit)
        if not best.feasible:
            return None
        # Every stage holds some item, and a stage's cost (a difference of non-decreasing prefix sums) is
        # never below its items' own, also in floating point. The average total / p is no such bound: the
        # stage costs of a float profile may all round below it.
        largest_item = max(self.cost(i, i + 1) for i in range(self.items))
        return _smallest_feasible_limit(
            lambda limit: self.probe(limit, memory_limit),
            best,
            lower=largest_item,
            achieved=lambda result: result.max_cost,
            next_limit=lambda result: result.next_cost,
        )

    def _min_memory(self, cost_limit: float, upper: float) -> _ProbeResult:
        """The smallest feasible memory limit under `cost_limit` (exact), starting from a feasible `upper`."""
        return _smallest_feasible_limit(
            lambda limit: self.probe(cost_limit, limit),
            self.probe(cost_limit, upper),
            lower=0.0,
            achieved=lambda result: result.max_memory,
            next_limit=lambda result: result.next_memory,
        )

    def solve(self, cost_limit: float | None = None) -> Partition | None:
        """The optimal partition, or None when no partition fits the memory limit (or stages > items).

        With `cost_limit` the bottleneck is not minimised: any cost up to it is accepted and the peak memory
        is minimised under it (used when another part of the model already sets a higher bottleneck).
        """
        if self.stages < 1 or self.items < self.stages:
            return None
        if self.balance_memory:
            first = self.probe(math.inf, math.inf)
            if not first.feasible:
                return None
            result = self._min_memory(math.inf, first.max_memory)
        else:
            if cost_limit is None:
                found = self._min_cost(math.inf)
                if found is None:
                    return None
                cost_limit = found.max_cost
                result = self._min_memory(cost_limit, found.max_memory)
            else:
                start = self.probe(cost_limit, math.inf)
                if not start.feasible:
                    return None
                result = self._min_memory(cost_limit, start.max_memory)
        return self._partition(result.starts)

    def _partition(self, starts: tuple[int, ...]) -> Partition:
        ends = [*starts[1:], self.items]
        return Partition(
            starts=starts,
            stage_costs=tuple(
                self.objective(stage, start, end)
                for stage, (start, end) in enumerate(zip(starts, ends, strict=True))
            ),
            stage_memory=tuple(
                self.memory(stage, start, end)
                for stage, (start, end) in enumerate(zip(starts, ends, strict=True))
            ),
        )

    def min_peak_memory(self) -> Partition | None:
        """The partition with the smallest peak memory, ignoring the limit (for "what would fit" messages)."""
        relaxed = copy.copy(self)  # shares the read-only prefix sums
        relaxed.memory_limit = math.inf
        relaxed.balance_memory = True
        return relaxed.solve()
