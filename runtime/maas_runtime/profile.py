"""`maas profile`: the unit profile of a model (params, FLOPs, activation and saved bytes per sample, time).

The model is built on the meta device, so profiling needs no memory for weights: FLOPs come from
`torch.utils.flop_counter.FlopCounterMode` on one meta sample, activation bytes from each unit's output.
Saved bytes (what training keeps from a unit's forward until its backward) are measured with autograd's
saved-tensor hooks on fake CPU tensors (`FakeTensorMode`: the CPU's kernels are chosen, e.g. its flash
attention, but nothing is allocated), as the difference between two and one sample.
Paste the output into `spec.model.profile` of a factory model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence

import torch
import yaml
from maas_api.catalog import DTYPE_BYTES
from maas_api.spec import CatalogModel, ModelSpec, UnitProfile
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from maas_runtime.errors import PermanentError
from maas_runtime.model import InputSpec, ModelInfo, build_meta_model, materialize, parse_dtype


def _unit_inputs(info: ModelInfo, heads: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each unit's input when the model runs on x: trunk in order, heads on the trunk's output."""
    inputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, unit in info.units.items():
            if name not in heads:
                inputs[name] = x
                x = unit(x)
        inputs |= dict.fromkeys(heads, x)
    return inputs


def profile_units(
    info: ModelInfo, dtype: str = "float32", heads: Sequence[str] | None = None, time_batch: int = 0
) -> list[UnitProfile]:
    """Profile every unit; with time_batch > 0 also time each unit's forward on real weights."""
    if info.input is None:
        raise PermanentError("--input-shape", "the model does not declare maas_input: give --input-shape")
    heads = list(info.heads if heads is None else heads)
    value_bytes = DTYPE_BYTES[dtype]
    inputs = _unit_inputs(info, heads, info.input.empty(1))
    torch_dtype = parse_dtype(dtype, "--dtype")
    units = []
    for name, unit in info.units.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            output = unit(inputs[name])
        sample = inputs[name]
        saved = saved_bytes(unit, sample, torch_dtype, 2) - saved_bytes(unit, sample, torch_dtype, 1)
        units.append(
            UnitProfile(
                name=name,
                group=info.groups.get(name),
                head=name in heads,
                params=sum(p.numel() for p in unit.parameters()),
                flops_per_sample=float(counter.get_total_flops()),
                activation_bytes_per_sample=output.numel() * value_bytes,
                saved_bytes_per_sample=saved,
            )
        )
    if time_batch > 0:
        times = _time_units(info, heads, parse_dtype(dtype, "--dtype"), time_batch)
        units = [u.model_copy(update={"time_ms_per_sample": times[u.name]}) for u in units]
    return units


def saved_bytes(unit: nn.Module, sample: torch.Tensor, dtype: torch.dtype, batch: int) -> int:
    """Bytes training keeps from `unit`'s forward on `batch` samples shaped like `sample` (a batch of one, any
    device) until its backward: the distinct storages autograd saves, except the parameters and the input
    (the unit before holds it as its output), plus the output (the next unit or the pipeline keeps it).
    Measured on fake CPU tensors; a storage is one allocation, however many views of it autograd saves."""
    shell = copy.deepcopy(unit)  # a meta copy: the fake tensors must not replace the profiled unit's

    def fake(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device="cpu")

    with FakeTensorMode():
        for module in shell.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(fake(param), requires_grad=param.requires_grad))
            for name, buffer in list(module.named_buffers(recurse=False)):
                setattr(module, name, fake(buffer))
        x_dtype = dtype if sample.is_floating_point() else sample.dtype
        x = torch.empty((batch, *sample.shape[1:]), dtype=x_dtype, device="cpu")
        x.requires_grad_(x.is_floating_point())
        not_activations = {t.untyped_storage()._cdata for t in (*shell.parameters(), *shell.buffers(), x)}
        kept: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage._cdata not in not_activations:
                kept[storage._cdata] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = shell(x)
        outputs = output if isinstance(output, tuple) else (output,)
        for out in outputs:
            if out.untyped_storage()._cdata not in not_activations:
                kept[out.untyped_storage()._cdata] = out.untyped_storage().nbytes()
    return sum(kept.values())


def _time_units(info: ModelInfo, heads: Sequence[str], dtype: torch.dtype, batch: int) -> dict[str, float]:
    """Median forward time per sample of each unit, materialised one at a time (memory of one unit)."""
    assert info.input is not None
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    spec: InputSpec = info.input
    if spec.dtype.is_floating_point:
        x = torch.randn((batch, *spec.shape), device=device, dtype=dtype)
    else:
        x = torch.randint(spec.high or 2, (batch, *spec.shape), device=device)
    times: dict[str, float] = {}
    trunk_output = x
    for name, unit in info.units.items():
        materialize({name: unit}, device, dtype)
        unit_input = trunk_output if name in heads else x
        samples = []
        with torch.no_grad():
            for _ in range(5):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                y = unit(unit_input)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - started)
        times[name] = statistics.median(samples[1:]) * 1000 / batch
        unit.to_empty(device="meta")
        if name not in heads:
            x = trunk_output = y
    return times


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas profile", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", choices=[m.value for m in CatalogModel], help="a builtin model")
    source.add_argument("--factory", help="package.module:function returning an nn.ModuleDict of units")
    parser.add_argument("--args", default="{}", help="model arguments as JSON, e.g. '{\"layers\": 2}'")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES), help="parameter dtype")
    parser.add_argument("--heads", help="comma-separated task-head units (default: the model's maas_heads)")
    parser.add_argument("--input-shape", help="per-sample input shape, e.g. 3,32,32 (default: maas_input)")
    parser.add_argument("--input-dtype", default="float32", help="input dtype with --input-shape")
    parser.add_argument(
        "--time", type=int, default=0, metavar="BATCH", help="also time each unit on BATCH samples"
    )
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args = json.loads(options.args)
        if not isinstance(args, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        print(f"maas profile: --args: {error}", file=sys.stderr)
        return 2
    try:
        spec = ModelSpec(catalog=options.catalog, factory=options.factory, args=args, dtype=options.dtype)
        info = build_meta_model(spec)
        if options.input_shape:
            shape = tuple(int(n) for n in options.input_shape.split(","))
            info.input = InputSpec(shape, parse_dtype(options.input_dtype, "--input-dtype"))
        elif info.input is not None and info.input.dtype.is_floating_point:
            info.input = dataclasses.replace(info.input, dtype=torch.float32)
        heads = options.heads.split(",") if options.heads else None
        units = profile_units(info, options.dtype, heads, options.time)
    except (PermanentError, ValueError) as error:
        print(f"maas profile: {error}", file=sys.stderr)
        return 1
    wire = [unit.to_wire() for unit in units]
    if options.output == "json":
        print(json.dumps(wire, indent=2))
    else:
        print(yaml.safe_dump(wire, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
