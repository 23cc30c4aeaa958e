"""How many microbatches a step is cut into, and the pipeline bubble that leaves."""

from __future__ import annotations

import functools
import math

from maas_api.plan import bubble_fraction
from maas_api.spec import PipelineSchedule

from maas_operator.planner.reasons import PlanError

TARGET_BUBBLE = 0.2
"""The planner picks the fewest microbatches whose bubble is at most this (fewer = larger, faster kernels)."""


MAX_MICROBATCHES = 2**16
"""The most microbatches a step is cut into: far above what any plannable pipeline needs (4,096 stages reach
a 20% bubble at 16,380), and it bounds the divisor search for every batch size (batchSize 1e18 would
otherwise take 1e9 trial divisions)."""


@functools.cache
def divisors(value: int, limit: int = MAX_MICROBATCHES) -> tuple[int, ...]:
    """The divisors of `value` up to `limit`, ascending, in min(sqrt(value), limit) trial divisions: a
    divisor above sqrt(value) is value // d for a divisor d below it, and d < limit when it is."""
    small = [d for d in range(1, min(limit, math.isqrt(value)) + 1) if value % d == 0]
    return tuple(sorted({*small, *(value // d for d in small if value // d <= limit)}))


def choose_microbatches(
    batch: int,
    model_stages: int,
    pipeline_degree: int,
    schedule: PipelineSchedule,
    stages_per_worker: int = 1,
    batch_field: str = "spec.training.batchSize",
) -> tuple[int, str]:
    """The smallest m dividing the batch with bubble <= TARGET_BUBBLE (m >= stages for 1F1B schedules),
    else the candidate with the smallest bubble; returns m and a note that says why. The bubble counts each
    microbatch's fixed cost (maas_api.plan.bubble_fraction with the microbatch size), so past some point more,
    smaller microbatches raise it again."""
    needs_one_per_stage = schedule != PipelineSchedule.GPIPE
    if needs_one_per_stage and model_stages > MAX_MICROBATCHES:
        raise PlanError(
            f"spec.split.stages: {model_stages} stages need as many microbatches per step with schedule"
            f" {schedule.value}, more than the planner's {MAX_MICROBATCHES}; use fewer stages or schedule GPipe"
        )
    candidates = [m for m in divisors(batch) if not needs_one_per_stage or m >= model_stages]
    if schedule == PipelineSchedule.INTERLEAVED_1F1B:
        # torch's interleaved schedule runs microbatches in rounds of one per pipeline rank.
        candidates = [m for m in candidates if m % pipeline_degree == 0]
        if not candidates:
            raise PlanError(
                f"{batch_field}: no divisor of {batch} is a multiple of the {pipeline_degree} workers per"
                f" pipeline that Interleaved1F1B runs microbatches in rounds of; make {batch_field} a multiple"
                f" of {pipeline_degree * model_stages // pipeline_degree}, or use schedule 1F1B"
            )
    if not candidates:
        raise PlanError(
            f"{batch_field}: {batch} samples cannot feed {model_stages} stages with schedule {schedule.value},"
            f" which needs at least one microbatch per stage; raise {batch_field} to {model_stages} or more,"
            " or use schedule GPipe"
        )
    if pipeline_degree == 1:
        fewest = candidates[0]  # candidates are ascending; with no bubble to hide, fewer is faster
        return fewest, f"microbatches {fewest}: a single-stage pipeline has no bubble"
    bubbles = {m: bubble_fraction(pipeline_degree, m, stages_per_worker, batch / m) for m in candidates}
    for m, bubble in bubbles.items():
        if bubble <= TARGET_BUBBLE:
            why = (
                f"the smallest divisor of the batch ({batch}) with bubble {bubble:.0%} <= {TARGET_BUBBLE:.0%}"
            )
            if needs_one_per_stage:
                why += f" and at least one microbatch per stage ({model_stages}) as {schedule.value} needs"
            return m, f"microbatches {m}: {why}"
    m = min(candidates, key=lambda m: bubbles[m])  # the first of equals: the fewest microbatches
    bubble = bubbles[m]
    searched = f" up to {MAX_MICROBATCHES}" if batch > MAX_MICROBATCHES else ""
    return m, (
        f"microbatches {m}: no divisor of the batch ({batch}){searched} brings the bubble to"
        f" {TARGET_BUBBLE:.0%};"
        f" {m} gives the smallest, {bubble:.0%} (a larger {batch_field} would lower it)"
    )
