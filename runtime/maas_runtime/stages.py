"""Model stages: the module each pipeline stage runs, and the tensor shapes that cross between stages.

Task heads (Task split) run after the whole trunk, each on the trunk's output. A stage after the first
head stage receives `[trunk output | heads' outputs so far]` concatenated on the last dim and passes the
trunk part on, so one tensor crosses each stage boundary; the last stage outputs only the heads' outputs,
concatenated, which is exactly the whole model's output (`model.run_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from maas_api.plan import Plan
from torch import nn

from maas_runtime.errors import PermanentError, as_user_error
from maas_runtime.model import InputSpec, Units, run_model


@dataclass(frozen=True)
class StageLayout:
    index: int
    trunk: tuple[str, ...]
    """Trunk units of the stage, in order."""
    heads: tuple[str, ...]
    """Head units of the stage, in order."""
    after_heads: bool
    """An earlier stage already ran heads: the input carries the trunk output plus their outputs."""
    last: bool


def stage_layouts(plan: Plan, heads: Sequence[str]) -> list[StageLayout]:
    layouts: list[StageLayout] = []
    seen_heads = False
    for stage in plan.stages:
        trunk = tuple(u for u in stage.units if u not in heads)
        stage_heads = tuple(u for u in stage.units if u in heads)
        where = f"plan.stages[{stage.index}].units"
        if stage_heads and list(stage.units[-len(stage_heads) :]) != list(stage_heads):
            raise PermanentError(where, "task heads must come after the stage's trunk units")
        if seen_heads and trunk:
            raise PermanentError(where, f"trunk units {list(trunk)} come after a task head")
        layouts.append(
            StageLayout(
                index=stage.index,
                trunk=trunk,
                heads=stage_heads,
                after_heads=seen_heads,
                last=stage.index == len(plan.stages) - 1,
            )
        )
        seen_heads = seen_heads or bool(stage_heads)
    return layouts


class StageModule(nn.Module):
    """The units of one pipeline stage, run in order (parameter names: `units.<unit>.<param>`)."""

    def __init__(self, layout: StageLayout, units: Units, trunk_width: int) -> None:
        super().__init__()
        self.layout = layout
        self.trunk_width = trunk_width
        self.units = nn.ModuleDict({name: units[name] for name in (*layout.trunk, *layout.heads)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._forward(x)
        except Exception as error:
            wrapped = as_user_error(f"plan.stages[{self.layout.index}] forward", error)
            if wrapped is error:
                raise
            raise wrapped from error

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        if layout.after_heads:
            trunk, parts = x[..., : self.trunk_width], [x[..., self.trunk_width :]]
        else:
            trunk, parts = x, []
            for name in layout.trunk:
                trunk = self.units[name](trunk)
            if not layout.heads:
                return trunk
        parts += [self.units[name](trunk) for name in layout.heads]
        outputs = torch.cat(parts, dim=-1)
        return outputs if layout.last else torch.cat([trunk, outputs], dim=-1)


def trunk_width(units: Units, heads: Sequence[str], input_spec: InputSpec) -> int:
    """Last-dim width of the trunk's output (meta forward, no memory)."""
    if not heads:
        return 0
    trunk = {name: unit for name, unit in units.items() if name not in heads}
    with torch.no_grad():
        return int(run_model(trunk, [], input_spec.empty(1)).shape[-1])


@dataclass(frozen=True)
class StageShapes:
    inputs: torch.Tensor
    outputs: torch.Tensor


def stage_shapes(
    layouts: Sequence[StageLayout],
    units: Units,
    input_spec: InputSpec,
    width: int,
    microbatch: int,
    training: bool,
) -> list[StageShapes]:
    """Meta tensors of every stage's input and output for one microbatch (static pipeline metadata).

    `units` must still be on the meta device. Tensors crossing stages carry requires_grad when training,
    which tells PipelineStage that gradients flow back over that edge.
    """
    shapes: list[StageShapes] = []
    x = input_spec.empty(microbatch)
    with torch.no_grad():
        for layout in layouts:
            y = StageModule(layout, units, width)(x)
            inputs = x if layout.index == 0 else _meta_like(x, training)
            shapes.append(StageShapes(inputs, _meta_like(y, training)))
            x = y
    return shapes


def _meta_like(t: torch.Tensor, training: bool) -> torch.Tensor:
    return torch.empty_like(t, device="meta").requires_grad_(training and t.is_floating_point())
