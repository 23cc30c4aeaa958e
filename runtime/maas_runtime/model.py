"""Building the model: catalog or factory on the `meta` device, then materialising only the owned units.

A model is an `nn.ModuleDict` of units in execution order. Units flagged as task heads run after the trunk,
each on the trunk's output, and the model's output is the heads' outputs concatenated on the last dim.
A factory's ModuleDict may carry these optional attributes (the catalog models set all three):
- `maas_input`: `{"shape": [per-sample shape], "dtype": "float32" | "int64", "high": vocab}`, needed for
  synthetic data when the first unit is not an `nn.Linear`;
- `maas_heads`: names of the task-head units (for `maas profile`);
- `maas_groups`: unit name -> named sub-model (for `maas profile` and the SubModel split).

Weights are initialised per unit from a seed derived from the unit's name, so every split of the same
model starts from identical weights. Units are initialised by the `reset_parameters()` of their modules,
or by their own `init_weights()` when they define one (needed for buffers and bare parameters).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from maas_api.catalog import CatalogArgsError
from maas_api.plan import Plan
from maas_api.spec import ModelSpec
from torch import nn

from maas_runtime.catalog_models import build_catalog_model
from maas_runtime.errors import PermanentError, as_user_error, user_code

Units = Mapping[str, nn.Module] | nn.ModuleDict
"""Units by name: an nn.ModuleDict or any mapping of modules."""

INIT_SEED = 20_240_601
"""Base of the per-unit seeds (fixed: the same model always starts from the same weights)."""


@dataclass(frozen=True)
class InputSpec:
    """One sample of model input: shape, dtype and, for token ids, the exclusive upper bound."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    high: int | None = None

    def empty(self, batch: int, device: torch.device | str = "meta") -> torch.Tensor:
        return torch.empty((batch, *self.shape), dtype=self.dtype, device=device)

    def zeros(self, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.zeros((batch, *self.shape), dtype=self.dtype, device=device)


@dataclass
class ModelInfo:
    """The model on the meta device and what the runtime needs to know about it."""

    units: nn.ModuleDict
    input: InputSpec | None
    heads: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)


def parse_dtype(name: str, where: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise PermanentError(where, f"{name!r} is not a torch dtype")
    return dtype


def _input_spec(model: nn.ModuleDict, where: str) -> InputSpec | None:
    declared = getattr(model, "maas_input", None)
    if isinstance(declared, Mapping):
        try:
            return InputSpec(
                shape=tuple(int(n) for n in declared["shape"]),
                dtype=parse_dtype(str(declared.get("dtype", "float32")), f"{where}.maas_input.dtype"),
                high=int(declared["high"]) if declared.get("high") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PermanentError(f"{where}.maas_input", f"not a valid input description ({error})") from error
    # Without a declaration, a model that starts with a Linear layer eats float feature vectors.
    first = next((m for m in model.modules() if any(True for _ in m.parameters(recurse=False))), None)
    if isinstance(first, nn.Linear):
        return InputSpec(shape=(first.in_features,), dtype=torch.float32)
    return None


def import_factory(reference: str) -> Any:
    module_name, _, function_name = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise PermanentError(
            "plan.model.factory", f"cannot import {reference!r} ({type(error).__name__}: {error})"
        ) from error
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise PermanentError("plan.model.factory", f"{module_name!r} has no function {function_name!r}")
    return factory


def build_meta_model(spec: ModelSpec) -> ModelInfo:
    """Build the whole model on the meta device (no memory for weights)."""
    with torch.device("meta"):
        if spec.catalog is not None:
            try:
                model = build_catalog_model(spec.catalog, spec.args)
            except CatalogArgsError as error:
                raise PermanentError(
                    "plan.model.args", str(error).replace("spec.model.", "plan.model.")
                ) from error
            where = "plan.model.catalog"
        elif spec.factory is not None:
            factory = import_factory(spec.factory)
            try:
                model = factory(**spec.args)
            except (TypeError, ValueError) as error:
                raise PermanentError(
                    "plan.model.args",
                    f"{spec.factory} rejected {spec.args} ({type(error).__name__}: {error})",
                ) from error
            except Exception as error:
                raise as_user_error(f"the model factory {spec.factory}", error) from error
            where = "plan.model.factory"
            if not isinstance(model, nn.ModuleDict):
                raise PermanentError(
                    where, f"{spec.factory} returned {type(model).__name__}, not an nn.ModuleDict"
                )
        else:
            raise PermanentError("plan.model", "set catalog or factory")
    if any(p.device.type != "meta" for p in model.parameters()):
        raise PermanentError(where, "the model must create its parameters on the default device (meta here)")
    return ModelInfo(
        units=model,
        input=_input_spec(model, where),
        heads=list(getattr(model, "maas_heads", []) or []),
        groups=dict(getattr(model, "maas_groups", {}) or {}),
    )


def check_against_plan(info: ModelInfo, plan: Plan) -> None:
    """The model's units must be the plan's profile units, in order."""
    built = list(info.units.keys())
    profiled = [unit.name for unit in plan.profile.units]
    if built != profiled:
        raise PermanentError(
            "plan.profile.units",
            f"the model has units {built} but the plan was made for {profiled}: print the profile with"
            " `maas profile` and give it as spec.model.profile",
        )


def plan_heads(plan: Plan) -> list[str]:
    """Task-head units: flagged in the profile or placed as heads by the Task split."""
    staged = {name for stage in plan.stages for name in stage.heads}
    return [u.name for u in plan.profile.units if u.head or u.name in staged]


def unit_seed(name: str) -> int:
    digest = hashlib.sha256(f"{INIT_SEED}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def materialize(units: Units, device: torch.device, dtype: torch.dtype) -> None:
    """Allocate the given meta units on `device` and initialise them from their per-unit seeds."""
    for name, unit in units.items():
        unit.to_empty(device=device)
        tensors = [*unit.parameters(), *unit.buffers()]
        with torch.no_grad():
            for tensor in tensors:
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))  # marks whatever initialisation misses
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(unit_seed(name))
            init = getattr(unit, "init_weights", None)
            with user_code(f"unit {name!r} weight initialisation"):
                if callable(init):
                    init()
                else:
                    for module in unit.modules():
                        reset = getattr(module, "reset_parameters", None)
                        if callable(reset):
                            reset()
        missed = [n for n, t in [*unit.named_parameters(), *unit.named_buffers()] if t.isnan().any()]
        if missed:
            raise PermanentError(
                "plan.model",
                f"unit {name!r}: {missed} are not initialised by reset_parameters(); give the unit an"
                " init_weights() method that sets them",
            )
        unit.to(dtype=dtype)


def run_model(units: Units, heads: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    """The whole model's forward pass: the trunk in order, then the heads concatenated (the reference)."""
    with user_code("the model's forward"):
        for name, unit in units.items():
            if name not in heads:
                x = unit(x)
        if not heads:
            return x
        return torch.cat([units[name](x) for name in heads], dim=-1)
