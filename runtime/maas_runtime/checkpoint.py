"""Training checkpoints with torch.distributed.checkpoint (DCP) under `<mountPath>/<job>/step-N`.

State keys are the units' own names (`model.<unit>.<param>`, `optim.state.<unit>.<param>.<slot>`), the same
as the whole model's `nn.ModuleDict` state dict, so a checkpoint loads into any split and any data-parallel
degree (DCP reshards the FSDP DTensors). A directory is complete once DCP has written `.metadata`, which it
does last and atomically; the newest complete one is resumed, with the data position it stored.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from maas_api.spec import CheckpointSpec
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

STEP_DIR = re.compile(r"^step-(\d+)$")
# Per-parameter optimizer keys (`optim.state.<unit>.<param>.exp_avg`, `optim.param_groups.<unit>.<param>.lr`):
# a nested param_groups list would be saved once, by whichever rank, and not fit another split.
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
KEEP_CHECKPOINTS = 3
"""Complete checkpoints kept; older ones are deleted after each save."""


@dataclass(frozen=True)
class TrainerState:
    step: int
    """Optimizer steps completed."""
    samples_seen: int
    """Position in the global sample stream (see maas_runtime.data)."""


def complete_steps(root: Path) -> list[int]:
    """Steps with a complete checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / ".metadata").is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


class Checkpointer:
    """Saves and loads `model` and `optimizer` (None for parameter-free stages, which have no optimizer)."""

    def __init__(
        self, spec: CheckpointSpec, job: str, model: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> None:
        self.root = Path(spec.mount_path) / job
        self.interval = spec.interval_steps
        self.model, self.optimizer = model, optimizer
        # Parameter-free stages (activations) may have no state at all, which get_model_state_dict refuses.
        self._has_model_state = bool(model.state_dict())

    def path(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def latest_step(self) -> int | None:
        """The newest complete checkpoint, as rank 0 sees it (one answer for every rank)."""
        steps = complete_steps(self.root) if dist.get_rank() == 0 else []
        answer: list[int | None] = [steps[-1] if steps else None]
        dist.broadcast_object_list(answer, src=0)
        return answer[0]

    def _state(self, trainer: TrainerState) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": get_model_state_dict(self.model) if self._has_model_state else {},
            "trainer": {
                "step": torch.tensor(trainer.step, dtype=torch.int64),
                "samples_seen": torch.tensor(trainer.samples_seen, dtype=torch.int64),
            },
        }
        if self.optimizer is not None:
            state["optim"] = get_optimizer_state_dict(self.model, self.optimizer, options=OPTIONS)
        return state

    def save(self, trainer: TrainerState) -> Path:
        path = self.path(trainer.step)
        if dist.get_rank() == 0:
            # A directory left by an interrupted save would mix old shards with new ones.
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        dist.barrier()
        dcp_save(self._state(trainer), checkpoint_id=path)
        if dist.get_rank() == 0:
            for step in complete_steps(self.root)[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(self.path(step), ignore_errors=True)
        return path

    def load(self, step: int) -> TrainerState:
        state = self._state(TrainerState(step=0, samples_seen=0))
        dcp_load(state, checkpoint_id=self.path(step))
        if self._has_model_state:
            set_model_state_dict(self.model, state["model"])
        if self.optimizer is not None:
            # The checkpoint holds the optimizer's state (moments, step counts); its settings (learning rate,
            # weight decay, ...) are the job's, which may have changed since the checkpoint was written.
            settings = [
                {k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups
            ]
            set_optimizer_state_dict(self.model, self.optimizer, state["optim"], options=OPTIONS)
            for group, job_settings in zip(self.optimizer.param_groups, settings, strict=True):
                group.update(job_settings)
        trainer = state["trainer"]
        return TrainerState(step=int(trainer["step"]), samples_seen=int(trainer["samples_seen"]))
