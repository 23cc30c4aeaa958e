"""Single-process references: the same model, data and optimizer as a plan, without any parallelism."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from maas_api.batch import samples_per_step
from maas_api.plan import Plan
from maas_api.spec import DataDistribution, TrainingSpec
from maas_runtime import data
from maas_runtime.losses import loss_function
from maas_runtime.model import build_meta_model, materialize, parse_dtype, plan_heads, run_model
from maas_runtime.train import build_optimizer
from maas_runtime.worker import prepare_model
from torch import nn


@dataclass
class Reference:
    units: nn.ModuleDict
    heads: list[str]
    losses: list[float]


def full_model(plan: Plan) -> tuple[nn.ModuleDict, list[str]]:
    units = build_meta_model(plan.model).units
    materialize(units, torch.device("cpu"), parse_dtype(plan.model.dtype, "dtype"))
    return units, plan_heads(plan)


def reference_training(
    plan: Plan, replicas: list[int] | None = None, earlier: tuple[int, TrainingSpec] | None = None
) -> Reference:
    """Train the whole model on each step's whole global batch (replicas: the replica count per step).

    `earlier=(n, spec)`: the first n steps ran with `spec`'s optimizer settings, then the job resumed with the
    plan's: a fresh optimizer of the plan's settings takes over the optimizer state at step n.
    """
    training = plan.training or TrainingSpec()
    setup = prepare_model(plan)
    units, heads = full_model(plan)
    target = data.target_spec(training.loss, setup.input_spec, setup.output_shape)
    samples = data.open_samples(plan, setup.input_spec, target)
    order = data.SampleOrder(samples.size, plan.data.synthetic.seed if plan.data.synthetic else 0)
    if replicas is None:
        replicas = [plan.replicas] * training.steps
    resume_step, first_settings = earlier or (0, training)
    optimizer = build_optimizer(first_settings, units.parameters())
    loss_fn = loss_function(training.loss)
    losses, seen = [], 0
    shard = plan.data.distribution == DataDistribution.SHARD
    for step, count in enumerate(replicas):
        if step == resume_step and earlier is not None:
            resumed = build_optimizer(training, units.parameters())
            groups = resumed.state_dict()["param_groups"]
            resumed.load_state_dict({"state": optimizer.state_dict()["state"], "param_groups": groups})
            optimizer = resumed
        per_step = samples_per_step(training.batch_size, count, shard)
        indices = order.indices(seen, per_step)
        optimizer.zero_grad()
        inputs = samples.inputs(indices).to(setup.input_spec.dtype)
        loss = loss_fn(run_model(units, heads, inputs), samples.targets(indices))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        seen += per_step
    return Reference(units, heads, losses)


def load_checkpoint_model(plan: Plan, path: Path) -> nn.ModuleDict:
    """The whole model with the weights of a DCP checkpoint (no process group needed)."""
    units, _ = full_model(plan)
    state = {"model": units.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)
    units.load_state_dict(state["model"])
    return units


def max_difference(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
